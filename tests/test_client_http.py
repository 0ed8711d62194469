"""The REST and OpenAI-compatible backends against a local server speaking LM Studio's wire formats."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from fake_lmstudio import MODEL, native_model, openai_chunk, openai_script, rest_script
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
from lmstudio_pack.sse import SSEParser, ThinkSplitter

REST, OPENAI = ConnectionMode.REST, ConnectionMode.OPENAI
HTTP_MODES = pytest.mark.parametrize("mode", [REST, OPENAI], ids=["rest", "openai"])


async def collect(request: ChatRequest) -> list:
    return [event async for event in stream_chat(request)]


def texts(events, kind) -> str:
    return "".join(e.text for e in events if isinstance(e, kind))


def finished(events):
    assert isinstance(events[-1], Finished), events[-1]
    return events[-1].stats


def request_for(fake, mode, **kwargs) -> ChatRequest:
    return ChatRequest(prompt=kwargs.pop("prompt", "Describe"), server_url=fake.url, mode=mode, **kwargs)


# ------------------------------------------------------------------------------------------ SSE parser


def test_sse_parser_any_split_any_line_end():
    stream = "event: a\r\ndata: {\"x\": 1}\r\n\r\n: ping\r\n\r\nevent: b\rdata: line1\rdata: line2\r\rdata: é✓\n\n"
    expected = [("a", '{"x": 1}'), ("b", "line1\nline2"), ("", "é✓")]
    raw = stream.encode()
    for size in range(1, len(raw) + 1):
        parser = SSEParser()
        events = [e for i in range(0, len(raw), size) for e in parser.feed(raw[i : i + size])] + parser.close()
        assert [(e.event, e.data) for e in events] == expected, size


def test_sse_parser_final_event_without_blank_line():
    parser = SSEParser()
    assert parser.feed(b"data: [DONE]") == []
    assert [(e.event, e.data) for e in parser.close()] == [("", "[DONE]")]


# ------------------------------------------------------------------------------------------ <think>


def split_all(chunks: list[str]) -> tuple[str, str]:
    splitter, reasoning, text = ThinkSplitter(), [], []
    for chunk in chunks:
        for is_reasoning, piece in splitter.feed(chunk):
            (reasoning if is_reasoning else text).append(piece)
    for is_reasoning, piece in splitter.close():
        (reasoning if is_reasoning else text).append(piece)
    return "".join(reasoning), "".join(text)


def test_think_tags_split_anywhere():
    full = "<think>\nI should be brief.</think>\n\nA red <b>square</b> < 3."
    for size in range(1, len(full) + 1):
        chunks = [full[i : i + size] for i in range(0, len(full), size)]
        assert split_all(chunks) == ("I should be brief.", "A red <b>square</b> < 3."), size


def test_text_without_tags_and_unclosed_think():
    assert split_all(["Just ", "an answer <"]) == ("", "Just an answer <")
    assert split_all(["<think>never", " closed"]) == ("never closed", "")


# ------------------------------------------------------------------------------------------ happy paths


async def test_rest_streams_reasoning_text_progress_and_stats(lmstudio):
    lmstudio.rest_events = rest_script(load=True)
    events = await collect(request_for(lmstudio, REST, model=MODEL, temperature=0.2, max_tokens=64))
    assert texts(events, ReasoningDelta) == "Let me look."
    assert texts(events, TextDelta) == "A red square."
    stages = [(e.stage, e.fraction) for e in events if isinstance(e, Progress)]
    assert stages[:5] == [("model_load", 0.0), ("model_load", 0.25), ("model_load", 0.5), ("model_load", 0.75),
                          ("model_load", 1.0)]
    assert ("prompt_processing", 1.0) in stages
    stats = finished(events)
    assert stats.summary() == (
        "tokens/s: 51.0 | TTFT: 0.81 s | input tokens: 17 | output tokens: 50 (reasoning 12) | mode: REST API | "
        f"model: {MODEL}"
    )
    (sent,) = lmstudio.chat_requests()
    assert sent.path == "/api/v1/chat"
    assert sent.body == {"model": MODEL, "input": "Describe", "stream": True, "store": False, "temperature": 0.2,
                         "max_output_tokens": 64}


async def test_rest_image_items_and_system_prompt(lmstudio):
    jpeg = b"\xff\xd8\xff\xe0fakejpeg"
    await collect(request_for(lmstudio, REST, model=MODEL, images=(jpeg, jpeg), system_prompt="Be terse."))
    body = lmstudio.chat_requests()[0].body
    assert body["system_prompt"] == "Be terse."
    assert "max_output_tokens" not in body  # -1 means no limit: omitted
    assert body["input"][0] == {"type": "text", "content": "Describe"}
    assert body["input"][1] == {"type": "image", "data_url": "data:image/jpeg;base64,/9j/4GZha2VqcGVn"}
    assert len(body["input"]) == 3


async def test_rest_empty_model_uses_the_loaded_one(lmstudio):
    lmstudio.models = [native_model("other/not-loaded"), native_model("some/embedder", loaded=True, kind="embedding"),
                       native_model("google/gemma-3-4b", loaded=True)]
    await collect(request_for(lmstudio, REST))
    assert lmstudio.chat_requests()[0].body["model"] == "google/gemma-3-4b"


@HTTP_MODES
async def test_nothing_loaded_and_no_model_id(lmstudio, mode):
    lmstudio.models = [native_model("other/not-loaded")]
    with pytest.raises(LMStudioError, match="No model is loaded"):
        await collect(request_for(lmstudio, mode))
    assert lmstudio.chat_requests() == []


async def test_openai_streams_and_measures(lmstudio):
    lmstudio.openai_chunks = openai_script(["A", " red", " square."], reasoning=["Hm", "m."])
    lmstudio.event_delay = 0.01
    events = await collect(request_for(lmstudio, OPENAI, model=MODEL, max_tokens=100, images=(b"jpg",)))
    assert texts(events, ReasoningDelta) == "Hmm."
    assert texts(events, TextDelta) == "A red square."
    stats = finished(events)
    assert stats.input_tokens == 17 and stats.output_tokens == 40 and stats.stop_reason == "stop"
    assert stats.model == MODEL and stats.mode == "OpenAI-compatible"
    assert 0 < stats.time_to_first_token < 2
    assert stats.tokens_per_second and stats.tokens_per_second > 40  # 40 tokens over ~4 x 10 ms
    assert stats.reasoning_tokens is None and "reasoning" not in stats.summary()
    body = lmstudio.chat_requests()[0].body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 100 and body["model"] == MODEL
    assert body["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "Describe"},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,anBn"}}]}]


async def test_openai_reasoning_field_variants(lmstudio):
    lmstudio.openai_chunks = openai_script(["Answer."], reasoning=["gpt-oss ", "thinks"], reasoning_field="reasoning")
    events = await collect(request_for(lmstudio, OPENAI, model=MODEL, system_prompt="sys"))
    assert (texts(events, ReasoningDelta), texts(events, TextDelta)) == ("gpt-oss thinks", "Answer.")
    assert lmstudio.chat_requests()[0].body["messages"][0] == {"role": "system", "content": "sys"}
    assert "max_tokens" not in lmstudio.chat_requests()[0].body


async def test_openai_inline_think_split_across_chunks(lmstudio):
    lmstudio.openai_chunks = openai_script(["<thi", "nk>Plan", " it.</th", "ink>\n\nDo", "ne."])
    events = await collect(request_for(lmstudio, OPENAI, model=MODEL))
    assert (texts(events, ReasoningDelta), texts(events, TextDelta)) == ("Plan it.", "Done.")


async def test_openai_without_usage_says_na_never_invents(lmstudio):
    lmstudio.openai_chunks = openai_script(["Hi"], usage=False)
    stats = finished(await collect(request_for(lmstudio, OPENAI, model=MODEL)))
    assert stats.output_tokens is None and stats.tokens_per_second is None
    assert re.fullmatch(r"tokens/s: n/a \| TTFT: \d+\.\d\d s \| input tokens: n/a \| output tokens: n/a \| stop: stop "
                        rf"\| mode: OpenAI-compatible \| model: {MODEL}", stats.summary())


@HTTP_MODES
@pytest.mark.parametrize("chunk_size", [1, 3, 17])
@pytest.mark.parametrize("line_end", ["\n", "\r\n"])
async def test_frames_split_across_reads_crlf_and_keepalive(lmstudio, mode, chunk_size, line_end):
    lmstudio.chunk_size, lmstudio.line_end, lmstudio.keepalive = chunk_size, line_end, True
    lmstudio.rest_events = rest_script(["Ça ", "pense… 🤔"], ["Réponse ", "✓"])
    lmstudio.openai_chunks = openai_script(["Réponse ", "✓"], reasoning=["Ça ", "pense… 🤔"])
    events = await collect(request_for(lmstudio, mode, model=MODEL))
    assert (texts(events, ReasoningDelta), texts(events, TextDelta)) == ("Ça pense… 🤔", "Réponse ✓")
    finished(events)


@pytest.mark.parametrize(
    "typed", ["{url}", "{url}/", "{url}/v1", "{url}/api/v1/", "{host}"], ids=["plain", "slash", "v1", "api", "noscheme"]
)
async def test_server_url_forms_reach_the_server(lmstudio, typed):
    url = typed.format(url=lmstudio.url, host=lmstudio.url.removeprefix("http://"))
    for mode in (REST, OPENAI):
        finished(await collect(ChatRequest(prompt="x", server_url=url, mode=mode, model=MODEL)))


# ------------------------------------------------------------------------------------------ faults


async def test_rest_error_event_reports_after_chat_end(lmstudio):
    events = rest_script(["r"], ["partial"])
    events.insert(-1, ("error", {"type": "error", "error": {"type": "internal_error",
                                                           "message": "Engine crashed while predicting"}}))
    lmstudio.rest_events = events
    seen = []
    with pytest.raises(LMStudioError, match="LM Studio reported an error: Engine crashed while predicting"):
        async for event in stream_chat(request_for(lmstudio, REST, model=MODEL)):
            seen.append(event)
    assert texts(seen, TextDelta) == "partial"


async def test_rest_validation_error_event_without_chat_end(lmstudio):
    lmstudio.rest_events = [("error", {"type": "error", "error": {"type": "invalid_request",
                                                                  "message": "\"model\" is required"}})]
    with pytest.raises(LMStudioError, match='"model" is required'):
        await collect(request_for(lmstudio, REST, model=MODEL))


async def test_openai_error_chunk(lmstudio):
    lmstudio.openai_chunks = [openai_chunk({"content": "x"}), {"error": {"message": "Model unloaded", "type": "x"}}]
    with pytest.raises(LMStudioError, match="Model unloaded"):
        await collect(request_for(lmstudio, OPENAI, model=MODEL))


@pytest.mark.parametrize(
    ("mode", "status", "body", "match"),
    [
        (REST, 400, {"error": {"message": "Invalid discriminator value. Expected 'text' | 'image'",
                               "type": "invalid_request", "code": "invalid_union", "param": "input"}},
         r"HTTP 400 to http://127\.0\.0\.1:\d+/api/v1/chat: Invalid discriminator value"),
        (REST, 404, {"error": {"message": "Model not found: nope", "type": "model_not_found"}},
         r"Model 'nope' not found in LM Studio: Model not found: nope"),
        (REST, 500, {"error": {"message": "Engine protocol predict request returned 500: boom"}},
         r"HTTP 500 .*Engine protocol predict request returned 500: boom"),
        (OPENAI, 400, {"error": {"message": "Invalid model identifier \"nope\". Please specify a valid downloaded "
                                 "model (e.g., a, b).", "type": "invalid_request_error", "param": "model",
                                 "code": "model_not_found"}},
         r"Model 'nope' not found in LM Studio: Invalid model identifier"),
        (OPENAI, 400, {"error": "No models loaded. Please load a model in the developer page or use the 'lms load' "
                                "command."}, r"HTTP 400 .*No models loaded"),
        (OPENAI, 404, {"error": "Model \"nope\" not found. Please specify a valid model.\n\nYour models: a"},
         r"Model 'nope' not found"),
        (OPENAI, 401, {"error": {"type": "invalid_request", "code": "invalid_api_key",
                                 "message": "An LM Studio API token is required to make requests to this server."}},
         r"requires an API token: An LM Studio API token is required.*LMSTUDIO_API_TOKEN"),
        (REST, 503, "upstream down", r"HTTP 503 .*upstream down"),
    ],
)
async def test_http_errors_carry_the_servers_message(lmstudio, mode, status, body, match):
    lmstudio.http_error = (status, body)
    with pytest.raises(LMStudioError, match=match):
        await collect(request_for(lmstudio, mode, model="nope"))


async def test_unknown_endpoint_quirk_means_old_lm_studio(lmstudio):
    lmstudio.stream_json_error = {"error": "Unexpected endpoint or method. (POST /api/v1/chat). Returning 200 anyway"}
    with pytest.raises(LMStudioError, match=r"needs LM Studio 0\.4\.0 or later"):
        await collect(request_for(lmstudio, REST, model=MODEL))


@HTTP_MODES
async def test_connection_refused_names_the_url(free_port, mode):
    request = ChatRequest(prompt="x", server_url=f"127.0.0.1:{free_port}", mode=mode, model=MODEL)
    with pytest.raises(LMStudioError) as caught:
        await collect(request)
    message = str(caught.value)
    assert message.startswith("LM Studio connection failed. Tried http://127.0.0.1:")
    assert f":{free_port}/" in message and "Start Server" in message


async def test_connection_refused_while_finding_the_loaded_model(free_port):
    with pytest.raises(LMStudioError, match=rf"connection failed\. Tried http://127\.0\.0\.1:{free_port}/api/v1/models"):
        await collect(ChatRequest(prompt="x", server_url=f"http://127.0.0.1:{free_port}", mode=REST))


@HTTP_MODES
async def test_drop_mid_stream(lmstudio, mode):
    lmstudio.drop_after_frames = 8
    lmstudio.rest_events = rest_script([], ["tok"] * 10)
    lmstudio.openai_chunks = openai_script(["tok"] * 10)
    seen = []
    with pytest.raises(LMStudioError, match=r"closed the connection before the answer was complete \(\d+ characters"):
        async for event in stream_chat(request_for(lmstudio, mode, model=MODEL)):
            seen.append(event)
    assert texts(seen, TextDelta).startswith("tok") and not any(isinstance(e, Finished) for e in seen)


@HTTP_MODES
async def test_clean_close_without_final_event_is_a_drop(lmstudio, mode):
    lmstudio.rest_events = lmstudio.rest_events[:-1]
    lmstudio.openai_chunks = lmstudio.openai_chunks[:-1]
    with pytest.raises(LMStudioError, match="closed the connection before the answer was complete"):
        await collect(request_for(lmstudio, mode, model=MODEL))


@HTTP_MODES
async def test_malformed_stream(lmstudio, mode):
    lmstudio.rest_events = [("message.delta", "not json {")]
    lmstudio.openai_chunks = ["not json {"]
    with pytest.raises(LMStudioError, match="malformed stream"):
        await collect(request_for(lmstudio, mode, model=MODEL))


@HTTP_MODES
async def test_slow_first_token_past_the_idle_timeout(lmstudio, mode):
    lmstudio.first_delay = 1.0
    started = time.monotonic()
    with pytest.raises(LMStudioError, match="sent nothing for too long"):
        await collect(request_for(lmstudio, mode, model=MODEL, idle_timeout=0.3))
    assert time.monotonic() - started < 0.9


@HTTP_MODES
async def test_slow_but_steady_stream_is_not_a_timeout(lmstudio, mode):
    lmstudio.event_delay = 0.1  # every gap is below the idle timeout, the whole stream is far above it
    lmstudio.rest_events = rest_script([], ["tok"] * 4)
    lmstudio.openai_chunks = openai_script(["tok"] * 4)
    events = await collect(request_for(lmstudio, mode, model=MODEL, idle_timeout=0.35))
    assert texts(events, TextDelta) == "tok" * 4


@HTTP_MODES
async def test_cancelling_the_consumer_closes_the_stream(lmstudio, mode):
    lmstudio.event_delay = 0.05
    lmstudio.rest_events = rest_script([], ["tok"] * 200)
    lmstudio.openai_chunks = openai_script(["tok"] * 200)
    first = asyncio.Event()

    async def consume():
        async for event in stream_chat(request_for(lmstudio, mode, model=MODEL)):
            if isinstance(event, TextDelta):
                first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(lmstudio.disconnected.wait(), 1)  # the server saw the client leave


async def test_api_token_is_sent_as_bearer(lmstudio):
    await collect(request_for(lmstudio, REST, api_token="sk-lm-abcdefgh:abcdefghijklmnopqrst"))
    for recorded in lmstudio.requests:
        assert recorded.headers["Authorization"] == "Bearer sk-lm-abcdefgh:abcdefghijklmnopqrst"
    assert "abcdefgh" not in repr(request_for(lmstudio, REST, api_token="sk-lm-abcdefgh:x"))
    assert request_for(lmstudio, REST, api_token="sk-lm-abcdefgh:x").describe()["api_token"] == "set"


# ------------------------------------------------------------------------------------ what answered


async def test_messages_name_a_server_that_is_not_lm_studio(fake, aiohttp_server):

    fake.lmstudio = False  # an OpenAI-compatible server that is not LM Studio
    fake.http_error = (500, {"error": {"message": "boom"}})
    server = await aiohttp_server(fake.app())
    url = f"http://127.0.0.1:{server.port}"
    expected = rf"^The server at {url} answered HTTP 500 to {url}/v1/chat/completions: boom"
    with pytest.raises(LMStudioError, match=expected):
        await collect(ChatRequest(prompt="Hi", server_url=url, mode=OPENAI, model="m"))
    with pytest.raises(LMStudioError, match=r"has no endpoint .*/api/v1/chat.*needs LM Studio 0\.4\.0 or later"):
        await collect(ChatRequest(prompt="Hi", server_url=url, mode=REST, model="m"))


async def test_pointing_at_a_web_app_says_it_is_not_an_llm_server(aiohttp_server):
    from aiohttp import web

    async def page(_: web.Request) -> web.Response:
        return web.Response(text="<!DOCTYPE html><html><body>ComfyUI</body></html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)  # like ComfyUI itself: a page, no chat endpoint
    server = await aiohttp_server(app)
    url = f"http://127.0.0.1:{server.port}"
    with pytest.raises(LMStudioError) as caught:
        await collect(ChatRequest(prompt="Hi", server_url=url, mode=OPENAI, model="m"))
    message = str(caught.value)
    assert message.startswith(f"The server at {url}/v1/chat/completions is not an LLM server")
    assert "Check server_url" in message and "LM Studio" not in message.split(":")[0]


async def test_lm_studio_keeps_its_name(lmstudio):
    lmstudio.http_error = (500, {"error": {"message": "boom"}})
    with pytest.raises(LMStudioError, match=r"^LM Studio answered HTTP 500"):
        await collect(ChatRequest(prompt="Hi", server_url=lmstudio.url, mode=OPENAI, model="m"))


async def test_vision_check_for_servers_that_are_not_lm_studio(fake, aiohttp_server):
    """What llama.cpp's llama-server says of a text-only model: `/v1/models` `architecture.input_modalities`."""
    fake.lmstudio = False
    fake.models = [native_model("smol")]
    fake.input_modalities = ["text"]
    server = await aiohttp_server(fake.app())
    url = f"http://127.0.0.1:{server.port}"
    with pytest.raises(LMStudioError, match=rf"Model 'smol' cannot see images: The server at {url} reports"):
        await collect(ChatRequest(prompt="Hi", server_url=url, mode=OPENAI, model="smol", images=(b"jpeg",)))
    assert not fake.chat_requests()  # refused before anything was sent


async def test_an_image_refusal_from_the_server_becomes_the_vision_message(fake, aiohttp_server):
    """A server that says nothing about vision: the image is sent, and its refusal mapped."""
    fake.lmstudio = False
    fake.http_error = (500, {"error": {"code": 500, "message": "image input is not supported - hint: if this is "
                                       "unexpected, you may need to provide the mmproj", "type": "server_error"}})
    server = await aiohttp_server(fake.app())
    url = f"http://127.0.0.1:{server.port}"
    with pytest.raises(LMStudioError, match=r"Model 'qwen/qwen3-vl-4b' cannot see images"):
        await collect(ChatRequest(prompt="Hi", server_url=url, mode=OPENAI, model=MODEL, images=(b"jpeg",)))
    assert len(fake.chat_requests()) == 1
