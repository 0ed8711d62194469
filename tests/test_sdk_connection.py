"""The SDK mode's lasting connection and its worker process: reuse, sharing, reconnects, idle close, Cancel in every
phase, silent or wrong servers, shutdown, and a worker that dies. The real `lmstudio` package against the
stand-in's websocket protocol."""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from aiohttp import web

from fake_lmstudio import MODEL, FakeLMStudio, sdk_fragment
from lmstudio_pack import sdk_backend, sdk_process, sdk_runtime
from lmstudio_pack.chat import ChatRequest, ConnectionMode, Finished, LMStudioError, Notice, Progress, TextDelta
from lmstudio_pack.client import stream_chat
from lmstudio_pack.sdk_process import WORKER
from procs import process_alive

SOCKETS_PER_CLIENT = 5  # embedding, files, llm, repository, system


def request_for(url: str, **kwargs) -> ChatRequest:
    return ChatRequest(prompt=kwargs.pop("prompt", "Describe"), server_url=url, mode=ConnectionMode.SDK,
                       model=kwargs.pop("model", MODEL), **kwargs)


async def answer(request: ChatRequest) -> str:
    return "".join([e.text async for e in stream_chat(request) if isinstance(e, TextDelta)])


async def eventually(condition, seconds: float = 2.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.02)
    return condition()


async def test_runs_reuse_one_connection(lmstudio):
    for _ in range(3):
        assert await answer(request_for(lmstudio.url)) == "A red square."
    assert lmstudio.sdk.connections == SOCKETS_PER_CLIENT
    assert lmstudio.sdk.sent("channelCreate", "predict").__len__() == 3


async def test_concurrent_runs_share_it_and_keep_their_own_state(lmstudio):
    lmstudio.echo = True
    lmstudio.sdk.fragment_delay = 0.01
    answers = await asyncio.gather(*(answer(request_for(lmstudio.url, prompt=f"P{i}")) for i in range(6)))
    assert answers == [f"Answer to P{i}" for i in range(6)]  # no run's fragments reach another
    assert lmstudio.sdk.connections == SOCKETS_PER_CLIENT


async def test_a_token_or_server_change_gets_its_own_client(lmstudio, aiohttp_server):
    other = FakeLMStudio()
    server = await aiohttp_server(other.app())
    await answer(request_for(lmstudio.url))
    await answer(request_for(f"http://127.0.0.1:{server.port}"))
    await answer(request_for(lmstudio.url, api_token="sk-lm-abcdefgh:abcdefghijklmnopqrst"))
    assert other.sdk.connections == SOCKETS_PER_CLIENT
    assert lmstudio.sdk.connections == 2 * SOCKETS_PER_CLIENT


# ---- what a kept client remembers of the model (`KeptClient.recall`)

JPEG = (b"\xff\xd8\xff\xe0frame",)


def asked(fake) -> tuple[int, int, int]:
    """(getOrLoad, getModelInfo, predict) messages the server received."""
    return (len(fake.sdk.sent("channelCreate", "getOrLoad")), len(fake.sdk.sent("rpcCall", "getModelInfo")),
            len(fake.sdk.sent("channelCreate", "predict")))


async def test_later_runs_remember_the_model_and_its_vision(lmstudio):
    """A list's later items go straight to the upload and the prediction: four fewer messages each."""
    for _ in range(3):
        assert await answer(request_for(lmstudio.url, images=JPEG)) == "A red square."
    assert asked(lmstudio) == (1, 1, 3)
    assert len(lmstudio.sdk.sent("rpcCall", "uploadFileBase64")) == 3  # a file handle is the run's own


async def test_a_remembered_text_only_model_still_refuses_images(lmstudio):
    lmstudio.sdk.text_only = {MODEL}
    assert await answer(request_for(lmstudio.url)) == "A red square."  # remembered; its vision not asked yet
    for _ in range(2):
        with pytest.raises(LMStudioError, match=f"Model '{MODEL}' cannot see images"):
            await answer(request_for(lmstudio.url, images=JPEG))
    assert asked(lmstudio) == (1, 1, 1)


async def test_a_remembered_context_length_still_gives_each_run_its_notice(lmstudio):
    for _ in range(2):
        events = [e async for e in stream_chat(request_for(lmstudio.url, context_length=4096))]
        assert [e.kind for e in events if isinstance(e, Notice)] == ["context"]
        assert isinstance(events[-1], Finished)
    assert asked(lmstudio) == (1, 1, 2)


