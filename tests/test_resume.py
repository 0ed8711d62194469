"""Resume: finished answers kept in ComfyUI's user folder, so a cancelled, failed or crashed list generates only
what it had not finished. The store on its own (keys, bound, broken files, threads, processes), then the node."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import comfy.model_management as model_management
import pytest
import torch

from chat_node_helpers import Recorder, events, next_prompt, run, run_list
from lmstudio_pack.answer_store import FILE_NAME, Answer, AnswerStore, request_key
from lmstudio_pack.chat import ChatRequest, ConnectionMode, Stats
from lmstudio_pack.node_parts import ANSWERS_FOLDER

MODES = pytest.mark.parametrize("mode", ["REST API", "OpenAI-compatible", "SDK"])
BASE = ChatRequest(prompt="Caption", server_url="http://127.0.0.1:1234", mode=ConnectionMode.SDK, model="m",
                   images=(b"jpeg-1",), seed=3)
ANSWER = Answer("A cat.", "Looks like a cat.", Stats(mode="SDK", model="m", tokens_per_second=41.5, output_tokens=4))


# ----------------------------------------------------------------------------------------------------- the store


@pytest.mark.parametrize("change", [
    {"prompt": "Caption!"}, {"system_prompt": "Be short."}, {"model": "n"}, {"mode": ConnectionMode.REST},
    {"server_url": "http://10.0.0.2:1234"}, {"images": (b"jpeg-2",)}, {"images": (b"jpeg-1", b"jpeg-1")},
    {"temperature": 0.8}, {"max_tokens": 10}, {"reasoning": "off"}, {"seed": 4},
], ids=lambda change: next(iter(change)))
def test_anything_that_decides_the_answer_changes_the_key(change):
    assert request_key(dataclasses.replace(BASE, **change)) != request_key(BASE)


@pytest.mark.parametrize("change", [
    {"api_token": "sk-lm-a:b"}, {"connect_timeout": 1.0}, {"idle_timeout": 5.0}, {"ttl_seconds": 60},
    {"server_url": "127.0.0.1"}, {"server_url": "http://127.0.0.1:1234/v1/"},
], ids=lambda change: f"{next(iter(change))}={next(iter(change.values()))}")
def test_how_a_request_travels_keeps_the_key(change):
    assert request_key(dataclasses.replace(BASE, **change)) == request_key(BASE)


def test_an_answer_comes_back_exactly(tmp_path):
    store = AnswerStore(tmp_path)
    assert store.get(request_key(BASE)) is None
    store.put(request_key(BASE), ANSWER)
    assert AnswerStore(tmp_path).get(request_key(BASE)) == ANSWER  # a new store on the same folder: a restarted ComfyUI
    assert store.get(request_key(dataclasses.replace(BASE, seed=4))) is None


def test_the_least_recently_used_go_first_when_full(tmp_path):
    store = AnswerStore(tmp_path, max_bytes=2_000)
    requests = [dataclasses.replace(BASE, prompt=f"p{i}") for i in range(20)]
    for index, request in enumerate(requests):
        store.put(request_key(request), dataclasses.replace(ANSWER, text=f"answer {index} " + "x" * 100))
        store.get(request_key(requests[0]))  # the first is used again and again: it stays
    kept = [i for i, request in enumerate(requests) if store.get(request_key(request)) is not None]
    assert 0 in kept and 19 in kept and 1 not in kept
    with sqlite3.connect(store.path) as db:
        (total,) = db.execute("SELECT SUM(size) FROM answers").fetchone()
    assert total <= 2_000


def test_a_broken_file_is_set_aside_and_a_new_one_starts(tmp_path, caplog):
    (tmp_path / FILE_NAME).write_bytes(b"not a database at all" * 100)  # a disk error, a truncated copy
    store = AnswerStore(tmp_path)  # as ComfyUI starts and meets it
    with caplog.at_level(logging.WARNING, "lmstudio_stream"):
        assert store.get(request_key(BASE)) is None
    assert "unreadable" in caplog.text and (tmp_path / f"{FILE_NAME}.broken").exists()
    store.put(request_key(BASE), ANSWER)
    assert store.get(request_key(BASE)) == ANSWER


def test_a_folder_deleted_while_comfyui_runs_starts_again_and_keeps_the_next_answers(tmp_path):
    """The store keeps its connection between calls; one to a deleted file would write where nobody reads."""
    folder = tmp_path / "answers"
    store = AnswerStore(folder)
    store.put(request_key(BASE), ANSWER)
    shutil.rmtree(folder)
    assert store.get(request_key(BASE)) is None
    store.put(request_key(BASE), ANSWER)
    assert (folder / FILE_NAME).exists()
    # another process (ComfyUI restarted) reads it from the file
    assert AnswerStore(folder).get(request_key(BASE)) == ANSWER


def test_an_entry_of_another_shape_is_generated_anew(tmp_path):
    store = AnswerStore(tmp_path)
    store.put(request_key(BASE), ANSWER)
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE answers SET answer = ?", ('{"text": "half', ))
    assert store.get(request_key(BASE)) is None
    store.put(request_key(BASE), ANSWER)
    assert store.get(request_key(BASE)) == ANSWER


def test_threads_writing_at_once_lose_nothing(tmp_path):
    store = AnswerStore(tmp_path)

    def write(worker: int) -> None:
        for index in range(40):
            store.put(request_key(dataclasses.replace(BASE, prompt=f"{worker}-{index}")), ANSWER)

    threads = [threading.Thread(target=write, args=(worker,)) for worker in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(store.get(request_key(dataclasses.replace(BASE, prompt=f"{w}-{i}"))) == ANSWER
               for w in range(6) for i in range(40))


# A writer on its own: the pack's modules below the node as a bare package (no ComfyUI in that process).
WRITER = """
import dataclasses, sys, types
package = types.ModuleType("lmstudio_pack")
package.__path__ = [sys.argv[1]]
sys.modules["lmstudio_pack"] = package
from lmstudio_pack.answer_store import Answer, AnswerStore, request_key
from lmstudio_pack.chat import ChatRequest, Stats
store = AnswerStore(sys.argv[2])
for index in range(40):
    store.put(request_key(ChatRequest(prompt=f"{sys.argv[3]}-{index}")), Answer("A cat.", "", Stats(mode="SDK")))
