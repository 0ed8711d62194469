"""The real-server tier: llama.cpp's `llama-server` (the engine LM Studio runs GGUF models with) and a tiny chat
model, in OpenAI-compatible mode. Runs when LLAMA_SERVER_BIN and LLAMA_MODEL are set (tests/real_server/setup.sh
prints them); the server starts on a free loopback port with 4 slots and stops afterwards."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from chat_node_helpers import events, run, run_list
from lmstudio_pack.chat import ChatRequest, ConnectionMode, Finished, LMStudioError, TextDelta
from lmstudio_pack.client import list_models, stream_chat

BIN, MODEL_FILE = os.environ.get("LLAMA_SERVER_BIN"), os.environ.get("LLAMA_MODEL")
if not (BIN and MODEL_FILE):
    pytest.skip("the real-server tier needs LLAMA_SERVER_BIN and LLAMA_MODEL (eval \"$(tests/real_server/setup.sh)\")",
                allow_module_level=True)

ALIAS = "smollm2-135m-instruct"
SLOTS = 4
OPENAI = ConnectionMode.OPENAI
ROOT = Path(__file__).resolve().parent.parent


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server_url():
    yield from llama_server("-np", str(SLOTS), "--metrics")


@pytest.fixture(scope="module")
def draft_server_url():
    """llama-server with speculative decoding: the tiny model drafts for itself (it takes no per-request draft)."""
    yield from llama_server("-np", "1", "-md", str(MODEL_FILE), "--spec-type", "draft-simple")


def llama_server(*options: str):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [BIN, "-m", MODEL_FILE, "--alias", ALIAS, "--host", "127.0.0.1", "--port", str(port), "-c", "4096",
         "-t", "1", "--no-webui", *options],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if get_json(f"{url}/health") == {"status": "ok"}:
                break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            tail = process.stderr.read().decode(errors="replace")[-2000:] if process.stderr else ""
            pytest.fail(f"llama-server did not start (exit {process.returncode}): {tail}")
        time.sleep(0.1)
    yield url
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()


def busy_slots(url: str) -> int:
    return sum(1 for slot in get_json(f"{url}/slots") if slot.get("is_processing"))


def prompt_tokens_total(url: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        return float(re.search(r"^llamacpp:prompt_tokens_total (\S+)$", response.read().decode(), re.M).group(1))


def request(url: str, **kwargs) -> ChatRequest:
    return ChatRequest(prompt=kwargs.pop("prompt", "Name three colours."), server_url=url, mode=OPENAI,
                       model=kwargs.pop("model", ALIAS), temperature=kwargs.pop("temperature", 0.2), **kwargs)


async def test_streams_a_short_answer_with_the_servers_usage(server_url):
    arrivals = []
    async for event in stream_chat(request(server_url, max_tokens=48)):
        arrivals.append((time.monotonic(), event))
    deltas = [(t, e.text) for t, e in arrivals if isinstance(e, TextDelta)]
    assert len(deltas) >= 3 and deltas[-1][0] > deltas[0][0]  # token by token, over time
    stats = arrivals[-1][1].stats
    assert isinstance(arrivals[-1][1], Finished)
    assert "".join(text for _, text in deltas).strip()
    assert stats.input_tokens and stats.input_tokens > 5 and stats.output_tokens and stats.output_tokens > 0
    assert stats.tokens_per_second and stats.tokens_per_second > 0 and stats.time_to_first_token is not None
    assert stats.model == ALIAS and stats.stop_reason in ("stop", "length")


async def test_max_tokens_is_honoured(server_url):
    events_ = [e async for e in stream_chat(request(server_url, prompt="Write a long story.", max_tokens=5))]
    stats = events_[-1].stats
    assert stats.output_tokens <= 5 and stats.stop_reason == "length"


async def test_cancel_mid_stream_stops_the_servers_generation(server_url):
    stream = stream_chat(request(server_url, prompt="Count from 1 to 500, one number a line.", max_tokens=800))
    seen = 0
    async for event in stream:
        seen += isinstance(event, TextDelta)
        if seen == 3:
            break
    assert busy_slots(server_url) >= 1
    await stream.aclose()  # what the node does on Cancel
    started = time.monotonic()
    while busy_slots(server_url) and time.monotonic() - started < 2:
        await asyncio.sleep(0.05)
    print(f"\nreal server: slots idle {(time.monotonic() - started) * 1000:.0f} ms after the stream was closed")
    assert busy_slots(server_url) == 0


async def test_the_model_list(server_url):
    models = await list_models(server_url)
    assert [m.key for m in models] == [ALIAS]
    assert models[0].vision is False  # from `architecture.input_modalities`


async def test_an_image_to_a_text_only_model_is_refused_before_anything_is_sent(server_url):
    before = prompt_tokens_total(server_url)
    with pytest.raises(LMStudioError) as caught:
        [e async for e in stream_chat(request(server_url, images=(b"not sent",)))]
    assert str(caught.value).startswith(f"Model '{ALIAS}' cannot see images: The server at {server_url} reports")
    assert "LM Studio reports" not in str(caught.value)
    assert prompt_tokens_total(server_url) == before


async def test_the_node_gives_the_same_outputs_and_events_as_against_the_stand_in(server_url, lmstudio, comfy):
    from fake_lmstudio import openai_script

    def shape() -> list[str]:
        kinds = [kind for kind, _ in events()]
        return [k for i, k in enumerate(kinds) if i == 0 or k != kinds[i - 1]]  # runs collapsed

    real = await run(server_url, "OpenAI-compatible", model_id=ALIAS, max_tokens=32, temperature=0.2)
    real_shape, real_events = shape(), events()
    comfy.messages.clear()
    lmstudio.openai_chunks = openai_script(["A red", " square."])
    stand_in = await run(lmstudio.url, "OpenAI-compatible", model_id=ALIAS)
    assert real_shape == shape() == ["clear", "text", "stats", "done"]
    text = real.args[0]
    assert text and text == "".join(c for k, c in real_events if k == "text")
    assert len(real.args) == len(stand_in.args) == 9
    assert f"mode: OpenAI-compatible | model: {ALIAS}" in real.args[2]
    assert real.args[3] > 0 and real.args[5] > 0 and real.args[6] > 0  # tokens/s, input and output tokens
    assert real.ui["lmstudio"][0]["text"] == text


async def test_a_list_respects_the_servers_slots(server_url, comfy):
    peak = 0
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, await asyncio.to_thread(busy_slots, server_url))
            await asyncio.sleep(0.02)

    watcher = asyncio.create_task(watch())
    try:
        outputs, ui, _ = await run_list(server_url, "OpenAI-compatible", count=8, model_id=ALIAS, max_tokens=24)
    finally:
        done.set()
        await watcher
    assert len(outputs[0]) == 8 and not [t for t in outputs[0] if t.startswith("Error")]
    assert [e["index"] for e in ui["lmstudio"]] == list(range(8))
    assert 1 <= peak <= SLOTS
    assert ("status", "Queued: 4 at a time (the loaded model's parallel slots)") in events()


def test_the_terminal_command(server_url):
    result = subprocess.run([sys.executable, str(ROOT / "cli.py"), "Say hello.", "--mode", "openai", "--server",
                             server_url, "--model", ALIAS, "--max-tokens", "16"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "mode: OpenAI-compatible" in result.stdout and f"model: {ALIAS}" in result.stdout
    listing = subprocess.run([sys.executable, str(ROOT / "cli.py"), "--list-models", "--server", server_url],
                             capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0 and listing.stdout.strip() == ALIAS


# ------------------------------------------------------------------------------------------ every setting, for real


async def answer(url: str, **kwargs) -> tuple[str, object]:
    events_ = [e async for e in stream_chat(request(url, **kwargs))]
    return "".join(e.text for e in events_ if isinstance(e, TextDelta)), events_[-1].stats


COUNT = "Count from one to twenty in words, separated by commas."


async def test_a_stop_string_ends_the_answer_before_it(server_url):
    full, _ = await answer(server_url, prompt=COUNT, temperature=0.0, max_tokens=60)
    words = [w.strip(" .") for w in full.split(",")]
    stop = words[len(words) // 2]  # a word the model writes midway
    assert len(stop) >= 3, full
    cut, stats = await answer(server_url, prompt=COUNT, temperature=0.0, max_tokens=60, stop=(stop,))
    assert stop not in cut and full.startswith(cut) and len(cut) < full.index(stop) + 1, (full, cut)
    assert stats.stop_reason == "stop"


async def test_sampling_names_reach_llama_server(server_url):
    """top_k 1 is greedy whatever the temperature and seed: proof that the name arrives; without it, seeds differ."""
    varied = {(await answer(server_url, prompt=COUNT, temperature=1.5, seed=seed, max_tokens=24))[0]
              for seed in (1, 2, 3)}
    assert len(varied) > 1
    greedy = {(await answer(server_url, prompt=COUNT, temperature=1.5, seed=seed, max_tokens=24, top_k=1,
                            top_p=0.95, min_p=0.05, repeat_penalty=1.0))[0] for seed in (1, 2, 3)}
    assert len(greedy) == 1


async def test_a_prompt_too_long_for_the_context(server_url):
    """4096 tokens over 4 slots: 1024 a slot. llama-server refuses with its own words; the node says what to do."""
    with pytest.raises(LMStudioError) as caught:
        await answer(server_url, prompt="colour " * 3000)
    message = str(caught.value)
    assert message.startswith("The prompt is too long for the model's context: The server at")
    assert "exceeds the available context size" in message and "context_length" in message


async def test_the_accepted_draft_tokens_in_the_statistics(draft_server_url, comfy):
    summary = (await run(draft_server_url, "OpenAI-compatible", model_id=ALIAS, prompt=COUNT, temperature=0.0,
                         max_tokens=40, draft_model=ALIAS)).args[2]
    accepted = re.search(r"draft accepted: (\d+) of (\d+)", summary)
    assert accepted and 0 < int(accepted.group(1)) <= int(accepted.group(2)), summary


# ------------------------------------------------------------------------------------------ structured output, chats


COLOUR = {"type": "object", "properties": {"colour": {"type": "string", "enum": ["red", "green", "blue"]},
                                           "count": {"type": "integer", "minimum": 1, "maximum": 9}},
          "required": ["colour", "count"], "additionalProperties": False}


async def test_a_json_schema_makes_llama_server_answer_that_json(server_url):
    """llama-server turns `response_format`'s schema into a grammar: the tiny model can only write matching JSON,
    and the client's own check passes it."""
    text, stats = await answer(server_url, prompt="Pick a colour and a number.", temperature=0.8, max_tokens=60,
                               json_schema=COLOUR)
    document = json.loads(text)
    assert document["colour"] in ("red", "green", "blue") and 1 <= document["count"] <= 9, text
    assert stats.stop_reason == "stop"