async def test_a_remembered_model_unloaded_since_is_loaded_again(lmstudio):
    assert await answer(request_for(lmstudio.url)) == "A red square."
    lmstudio.sdk.loaded.clear()  # its idle TTL ran out, or someone unloaded it; it is still downloaded
    events = [e async for e in stream_chat(request_for(lmstudio.url))]
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "A red square."
    assert [e.fraction for e in events if isinstance(e, Progress) and e.stage == "model_load"][-1] == 1.0
    assert asked(lmstudio) == (2, 0, 3)  # the remembered handle's prediction was refused before it ran
    assert lmstudio.sdk.loaded == [MODEL]


async def test_what_was_learned_is_asked_again_after_a_while(lmstudio, monkeypatch):
    await WORKER.aclose()  # the setting below reaches a worker when it starts
    monkeypatch.setattr(sdk_runtime, "MEMO_SECONDS", 0.3)
    try:
        for pause in (0.0, 0.0, 0.5):
            await asyncio.sleep(pause)
            assert await answer(request_for(lmstudio.url)) == "A red square."
        assert asked(lmstudio) == (2, 0, 3)
    finally:
        await WORKER.aclose()


async def start_fake(aiohttp_server, port: int | None = None) -> tuple[FakeLMStudio, object]:
    fake = FakeLMStudio()
    server = await aiohttp_server(fake.app(), port=port) if port else await aiohttp_server(fake.app())
    fake.url = f"http://127.0.0.1:{server.port}"
    return fake, server


async def test_lm_studio_restarted_between_runs(aiohttp_server):
    first, server = await start_fake(aiohttp_server)
    try:
        await answer(request_for(first.url))
        port = server.port
        await server.close()  # LM Studio quits (or the laptop slept): the kept client is dead
        second, _ = await start_fake(aiohttp_server, port)
        assert await answer(request_for(second.url)) == "A red square."  # reconnected by itself
        assert len(second.sdk.sent("channelCreate", "predict")) == 1  # sent once, on the fresh client
    finally:
        await WORKER.close_connections()


async def test_lm_studio_really_down_gives_the_usual_message(aiohttp_server):
    fake, server = await start_fake(aiohttp_server)
    try:
        await answer(request_for(fake.url))
        await server.close()
        with pytest.raises(LMStudioError, match=r"^LM Studio connection failed\. Tried http://127\.0\.0\.1"):
            await answer(request_for(fake.url))
    finally:
        await WORKER.close_connections()


TOKEN = "sk-lm-abcdefgh:abcdefghijklmnopqrst"


async def restarted_with(aiohttp_server, **settings) -> tuple[FakeLMStudio, str]:
    """A first run keeps a client; then LM Studio restarts on the same port with `settings` changed."""
    first, server = await start_fake(aiohttp_server)
    await answer(request_for(first.url))
    port = server.port
    await server.close()
    second, _ = await start_fake(aiohttp_server, port)
    for name, value in settings.items():
        setattr(second.sdk, name, value)
    return second, first.url


@pytest.mark.parametrize("token", [None, "sk-lm-zzzzzzzz:abcdefghijklmnopqrst"], ids=["none sent", "wrong token"])
async def test_restarted_with_auth_on_explains_like_a_fresh_connection(aiohttp_server, token):
    """The kept client is dead, the fresh one is asked for a token: the message is a fresh connection's."""
    if token and not sdk_backend._SDK_ACCEPTS_TOKEN:
        pytest.skip("this lmstudio SDK cannot send API tokens")
    try:
        fake, url = await restarted_with(aiohttp_server, required_token=TOKEN)
        with pytest.raises(LMStudioError) as replaced:
            await answer(request_for(url, api_token=token))
        await WORKER.close_connections()
        with pytest.raises(LMStudioError) as fresh:
            await answer(request_for(url, api_token=token))
        assert str(replaced.value) == str(fresh.value)
        assert "requires an API token" in str(replaced.value)
        if token:
            assert "rejected the token" in str(replaced.value)
        assert not fake.sdk.sent("channelCreate", "predict")
    finally:
        await WORKER.close_connections()