"""


def test_two_processes_on_one_user_folder_lose_nothing(tmp_path):
    """Two ComfyUI processes sharing a user folder (or two prompts at once) write into one file."""
    root = str(Path(__file__).resolve().parent.parent)
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, root, str(tmp_path), str(worker)])
               for worker in range(3)]
    assert [writer.wait(60) for writer in writers] == [0, 0, 0]
    store = AnswerStore(tmp_path)
    assert all(store.get(request_key(ChatRequest(prompt=f"{w}-{i}"))) is not None for w in range(3) for i in range(40))


# ------------------------------------------------------------------------------------------------------ the node


def slow(fake, seconds: float) -> None:
    fake.event_delay = seconds
    fake.sdk.fragment_delay = seconds


async def cancel_when(condition, poll: float = 0.01) -> None:
    while not condition():
        await asyncio.sleep(poll)
    model_management.interrupt_current_processing(True)


def done_items() -> int:
    return [c for k, c in events(states=True) if k == "item"].count("done")


@MODES
async def test_a_cancelled_list_generates_only_what_it_had_not_finished(lmstudio, comfy, mode, user_folder):
    lmstudio.echo = True
    slow(lmstudio, 0.03)
    # Later items take longer, so some are finished and others are still running when Cancel comes.
    lmstudio.delay_for = {f"Describe {i}": 0.1 * i for i in range(12)}
    canceller = asyncio.create_task(cancel_when(lambda: done_items() >= 5))
    with pytest.raises(model_management.InterruptProcessingException):
        await run_list(lmstudio.url, mode, count=12, max_parallel=12)
    await canceller
    finished = {d["index"] for _, _, d, _ in comfy.messages if d["chunk_type"] == "item" and d["content"] == "done"}
    assert 5 <= len(finished) < 12
    model_management.interrupt_current_processing(False)
    lmstudio.predictions.clear()
    Recorder.current.messages.clear()

    outputs, _, _ = await next_prompt(run_list(lmstudio.url, mode, count=12, max_parallel=12))
    assert outputs[0] == [f"Answer to Describe {i}" for i in range(12)]  # in order, every one
    assert sorted(lmstudio.predictions) == sorted(f"Describe {i}" for i in range(12) if i not in finished)
    notices = [c for k, c in events() if k == "notice"]
    assert notices and notices[-1].startswith(f"{len(finished)} of 12 answers came back finished from the last run")
    assert (user_folder / ANSWERS_FOLDER / FILE_NAME).exists()


async def test_resumed_answers_are_exactly_the_first_ones(lmstudio, comfy):
    """Text, reasoning, statistics and every figure output: a resumed item is indistinguishable downstream."""
    first, first_ui, _ = await run_list(lmstudio.url, "SDK", count=3)
    lmstudio.predictions.clear()
    again, again_ui, _ = await run_list(lmstudio.url, "SDK", count=3)
    assert not lmstudio.predictions
    # The list's last item adds the list's summary to its statistics: how this run went, not what an item said.
    assert again[2][-1].endswith("\nlist: 3 of 3 done, 3 resumed" + again[2][-1].split("3 resumed", 1)[1])
    assert first[2][-1].split("\nlist: ")[1].startswith("3 of 3 done | ")
    for outputs in (first, again):
        outputs[2][-1] = outputs[2][-1].split("\nlist: ")[0]
    assert again == first
    # The view gets the same entries, and the word that they came back (on the item that returned last).
    latest = max(again_ui["lmstudio"], key=lambda entry: entry["returned"])
    assert latest["notice"].startswith("3 of 3 answers came back finished")
    for entry in (*first_ui["lmstudio"], *again_ui["lmstudio"]):
        entry.pop("notice", None)
        entry.pop("returned")
        entry["stats"] = entry["stats"].split("\nlist: ")[0]
    assert again_ui == first_ui


async def test_the_lists_last_item_returns_last_with_the_final_notice_and_the_summary(lmstudio, comfy):
    """Items finish out of list order (an answer kept from the last run comes back at once, a big image encodes
    slowly), but the list's last item waits for the others: it returns last, so the view (which shows the notice of
    the item with the highest `returned`) and a saver downstream both get the final count and the list's summary."""
    lmstudio.echo = True
    slow(lmstudio, 0.02)
    small = torch.rand(1, 16, 16, 3)
    lmstudio.delay_for = {"A": 1.0}  # generated: it returns after the encoding of the big image, however slow
    big = torch.linspace(0, 1, 3000).view(1, 1, 3000, 1).expand(1, 3000, 3000, 3)  # sent: ~0.4 s
    await run_list(lmstudio.url, "REST API", count=2, per_item={"image": [big, small], "prompt": ["B", "C"]})
    outputs, ui, _ = await next_prompt(run_list(
        lmstudio.url, "REST API", count=3, per_item={"image": [small, big, small], "prompt": ["A", "B", "C"]}))
    assert outputs[0] == ["Answer to A", "Answer to B", "Answer to C"]
    entries = ui["lmstudio"]
    assert [entry["returned"] for entry in entries] == [2, 1, 3], entries  # B back first, then A generated, then C
    assert entries[-1]["notice"].startswith("2 of 3 answers came back finished"), entries
    assert "\nlist: 3 of 3 done, 2 resumed | " in entries[-1]["notice"]
    assert outputs[2][2].split("\n")[1].startswith("list: 3 of 3 done, 2 resumed | ")
    assert "list:" not in outputs[2][0] + outputs[2][1]


