"""The concurrency pool on its own: first come first served, N learnt only when it matters, cancel-safe, held by a
busy server's Retry-After, and an item the server refused ahead of the queue."""

from __future__ import annotations

import asyncio

from lmstudio_pack.limiter import FIND_START
from lmstudio_pack.slots import SlotPool, pool_for


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


async def test_a_server_that_does_not_say_has_its_limit_found_and_an_override_wins():
    async def silent() -> None:
        return None

    async def broken() -> int:
        raise OSError("down")

    for discover in (silent, broken):
        pool = SlotPool(discover)
        await pool.acquire()
        await asyncio.wait_for(pool.acquire(), 1)  # the second learns N: the default lets it in
        assert pool.limit == FIND_START and pool.source == "found"
        assert pool.limiter is not None and pool.limiter.finding
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


async def test_a_retry_after_for_the_only_request_out_holds_every_request_until_then():
    async def two() -> int:
        return 2

    pool = SlotPool(two)
    await pool.acquire()
    await pool.acquire()
    pool.release()
    refused = pool.sent()
    pool.refused(refused, 0.3)  # "Retry-After: 0.3" for the only request out: nothing goes out before then...
    pool.release(refused)  # ...though every slot is free
    started = asyncio.get_running_loop().time()
    assert not pool.try_acquire()
    await asyncio.wait_for(pool.acquire(), 2)
    assert asyncio.get_running_loop().time() - started >= 0.28


async def test_a_refusal_while_the_server_holds_others_lowers_the_limit_to_those_and_holds_nobody():
    async def three() -> int:
        return 3

    pool = SlotPool(three)
    held = []
    for _ in range(2):
        await pool.acquire()
        held.append(pool.sent())  # accepted: silent yet (a prompt being processed), but out before the refused one
    await asyncio.sleep(0.05)
    await pool.acquire()
    refused = pool.sent()
    await asyncio.sleep(0.01)  # the refusal takes 10 ms to come back
    assert pool.holding(refused) == 2
    pool.refused(refused, 5.0)  # full with the two it holds: its Retry-After is the refused request's own
    pool.release(refused)
    assert pool.limit == 2  # halving would be 1.5: it holds the two
    pool.release(held[0])
    assert pool.try_acquire()  # a slot the server freed goes out at once, not 5 s later


async def test_an_item_back_from_a_refusal_goes_ahead_of_the_queue():
    async def one() -> int:
        return 1

    pool = SlotPool(one)
    await pool.acquire()
    order: list[str] = []

    async def item(name: str, first: bool) -> None:
        await pool.acquire(first=first)
        order.append(name)
        pool.release()

    queued = [asyncio.ensure_future(item(f"queued {i}", False)) for i in range(3)]
    await asyncio.sleep(0.01)
    refused = asyncio.ensure_future(item("refused before", True))
    await asyncio.sleep(0.01)
    pool.release()
    await asyncio.gather(*queued, refused)
    assert order == ["refused before", "queued 0", "queued 1", "queued 2"]