async def test_restarted_refusing_websockets_explains_like_a_fresh_connection(aiohttp_server):
    try:
        _, url = await restarted_with(aiohttp_server, refuse_websocket=True)
        with pytest.raises(LMStudioError, match=r"^LM Studio connection failed\..*websocket .* was refused"):
            await answer(request_for(url))
        with pytest.raises(LMStudioError, match="was refused"):  # and again, on no kept client at all
            await answer(request_for(url))
    finally:
        await WORKER.close_connections()


async def test_unload_on_a_server_restarted_with_auth_on_is_explained(aiohttp_server):
    from lmstudio_pack.client import unload_model

    try:
        _, url = await restarted_with(aiohttp_server, required_token=TOKEN)
        with pytest.raises(LMStudioError, match="requires an API token"):
            await unload_model(request_for(url), MODEL, confirm_seconds=1)
    finally:
        await WORKER.close_connections()


async def test_killed_mid_stream_then_back(aiohttp_server):
    fake, _ = await start_fake(aiohttp_server)
    try:
        fake.sdk.fragments = [sdk_fragment(f"t{i} ") for i in range(50)]
        fake.sdk.drop_after_fragments = 3  # the server dies mid-answer
        with pytest.raises(LMStudioError, match="closed the connection before the answer was complete"):
            await answer(request_for(fake.url))
        assert len(fake.sdk.sent("channelCreate", "predict")) == 1  # a started prediction is never sent twice
        fake.sdk.drop_after_fragments = None
        assert await answer(request_for(fake.url)) == "".join(f"t{i} " for i in range(50))
    finally:
        await WORKER.close_connections()


async def test_an_idle_connection_closes_and_the_worker_ends(lmstudio, monkeypatch):
    await WORKER.aclose()  # the settings below reach a worker when it starts
    monkeypatch.setattr(sdk_runtime, "IDLE_CLOSE_SECONDS", 0.3)
    monkeypatch.setattr(sdk_runtime, "REAP_EVERY_SECONDS", 0.05)
    try:
        await answer(request_for(lmstudio.url))
        first = WORKER.pid
        assert lmstudio.sdk.open_sockets == SOCKETS_PER_CLIENT
        assert await eventually(lambda: lmstudio.sdk.open_sockets == 0, 3)
        assert await eventually(lambda: WORKER.pid is None, 3)
        assert await eventually(lambda: not process_alive(first), 3)
        assert await answer(request_for(lmstudio.url)) == "A red square."  # and a later run starts a new one
        assert WORKER.pid not in (None, first)
    finally:
        await WORKER.aclose()


async def test_shutdown_leaves_no_worker_and_no_websocket(lmstudio):
    await answer(request_for(lmstudio.url))
    pid = WORKER.pid
    assert process_alive(pid)
    started = time.monotonic()
    await asyncio.to_thread(sdk_process.WORKER.shutdown)  # what atexit calls when ComfyUI exits
    assert time.monotonic() - started < sdk_process.SHUTDOWN_SECONDS
    assert WORKER.pid is None and not process_alive(pid)
    assert await eventually(lambda: lmstudio.sdk.open_sockets == 0)


async def cancel_after(task: asyncio.Task, condition, seconds: float = 5.0) -> float:
    """Wait for `condition`, cancel `task`, and return how long it took to end."""
    assert await eventually(condition, seconds)
    started = time.monotonic()
    task.cancel()
    await asyncio.wait({task}, timeout=2)
    assert task.done()
    return time.monotonic() - started


async def test_cancel_while_loading_stops_waiting_at_once(lmstudio):
    lmstudio.sdk.load_delay = 0.3
    task = asyncio.create_task(answer(request_for(lmstudio.url, model="google/gemma-3-4b")))
    took = await cancel_after(task, lambda: lmstudio.sdk.sent("channelCreate", "getOrLoad"))
    sent_at_cancel = len(lmstudio.sdk.received)
    assert took < 0.5
    assert not lmstudio.sdk.sent("channelCreate", "predict")
    # The SDK tells LM Studio nothing: the load under way finishes and the model stays loaded (README).
    assert await eventually(lambda: "google/gemma-3-4b" in lmstudio.sdk.loaded, 3)
    assert len(lmstudio.sdk.received) == sent_at_cancel