async def test_a_second_turn_carries_the_first(server_url):
    """The whole chat goes to the server: turn 2's prompt holds turn 1's question and answer (usage proves it,
    whatever the tiny model makes of them)."""
    from lmstudio_pack.conversation import Turn

    first, one = await answer(server_url, prompt="My name is Zorblax. Say hello to me.", max_tokens=24,
                              temperature=0.0)
    _, alone = await answer(server_url, prompt="What is my name?", max_tokens=8, temperature=0.0)
    _, two = await answer(server_url, prompt="What is my name?", max_tokens=8, temperature=0.0,
                          history=(Turn("My name is Zorblax. Say hello to me.", (), first),))
    # The earlier answer and, beyond it, the earlier question are in turn 2's prompt.
    assert two.input_tokens >= alone.input_tokens + one.output_tokens + 5, (one, alone, two)


async def test_the_node_chains_turns_against_llama_server(server_url, comfy):
    from chat_node_helpers import inputs, node

    first = (await node().execute(**inputs(server_url, "OpenAI-compatible", model_id=ALIAS, max_tokens=16,
                                           prompt="Name a fruit."))).args
    second = (await node().execute(**inputs(server_url, "OpenAI-compatible", model_id=ALIAS, max_tokens=16,
                                            prompt="And its colour?", conversation=first[8]))).args
    assert [t.prompt for t in second[8].turns] == ["Name a fruit.", "And its colour?"]
    assert second[8].turns[0].answer == first[0] and second[5] > first[5]  # input tokens: the chat so far


