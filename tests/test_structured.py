"""Structured output: a JSON Schema refused before anything is sent when it is not one, sent under each mode's own
name, every answer checked against it; and LM Studio JSON Field reading one field of the answer."""

from __future__ import annotations

import json

import pytest

from chat_node_helpers import events, run, run_list
from fake_lmstudio import openai_script, sdk_fragment, stack_fields
from lmstudio_pack.chat import LMStudioError
from lmstudio_pack.json_field_node import LMStudioJSONField
from lmstudio_pack.structured import check_answer, parse_schema, read_field

PROMPT_PARTS = {"type": "object", "properties": {"positive": {"type": "string"}, "negative": {"type": "string"},
                                                 "style": {"type": "string"}},
                "required": ["positive", "negative", "style"], "additionalProperties": False}
SCHEMA = json.dumps(PROMPT_PARTS)
ANSWER = {"positive": "a red fox in snow", "negative": "blurry", "style": "watercolour"}


def answer_in(fake, document: str, mode: str) -> None:
    """The stand-in answers `document`, cut in pieces as a stream would be."""
    pieces = [document[i:i + 7] for i in range(0, len(document), 7)]
    if mode == "SDK":
        fake.sdk.fragments = [sdk_fragment(piece) for piece in pieces]
    else:
        fake.openai_chunks = openai_script(pieces)


# ------------------------------------------------------------------------------------------ the schema


def test_a_json_schema_is_checked_before_use():
    assert parse_schema("") is None and parse_schema("  \n") is None
    assert parse_schema(SCHEMA) == PROMPT_PARTS
    for text, reason in [("{type: object}", "json_schema is not JSON"), ("[1, 2]", "must be a JSON object"),
                         ('{"type": "strng"}', "not a valid JSON Schema: 'strng' is not valid"),
                         ('{"properties": {"a": {"type": 7}}}', "not a valid JSON Schema"),
                         ('{"name": "x", "strict": true, "schema": {"type": "object"}}', "paste the JSON Schema")]:
        with pytest.raises(LMStudioError, match=reason):
            parse_schema(text)


def test_an_answer_is_checked_against_the_schema():
    check_answer(json.dumps(ANSWER), PROMPT_PARTS)
    with pytest.raises(LMStudioError, match=r"not JSON \(it ends early: raise max_tokens\)"):
        check_answer('{"positive": "a red', PROMPT_PARTS)
    with pytest.raises(LMStudioError, match="The answer is not JSON"):
        check_answer("Here is your JSON: {}", PROMPT_PARTS)
    with pytest.raises(LMStudioError, match=r"does not match json_schema: 'style' is a required property \(at the "
                                            r"top\)"):
        check_answer('{"positive": "a", "negative": "b"}', PROMPT_PARTS)
    with pytest.raises(LMStudioError, match=r"3 is not of type 'string' \(at negative\)"):
        check_answer('{"positive": "a", "negative": 3, "style": "c"}', PROMPT_PARTS)


# ------------------------------------------------------------------------------------------ each mode


async def test_sdk_sends_the_schema_as_structured_and_answers_the_document(lmstudio, comfy):
    answer_in(lmstudio, json.dumps(ANSWER), "SDK")
    text = (await run(lmstudio.url, "SDK", json_schema=SCHEMA)).args[0]
    assert json.loads(text) == ANSWER
    (create,) = lmstudio.sdk.sent("channelCreate", "predict")
    fields = stack_fields(create["creationParameter"]["predictionConfigStack"])
    assert fields["llm.prediction.structured"] == {"type": "json", "jsonSchema": PROMPT_PARTS}