async def test_cancel_during_prompt_processing_tells_lm_studio(lmstudio):
    lmstudio.sdk.prompt_delay = 1.0
    task = asyncio.create_task(answer(request_for(lmstudio.url)))
    took = await cancel_after(task, lambda: lmstudio.sdk.sent("channelCreate", "predict"))
    assert took < 1.0
    assert await eventually(lmstudio.sdk.cancelled.is_set)


async def test_cancel_while_streaming_sends_cancel_and_drains(lmstudio):
    lmstudio.sdk.fragments = [sdk_fragment(f"t{i} ") for i in range(200)]
    lmstudio.sdk.fragment_delay = 0.02
    first = asyncio.Event()

    async def consume() -> None:
        async for event in stream_chat(request_for(lmstudio.url)):
            if isinstance(event, TextDelta):
                first.set()

    task = asyncio.create_task(consume())
    took = await cancel_after(task, first.is_set)
    assert took < 1.0
    assert lmstudio.sdk.cancelled.is_set()
    assert await eventually(lambda: lmstudio.in_flight == 0)  # LM Studio's slot is free again
    assert await answer(request_for(lmstudio.url)) == "".join(f"t{i} " for i in range(200))  # the client lives on


@pytest.fixture
def silent_port():
    """A TCP server that accepts connections and never answers (a hung LM Studio, a wrong port)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    listener.close()


async def test_a_silent_server_gives_up_after_the_connect_timeout_naming_the_url(silent_port):
    url = f"http://127.0.0.1:{silent_port}"
    started = time.monotonic()
    with pytest.raises(LMStudioError) as caught:
        await answer(request_for(url, connect_timeout=1.5))
    took = time.monotonic() - started
    assert 1.4 < took < 3.0  # the HTTP modes' connect timeout, not the SDK's 1 s probe
    assert str(caught.value).startswith(f"LM Studio connection failed. Tried {url} (SDK probe")
    assert "no answer within 1.5 s" in str(caught.value)


async def test_cancel_works_while_waiting_for_a_silent_server(silent_port):
    task = asyncio.create_task(answer(request_for(f"http://127.0.0.1:{silent_port}")))
    await asyncio.sleep(0.3)
    took = await cancel_after(task, lambda: True)
    assert took < 0.5


async def test_a_server_that_is_not_lm_studio_is_named(aiohttp_server):
    app = web.Application()  # answers HTTP (404 to everything), like a web server on the wrong port
    server = await aiohttp_server(app)
    url = f"http://127.0.0.1:{server.port}"
    with pytest.raises(LMStudioError, match=rf"The server at {url} is not an LLM server: it does not answer LM "
                                            r"Studio's greeting"):
        await answer(request_for(url))


async def test_first_run_and_later_runs(lmstudio):
    """A kept connection: later runs skip the greeting probe and the five websocket handshakes."""
    started = time.monotonic()
    events = [e async for e in stream_chat(request_for(lmstudio.url))]
    first = time.monotonic() - started
    assert isinstance(events[-1], Finished)
    timings = []
    for _ in range(5):
        started = time.monotonic()
        await answer(request_for(lmstudio.url))
        timings.append(time.monotonic() - started)
    later = sorted(timings)[2]
    print(f"\nSDK run: first {first * 1000:.0f} ms, later (median) {later * 1000:.1f} ms")
    assert later < first / 2


async def test_cancel_while_connecting_leaves_no_unowned_client(lmstudio):
    """A run cancelled while its client is still opening: the client is kept (and closed at shutdown), not lost."""
    task = asyncio.create_task(answer(request_for(lmstudio.url)))
    await eventually(lambda: lmstudio.sdk.connections > 0, 5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await eventually(lambda: lmstudio.sdk.open_sockets == SOCKETS_PER_CLIENT, 3)
    assert await answer(request_for(lmstudio.url)) == "A red square."
    assert lmstudio.sdk.connections == SOCKETS_PER_CLIENT  # the next run used the same client
    await WORKER.close_connections()
    assert await eventually(lambda: lmstudio.sdk.open_sockets == 0)


async def test_a_cancel_that_meets_an_arriving_fragment_is_not_lost():
    """Python 3.11's `wait_for` would return the fragment and swallow the cancel; the handoff must not."""
    from lmstudio_pack.sdk_runtime import Handoff

    for _ in range(50):
        handoff = Handoff(asyncio.get_running_loop())
        task = asyncio.create_task(handoff.get_batch(10))
        await asyncio.sleep(0)
        handoff.put("fragment")  # wakes the reader on the next loop turn
        task.cancel()  # ... and Cancel arrives in the same turn
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_the_handoff_times_out_when_nothing_arrives():
    from lmstudio_pack.sdk_runtime import Handoff

    handoff = Handoff(asyncio.get_running_loop())
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await handoff.get_batch(0.05)
    assert time.monotonic() - started < 0.5
    handoff.put(1)
    handoff.put(2)
    assert await handoff.get_batch(1) == [1, 2]


