"""Everything LM Studio takes in one request: sampling, stop strings, a draft model, the context length and several
images, each under its mode's own name; a setting a mode cannot send is named on the node, never dropped silently."""

from __future__ import annotations

import base64
import io

import pytest
import torch
from PIL import Image

from chat_node_helpers import events, run, run_list
from fake_lmstudio import MODEL, native_model, openai_script, sdk_error, stack_fields
from lmstudio_pack.chat import ChatRequest, ConnectionMode, Stats, unsent_settings
from lmstudio_pack.options_node import ChatOptions, request_settings, stop_strings
from lmstudio_pack.utils import MAX_BATCH_IMAGES

SAMPLING = dict(top_p=0.9, top_k=40, min_p=0.05, repeat_penalty=1.1)
EVERYTHING = SAMPLING | dict(stop="###\nEND", draft_model="qwen/qwen3-0.6b", context_length=4096)


def chat_body(fake) -> dict:
    return fake.chat_requests()[-1].body


def sdk_prediction(fake) -> dict:
    (create,) = fake.sdk.sent("channelCreate", "predict")
    return stack_fields(create["creationParameter"]["predictionConfigStack"])


def notices(index: int | None = None) -> list[str]:
    return [content for kind, content in events(index) if kind == "notice"]


# ------------------------------------------------------------------------------------------ each mode's names


async def test_sdk_sends_every_setting_under_its_prediction_config_name(lmstudio, comfy):
    await run(lmstudio.url, "SDK", **EVERYTHING)
    fields = sdk_prediction(lmstudio)
    assert fields == {
        "llm.prediction.temperature": 0.7,
        "llm.prediction.topPSampling": {"checked": True, "value": 0.9},
        "llm.prediction.topKSampling": 40,
        "llm.prediction.minPSampling": {"checked": True, "value": 0.05},
        "llm.prediction.repeatPenalty": {"checked": True, "value": 1.1},
        "llm.prediction.stopStrings": ["###", "END"],
        "llm.prediction.speculativeDecoding.draftModel": "qwen/qwen3-0.6b",
    }
    # Nothing is unsent in SDK mode; the loaded model's own context length is the one word.
    assert {n.split(":")[0] for n in notices()} == {f"{MODEL} runs with a context of 8192 tokens, not context_length "
                                                   "4096"}


async def test_rest_sends_sampling_and_context_and_names_what_it_cannot(lmstudio, comfy):
    await run(lmstudio.url, "REST API", **EVERYTHING)
    body = chat_body(lmstudio)
    assert {k: body[k] for k in (*SAMPLING, "context_length")} == SAMPLING | {"context_length": 4096}
    assert "stop" not in body and "draft_model" not in body
    shown = notices()[-1]
    assert "stop strings are not supported by the REST API mode, so not sent; use SDK or OpenAI-compatible." in shown
    assert "draft_model (speculative decoding) is not supported by the REST API mode" in shown


async def test_openai_sends_sampling_stop_and_draft_and_names_what_it_cannot(lmstudio, comfy):
    await run(lmstudio.url, "OpenAI-compatible", **EVERYTHING)
    body = chat_body(lmstudio)
    assert {k: body[k] for k in SAMPLING} == SAMPLING
    assert body["stop"] == ["###", "END"] and body["draft_model"] == "qwen/qwen3-0.6b"
    assert "context_length" not in body
    assert ("context_length is not supported by the OpenAI-compatible mode, so not sent; use SDK or REST API."
            in notices()[-1])


@pytest.mark.parametrize("mode", ["SDK", "REST API", "OpenAI-compatible"])
async def test_settings_left_at_their_defaults_send_nothing(lmstudio, comfy, mode):
    await run(lmstudio.url, mode, **{name: getattr(ChatOptions(), name) for name in EVERYTHING})
    if mode == "SDK":
        assert set(sdk_prediction(lmstudio)) == {"llm.prediction.temperature"}
        (load,) = lmstudio.sdk.sent("channelCreate", "getOrLoad")
        assert stack_fields(load["creationParameter"].get("loadConfigStack")) == {}
    else:
        body = chat_body(lmstudio)
        assert not {*EVERYTHING, "context_length"} & set(body), body
    assert notices() == []


def test_the_options_defaults_mean_nothing_set():
    assert {k: v for k, v in request_settings(ChatOptions()).items() if v} == {}
    assert ChatRequest(prompt="x", **request_settings(ChatOptions())).settings() == {}


def test_stop_strings_one_per_line_as_typed():
    assert stop_strings("###\n END \r\n\n\\n\\nUser:") == ("###", " END ", "\n\nUser:")
    assert stop_strings("") == ()


