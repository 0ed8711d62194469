"""The pack inside real ComfyUI servers (0.8.0 and 0.33.0, on CPU), driven through `/prompt` and the websocket
against the LM Studio stand-in: what the stand-in of ComfyUI's executor and server could get wrong."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

import real_comfyui
from fake_lmstudio import MODEL, openai_script, rest_script
from lmstudio_pack.answer_store import FILE_NAME
from lmstudio_pack.node_parts import ANSWERS_FOLDER
from lmstudio_pack.options_node import ChatOptions
from procs import process_alive, read_proc

MODES = ("SDK", "REST API", "OpenAI-compatible")
EXAMPLES = sorted((real_comfyui.ROOT / "example_workflows").glob("*.json"))
# Types the frontend itself provides (notes, reroutes): never in /object_info.
FRONTEND_TYPES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}


@pytest.fixture(scope="module", params=real_comfyui.VERSIONS)
def comfyui(request, real_comfyui_servers):
    return real_comfyui_servers(request.param)


def chat(url: str, mode: str = "REST API", **inputs) -> dict:
    values = dict(prompt="Describe", model_id=MODEL, connection_mode=mode, server_url=url, temperature=0.7,
                  max_tokens=-1, debug_mode=False, system_prompt="", seed=0)
    return {"class_type": "LMStudioStreamChat", "inputs": values | inputs}


def options_node(**settings) -> dict:
    """An LM Studio Chat Options node: every input at its default but `settings`."""
    return {"class_type": "LMStudioChatOptions", "inputs": asdict(ChatOptions(**settings))}


def dataset(server: real_comfyui.ComfyServer, count: int) -> str:
    """A folder of `count` small PNGs in the server's input directory, as a user would make one."""
    name = f"ds_{uuid.uuid4().hex[:8]}"
    folder = server.input_dir / name
    folder.mkdir()
    for index in range(count):
        Image.new("RGB", (32 + index, 24), (10 * index, 80, 160)).save(folder / f"img_{index:02d}.png")
    return name


def dataset_prompt(server: real_comfyui.ComfyServer, url: str, folder: str, mode: str, **chat_inputs) -> dict:
    save = {"images": ["1", 0], "texts": ["2", 0], "folder_name": f"{folder}_captioned", "filename_prefix": "img"}
    if server.version != "0.8.0":
        save["mode"] = "overwrite"  # 0.33.0's new required input
    return {
        "1": {"class_type": "LoadImageDataSetFromFolder", "inputs": {"folder": folder}},
        "2": chat(url, mode, prompt="Caption", image=["1", 0], **chat_inputs),
        "3": {"class_type": "SaveImageTextDataSetToFolder", "inputs": save},
    }


@pytest.mark.parametrize("mode", MODES)
async def test_a_single_run_streams_and_answers(comfyui, lmstudio, mode):
    lmstudio.openai_chunks = openai_script(reasoning=["Let me", " look."])
    run = await comfyui.run({"1": chat(lmstudio.url, mode)})
    assert run.outcome == "execution_success", (run.error, comfyui.log()[-2000:])
    text = "".join(u["content"] for u in run.stream("text"))
    reasoning = "".join(u["content"] for u in run.stream("reasoning"))
    assert (text, reasoning) == ("A red square.", "Let me look.")
    assert all(u["node_id"] == "1" for u in run.stream())
    (shown,) = [m for m in run.of("executed") if m["node"] == "1"]
    assert shown["output"]["lmstudio"][0]["text"] == "A red square."
    # Every delta arrived before the node's `executed` message.
    kinds = [m["type"] for m in run.messages]
    assert max(i for i, k in enumerate(kinds) if k == "lmstudio.stream.update") < kinds.index("executed")


async def test_the_same_prompt_again_comes_from_comfyuis_cache(comfyui, lmstudio):
    prompt = {"1": chat(lmstudio.url, seed=1234)}
    await comfyui.run(prompt)
    before = len(lmstudio.chat_requests())
    again = await comfyui.run(prompt)
    assert again.outcome == "execution_success" and len(lmstudio.chat_requests()) == before
    assert "1" in again.of("execution_cached")[0]["nodes"]
    assert again.of("executed")[0]["output"]["lmstudio"][0]["text"] == "A red square."