async def test_the_handoff_joins_texts_of_one_kind_in_a_row():
    from lmstudio_pack.chat import ReasoningDelta, TextDelta
    from lmstudio_pack.sdk_runtime import Handoff

    handoff = Handoff(asyncio.get_running_loop())
    for make, text in [(ReasoningDelta, "Let "), (ReasoningDelta, "me."), (TextDelta, "A"), (TextDelta, " red"),
                       (TextDelta, " square.")]:
        handoff.put_text(make, text)
    handoff.put("end")
    handoff.put_text(TextDelta, "after")
    assert await handoff.get_batch(1) == [ReasoningDelta("Let me."), TextDelta("A red square."), "end",
                                          TextDelta("after")]


async def test_a_rest_lets_texts_gather_and_ends_at_once_for_anything_else():
    """From the SDK's thread: texts during a rest wait for its end; the end of the stream cuts it short."""
    import threading

    from lmstudio_pack.chat import TextDelta
    from lmstudio_pack.sdk_runtime import Handoff

    loop = asyncio.get_running_loop()
    handoff = Handoff(loop)
    started = time.monotonic()
    resting = asyncio.create_task(handoff.rest(0.3))
    await asyncio.sleep(0.02)
    writer = threading.Thread(target=lambda: [handoff.put_text(TextDelta, "t") for _ in range(100)])
    writer.start()
    writer.join()
    await asyncio.sleep(0.05)
    assert not resting.done()  # texts alone never wake a resting run
    threading.Thread(target=handoff.put, args=("end",)).start()
    await asyncio.wait_for(resting, 1)
    assert time.monotonic() - started < 0.25
    assert await handoff.get_batch(1) == [TextDelta("t" * 100), "end"]
    # A rest with something other than text already waiting returns at once; a rest runs out by itself too.
    handoff.put("progress")
    await asyncio.wait_for(handoff.rest(10), 0.1)
    await handoff.get_batch(1)
    started = time.monotonic()
    await handoff.rest(0.05)
    assert 0.04 < time.monotonic() - started < 0.5


async def test_cancel_during_a_rest_is_not_lost():
    from lmstudio_pack.sdk_runtime import Handoff

    handoff = Handoff(asyncio.get_running_loop())
    task = asyncio.create_task(handoff.rest(10))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    handoff.put_text(str, "x")  # the run is not resting any more: a text wakes a reader again
    assert await asyncio.wait_for(handoff.get_batch(1), 0.5) == ["x"]


# ---- the worker process (`sdk_process`, `sdk_worker`)


async def test_the_sdk_runs_in_a_worker_process_that_stays(lmstudio):
    await answer(request_for(lmstudio.url))
    pid = WORKER.pid
    assert pid is not None and pid != os.getpid() and process_alive(pid)
    await answer(request_for(lmstudio.url))
    assert WORKER.pid == pid  # one worker for every run, kept between them


async def test_without_the_lmstudio_package_the_sdk_mode_says_what_to_do(lmstudio, monkeypatch):
    """Where ComfyUI's Python lacks lmstudio, no worker starts and the message names the fix and the other modes."""
    find_spec = sdk_process.importlib.util.find_spec
    monkeypatch.setattr(sdk_process.importlib.util, "find_spec",
                        lambda name, *args: None if name == "lmstudio" else find_spec(name, *args))
    worker = sdk_process.SdkWorker()
    with pytest.raises(LMStudioError, match=r"needs the lmstudio package.*pip install -r requirements.txt.*REST API"):
        async for _ in worker.stream(request_for(lmstudio.url)):
            pass
    assert worker.pid is None
    assert lmstudio.predictions == []