def test_every_unsendable_setting_is_named_with_the_modes_that_can():
    request = ChatRequest(prompt="x", mode=ConnectionMode.SDK, reasoning="low", stop=("###",))
    assert unsent_settings(request) == [
        "reasoning is not supported by the SDK mode, so not sent; use REST API or OpenAI-compatible."]
    request = ChatRequest(prompt="x", mode=ConnectionMode.OPENAI, reasoning="low", context_length=2048)
    assert unsent_settings(request) == [
        "context_length is not supported by the OpenAI-compatible mode, so not sent; use SDK or REST API."]
    assert unsent_settings(ChatRequest(prompt="x", mode=ConnectionMode.REST, reasoning="low")) == []


async def test_a_list_names_an_unsent_setting_once_in_the_log(lmstudio, comfy, caplog):
    lmstudio.echo = True
    await run_list(lmstudio.url, "REST API", count=4, stop="###")
    warned = [r for r in caplog.records if "stop strings are not supported" in r.getMessage()]
    assert len(warned) == 1
    assert all("stop strings are not supported" in n for n in notices())


# ------------------------------------------------------------------------------------------ draft model stats


def test_draft_statistics_in_the_summary():
    stats = Stats(mode="SDK", output_tokens=60, draft_tokens=44, accepted_draft_tokens=40)
    assert "draft accepted: 40 of 44" in stats.summary()
    assert "draft" not in Stats(mode="SDK").summary()


async def test_sdk_reports_the_accepted_draft_tokens(lmstudio, comfy):
    lmstudio.sdk.stats |= {"totalDraftTokensCount": 12, "acceptedDraftTokensCount": 9,
                           "rejectedDraftTokensCount": 3, "ignoredDraftTokensCount": 0}
    summary = (await run(lmstudio.url, "SDK", draft_model="qwen/qwen3-0.6b")).args[2]
    assert "draft accepted: 9 of 12" in summary


async def test_openai_reports_llamacpp_draft_timings(lmstudio, comfy):
    chunks = openai_script()
    chunks[-2]["timings"] = {"predicted_n": 40, "draft_n": 30, "draft_n_accepted": 27}
    lmstudio.openai_chunks = chunks
    summary = (await run(lmstudio.url, "OpenAI-compatible", draft_model="d")).args[2]
    assert "draft accepted: 27 of 30" in summary


# ------------------------------------------------------------------------------------------ context length


async def test_sdk_loads_a_model_with_the_context_length(lmstudio, comfy):
    lmstudio.sdk.loaded = []
    await run(lmstudio.url, "SDK", context_length=4096)
    (load,) = lmstudio.sdk.sent("channelCreate", "getOrLoad")
    assert stack_fields(load["creationParameter"]["loadConfigStack"]) == {"llm.load.contextLength": 4096}
    assert lmstudio.sdk.contexts[MODEL] == 4096 and notices() == []


@pytest.mark.parametrize("mode", ["SDK", "REST API"])
async def test_a_model_loaded_with_another_length_is_named(lmstudio, comfy, mode):
    """Loaded before with 8192: context_length 4096 does not apply, and the node says so and what to do."""
    answer = (await run(lmstudio.url, mode, context_length=4096)).args[0]
    assert answer == "A red square."  # the run itself goes on
    (shown,) = set(notices())
    assert shown.startswith(f"{MODEL} runs with a context of 8192 tokens, not context_length 4096")
    assert "after_run = unload" in shown


async def test_rest_loads_a_model_with_the_context_length(lmstudio, comfy):
    lmstudio.models = [native_model(MODEL, loaded=False)]
    await run(lmstudio.url, "REST API", context_length=4096)
    assert chat_body(lmstudio)["context_length"] == 4096
    assert lmstudio.models[0]["loaded_instances"][0]["config"]["context_length"] == 4096
    assert notices() == []


OVERFLOWS = [
    # LM Studio (native and OpenAI-compatible), llama.cpp's llama-server
    (400, {"error": {"message": "Trying to keep the first 6547 tokens when context the overflows. However, the model "
                                "is loaded with a context length of only 4096 tokens, which is not enough. Try to load "
                                "the model with a larger context length, or provide a shorter input",
                     "type": "invalid_request"}}),
    (400, {"error": "The number of tokens to keep from the initial prompt is greater than the context length."}),
    (400, {"error": {"code": 400, "message": "request (631 tokens) exceeds the available context size (256 tokens), "
                     "try increasing it", "type": "exceed_context_size_error"}}),
]


@pytest.mark.parametrize("mode", ["REST API", "OpenAI-compatible"])
@pytest.mark.parametrize("status, body", OVERFLOWS)
async def test_a_prompt_too_long_for_the_context_says_what_to_change(lmstudio, comfy, mode, status, body):
    lmstudio.http_error = (status, body)
    text = (await run(lmstudio.url, mode)).args[0]
    assert text.startswith("Error: The prompt is too long for the model's context")
    assert "context_length in LM Studio Chat Options" in text and "max_image_side" in text


