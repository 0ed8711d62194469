"""Thinking on or off in every mode that can carry it, and a model that spends all of max_tokens thinking: a clear
error that says what to change, never an empty answer (a list would save it as a caption)."""

from __future__ import annotations

import pytest

from chat_node_helpers import events, run, run_list
from fake_lmstudio import THOUGHT_ANSWER
from lmstudio_pack.chat import ChatRequest, ConnectionMode, Stats, no_answer, unsent_settings
from lmstudio_pack.openai_backend import openai_payload, openai_reasoning

MODES = ["SDK", "REST API", "OpenAI-compatible"]
ANSWER = "".join(THOUGHT_ANSWER)


def notices() -> list[str]:
    return [content for kind, content in events() if kind == "notice"]


@pytest.mark.parametrize("level, fields", [
    ("auto", {}),
    ("off", {"reasoning_effort": "none", "chat_template_kwargs": {"enable_thinking": False}}),
    ("low", {"reasoning_effort": "low", "chat_template_kwargs": {"enable_thinking": True}}),
    ("high", {"reasoning_effort": "high", "chat_template_kwargs": {"enable_thinking": True}}),
    ("on", {"chat_template_kwargs": {"enable_thinking": True}}),
])
def test_openai_compatible_carries_reasoning_in_the_fields_servers_honour(level, fields):
    assert openai_reasoning(level) == fields
    payload = openai_payload(ChatRequest(prompt="x", mode=ConnectionMode.OPENAI, reasoning=level), "m")
    assert {k: payload[k] for k in ("reasoning_effort", "chat_template_kwargs") if k in payload} == fields


def test_only_the_sdk_cannot_carry_reasoning_and_says_which_modes_can():
    for mode in (ConnectionMode.REST, ConnectionMode.OPENAI):
        assert unsent_settings(ChatRequest(prompt="x", mode=mode, reasoning="off")) == []
    assert unsent_settings(ChatRequest(prompt="x", mode=ConnectionMode.SDK, reasoning="off")) == [
        "reasoning is not supported by the SDK mode, so not sent; use REST API or OpenAI-compatible."]


@pytest.mark.parametrize("mode", ["REST API", "OpenAI-compatible"])
async def test_thinking_off_gives_the_answer_without_reasoning(lmstudio, comfy, mode):
    lmstudio.thinker = 40
    text, reasoning, _ = (await run(lmstudio.url, mode, reasoning="off")).args[:3]
    assert (text, reasoning) == (ANSWER, "")
    text, reasoning, _ = (await run(lmstudio.url, mode, seed=1)).args[:3]  # auto: the model's default, thinking
    assert text == ANSWER and reasoning.count("thought") == 40
    assert notices() == []


async def test_the_sdk_names_reasoning_unsent_and_the_model_thinks_as_it_would(lmstudio, comfy):
    lmstudio.thinker = 5
    text, reasoning, _ = (await run(lmstudio.url, "SDK", reasoning="off")).args[:3]
    assert text == ANSWER and reasoning.count("thought") == 5
    assert any("reasoning is not supported by the SDK mode" in n for n in notices())


@pytest.mark.parametrize("mode", MODES)
async def test_max_tokens_spent_thinking_is_an_error_that_says_what_to_change(lmstudio, comfy, mode):
    lmstudio.thinker = 40
    text, reasoning, stats = (await run(lmstudio.url, mode, max_tokens=16)).args[:3]
    assert text.startswith("Error: The model spent all of max_tokens (16) on reasoning and wrote no answer")
    assert "Raise max_tokens" in text and "turn reasoning off" in text
    assert reasoning.count("thought") == 16  # what it thought stays readable
    assert stats.startswith("error")
    assert any(kind == "error" and "max_tokens (16)" in content for kind, content in events())


@pytest.mark.parametrize("mode", ["REST API", "OpenAI-compatible"])
async def test_a_list_never_saves_an_empty_caption_for_an_answer_spent_thinking(lmstudio, comfy, mode):
    lmstudio.thinker = 40
    outputs, ui, _ = await run_list(lmstudio.url, mode, count=3, max_tokens=16)
    assert outputs[0] == ["", "", ""]  # the list's failed items, as every failed item of a list
    assert all("max_tokens (16)" in entry["error"] for entry in ui["lmstudio"])
    outputs, _, _ = await run_list(lmstudio.url, mode, count=3, max_tokens=16, reasoning="off")
    assert outputs[0] == [ANSWER] * 3


def test_no_answer_tells_a_limit_from_a_model_that_just_stopped():
    assert no_answer("A caption.", True, Stats("x", stop_reason="length"), 10) is None
    assert no_answer("", False, Stats("x"), 10) is None  # nothing at all is not this error's to explain
    assert "spent all of max_tokens (10)" in str(no_answer(" ", True, Stats("x", stop_reason="length"), 10))
    assert "spent all" in str(no_answer("", True, Stats("x", output_tokens=10), 10))  # REST: no stop reason
    stopped = str(no_answer("", True, Stats("x", stop_reason="stop", output_tokens=3), 10))
    assert "reasoned but wrote no answer" in stopped and "spent" not in stopped