def test_comfyuis_process_never_imports_the_sdk():
    """Only the worker imports lmstudio: an SDK run leaves ComfyUI's process without it."""
    script = """
import asyncio, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import conftest  # makes the pack importable as lmstudio_pack, as the tests do
from fake_lmstudio import MODEL, FakeLMStudio, serve
from lmstudio_pack.client import stream_chat
from lmstudio_pack.chat import ChatRequest, ConnectionMode, TextDelta
from lmstudio_pack.sdk_process import WORKER

async def main():
    fake = FakeLMStudio()
    runner = await serve(fake)
    request = ChatRequest(prompt="Describe", server_url=fake.url, mode=ConnectionMode.SDK, model=MODEL)
    text = "".join([e.text async for e in stream_chat(request) if isinstance(e, TextDelta)])
    await WORKER.aclose()
    await runner.cleanup()
    print(text, "lmstudio" in sys.modules)

asyncio.run(main())
"""
    tests = Path(__file__).resolve().parent
    done = subprocess.run([sys.executable, "-c", script, str(tests), str(tests.parent)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["A", "red", "square.", "False"]


async def test_a_worker_that_dies_mid_stream_fails_only_that_run(lmstudio, caplog):
    lmstudio.sdk.fragments = [sdk_fragment(f"t{i} ") for i in range(300)]
    lmstudio.sdk.fragment_delay = 0.01
    received: list[str] = []

    async def consume() -> None:
        async for event in stream_chat(request_for(lmstudio.url)):
            if isinstance(event, TextDelta):
                received.append(event.text)

    task = asyncio.create_task(consume())
    assert await eventually(lambda: received, 5)
    pid = WORKER.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(LMStudioError, match=r"SDK worker process ended unexpectedly \(exit code -9\)") as failed:
        await asyncio.wait_for(task, 5)
    assert failed.value.transient  # worth the node's one more try
    lmstudio.sdk.fragments = [sdk_fragment("back")]
    lmstudio.sdk.fragment_delay = 0.0
    assert await answer(request_for(lmstudio.url)) == "back"  # a new worker, by itself
    assert WORKER.pid not in (None, pid)


async def test_the_workers_log_reaches_comfyuis_log(aiohttp_server, caplog):
    """What the worker logs (here a reconnect) is logged in ComfyUI's process under the same name and level."""
    caplog.set_level(logging.INFO, logger="lmstudio_stream")
    try:
        _, url = await restarted_with(aiohttp_server)
        assert await answer(request_for(url)) == "A red square."
        assert await eventually(lambda: any("kept connection" in r.getMessage() for r in caplog.records))
        record = next(r for r in caplog.records if "kept connection" in r.getMessage())
        assert (record.name, record.levelno) == ("lmstudio_stream", logging.INFO)
    finally:
        await WORKER.close_connections()


def test_a_request_crosses_to_the_worker_whole():
    from lmstudio_pack.chat import Finished, Notice, Progress, ReasoningDelta, Stats
    from lmstudio_pack.conversation import Turn
    from lmstudio_pack.sdk_wire import event_from_wire, event_to_wire, request_from_wire, request_to_wire

    jpeg = b"\xff\xd8jpeg"
    request = ChatRequest(
        prompt="Next", server_url="http://10.0.0.2:1234", mode=ConnectionMode.SDK, model="m", system_prompt="S",
        images=(jpeg,), temperature=0.2, max_tokens=9, seed=3, ttl_seconds=60, top_p=0.9, top_k=4, min_p=0.1,
        repeat_penalty=1.1, stop=("\n\n",), draft_model="d", context_length=8192, json_schema={"type": "object"},
        history=(Turn("First", (jpeg,), "One", "resp_1"),), store=True, api_token="sk-lm-x:y", idle_timeout=9.0,
    )
    assert request_from_wire(pickle.loads(pickle.dumps(request_to_wire(request)))) == request
    for event in (Progress("model_load", 0.5), Notice("context", "kept"),
                  Finished(Stats(mode="SDK", model="m", output_tokens=3, draft_tokens=2), "resp_2")):
        assert event_from_wire(event_to_wire(event)) == event
    assert event_to_wire(TextDelta("a")) == ("text", "a") and event_to_wire(ReasoningDelta("b")) == ("reasoning", "b")