async def test_sdk_prompt_too_long_for_the_context(lmstudio, comfy):
    lmstudio.sdk.predict_error = sdk_error(
        "Trying to keep the first 6547 tokens when context the overflows. However, the model is loaded with a context "
        "length of only 4096 tokens, which is not enough.")
    lmstudio.sdk.fragments = []
    text = (await run(lmstudio.url, "SDK")).args[0]
    assert text.startswith("Error: The prompt is too long for the model's context")
    assert lmstudio.sdk.sent("channelCreate", "predict")  # not retried as a transient failure: once
    assert len(lmstudio.sdk.sent("channelCreate", "predict")) == 1


# ------------------------------------------------------------------------------------------ several images


def image(width: int, height: int, shade: int, batch: int = 1) -> torch.Tensor:
    return torch.full((batch, height, width, 3), shade / 255.0)


def size(data: str) -> tuple[int, int]:
    """(width, height) of a base64 image, bare or in a data URL."""
    return Image.open(io.BytesIO(base64.b64decode(data.split(",")[-1]))).size


def openai_sizes(body: dict) -> list[tuple[int, int]]:
    return [size(p["image_url"]["url"]) for p in body["messages"][-1]["content"] if p["type"] == "image_url"]


def sizes_sent(fake, mode: str) -> list[tuple[int, int]]:
    """The (width, height) of every image the last request carried, in order."""
    if mode == "SDK":
        return [size(u["parameter"]["contentBase64"]) for u in fake.sdk.sent("rpcCall", "uploadFileBase64")]
    if mode == "REST API":
        return [size(i["data_url"]) for i in chat_body(fake)["input"] if i["type"] == "image"]
    return openai_sizes(chat_body(fake))


@pytest.mark.parametrize("mode", ["SDK", "REST API", "OpenAI-compatible"])
async def test_several_images_of_different_sizes_in_one_message(lmstudio, comfy, mode):
    more = {"image_2": image(40, 20, 80), "image_4": image(16, 48, 160)}  # a gap: only linked sockets come
    answer = (await run(lmstudio.url, mode, image=image(32, 32, 10), more_images=more)).args[0]
    assert answer == "A red square."
    assert sizes_sent(lmstudio, mode) == [(32, 32), (40, 20), (16, 48)]


async def test_further_images_without_image(lmstudio, comfy):
    await run(lmstudio.url, "REST API", more_images={"image_3": image(24, 24, 50)})
    assert sizes_sent(lmstudio, "REST API") == [(24, 24)]


async def test_batches_on_further_sockets_follow_send_all_images(lmstudio, comfy):
    more = {"image_2": image(20, 20, 80, batch=3)}
    await run(lmstudio.url, "REST API", image=image(32, 32, 10, batch=2), more_images=more)
    assert sizes_sent(lmstudio, "REST API") == [(32, 32), (20, 20)]
    assert notices()[-1].startswith("Only the first image of each batch was sent.")
    await run(lmstudio.url, "REST API", image=image(32, 32, 10, batch=2), more_images=more, send_all_images=True)
    assert sizes_sent(lmstudio, "REST API") == [(32, 32)] * 2 + [(20, 20)] * 3


async def test_at_most_eight_images_and_the_node_says_so(lmstudio, comfy):
    more = {f"image_{n}": image(16 + n, 16, 20 * n) for n in range(2, 9)}
    await run(lmstudio.url, "REST API", image=image(32, 32, 10, batch=4), more_images=more, send_all_images=True)
    sent = sizes_sent(lmstudio, "REST API")
    assert len(sent) == MAX_BATCH_IMAGES and sent[:4] == [(32, 32)] * 4 and sent[4:] == [(18, 16), (19, 16),
                                                                                         (20, 16), (21, 16)]
    assert notices()[-1] == f"Sent the first {MAX_BATCH_IMAGES} of 11 images (the most one message takes)."


async def test_a_list_on_image_gives_every_item_the_same_further_images(lmstudio, comfy):
    lmstudio.echo = True
    frames = [image(30 + i, 30, 40 * i) for i in range(3)]
    await run_list(lmstudio.url, "OpenAI-compatible", count=3, per_item={"image": frames},
                   more_images={"image_2": image(12, 50, 200)})
    sent = sorted(openai_sizes(request.body) for request in lmstudio.chat_requests())
    assert sent == [[(30 + i, 30), (12, 50)] for i in range(3)]


def test_further_images_are_lazy_and_asked_for_only_when_linked():
    from chat_node_helpers import node

    graph = {"7": {"class_type": "LMStudioStreamChat", "inputs": {"prompt": "x", "image": ["3", 0],
                                                                  "more_images.image_2": ["4", 0]}}}
    needed = node(graph).check_lazy_status(image=None, more_images={"image_2": (None, "more_images.image_2")})
    assert needed == ["image", "more_images.image_2"]
    ready = node(graph).check_lazy_status(image=image(4, 4, 1), more_images={"image_2": (image(4, 4, 1),
                                                                                         "more_images.image_2")})
    assert ready == []
    assert node().check_lazy_status() == []
    assert node().check_lazy_status(more_images=({}, "more_images")) == []  # 0.33.0, nothing linked to the group
