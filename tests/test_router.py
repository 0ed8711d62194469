"""The router tier: LiteLLM's real proxy (tests/router/setup.sh) in front of two stand-in servers of 4 slots each, as a
user who outgrew one GPU runs it: least-busy routing, `max_parallel_requests: 4` per server, a master key. The node
talks to the proxy in OpenAI-compatible mode with nothing set: the spread over both, the proxy's 429s, a server
killed mid-list, reasoning and images through the proxy, Cancel reaching the servers, and the key's one destination.
Without the proxy's venv this tier is skipped, and in CI it fails instead (.ci/run builds it)."""

from __future__ import annotations

import asyncio
import math
import time

import comfy.model_management as model_management
import pytest
import torch
from aiohttp import web

from chat_node_helpers import NODE_ID, events, run, run_list
from fake_lmstudio import MODEL, FakeLMStudio, openai_script
from router_proxy import MASTER_KEY, MODEL_NAME, LiteLLMProxy, free_port, litellm_binary

OPENAI = "OpenAI-compatible"
ITEM_SECONDS = 0.15  # each stand-in thinks this long in a slot before it answers


@pytest.fixture(scope="module")
def proxy():
    backends = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    started = LiteLLMProxy(litellm_binary(), backends, parallel=4, model=MODEL).start()
    yield started
    started.stop()


@pytest.fixture
async def servers(proxy, monkeypatch):
    """Two stand-in OpenAI-compatible servers (no LM Studio API, no slots reported) on the proxy's backend ports."""
    monkeypatch.setenv("LMSTUDIO_API_TOKEN", MASTER_KEY)  # the proxy's key, as a user sets it
    fakes = [FakeLMStudio(echo=True, lmstudio=False, parallel=4) for _ in proxy.backends]
    runners = {}

    async def start(index: int) -> None:
        runner = web.AppRunner(fakes[index].app())
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", int(proxy.backends[index].rsplit(":", 1)[1])).start()
        runners[index] = runner

    async def stop(index: int) -> None:
        await runners.pop(index).cleanup()

    for index in range(len(fakes)):
        fakes[index].delay_for = {f"Describe {i}": ITEM_SECONDS for i in range(200)} | {"Describe": ITEM_SECONDS}
        fakes[index].event_delay = 0.01
        await start(index)
    fakes[0].stop = stop  # type: ignore[attr-defined]  # the tests' handle to kill a server
    yield fakes
    for index in list(runners):
        await stop(index)
    await asyncio.sleep(1.2)  # the proxy's cooldown of a killed server ends before the next test


def answers(count: int) -> list[str]:
    return [f"Answer to Describe {i}" for i in range(count)]


async def test_captions_spread_over_both_servers_and_every_slot_is_found(proxy, servers, comfy):
    """Nothing set: the proxy reports no slots, so the node finds them, all 8 of them, and loses nothing."""
    started = time.monotonic()
    outputs, ui, _ = await run_list(proxy.url, OPENAI, model_id=MODEL_NAME, count=48)
    elapsed = time.monotonic() - started
    ideal = math.ceil(48 / 8) * ITEM_SECONDS
    print(f"\n48 items through the proxy in {elapsed:.2f} s; 8 slots' ideal {ideal:.2f} s plus the proxy's own time")
    assert outputs[0] == answers(48)
    assert not [entry for entry in ui["lmstudio"] if "error" in entry]
    assert all(len(fake.predictions) >= 8 for fake in servers), [len(f.predictions) for f in servers]
    # More than the 2 at a time a server that reports nothing used to get. How many more depends on how fast the
    # proxy itself runs on this machine (it shares two cores with everything here): the bench measures the time.
    assert sum(fake.peak_in_flight for fake in servers) >= 4, [f.peak_in_flight for f in servers]


async def test_more_than_the_proxy_holds_is_waited_out_and_nothing_is_lost(proxy, servers, comfy):
    """max_parallel 16 against 8 slots: the proxy answers 429 "No deployments available" (or "max_parallel_requests
    slots in use") for the rest; every caption is still a reply, the summary counts the waits."""
    outputs, _, _ = await run_list(proxy.url, OPENAI, model_id=MODEL_NAME, count=40, max_parallel=16)
    assert outputs[0] == answers(40)
    busy = [c for k, c in events() if k == "status" and " is busy (HTTP 429 from " in c]
    assert busy, "the proxy never pushed back"
    assert "waited for a busy server" in outputs[2][-1]
    assert max(fake.peak_in_flight for fake in servers) <= 4


