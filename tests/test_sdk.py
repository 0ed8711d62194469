"""The SDK mode: the real `lmstudio` package driven against a local server speaking its websocket protocol."""

from __future__ import annotations

import asyncio
import base64
import time

import pytest

from fake_lmstudio import MODEL, sdk_error, sdk_fragment, sdk_script, stack_fields
from lmstudio_pack import sdk_backend
from lmstudio_pack.chat import (
    ChatRequest,
    ConnectionMode,
    Finished,
    LMStudioError,
    Progress,
    ReasoningDelta,
    TextDelta,
)
from lmstudio_pack.client import stream_chat

SDK = ConnectionMode.SDK


def request_for(fake, **kwargs) -> ChatRequest:
    return ChatRequest(prompt=kwargs.pop("prompt", "Describe"), server_url=fake.url, mode=SDK,
                       model=kwargs.pop("model", MODEL), **kwargs)


async def collect(request: ChatRequest) -> list:
    return [event async for event in stream_chat(request)]


def texts(events, kind) -> str:
    return "".join(e.text for e in events if isinstance(e, kind))


def config_fields(fake) -> dict:
    (create,) = fake.sdk.sent("channelCreate", "predict")
    return stack_fields(create["creationParameter"]["predictionConfigStack"])


async def one_client_kept(fake) -> bool:
    """The run left exactly one kept SDK client (its five websockets) open: nothing leaked, nothing extra."""
    for _ in range(50):
        if fake.sdk.open_sockets == 5:
            return True
        await asyncio.sleep(0.02)
    return False


async def test_streams_reasoning_answer_progress_and_stats(lmstudio):
    events = await collect(request_for(lmstudio, temperature=0.25, max_tokens=64, system_prompt="Be terse."))
    assert texts(events, ReasoningDelta) == "Let me look."  # tag fragments are neither reasoning nor answer
    assert texts(events, TextDelta) == "A red square."
    assert [(e.stage, e.fraction) for e in events if isinstance(e, Progress)] == [
        ("prompt_processing", 0.0), ("prompt_processing", 0.5), ("prompt_processing", 1.0)]
    stats = events[-1].stats
    assert isinstance(events[-1], Finished)
    assert stats.summary() == ("tokens/s: 42.5 | TTFT: 0.31 s | input tokens: 21 | output tokens: 6 (reasoning 4) | "
                               f"stop: eosFound | mode: SDK | model: {MODEL}")
    # what the SDK sent: only keys it honours, the system prompt leading the chat
    assert config_fields(lmstudio) == {"llm.prediction.temperature": 0.25,
                                       "llm.prediction.maxPredictedTokens": {"checked": True, "value": 64}}
    (create,) = lmstudio.sdk.sent("channelCreate", "predict")
    messages = create["creationParameter"]["history"]["messages"]
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[1]["content"] == [{"type": "text", "text": "Describe"}]
    assert await one_client_kept(lmstudio)  # kept for the next run (closed when idle or at shutdown)


async def test_no_limit_sends_no_max_tokens(lmstudio):
    await collect(request_for(lmstudio))
    assert config_fields(lmstudio) == {"llm.prediction.temperature": 0.7}


async def test_images_are_uploaded_and_referenced(lmstudio):
    jpegs = (b"\xff\xd8\xff\xe0first", b"\xff\xd8\xff\xe0second")
    await collect(request_for(lmstudio, images=jpegs))
    uploads = lmstudio.sdk.sent("rpcCall", "uploadFileBase64")
    assert [base64.b64decode(u["parameter"]["contentBase64"]) for u in uploads] == list(jpegs)
    assert all(u["parameter"]["name"].endswith(".jpg") for u in uploads)
    (create,) = lmstudio.sdk.sent("channelCreate", "predict")
    user = create["creationParameter"]["history"]["messages"][-1]
    files = [part for part in user["content"] if part["type"] == "file"]
    assert [f["identifier"] for f in files] == ["file-1", "file-2"] and all(f["fileType"] == "image" for f in files)


async def test_jit_load_reports_progress_with_a_deliberate_ttl(lmstudio):
    lmstudio.sdk.load_delay = 0.12  # longer than the poll, so each step arrives on its own
    events = await collect(request_for(lmstudio, model="google/gemma-3-4b"))
    loads = [e.fraction for e in events if isinstance(e, Progress) and e.stage == "model_load"]
    assert loads == [0.0, 0.25, 0.5, 0.75, 1.0]
    (create,) = lmstudio.sdk.sent("channelCreate", "getOrLoad")
    assert create["creationParameter"]["loadTtlMs"] == sdk_backend.LOAD_TTL_SECONDS * 1000
    assert events[-1].stats.model == "google/gemma-3-4b"


async def test_empty_model_id_uses_the_loaded_model(lmstudio):
    events = await collect(request_for(lmstudio, model=""))
    assert lmstudio.sdk.sent("rpcCall", "listLoaded") and not lmstudio.sdk.sent("channelCreate", "getOrLoad")
    assert events[-1].stats.model == MODEL


async def test_nothing_loaded(lmstudio):
    lmstudio.sdk.loaded = []
    with pytest.raises(LMStudioError, match="No model is loaded in LM Studio and model_id is empty"):
        await collect(request_for(lmstudio, model=""))
    assert await one_client_kept(lmstudio)


async def test_unknown_model_lists_loaded_and_downloaded(lmstudio):
    with pytest.raises(LMStudioError) as caught:
        await collect(request_for(lmstudio, model="nope/missing"))
    message = str(caught.value)
    assert message.startswith("Model 'nope/missing' not found in LM Studio: Cannot find a model")
    assert f"Loaded: {MODEL}." in message and f"Downloaded: {MODEL}, google/gemma-3-4b." in message
    assert await one_client_kept(lmstudio)


