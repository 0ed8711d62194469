"""The concurrency pool on its own: first come first served, N learnt only when it matters, cancel-safe."""

from __future__ import annotations

import asyncio

from lmstudio_pack.slots import DEFAULT_PARALLEL, SlotPool, pool_for


async def test_the_first_request_never_waits_for_the_servers_answer():
    asked = []

    async def discover() -> int:
        asked.append(True)
        return 3

    pool = SlotPool(discover)
    await pool.acquire()
    assert asked == [] and pool.in_flight == 1  # a single run pays nothing for learning N
    pool.release()


async def test_n_is_learnt_once_and_bounds_the_rest_in_order():
    asked = []

    async def discover() -> int:
        asked.append(True)
        await asyncio.sleep(0.01)
        return 2

    pool = SlotPool(discover)
    order: list[int] = []
    peak = 0

    async def item(i: int) -> None:
        nonlocal peak
        await pool.acquire()
        peak = max(peak, pool.in_flight)
        order.append(i)
        await asyncio.sleep(0.02)
        pool.release()

    await asyncio.gather(*(item(i) for i in range(6)))
    assert asked == [True] and peak == 2 and pool.source == "server"
    assert order == list(range(6))


async def test_a_server_that_does_not_say_gets_the_default_and_an_override_wins():
    async def silent() -> None:
        return None

    async def broken() -> int:
        raise OSError("down")

    for discover in (silent, broken):
        pool = SlotPool(discover)
        await pool.acquire()
        await asyncio.wait_for(pool.acquire(), 1)  # the second learns N: the default lets it in
        assert pool.limit == DEFAULT_PARALLEL and pool.source == "default"
    assert SlotPool(silent, override=3).limit == 3


async def test_a_cancelled_waiter_gives_its_place_and_any_slot_back():
    async def one() -> int:
        return 1

    pool = SlotPool(one)
    await pool.acquire()
    waiting = asyncio.ensure_future(pool.acquire())
    await asyncio.sleep(0.01)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    pool.release()
    assert pool.in_flight == 0 and pool.try_acquire()


async def test_pools_are_per_prompt_and_per_server_and_model():
    async def discover() -> int:
        return 4

    assert pool_for(("http://a", "m"), 0, discover) is pool_for(("http://a", "m"), 0, discover)
    assert pool_for(("http://a", "m"), 0, discover) is not pool_for(("http://a", "other"), 0, discover)