@pytest.mark.parametrize("mode", ("REST API", "SDK"))
async def test_a_dataset_list_is_captioned_in_order(comfyui, lmstudio, mode):
    lmstudio.echo = True
    lmstudio.event_delay = 0.01
    folder = dataset(comfyui, 6)
    run = await comfyui.run(dataset_prompt(comfyui, lmstudio.url, folder, mode), timeout=120)
    assert run.outcome == "execution_success", (run.error, comfyui.log()[-2000:])
    saved = comfyui.output_dir / f"{folder}_captioned"
    captions = sorted(saved.glob("*.txt"))
    assert len(captions) == 6 and len(sorted(saved.glob("*.png"))) == 6
    assert all(path.read_text() == "Answer to Caption" for path in captions)
    assert lmstudio.peak_in_flight <= lmstudio.parallel
    indices = sorted({u["index"] for u in run.stream()})
    # `count` is the items started so far: it grows while the list starts, and ends at the list's length.
    assert indices == list(range(6)) and max(u["count"] for u in run.stream("item")) == 6


async def test_cancel_mid_list_stops_every_item(comfyui, lmstudio):
    lmstudio.event_delay = 0.15
    lmstudio.rest_events = rest_script([], [f"word{i} " for i in range(200)])
    folder = dataset(comfyui, 8)
    cancelled_at: list[float] = []

    async def cancel_once_streaming(run, message):
        if not cancelled_at and message["type"] == "lmstudio.stream.update" and message["data"]["chunk_type"] == "text":
            cancelled_at.append(time.monotonic())
            await comfyui.post("/interrupt")

    run = await comfyui.run(dataset_prompt(comfyui, lmstudio.url, folder, "REST API"), on_message=cancel_once_streaming,
                            timeout=60)
    ended = time.monotonic()
    assert run.outcome == "execution_interrupted", (run.error, comfyui.log()[-2000:])
    assert ended - cancelled_at[0] < 2.0
    sent = len(lmstudio.chat_requests())
    await asyncio.sleep(0.5)
    assert lmstudio.in_flight == 0 and len(lmstudio.chat_requests()) == sent  # nothing more went out
    assert sent <= 4  # the queued items never started
    assert not list((comfyui.output_dir / f"{folder}_captioned").glob("*.txt"))
    print(f"\nComfyUI {comfyui.version}: list cancelled {ended - cancelled_at[0]:.3f} s after /interrupt")


async def test_the_options_node_reaches_the_chat_node(comfyui, lmstudio):
    lmstudio.event_delay = 0.02
    folder = dataset(comfyui, 4)
    prompt = dataset_prompt(comfyui, lmstudio.url, folder, "REST API", options=["4", 0])
    prompt["4"] = options_node(max_image_side=16, on_error="raise", reasoning="low", free_comfy_vram=True,
                               max_parallel=1)
    run = await comfyui.run(prompt, timeout=120)
    assert run.outcome == "execution_success", (run.error, comfyui.log()[-2000:])
    assert lmstudio.peak_in_flight == 1  # max_parallel
    bodies = [r.body for r in lmstudio.chat_requests()]
    assert len(bodies) == 4 and all(b["reasoning"] == "low" for b in bodies)
    from base64 import b64decode
    from io import BytesIO

    image = next(item for item in bodies[0]["input"] if item["type"] == "image")
    sent = Image.open(BytesIO(b64decode(image["data_url"].split(",", 1)[1])))
    assert max(sent.size) == 16  # max_image_side
    assert any(u["content"] == "Freeing ComfyUI's VRAM" for u in run.stream("status"))