async def test_prediction_error(lmstudio):
    lmstudio.sdk.predict_error = sdk_error("Engine crashed: out of memory")
    with pytest.raises(LMStudioError, match="LM Studio reported an error: Engine crashed: out of memory"):
        await collect(request_for(lmstudio))
    assert await one_client_kept(lmstudio)
    assert not lmstudio.sdk.cancelled.is_set()  # a failed prediction needs no cancel


async def test_model_unloaded_before_predicting(lmstudio):
    lmstudio.sdk.loaded = []  # `getOrLoad` finds it downloaded and loads it; then we pretend it vanished
    lmstudio.sdk.downloaded = [MODEL]
    original = lmstudio.sdk._predict

    async def unload_then_predict(*args):
        lmstudio.sdk.loaded.clear()
        await original(*args)

    lmstudio.sdk._predict = unload_then_predict
    with pytest.raises(LMStudioError, match=f"Model '{MODEL}' not found|No model found that fits the query"):
        await collect(request_for(lmstudio))


async def test_drop_mid_stream(lmstudio):
    lmstudio.sdk.drop_after_fragments = 3
    seen = []
    with pytest.raises(LMStudioError, match="closed the connection before the answer was complete"):
        async for event in stream_chat(request_for(lmstudio)):
            seen.append(event)
    assert texts(seen, ReasoningDelta) == "Let me look." and texts(seen, TextDelta) == ""


async def test_not_reachable(free_port):
    request = ChatRequest(prompt="x", server_url=f"http://127.0.0.1:{free_port}", mode=SDK, model=MODEL)
    with pytest.raises(LMStudioError) as caught:
        await collect(request)
    assert str(caught.value).startswith(f"LM Studio connection failed. Tried http://127.0.0.1:{free_port} (SDK probe")


async def test_websocket_refused(lmstudio):
    lmstudio.sdk.refuse_websocket = True
    with pytest.raises(LMStudioError, match=r"connection failed\. Tried .* \(the SDK websocket ws://.* was refused\)"):
        await collect(request_for(lmstudio))


async def test_idle_timeout_cancels_the_prediction(lmstudio):
    await collect(request_for(lmstudio))  # the kept client is open: the idle timer meets the prediction, not a connect
    lmstudio.sdk.fragment_delay = 5
    started = time.monotonic()
    with pytest.raises(LMStudioError, match="sent nothing for too long"):
        await collect(request_for(lmstudio, idle_timeout=0.4))
    assert time.monotonic() - started < 2
    assert lmstudio.sdk.cancelled.is_set()


@pytest.mark.skipif(sdk_backend._SDK_ACCEPTS_TOKEN, reason="this lmstudio SDK can send API tokens")
async def test_auth_required_with_an_sdk_that_cannot_send_tokens(lmstudio):
    lmstudio.sdk.required_token = "sk-lm-abcdefgh:abcdefghijklmnopqrst"
    with pytest.raises(LMStudioError) as caught:
        await collect(request_for(lmstudio, api_token="sk-lm-abcdefgh:abcdefghijklmnopqrst"))
    message = str(caught.value)
    assert "requires an API token" in message and "cannot send one" in message and "REST API" in message


@pytest.mark.skipif(not sdk_backend._SDK_ACCEPTS_TOKEN, reason="this lmstudio SDK cannot send API tokens")
async def test_auth_with_an_sdk_that_sends_tokens(lmstudio):
    lmstudio.sdk.required_token = "sk-lm-abcdefgh:abcdefghijklmnopqrst"
    await collect(request_for(lmstudio, api_token="sk-lm-abcdefgh:abcdefghijklmnopqrst"))
    with pytest.raises(LMStudioError, match="requires an API token"):
        await collect(request_for(lmstudio, api_token="sk-lm-zzzzzzzz:abcdefghijklmnopqrst"))


async def test_cancel_sends_cancel_and_stops(lmstudio):
    lmstudio.sdk.fragments = [sdk_fragment(f"tok{i} ") for i in range(200)]
    lmstudio.sdk.fragment_delay = 0.05
    first = asyncio.Event()

    async def consume():
        async for event in stream_chat(request_for(lmstudio)):
            if isinstance(event, TextDelta):
                first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 5)
    started = time.monotonic()
    task.cancel()
    await asyncio.wait({task}, timeout=2)
    assert task.cancelled() and time.monotonic() - started < 1
    (cancel,) = [m for m in lmstudio.sdk.sent("channelSend") if m["message"] == {"type": "cancel"}]
    (create,) = lmstudio.sdk.sent("channelCreate", "predict")
    assert cancel["channelId"] == create["channelId"]
    assert await one_client_kept(lmstudio)


async def test_closing_the_iterator_early_also_cancels(lmstudio):
    lmstudio.sdk.fragments = [sdk_fragment(f"tok{i} ") for i in range(100)]
    lmstudio.sdk.fragment_delay = 0.02
    stream = stream_chat(request_for(lmstudio))
    async for event in stream:
        if isinstance(event, TextDelta):
            break
    await stream.aclose()
    assert lmstudio.sdk.cancelled.is_set()
    assert await one_client_kept(lmstudio)


def test_reasoning_token_count_includes_tags():
    assert [f["reasoningType"] for f in sdk_script(["a"], ["b"])] == [
        "reasoningStartTag", "reasoning", "reasoningEndTag", "none"]
