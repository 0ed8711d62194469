"""Prompt presets: built-in ones and the user's own file, re-read when it changes; a preset fills only what the node
leaves empty; a saved workflow whose preset is gone runs with its own prompts and says so."""

from __future__ import annotations

import json
import os

import pytest

from chat_node_helpers import events, node, run
from lmstudio_pack.node import LMStudioStreamChat
from lmstudio_pack.node_parts import presets, user_presets_file
from lmstudio_pack.presets import BUILT_IN, NO_PRESET, catalogue, resolve

DETAILED = next(p for p in BUILT_IN if p.name == "Detailed caption")
PARTS = next(p for p in BUILT_IN if p.json_schema)


def write_presets(data, *, mtime_step: int = 0) -> None:
    path = user_presets_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    if mtime_step:  # a later edit within the file system's clock tick still counts as a change
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + mtime_step))


def notices() -> list[str]:
    return [content for kind, content in events() if kind == "notice"]


def chat_body(fake) -> dict:
    return fake.chat_requests()[-1].body


def test_the_built_in_presets_are_there_without_a_file_of_ones_own():
    found = presets()
    assert found.names()[0] == NO_PRESET
    assert {"Short caption", "Detailed caption", "Booru-style tags", "SDXL prompt", "Flux prompt", "Video prompt",
            "Image to prompt parts (JSON)"} <= set(found.presets)
    assert found.problem == ""
    assert all(json.loads(p.json_schema)["type"] == "object" for p in BUILT_IN if p.json_schema)


def test_the_users_file_adds_and_replaces_and_is_read_again_when_it_changes():
    write_presets({"Mine": {"system_prompt": "Be brief.", "json_schema": {"type": "object"}},
                   "Short caption": {"system_prompt": "My own short one.", "prompt": "Go."}})
    found = presets()
    assert found.presets["Mine"].system_prompt == "Be brief." and json.loads(found.presets["Mine"].json_schema) == {
        "type": "object"}
    assert found.presets["Short caption"].prompt == "Go." and found.presets["Short caption"].source.endswith(
        "lmstudio-presets.json")
    write_presets({"Mine": {"system_prompt": "Be briefer."}}, mtime_step=1_000_000)
    assert presets().presets["Mine"].system_prompt == "Be briefer."
    assert presets().presets["Short caption"] == next(p for p in BUILT_IN if p.name == "Short caption")


@pytest.mark.parametrize("text, why", [
    ("{not json", "Expecting property name"),
    ("[1, 2]", "must be a JSON object"),
    (json.dumps({"x": "just text"}), "preset 'x' must be an object"),
    (json.dumps({"none": {"system_prompt": "x"}}), "'none' is not a preset's name"),
])
def test_a_broken_file_leaves_the_built_in_presets_and_says_why(text, why):
    write_presets(text)
    found = catalogue(user_presets_file())
    assert set(found.presets) == {p.name for p in BUILT_IN}
    assert why in found.problem and str(user_presets_file()) in found.problem


def test_a_preset_fills_only_what_the_node_leaves_empty():
    found = presets()
    filled = resolve("Detailed caption", found, prompt="", system_prompt="  ", json_schema="")
    assert (filled.prompt, filled.system_prompt, filled.notice) == (DETAILED.prompt, DETAILED.system_prompt, "")
    own = resolve("Detailed caption", found, prompt="Mine?", system_prompt="My rules.", json_schema="")
    assert (own.prompt, own.system_prompt) == ("Mine?", "My rules.")
    assert resolve(NO_PRESET, found, prompt="", system_prompt="", json_schema="").system_prompt == ""


async def test_the_chat_node_sends_the_presets_texts_where_its_own_are_empty(lmstudio, comfy):
    await run(lmstudio.url, "REST API", prompt="", preset="Detailed caption")
    body = chat_body(lmstudio)
    assert body["system_prompt"] == DETAILED.system_prompt and body["input"] == DETAILED.prompt
    await run(lmstudio.url, "REST API", prompt="Only this.", system_prompt="Mine.", preset="Detailed caption")
    assert (chat_body(lmstudio)["system_prompt"], chat_body(lmstudio)["input"]) == ("Mine.", "Only this.")


async def test_a_presets_schema_is_sent_where_the_mode_checks_it_and_named_where_it_cannot(lmstudio, comfy):
    lmstudio.answers[PARTS.prompt] = json.dumps({k: "x" for k in json.loads(PARTS.json_schema)["required"]})
    text, _, _ = (await run(lmstudio.url, "OpenAI-compatible", prompt="", preset=PARTS.name)).args[:3]
    assert chat_body(lmstudio)["response_format"]["json_schema"]["schema"] == json.loads(PARTS.json_schema)
    assert json.loads(text)["positive"] == "x"
    text, _, _ = (await run(lmstudio.url, "REST API", prompt="", preset=PARTS.name)).args[:3]
    assert not text.startswith("Error")  # not a failure: the answer is just not checked
    assert chat_body(lmstudio)["system_prompt"].endswith(f"follows this JSON Schema:\n{PARTS.json_schema}")
    assert any("cannot enforce" in n and PARTS.name in n for n in notices())


async def test_a_saved_workflow_whose_preset_is_gone_runs_with_its_own_prompts_and_says_so(lmstudio, comfy):
    assert LMStudioStreamChat.validate_inputs(preset="Removed long ago") is True  # ComfyUI does not refuse the prompt
    text, _, _ = (await run(lmstudio.url, "REST API", system_prompt="Mine.", preset="Removed long ago")).args[:3]
    assert not text.startswith("Error") and chat_body(lmstudio)["system_prompt"] == "Mine."
    assert any("Preset 'Removed long ago' no longer exists" in n for n in notices())


def test_a_preset_whose_text_changed_runs_again_instead_of_the_cached_answer():
    write_presets({"Mine": {"system_prompt": "One."}})
    before = node().fingerprint_inputs(preset="Mine", prompt="x")
    assert node().fingerprint_inputs(preset="Mine", prompt="x") == before
    write_presets({"Mine": {"system_prompt": "Two."}}, mtime_step=1_000_000)
    assert node().fingerprint_inputs(preset="Mine", prompt="x") != before
    assert node().fingerprint_inputs(prompt="x") == node().fingerprint_inputs(preset=NO_PRESET)