async def test_on_error_raise_stops_the_prompt_with_the_message(comfyui, lmstudio):
    lmstudio.http_error = (404, {"error": {"message": "model missing", "code": "model_not_found"}})
    prompt = {"1": chat(lmstudio.url, options=["2", 0]), "2": options_node(on_error="raise")}
    run = await comfyui.run(prompt)
    assert run.outcome == "execution_error"
    assert f"Model '{MODEL}' not found" in run.error["exception_message"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
async def test_example_workflows_need_nothing_the_server_lacks(comfyui, path):
    """Every node of the example exists in this ComfyUI, and every input it links is one the node has."""
    info = await comfyui.object_info()
    workflow = json.loads(Path(path).read_text())
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_TYPES:
            continue
        assert node["type"] in info, f"{node['type']} is missing from ComfyUI {comfyui.version}"
        spec = info[node["type"]]["input"]
        known = {**spec.get("required", {}), **spec.get("optional", {})}
        for entry in node.get("inputs", []):
            assert entry["name"] in known, (node["type"], entry["name"])
        outputs = info[node["type"]]["output"]
        assert [o["type"] for o in node.get("outputs", [])] == outputs[: len(node.get("outputs", []))], node["type"]


def finished_items(run: real_comfyui.Run) -> set[int]:
    return {u["index"] for u in run.stream("item") if u["content"] == "done"}


def resume_notices(run: real_comfyui.Run) -> list[str]:
    return [u["content"] for u in run.stream("notice") if "came back finished" in u["content"]]


async def test_a_cancelled_list_queued_again_generates_only_the_rest(comfyui, lmstudio):
    lmstudio.echo = True
    lmstudio.sdk.fragment_delay = 0.1  # SDK mode: two fragments an item, so Cancel meets a list far from done
    folder = dataset(comfyui, 8)
    prompt = dataset_prompt(comfyui, lmstudio.url, folder, "SDK", seed=8080, options=["4", 0])
    prompt["4"] = options_node(max_parallel=2)

    async def cancel_after_three(run, message):
        if message["type"] == "lmstudio.stream.update" and len(finished_items(run)) == 3:
            await comfyui.post("/interrupt")

    first = await comfyui.run(prompt, on_message=cancel_after_three, timeout=120)
    assert first.outcome == "execution_interrupted", (first.error, comfyui.log()[-2000:])
    finished = finished_items(first)
    assert 3 <= len(finished) < 8
    lmstudio.predictions.clear()
    lmstudio.sdk.fragment_delay = 0.0

    again = await comfyui.run(prompt, timeout=120)
    assert again.outcome == "execution_success", (again.error, comfyui.log()[-2000:])
    assert len(lmstudio.predictions) == 8 - len(finished)
    captions = sorted((comfyui.output_dir / f"{folder}_captioned").glob("*.txt"))
    assert [path.read_text() for path in captions] == ["Answer to Caption"] * 8
    assert resume_notices(again)[-1].startswith(f"{len(finished)} of 8 answers came back finished")


@pytest.mark.parametrize("version", real_comfyui.VERSIONS)
async def test_a_list_killed_mid_run_resumes_after_a_restart(own_comfyui_server, lmstudio, version):
    """kill -9 while a 12-image list runs; ComfyUI started again on the same folders and the list queued again:
    only the items with no finished answer go to LM Studio."""
    server = own_comfyui_server(version)
    sdk_run = await server.run({"1": chat(lmstudio.url, "SDK", seed=5)})  # starts the SDK worker beside it
    assert sdk_run.outcome == "execution_success", sdk_run.error
    [worker] = sdk_workers(server)
    lmstudio.echo = True
    lmstudio.event_delay = 0.1
    folder = dataset(server, 12)
    prompt = dataset_prompt(server, lmstudio.url, folder, "REST API", seed=1212)

    async def kill_after_five(run, message):
        if message["type"] == "lmstudio.stream.update" and len(finished_items(run)) == 5:
            server.kill()

    with pytest.raises((RuntimeError, aiohttp.ClientError)):  # the websocket dies with the process
        await server.run(prompt, on_message=kill_after_five, timeout=120)
    answers = server.base / "user" / ANSWERS_FOLDER / FILE_NAME
    with contextlib.closing(sqlite3.connect(answers)) as db:
        kept = db.execute("SELECT COUNT(*) FROM answers").fetchone()[0] - 1  # less the SDK run's own answer
    # An item's answer is written before its "done" goes out, so all five are there; the list was far from done.
    assert 5 <= kept < 12
    assert await gone(worker)  # the SDK worker ends with ComfyUI, however ComfyUI ends
    # A request the dead ComfyUI sent just before may still sit in the stand-in's socket buffer (it serves on this
    # test's loop): let it arrive and end before counting afresh.
    await asyncio.sleep(0.5)
    while lmstudio.in_flight:
        await asyncio.sleep(0.05)
    lmstudio.predictions.clear()
    lmstudio.event_delay = 0.0

    server.start()
    again = await server.run(prompt, timeout=120)
    assert again.outcome == "execution_success", (again.error, server.log()[-2000:])
    assert len(lmstudio.predictions) == 12 - kept
    captions = sorted((server.output_dir / f"{folder}_captioned").glob("*.txt"))
    assert [path.read_text() for path in captions] == ["Answer to Caption"] * 12
    assert resume_notices(again)[-1].startswith(f"{kept} of 12 answers came back finished")


def sdk_workers(server: real_comfyui.ComfyServer) -> list[int]:
    """The pids of the SDK worker processes ComfyUI started, each checked to run ComfyUI's own Python."""
    assert server._process is not None
    workers = []
    for child in children(server._process.pid):
        command = (read_proc(child, "cmdline") or b"").split(b"\0")  # empty: it ended while we looked
        if any(b"lmstudio_sdk_worker_pack" in part for part in command):
            assert command[0].decode() == str(server.python)
            workers.append(child)
    return workers


def children(pid: int) -> list[int]:
    """The pids whose parent is process `pid`, whichever of its threads started them.

    `/proc/PID/task/TID/children` lists only the children of that one thread, and ComfyUI starts the worker from a
    pool thread, so the parent's pid in each process's status is what tells."""
    found = []
    for folder in Path("/proc").glob("[0-9]*"):
        status = read_proc(int(folder.name), "status")
        if status is not None and re.search(rf"^PPid:\t{pid}$", status.decode(errors="replace"), re.MULTILINE):
            found.append(int(folder.name))
    return found


async def gone(pid: int, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not process_alive(pid):
            return True
        await asyncio.sleep(0.05)
    return False


def empty_image(width: int, height: int, batch: int = 1) -> dict:
    return {"class_type": "EmptyImage", "inputs": {"width": width, "height": height, "batch_size": batch,
                                                   "color": 0x336699}}


def image_sizes(body_or_uploads) -> list[tuple[int, int]]:
    """(width, height) of every image one native REST body carried, in order."""
    from base64 import b64decode
    from io import BytesIO

    return [Image.open(BytesIO(b64decode(item["data_url"].split(",", 1)[1]))).size
            for item in body_or_uploads["input"] if item["type"] == "image"]


async def test_sampling_stop_draft_and_context_reach_each_mode_by_its_own_names(comfyui, lmstudio):
    from fake_lmstudio import stack_fields

    settings = dict(top_p=0.9, top_k=40, min_p=0.05, repeat_penalty=1.1, stop="###", draft_model="qwen/qwen3-0.6b",
                    context_length=8192)
    shown = {}
    for mode in MODES:
        run = await comfyui.run({"1": chat(lmstudio.url, mode, options=["2", 0]), "2": options_node(**settings)})
        assert run.outcome == "execution_success", (run.error, comfyui.log()[-2000:])
        shown[mode] = [u["content"] for u in run.stream("notice")]
    rest, openai = [r.body for r in lmstudio.chat_requests()]
    sampling = dict(top_p=0.9, top_k=40, min_p=0.05, repeat_penalty=1.1)
    assert {k: rest[k] for k in sampling} == sampling and rest["context_length"] == 8192
    assert "stop" not in rest and "draft_model" not in rest
    assert {k: openai[k] for k in sampling} == sampling and openai["stop"] == ["###"]
    assert openai["draft_model"] == "qwen/qwen3-0.6b" and "context_length" not in openai
    (create,) = lmstudio.sdk.sent("channelCreate", "predict")
    fields = stack_fields(create["creationParameter"]["predictionConfigStack"])
    assert fields["llm.prediction.topKSampling"] == 40 and fields["llm.prediction.stopStrings"] == ["###"]
    assert fields["llm.prediction.speculativeDecoding.draftModel"] == "qwen/qwen3-0.6b"
    # Nothing dropped silently: what a mode cannot send is named on the node.
    assert shown["SDK"] == []
    assert any("stop strings are not supported by the REST API mode" in n for n in shown["REST API"])
    assert any("context_length is not supported by the OpenAI-compatible mode" in n for n in shown["OpenAI-compatible"])


async def test_several_images_from_the_further_sockets(comfyui, lmstudio):
    """`image` and core's Autogrow sockets (`more_images.image_2`, ...): lazy inputs ComfyUI evaluates on request."""
    prompt = {"2": empty_image(64, 32), "3": empty_image(20, 40), "4": empty_image(24, 24),
              "1": chat(lmstudio.url, image=["2", 0], **{"more_images.image_2": ["3", 0],
                                                         "more_images.image_3": ["4", 0]})}
    run = await comfyui.run(prompt)
    assert run.outcome == "execution_success", (run.error, comfyui.log()[-2000:])
    assert image_sizes(lmstudio.chat_requests()[-1].body) == [(64, 32), (20, 40), (24, 24)]


async def test_a_dataset_list_gets_the_same_further_image_on_every_item(comfyui, lmstudio):
    lmstudio.echo = True
    folder = dataset(comfyui, 3)
    prompt = dataset_prompt(comfyui, lmstudio.url, folder, "REST API", **{"more_images.image_2": ["5", 0]})
    prompt["5"] = empty_image(16, 48)
    run = await comfyui.run(prompt, timeout=120)
    assert run.outcome == "execution_success", (run.error, comfyui.log()[-2000:])
    sizes = sorted(image_sizes(r.body) for r in lmstudio.chat_requests())
    assert sizes == [[(32 + i, 24), (16, 48)] for i in range(3)]


def executed(run: real_comfyui.Run, node_id: str) -> dict:
    return next(m["output"] for m in run.of("executed") if m["node"] == node_id)


async def test_a_json_answer_feeds_the_json_field_node(comfyui, lmstudio):
    schema = {"type": "object", "properties": {"positive": {"type": "string"}, "count": {"type": "integer"}},
              "required": ["positive", "count"]}
    lmstudio.openai_chunks = openai_script(['{"positive": "a red', ' fox", "count": 3}'])
    prompt = {"1": chat(lmstudio.url, "OpenAI-compatible", options=["2", 0]),
              "2": options_node(json_schema=json.dumps(schema)),
              "3": {"class_type": "LMStudioJSONField", "inputs": {"json": ["1", 0], "path": "positive"}},
              "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}},
              "5": {"class_type": "LMStudioJSONField", "inputs": {"json": ["1", 0], "path": "count"}},
              "6": {"class_type": "PreviewAny", "inputs": {"source": ["5", 1]}}}
    run = await comfyui.run(prompt)
    assert run.outcome == "execution_success", (run.error, comfyui.log()[-2000:])
    assert executed(run, "4")["text"] == ["a red fox"] and executed(run, "6")["text"] == ["3"]
    assert lmstudio.chat_requests()[-1].body["response_format"]["json_schema"]["schema"] == schema
    prompt["3"]["inputs"]["path"] = "subject"
    bad = await comfyui.run(prompt)
    assert bad.outcome == "execution_error" and bad.error["node_id"] == "3"
    assert bad.error["exception_message"].startswith("No field 'subject' in the document; its fields: 'positive'")


async def test_chained_turns_run_again_when_an_earlier_turn_changes(comfyui, lmstudio):
    """REST API mode: turn 1 is stored in LM Studio (a later node continues it), turn 2 continues from it; ComfyUI's
    cache keeps both until turn 1 changes, which runs turn 2 again too."""
    lmstudio.echo = True
    prompt = {"1": chat(lmstudio.url, prompt="Describe a fox", seed=77),
              "2": chat(lmstudio.url, prompt="Shorten it", seed=77, conversation=["1", 8])}
    first = await comfyui.run(prompt)
    assert first.outcome == "execution_success", (first.error, comfyui.log()[-2000:])
    one, two = [r.body for r in lmstudio.chat_requests()[-2:]]
    assert (one["input"], one["store"]) == ("Describe a fox", True) and two["store"] is False
    assert two["previous_response_id"] in lmstudio.stored and two["input"] == "Shorten it"
    assert executed(first, "2")["lmstudio"][0]["turn"] == 2
    assert [u["content"] for u in first.stream("turn") if u["node_id"] == "2"] == ["2"]
    sent = len(lmstudio.chat_requests())
    again = await comfyui.run(prompt)
    assert again.outcome == "execution_success" and len(lmstudio.chat_requests()) == sent  # ComfyUI's cache
    prompt["1"]["inputs"]["prompt"] = "Describe a wolf"
    changed = await comfyui.run(prompt)
    assert changed.outcome == "execution_success", (changed.error, comfyui.log()[-2000:])
    assert [r.body["input"] for r in lmstudio.chat_requests()[sent:]] == ["Describe a wolf", "Shorten it"]
    assert executed(changed, "2")["lmstudio"][0]["text"] == "Answer to Shorten it"


def video_file(server: real_comfyui.ComfyServer, frames: int = 30, fps: int = 10) -> str:
    """An MP4 of `frames` frames growing brighter, in the server's input folder, written by ComfyUI's own PyAV."""
    name = f"clip_{uuid.uuid4().hex[:8]}.mp4"
    script = (
        "import sys, av, numpy as np\n"
        "out = av.open(sys.argv[1], 'w')\n"
        "stream = out.add_stream('mpeg4', rate=int(sys.argv[3]))\n"
        "stream.width = stream.height = 64\n"
        "stream.pix_fmt = 'yuv420p'\n"
        "for i in range(int(sys.argv[2])):\n"
        "    frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 10 + 8 * i, np.uint8), format='rgb24')\n"
        "    out.mux(stream.encode(frame))\n"
        "out.mux(stream.encode())\n"
        "out.close()\n"
    )
    import subprocess

    subprocess.run([str(server.python), "-c", script, str(server.input_dir / name), str(frames), str(fps)],
                   check=True, timeout=60)
    return name


def brightness(jpeg: bytes) -> float:
    import io

    from PIL import ImageStat

    with Image.open(io.BytesIO(jpeg)) as image:
        return ImageStat.Stat(image.convert("L")).mean[0]


async def test_load_video_into_the_node_sends_frames_in_time_order(comfyui, lmstudio):
    from fake_lmstudio import images_of

    prompt = {"1": {"class_type": "LoadVideo", "inputs": {"file": video_file(comfyui)}},
              "2": chat(lmstudio.url, prompt="What happens?", video=["1", 0], options=["3", 0]),
              "3": options_node(video_frames=4)}
    run = await comfyui.run(prompt)
    assert run.outcome == "execution_success", (run.error, comfyui.log()[-2000:])
    body = lmstudio.chat_requests()[-1].body
    assert body["input"][0]["content"] == ("The 4 images are frames of one video of 3.0 seconds, in time order, "
                                           "taken at 0.3 s, 1.1 s, 1.8 s, 2.6 s.\n\nWhat happens?")
    levels = [brightness(jpeg) for jpeg in images_of(body)]
    assert len(levels) == 4 and levels == sorted(levels) and levels[-1] - levels[0] > 100, levels


async def test_a_users_preset_is_read_again_and_a_removed_one_does_not_stop_the_workflow(comfyui, lmstudio):
    presets = comfyui.base / "user" / "default" / "lmstudio-presets.json"
    presets.parent.mkdir(parents=True, exist_ok=True)
    presets.write_text(json.dumps({"Server style": {"system_prompt": "Answer in French."}}))
    async with aiohttp.ClientSession() as session, session.get(f"{comfyui.url}/lmstudio/presets") as response:
        listed = (await response.json())["presets"]
    assert listed["Server style"]["system_prompt"] == "Answer in French." and "Detailed caption" in listed
    run = await comfyui.run({"1": chat(lmstudio.url, preset="Server style")})
    assert run.outcome == "execution_success", (run.error, comfyui.log()[-2000:])
    assert lmstudio.chat_requests()[-1].body["system_prompt"] == "Answer in French."
    presets.write_text(json.dumps({"Server style": {"system_prompt": "Answer in German, briefly."}}))
    run = await comfyui.run({"1": chat(lmstudio.url, preset="Server style")})  # same inputs: not the cached answer
    assert lmstudio.chat_requests()[-1].body["system_prompt"] == "Answer in German, briefly."
    presets.write_text("{}")
    run = await comfyui.run({"1": chat(lmstudio.url, preset="Server style", system_prompt="Mine.")})
    assert run.outcome == "execution_success", (run.error, comfyui.log()[-2000:])  # not refused as "not in list"
    assert lmstudio.chat_requests()[-1].body["system_prompt"] == "Mine."
    notices = [u["content"] for u in run.stream("notice")]
    assert any("Preset 'Server style' no longer exists" in n for n in notices), notices


async def test_thinking_off_reaches_the_server_in_openai_compatible_mode(comfyui, lmstudio):
    lmstudio.thinker = 30
    run = await comfyui.run({"1": chat(lmstudio.url, "OpenAI-compatible", options=["2", 0]),
                             "2": options_node(reasoning="off")})
    assert run.outcome == "execution_success", (run.error, comfyui.log()[-2000:])
    assert executed(run, "1")["lmstudio"][0]["text"] == "An answer."
    assert lmstudio.chat_requests()[-1].body["reasoning_effort"] == "none"
    run = await comfyui.run({"1": chat(lmstudio.url, "OpenAI-compatible", max_tokens=10)})
    assert "spent all of max_tokens (10) on reasoning" in executed(run, "1")["lmstudio"][0]["error"]