@pytest.fixture(scope="module")
def two_servers_behind_litellm():
    """Two llama-servers of 2 slots each behind LiteLLM's real proxy (the router tier's), as in the README's recipe."""
    from router_proxy import LiteLLMProxy, litellm_binary

    binary = litellm_binary()
    servers = [llama_server("-np", "2", "--metrics") for _ in range(2)]
    urls = [next(server) for server in servers]
    proxy = LiteLLMProxy(binary, urls, parallel=2, model=ALIAS).start()
    yield proxy, urls
    proxy.stop()
    for server in servers:
        next(server, None)  # stops it


async def test_a_list_through_litellm_in_front_of_two_llama_servers(two_servers_behind_litellm, comfy, monkeypatch):
    """Real servers, a real router, nothing set on the node: every item answered, both servers used."""
    from router_proxy import MASTER_KEY, MODEL_NAME

    proxy, urls = two_servers_behind_litellm
    monkeypatch.setenv("LMSTUDIO_API_TOKEN", MASTER_KEY)
    prompts = [f"Say the number {i}." for i in range(12)]
    outputs, ui, _ = await run_list(proxy.url, "OpenAI-compatible", model_id=MODEL_NAME, count=12, max_tokens=16,
                                    temperature=0.0, per_item={"prompt": prompts})
    assert len(outputs[0]) == 12 and all(text.strip() for text in outputs[0]), outputs[0]
    assert not [entry for entry in ui["lmstudio"] if "error" in entry]
    assert outputs[2][-1].split("\n")[1].startswith("list: 12 of 12 done")
    assert all(prompt_tokens_total(url) > 0 for url in urls)  # the proxy spread the list over both servers


