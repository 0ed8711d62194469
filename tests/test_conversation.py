"""Conversations: a chat node's `conversation` output continues on the next chat node. SDK and OpenAI-compatible
send the whole chat; the native REST API continues LM Studio's stored copy of the last turn (`previous_response_id`),
storing only turns that a later node continues."""

from __future__ import annotations

import pytest
import torch

from chat_node_helpers import NODE_ID, events, inputs, next_prompt, node, run
from lmstudio_pack.conversation import Conversation, Turn
from lmstudio_pack.node import CONVERSATION_OUTPUT

MODES = pytest.mark.parametrize("mode", ["SDK", "REST API", "OpenAI-compatible"])
CONTINUED = {NODE_ID: {"class_type": "LMStudioStreamChat", "inputs": {"prompt": "Describe"}},
             "9": {"class_type": "LMStudioStreamChat", "inputs": {"conversation": [NODE_ID, CONVERSATION_OUTPUT]}}}


def picture() -> torch.Tensor:
    return torch.full((1, 24, 32, 3), 0.5)


async def turn(url: str, mode: str, prompt: str, chat: Conversation | None = None, *, continued: bool = True,
               **extra) -> tuple[str, Conversation]:
    """One chat node's run: its answer and its conversation output (which a later node takes when `continued`)."""
    outputs = (await node(CONTINUED if continued else None).execute(
        **inputs(url, mode, prompt=prompt, conversation=chat, **extra))).args
    return outputs[0], outputs[8]


async def test_a_new_chat_is_its_system_prompt_and_this_turn(lmstudio, comfy):
    lmstudio.echo = True
    answer, chat = await turn(lmstudio.url, "OpenAI-compatible", "Describe", system_prompt="Be terse.",
                              image=picture())
    assert answer == "Answer to Describe"
    assert chat.system_prompt == "Be terse." and len(chat.turns) == 1
    (first,) = chat.turns
    assert (first.prompt, first.answer, len(first.images)) == ("Describe", "Answer to Describe", 1)


