"""A video as frames: picked evenly over the clip, sent in time order in one message with the second each is from,
in every mode and in lists. On real ComfyUI (the in-process tier) the video is core's own: an MP4 file written by
ComfyUI and read back as Load Video reads it."""

from __future__ import annotations

import io
from fractions import Fraction
from types import SimpleNamespace

import pytest
import torch
from PIL import Image, ImageStat

from chat_node_helpers import events, run, run_list
from fake_lmstudio import images_of
from lmstudio_pack.video_frames import frame_indices, frames_note

MODES = ["SDK", "REST API", "OpenAI-compatible"]


def clip(frames: int = 30, fps: int = 10, side: int = 64) -> torch.Tensor:
    """Frames that grow brighter with time, so the order they arrive in can be read off the images."""
    levels = torch.linspace(0.05, 0.95, frames)
    return levels.view(frames, 1, 1, 1).expand(frames, side, side, 3).contiguous()


class StandInVideo:
    """What a VIDEO gives the node, on the stand-in ComfyUI (duck-typed as core's `VideoInput`)."""

    def __init__(self, frames: torch.Tensor, fps: int) -> None:
        self.components = SimpleNamespace(images=frames, frame_rate=Fraction(fps), audio=None)

    def get_components(self):
        return self.components


def video(tmp_path, frames: int = 30, fps: int = 10):
    """Core's VideoFromFile of an MP4 ComfyUI wrote (real ComfyUI), else the stand-in."""
    try:
        from comfy_api.latest import InputImpl, Types
    except ImportError:
        return StandInVideo(clip(frames, fps), fps)
    path = tmp_path / "clip.mp4"
    InputImpl.VideoFromComponents(Types.VideoComponents(images=clip(frames, fps), frame_rate=Fraction(fps))
                                  ).save_to(str(path))
    return InputImpl.VideoFromFile(str(path))


def brightness(jpeg: bytes) -> float:
    with Image.open(io.BytesIO(jpeg)) as image:
        return ImageStat.Stat(image.convert("L")).mean[0]


def sent_images(fake) -> list[bytes]:
    if fake.sdk.sent("rpcCall", "uploadFileBase64"):
        import base64

        return [base64.b64decode(u["parameter"]["contentBase64"]) for u in fake.sdk.sent("rpcCall",
                                                                                            "uploadFileBase64")]
    return images_of(fake.chat_requests()[-1].body)


def sent_prompt(fake) -> str:
    if fake.sdk.sent("channelCreate", "predict"):
        (create,) = fake.sdk.sent("channelCreate", "predict")
        content = create["creationParameter"]["history"]["messages"][-1]["content"]
        return next(p["text"] for p in content if p.get("type") == "text")
    body = fake.chat_requests()[-1].body
    if isinstance(body.get("input"), list):
        return body["input"][0]["content"]
    return body["messages"][-1]["content"][0]["text"]


def test_frames_are_picked_evenly_in_time_order_never_twice():
    assert frame_indices(30, 4) == [3, 11, 18, 26]
    assert frame_indices(3, 8) == [0, 1, 2]  # a clip shorter than the frames asked for: every frame
    assert frame_indices(0, 8) == []
    assert len(set(frame_indices(1000, 8))) == 8 and frame_indices(1000, 8) == sorted(frame_indices(1000, 8))
    assert frames_note([0.3, 1.1], 3.0) == ("The 2 images are frames of one video of 3.0 seconds, in time order, "
                                            "taken at 0.3 s, 1.1 s.")


@pytest.mark.parametrize("mode", MODES)
async def test_a_video_goes_as_frames_in_time_order_with_the_second_each_is_from(lmstudio, comfy, mode, tmp_path):
    await run(lmstudio.url, mode, prompt="What happens?", video=video(tmp_path), video_frames=4)
    frames = sent_images(lmstudio)
    assert len(frames) == 4
    levels = [brightness(f) for f in frames]
    assert levels == sorted(levels) and levels[-1] - levels[0] > 100, levels  # in time order, far apart in time
    assert sent_prompt(lmstudio) == ("The 4 images are frames of one video of 3.0 seconds, in time order, taken at "
                                     "0.3 s, 1.1 s, 1.8 s, 2.6 s.\n\nWhat happens?")


async def test_images_and_a_video_share_the_eight_images_of_a_message_and_the_node_says_so(lmstudio, comfy,
                                                                                         tmp_path):
    still = torch.zeros(1, 32, 32, 3)
    await run(lmstudio.url, "REST API", image=still, more_images={"image_2": still, "image_3": still},
              video=video(tmp_path))
    assert len(images_of(lmstudio.chat_requests()[-1].body)) == 8
    assert any(kind == "notice" and "Sent 5 frames of the video, not 8" in content for kind, content in events())


async def test_a_list_of_videos_gets_one_answer_each(lmstudio, comfy, tmp_path):
    lmstudio.echo = True
    clips = [StandInVideo(clip(frames), 10) for frames in (10, 20, 40)]
    outputs, _, _ = await run_list(lmstudio.url, "OpenAI-compatible", count=3, per_item={"video": clips},
                                   video_frames=2)
    assert [text.split("of one video of ")[1][:8] for text in outputs[0]] == ["1.0 seco", "2.0 seco", "4.0 seco"]


def test_the_video_is_lazy_and_asked_for_only_when_linked():
    from chat_node_helpers import node

    graph = {"7": {"class_type": "LMStudioStreamChat", "inputs": {"prompt": "x", "video": ["3", 0]}}}
    assert node(graph).check_lazy_status(video=None) == ["video"]
    assert node(graph).check_lazy_status(video=object()) == []
    assert node().check_lazy_status(video=None) == []