async def test_a_server_killed_mid_list_loses_no_caption(proxy, servers, comfy):
    async def kill_one() -> None:
        while len(servers[1].predictions) < 4:
            await asyncio.sleep(0.01)
        await servers[0].stop(1)  # type: ignore[attr-defined]

    killer = asyncio.create_task(kill_one())
    outputs, _, _ = await run_list(proxy.url, OPENAI, model_id=MODEL_NAME, count=32)
    await killer
    assert outputs[0] == answers(32)  # every caption a reply, none empty, none an error


async def test_reasoning_and_images_stream_through_the_proxy(proxy, servers, comfy):
    for fake in servers:
        fake.echo = False
        fake.openai_chunks = openai_script(["A red", " square."], reasoning=["Let me", " look."])
    output = await run(proxy.url, OPENAI, model_id=MODEL_NAME, image=torch.rand(1, 32, 32, 3))
    assert output.args[:2] == ("A red square.", "Let me look.")
    sent = next(fake for fake in servers if fake.chat_requests()).chat_requests()[-1].body
    parts = sent["messages"][-1]["content"]
    assert parts[1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert [c for k, c in events() if k == "reasoning"] and [c for k, c in events() if k == "text"]


async def test_cancel_mid_list_reaches_the_servers_through_the_proxy(proxy, servers, comfy):
    for fake in servers:
        fake.event_delay = 0.2
        fake.openai_chunks = openai_script(["word "] * 40)
        fake.echo = False

    async def cancel_soon() -> float:
        while sum(fake.in_flight for fake in servers) < 4:
            await asyncio.sleep(0.01)
        model_management.interrupt_current_processing(True)
        return time.monotonic()

    canceller = asyncio.create_task(cancel_soon())
    with pytest.raises(model_management.InterruptProcessingException):
        await run_list(proxy.url, OPENAI, model_id=MODEL_NAME, count=16)
    cancelled_at = await canceller
    assert time.monotonic() - cancelled_at < 1.0
    deadline = time.monotonic() + 5
    while sum(fake.in_flight for fake in servers) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert sum(fake.in_flight for fake in servers) == 0  # the proxy closed its streams to the servers too
    assert any(fake.disconnected.is_set() for fake in servers)


async def test_the_key_comes_from_the_environment_and_goes_to_the_proxy_only(proxy, servers, comfy, monkeypatch):
    output = await run(proxy.url, OPENAI, model_id=MODEL_NAME)
    assert output.args[0] == "Answer to Describe"
    for fake in servers:
        assert not [r for r in fake.requests if MASTER_KEY in str(r.headers)]  # never past the proxy
    # LiteLLM 1.106 without a database answers a missing key with a bare HTTP 500, a wrong one with 400 "No connected
    # db.": the node says what to set either way.
    monkeypatch.delenv("LMSTUDIO_API_TOKEN")
    output = await run(proxy.url, OPENAI, model_id=MODEL_NAME, seed=7)
    assert "No API token was sent" in output.args[0] and "LMSTUDIO_API_TOKEN" in output.args[0], output.args[0]
    monkeypatch.setenv("LMSTUDIO_API_TOKEN", "sk-not-the-master-key")
    output = await run(proxy.url, OPENAI, model_id=MODEL_NAME, seed=8)
    assert output.args[0].startswith(f"Error: The server at {proxy.url} requires an API token: it refused the key sent")


async def test_a_folder_captioned_through_the_proxy_loses_no_caption(proxy, servers, comfy, user_folder, tmp_path):
    """LM Studio Caption Folder behind the proxy, more at once than it holds: every image gets its caption."""
    from PIL import Image

    from lmstudio_pack.caption_folder_node import LMStudioCaptionFolder
    from lmstudio_pack.options_node import ChatOptions

    for index in range(40):
        Image.new("RGB", (16 + index, 16), (index, 90, 120)).save(tmp_path / f"{index:02d}.png")
    node = LMStudioCaptionFolder.PREPARE_CLASS_CLONE({"hidden_inputs": {"UNIQUE_ID": NODE_ID}})
    report, captioned, _ = (await node.execute(
        folder=str(tmp_path), prompt="Describe", model_id=MODEL_NAME, connection_mode=OPENAI, server_url=proxy.url,
        temperature=0.3, max_tokens=-1, options=ChatOptions(max_parallel=16))).result
    assert captioned == 40 and "Failed" not in report, report
    assert [p.read_text() for p in sorted(tmp_path.glob("*.txt"))] == ["Answer to Describe"] * 40
    assert any(" is busy (HTTP 429 from " in c for k, c in events() if k == "status"), "the proxy never pushed back"