async def test_openai_sends_the_whole_chat(lmstudio, comfy):
    lmstudio.echo = True
    _, chat = await turn(lmstudio.url, "OpenAI-compatible", "Describe", system_prompt="Be terse.", image=picture())
    _, chat = await turn(lmstudio.url, "OpenAI-compatible", "Write an SDXL prompt", chat)
    answer, chat = await turn(lmstudio.url, "OpenAI-compatible", "Shorten it", chat)
    messages = lmstudio.chat_requests()[-1].body["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert messages[1]["content"][0] == {"type": "text", "text": "Describe"}
    assert messages[1]["content"][1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert [m["content"] for m in messages[2:]] == ["Answer to Describe", "Write an SDXL prompt",
                                                    "Answer to Write an SDXL prompt", "Shorten it"]
    assert answer == "Answer to Shorten it" and [t.prompt for t in chat.turns] == ["Describe", "Write an SDXL prompt",
                                                                                    "Shorten it"]


async def test_sdk_sends_the_whole_chat_with_its_images(lmstudio, comfy):
    lmstudio.echo = True
    _, chat = await turn(lmstudio.url, "SDK", "Describe", system_prompt="Be terse.", image=picture())
    answer, chat = await turn(lmstudio.url, "SDK", "Write an SDXL prompt", chat)
    create = lmstudio.sdk.sent("channelCreate", "predict")[-1]
    messages = create["creationParameter"]["history"]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert [p["type"] for p in messages[1]["content"]] == ["text", "file"]  # turn 1's image goes again
    assert messages[2]["content"][0]["text"] == "Answer to Describe"
    assert answer == "Answer to Write an SDXL prompt" and len(chat.turns) == 2


async def test_rest_continues_from_lm_studios_stored_turn(lmstudio, comfy):
    lmstudio.echo = True
    _, chat = await turn(lmstudio.url, "REST API", "Describe", system_prompt="Be terse.")
    first = lmstudio.chat_requests()[-1].body
    assert first["store"] is True and first["system_prompt"] == "Be terse."  # a later node continues from it
    assert chat.turns[0].response_id in lmstudio.stored
    answer, chat = await turn(lmstudio.url, "REST API", "Shorten it", chat, continued=False)
    second = lmstudio.chat_requests()[-1].body
    assert second["previous_response_id"] == chat.turns[0].response_id
    assert second["input"] == "Shorten it" and second["store"] is False  # nothing continues from this one
    assert "system_prompt" not in second  # the stored chat has it; LM Studio refuses one on a later turn
    assert answer == "Answer to Shorten it"


async def test_rest_stores_nothing_for_a_chat_nobody_continues(lmstudio, comfy):
    await run(lmstudio.url, "REST API")
    assert lmstudio.chat_requests()[-1].body["store"] is False and not lmstudio.stored


async def test_rest_says_so_when_lm_studio_forgot_the_stored_turn(lmstudio, comfy):
    """LM Studio restarted between the turns: its stored copy of turn 1 is gone."""
    _, chat = await turn(lmstudio.url, "REST API", "Describe")
    lmstudio.stored.clear()
    answer, after = await turn(lmstudio.url, "REST API", "Shorten it", chat)
    assert answer.startswith("Error: LM Studio no longer has the earlier turn this chat continues from")
    assert "SDK or OpenAI-compatible" in answer
    assert after == chat  # the failed turn is not part of the chat


async def test_rest_cannot_continue_a_turn_it_did_not_store(lmstudio, comfy):
    _, chat = await turn(lmstudio.url, "OpenAI-compatible", "Describe")
    sent = len(lmstudio.chat_requests())
    answer, _ = await turn(lmstudio.url, "REST API", "Shorten it", chat)
    assert answer.startswith("Error: The REST API mode continues a chat from LM Studio's stored copy of its last "
                             "turn, and turn 1 has none")
    assert len(lmstudio.chat_requests()) == sent  # refused before anything was sent


async def test_a_later_turn_keeps_the_chats_system_prompt(lmstudio, comfy):
    _, chat = await turn(lmstudio.url, "OpenAI-compatible", "Describe", system_prompt="Be terse.")
    await turn(lmstudio.url, "OpenAI-compatible", "Again", chat, system_prompt="Be terse.")
    assert not [c for k, c in events() if k == "notice"]  # the same one: nothing to say
    await turn(lmstudio.url, "OpenAI-compatible", "Again", chat, system_prompt="Be verbose.")
    assert lmstudio.chat_requests()[-1].body["messages"][0] == {"role": "system", "content": "Be terse."}
    assert "system_prompt here is not used" in [c for k, c in events() if k == "notice"][-1]


async def test_the_view_shows_the_turn_it_streams(lmstudio, comfy):
    _, chat = await turn(lmstudio.url, "SDK", "Describe")
    assert ("turn", "2") not in events()
    result = await node().execute(**inputs(lmstudio.url, "SDK", prompt="Shorten it", conversation=chat))
    assert ("turn", "2") in events()
    assert result.ui["lmstudio"][0]["turn"] == 2


async def test_images_are_shared_not_copied_from_turn_to_turn(lmstudio, comfy):
    _, one = await turn(lmstudio.url, "OpenAI-compatible", "Describe", image=picture())
    _, two = await turn(lmstudio.url, "OpenAI-compatible", "Again", one)
    _, three = await turn(lmstudio.url, "OpenAI-compatible", "Again", two)
    assert three.turns[0].images[0] is one.turns[0].images[0]
    assert three.turns[:2] == two.turns and two.turns[:1] == one.turns  # earlier turns are never rewritten


async def test_a_failed_turn_leaves_the_chat_as_it_was(lmstudio, comfy):
    _, chat = await turn(lmstudio.url, "OpenAI-compatible", "Describe")
    lmstudio.http_error = (500, {"error": "engine crashed"})
    answer, after = await turn(lmstudio.url, "OpenAI-compatible", "Shorten it", chat)
    assert answer.startswith("Error: ") and after == chat


async def test_resume_knows_the_chat_a_turn_belongs_to(lmstudio, comfy):
    """The same prompt after another earlier answer is another request: generated anew, not resumed."""
    lmstudio.echo = True
    _, chat = await turn(lmstudio.url, "REST API", "Describe")
    await next_prompt(turn(lmstudio.url, "REST API", "Shorten it", chat))
    lmstudio.predictions.clear()
    # Queued again unchanged: both turns come back from the answers file, the stored turn's id with them.
    _, again = await next_prompt(turn(lmstudio.url, "REST API", "Describe"))
    assert again == chat and not lmstudio.predictions
    other = Conversation(chat.system_prompt, (Turn("Describe", (), "another answer", chat.turns[0].response_id),))
    await next_prompt(turn(lmstudio.url, "REST API", "Shorten it", other))
    assert lmstudio.predictions == ["Shorten it"]