# ------------------------------------------------------------------------------------------ thinking on or off
# A chat template that, like Qwen3's, closes the thinking block before the answer when `enable_thinking` is false,
# and shows the `reasoning_effort` it was given: what llama-server renders shows what it understood.
THINKING_TEMPLATE = """{%- for message in messages -%}
<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endfor -%}
{%- if add_generation_prompt -%}
<|im_start|>assistant
{%- if reasoning_effort is defined %} [effort {{ reasoning_effort }}]{% endif %}
{%- if enable_thinking is defined and enable_thinking is false %}
<think>

</think>
{%- endif %}
{% endif -%}"""


@pytest.fixture(scope="module")
def thinking_server_url(tmp_path_factory):
    template = tmp_path_factory.mktemp("template") / "thinking.jinja"
    template.write_text(THINKING_TEMPLATE)
    yield from llama_server("-np", "1", "--jinja", "--chat-template-file", str(template))


def rendered_prompt(url: str, payload: dict) -> str:
    """The prompt llama-server builds from a chat request (its `/apply-template` parses it as a completion would)."""
    data = json.dumps(payload).encode()
    post = urllib.request.Request(f"{url}/apply-template", data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(post, timeout=10) as response:
        return json.loads(response.read())["prompt"]


@pytest.mark.parametrize("level, closed, effort", [("off", True, None), ("auto", False, None), ("on", False, None),
                                                    ("low", False, "low"), ("high", False, "high")])
async def test_llama_server_reads_the_reasoning_setting_as_the_pack_sends_it(thinking_server_url, level, closed,
                                                                             effort):
    from lmstudio_pack.openai_backend import openai_payload

    prompt = rendered_prompt(thinking_server_url, openai_payload(request(thinking_server_url, reasoning=level), ALIAS))
    assert ("<think>\n\n</think>" in prompt) == closed, prompt
    assert (f"[effort {effort}]" in prompt) if effort else "[effort" not in prompt, prompt


async def test_thinking_off_runs_on_llama_server_through_the_node(thinking_server_url, comfy):
    # llama-server takes the request whole (a field it refused would be an HTTP 400). What the tiny model writes
    # after a closed thinking block is its own affair (often nothing): the answer's text is not asserted.
    text, reasoning, stats = (await run(thinking_server_url, "OpenAI-compatible", model_id=ALIAS, max_tokens=24,
                                        reasoning="off")).args[:3]
    assert not text.startswith("Error") and reasoning == "" and "stop: " in stats and "mode: OpenAI-compatible" in stats
    assert not [c for k, c in events() if k in ("notice", "error")]  # nothing named unsent: the mode carries it