async def test_openai_sends_the_schema_as_response_format(lmstudio, comfy):
    answer_in(lmstudio, json.dumps(ANSWER), "OpenAI-compatible")
    text = (await run(lmstudio.url, "OpenAI-compatible", json_schema=SCHEMA)).args[0]
    assert json.loads(text) == ANSWER
    body = lmstudio.chat_requests()[-1].body
    assert body["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "answer", "strict": True, "schema": PROMPT_PARTS}}


async def test_rest_refuses_a_schema_before_anything_is_sent(lmstudio, comfy):
    text = (await run(lmstudio.url, "REST API", json_schema=SCHEMA)).args[0]
    assert text.startswith("Error: json_schema needs the SDK or OpenAI-compatible mode: LM Studio's native REST API")
    assert lmstudio.requests == []


async def test_a_schema_that_is_not_one_is_refused_before_anything_is_sent(lmstudio, comfy):
    text = (await run(lmstudio.url, "OpenAI-compatible", json_schema='{"type": "strng"}')).args[0]
    assert text.startswith("Error: json_schema is not a valid JSON Schema")
    assert lmstudio.requests == []


@pytest.mark.parametrize("mode", ["SDK", "OpenAI-compatible"])
async def test_an_answer_that_does_not_match_fails_under_on_error(lmstudio, comfy, mode):
    answer_in(lmstudio, '{"positive": "a fox"}', mode)
    text = (await run(lmstudio.url, mode, json_schema=SCHEMA)).args[0]
    assert text == "Error: The answer does not match json_schema: 'negative' is a required property (at the top)."
    assert ("error", text.removeprefix("Error: ")) in events()
    with pytest.raises(RuntimeError, match="does not match json_schema"):
        await run(lmstudio.url, mode, json_schema=SCHEMA, on_error="raise")


async def test_no_schema_means_a_free_answer(lmstudio, comfy):
    await run(lmstudio.url, "OpenAI-compatible")
    assert "response_format" not in lmstudio.chat_requests()[-1].body


async def test_every_item_of_a_list_is_checked(lmstudio, comfy):
    lmstudio.answers = {"p0": json.dumps(ANSWER), "p1": "not json", "p2": '{"positive": "only"}'}
    outputs, ui, _ = await run_list(lmstudio.url, "OpenAI-compatible", count=3,
                                    per_item={"prompt": ["p0", "p1", "p2"]}, json_schema=SCHEMA)
    assert json.loads(outputs[0][0]) == ANSWER and outputs[0][1:] == ["", ""]  # a failed item's text is empty
    errors = {entry["index"]: entry.get("error", "") for entry in ui["lmstudio"]}
    assert errors[0] == "" and errors[1].startswith("The answer is not JSON")
    assert errors[2].startswith("The answer does not match json_schema: 'negative' is a required property")


async def test_a_list_of_json_answers_passes_item_by_item(lmstudio, comfy):
    answer_in(lmstudio, json.dumps(ANSWER), "OpenAI-compatible")
    outputs, ui, _ = await run_list(lmstudio.url, "OpenAI-compatible", count=3, json_schema=SCHEMA)
    assert [json.loads(text) for text in outputs[0]] == [ANSWER] * 3
    assert not any("error" in entry for entry in ui["lmstudio"])


# ------------------------------------------------------------------------------------------ JSON field


DOCUMENT = json.dumps({"subject": "a red fox", "count": 3, "weight": 2.5, "night": False, "day": True, "score": "7",
                       "items": [{"name": "fox"}, {"name": "snow"}], "none": None, "tags": ["a", "b"]})


def test_read_a_field_by_its_path():
    assert read_field(DOCUMENT, "subject") == "a red fox"
    assert read_field(DOCUMENT, "items.1.name") == read_field(DOCUMENT, "items[1].name") == "snow"
    assert read_field(DOCUMENT, "items.-1.name") == "snow"
    assert read_field(DOCUMENT, "")["count"] == 3
    for path, reason in [("subjct", "No field 'subjct' in the document; its fields: 'subject', 'count'"),
                         ("items.2", r"No entry 2 in items: it has 2 \(0 to 1\)"),
                         ("items.name", "items is a list: use a number to pick an entry, not 'name'"),
                         ("subject.name", r"subject is a string \('a red fox'\), so it has no field 'name'")]:
        with pytest.raises(LMStudioError, match=reason):
            read_field(DOCUMENT, path)
    with pytest.raises(LMStudioError, match="The text is empty"):
        read_field("", "subject")
    with pytest.raises(LMStudioError, match="The text is not JSON"):
        read_field("Error: LM Studio connection failed", "subject")


def field_node(graph: dict | None = None):
    """The JSON Field node as ComfyUI runs it: node 5, its outputs linked as `graph` says (all, when None)."""
    hidden = {"UNIQUE_ID": "5", "PROMPT": graph or {}}
    return LMStudioJSONField.PREPARE_CLASS_CLONE({"hidden_inputs": hidden})


def linked_to(*outputs: int) -> dict:
    return {"5": {"class_type": "LMStudioJSONField", "inputs": {}},
            **{str(10 + o): {"class_type": "Any", "inputs": {"value": ["5", o]}} for o in outputs}}


def test_the_field_node_gives_each_type_it_can():
    assert field_node(linked_to(0, 1, 2)).execute(json=DOCUMENT, path="count").args == ("3", 3, 3.0, False)
    assert field_node(linked_to(0, 1, 2)).execute(json=DOCUMENT, path="score").args == ("7", 7, 7.0, False)
    assert field_node(linked_to(0, 3)).execute(json=DOCUMENT, path="day").args == ("true", 0, 0.0, True)
    assert field_node(linked_to(3)).execute(json=DOCUMENT, path="night").args[3] is False
    assert field_node(linked_to(0)).execute(json=DOCUMENT, path="tags").args[0] == '["a", "b"]'
    assert field_node(linked_to(0)).execute(json=DOCUMENT, path="none").args[0] == ""
    assert field_node(linked_to(2)).execute(json=DOCUMENT, path="weight").args[2] == 2.5


def test_the_field_node_fails_only_for_what_is_linked():
    """A text field feeding CLIP Text Encode must not fail because it is no number; a linked number output does."""
    assert field_node(linked_to(0)).execute(json=DOCUMENT, path="subject").args == ("a red fox", 0, 0.0, False)
    with pytest.raises(LMStudioError, match=r"subject is a string \(\"a red fox\"\), not a whole number"):
        field_node(linked_to(0, 1)).execute(json=DOCUMENT, path="subject")
    with pytest.raises(LMStudioError, match=r"weight is a number \(2.5\), not true or false"):
        field_node(linked_to(3)).execute(json=DOCUMENT, path="weight")
    with pytest.raises(LMStudioError, match="not a number"):
        field_node(linked_to(2)).execute(json=DOCUMENT, path="items")
    with pytest.raises(LMStudioError, match="not a whole number"):
        field_node().execute(json=DOCUMENT, path="weight")  # no prompt to tell: every output is made