async def test_a_failed_list_with_raise_loses_nothing(lmstudio, comfy):
    """on_error = raise stops the list; queued again, only the failed and the stopped items are generated."""
    lmstudio.echo = True
    slow(lmstudio, 0.02)
    lmstudio.delay_for = {f"Describe {i}": 0.3 for i in range(5, 8)}
    lmstudio.fail_prompts = {"Describe 4": 2}  # fails, and fails its retry
    with pytest.raises(RuntimeError, match="HTTP 500"):  # 4 at a time: items 4-7 start once 0-3 are done
        await run_list(lmstudio.url, "REST API", count=8, on_error="raise", max_parallel=4)
    finished = {d["index"] for _, _, d, _ in comfy.messages if d["chunk_type"] == "item" and d["content"] == "done"}
    # Which of items 1-3 finish before item 4 fails (at once, twice) is the executor's timing; item 4 never does.
    assert 0 in finished and not finished & {4, 5, 6, 7}
    lmstudio.predictions.clear()
    outputs, _, _ = await next_prompt(run_list(lmstudio.url, "REST API", count=8, on_error="raise", max_parallel=4))
    assert outputs[0] == [f"Answer to Describe {i}" for i in range(8)]
    assert sorted(lmstudio.predictions) == [f"Describe {i}" for i in range(8) if i not in finished]


async def test_two_lists_that_share_items(lmstudio, comfy):
    lmstudio.echo = True
    await run_list(lmstudio.url, "REST API", count=6, per_item={"prompt": [f"Describe {i}" for i in range(6)]})
    lmstudio.predictions.clear()
    outputs, _, _ = await run_list(lmstudio.url, "REST API", count=6,
                                   per_item={"prompt": [f"Describe {i}" for i in range(3, 9)]})
    assert outputs[0] == [f"Answer to Describe {i}" for i in range(3, 9)]
    assert sorted(lmstudio.predictions) == ["Describe 6", "Describe 7", "Describe 8"]


async def test_images_are_part_of_the_item(lmstudio, comfy):
    lmstudio.echo = True
    red, blue = torch.zeros(1, 32, 32, 3), torch.ones(1, 32, 32, 3)
    red[..., 0] = 1.0
    await run_list(lmstudio.url, "REST API", count=2, per_item={"image": [red, blue], "prompt": ["Caption"] * 2})
    assert lmstudio.predictions == ["Caption", "Caption"]
    lmstudio.predictions.clear()
    green = torch.zeros(1, 32, 32, 3)
    green[..., 1] = 1.0
    await run_list(lmstudio.url, "REST API", count=2, per_item={"image": [red, green], "prompt": ["Caption"] * 2})
    assert lmstudio.predictions == ["Caption"]  # only the new image


@pytest.mark.parametrize("change", [{"seed": 1}, {"temperature": 0.2}, {"resume": False}])
async def test_a_new_seed_a_new_setting_or_resume_off_generate_anew(lmstudio, comfy, change):
    await run_list(lmstudio.url, "REST API", count=3, seed=0)
    lmstudio.predictions.clear()
    await run_list(lmstudio.url, "REST API", count=3, **({"seed": 0} | change))
    assert len(lmstudio.predictions) == 3


async def test_resume_off_stores_nothing(lmstudio, comfy, user_folder):
    await run_list(lmstudio.url, "REST API", count=2, resume=False)
    assert not (user_folder / ANSWERS_FOLDER).exists()


async def test_a_single_run_comes_back_too_and_says_so(lmstudio, comfy):
    """ComfyUI's rule for a cached node, across restarts: the same request and seed give the same answer."""
    first = await run(lmstudio.url, "REST API", seed=5)
    Recorder.current.messages.clear()
    lmstudio.predictions.clear()
    again = await run(lmstudio.url, "REST API", seed=5)
    assert again.result == first.result and not lmstudio.predictions
    (notice,) = [c for k, c in events() if k == "notice"]
    assert "earlier run of the same request and seed" in notice and "a new seed" in notice


async def test_a_failed_item_is_not_kept(lmstudio, comfy):
    lmstudio.echo = True
    lmstudio.fail_prompts = {"Describe 1": 2}
    outputs, _, _ = await run_list(lmstudio.url, "REST API", count=3)
    assert outputs[0][1] == ""
    lmstudio.predictions.clear()
    outputs, _, _ = await run_list(lmstudio.url, "REST API", count=3)
    assert lmstudio.predictions == ["Describe 1"] and outputs[0][1] == "Answer to Describe 1"


async def test_an_unusable_answers_file_never_fails_a_run(lmstudio, comfy, user_folder, caplog):
    folder = user_folder / ANSWERS_FOLDER
    folder.mkdir(parents=True)
    (folder / FILE_NAME).mkdir()  # a folder where the file should be: sqlite cannot open it
    outputs, _, _ = await run_list(lmstudio.url, "REST API", count=2)
    assert all(outputs[0]) and "does not resume" in caplog.text
