"""The LM Studio Caption Folder node: every image of a folder captioned straight from disk, `<image stem>.txt` beside
each, for LoRA trainers and taggers that read captions there.

Core's dataset loader holds every image of a folder as a float tensor for the whole run (about 14.5 MB an image at
1024 x 1024). Here an image is read only when its turn comes and dropped once its caption is written, so memory does
not grow with the folder. The images go through the chat node's machinery: the same slots and concurrency finding,
the same waiting out of a busy server, the same answer store, and the same live view (one list item per image).
Existing captions are the record of what is done: queued again after a Cancel or a crash, the node goes on where
it stopped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import comfy.model_management as model_management
import folder_paths
from comfy_api.latest import io

from .answer_store import Answer
from .chat import ChatRequest, ConnectionMode, Failure, LMStudioError, Stats, api_token_from_env, unsent_settings
from .client import parallel_slots
from .folder_images import (
    AS_IS_MAX_BYTES,
    CAPPED_AS_IS_BYTES,
    DEFAULT_EXTENSIONS,
    FolderImage,
    SkippedImage,
    caption_suffix,
    find_images,
    parse_extensions,
    read_image,
    resolve_folder,
    write_caption,
)
from .list_item import Aborted, ItemChannel, stream_item
from .list_run import CANCELLED, DONE, FAILED, ListRun, duration, prompt_state
from .node_parts import answer_store, apply_preset, free_comfy_vram, preset_input, unload_after_run
from .options_node import (
    CATEGORY,
    ON_ERROR_RAISE,
    OPTIONS_TYPE,
    UNLOAD,
    ChatOptions,
    newer_schema_fields,
    request_settings,
)
from .presets import NO_PRESET
from .relay import StreamRelay
from .slots import pool_for
from .utils import normalize_server_url

log = logging.getLogger("lmstudio_stream")

DEFAULT_PROMPT = ("Write a caption for this image for training an image model: one paragraph that says what is in "
                  "the picture, its setting, composition, lighting and style. Plain text, no preamble.")
# Images read ahead of the server (at least this many, or twice its slots): enough to keep every slot busy while the
# next ones are read, few enough that memory stays flat (each is at most max_image_side, and at most
# `folder_images.AS_IS_MAX_BYTES` when sent as it is on disk: 2-3 MB for a 1024 x 1024 PNG, 8 MB at worst).
READ_AHEAD_MIN = 16


@dataclass
class FolderRun:
    """What a folder run did, for its report."""

    root: Path
    found: int
    kept: int  # images that had a caption already (left alone)
    started_at: float = field(default_factory=time.monotonic)
    captioned: list[str] = field(default_factory=list)
    resumed: int = 0  # captions whose answer came back from the answer store
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (image, why): files that cannot be read
    failed: list[tuple[str, str]] = field(default_factory=list)  # (image, error): LM Studio's failures
    notes: list[tuple[str, str]] = field(default_factory=list)  # (image, what was done: "first of 12 frames")
    shown: dict[int, dict] = field(default_factory=dict)  # index -> the view's entry for the image (its `ui`)
    model: str = ""  # the model that answered, for after_run = unload
    as_is_bytes: int = AS_IS_MAX_BYTES  # lowered once a server refuses an image as too large (`_ask`)

    def report(self, stopped: bool = False) -> str:
        seconds = max(time.monotonic() - self.started_at, 1e-6)
        done = len(self.captioned)
        rate = done * 60 / seconds
        head = (f"{'Stopped after captioning' if stopped else 'Captioned'} {done:,} of "
                f"{self.found - self.kept:,} images in {self.root} in {duration(seconds)} ({rate:.1f} images/min)")
        lines = [head]
        if self.kept:
            lines.append(f"{self.kept:,} kept: a caption was there already (overwrite to caption them again)")
        if self.resumed:
            lines.append(f"{self.resumed:,} answers came back from an earlier run (resume)")
        for title, rows in (("Skipped", self.skipped), ("Failed", self.failed), ("Note", self.notes)):
            if rows:
                lines.append(f"{title} ({len(rows):,}):")
                lines += [f"  {name}: {why}" for name, why in sorted(rows)]
        return "\n".join(lines)


class LMStudioCaptionFolder(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LMStudioCaptionFolder",
            display_name="LM Studio Caption Folder",
            category=CATEGORY,
            description="Caption every image of a folder with a vision model in LM Studio, straight from disk: a "
            "caption file beside each image (what LoRA trainers read), memory flat however large the folder.",
            **newer_schema_fields(search_aliases=["caption folder", "batch caption", "dataset", "LoRA captions",
                                                  "tagger", "LM Studio", "VLM"]),
            inputs=[
                io.String.Input("folder", default="", tooltip="A folder under ComfyUI's input directory, or an "
                                "absolute path. Caption files are written beside its images."),
                io.String.Input("prompt", multiline=True, default=DEFAULT_PROMPT,
                                tooltip="What the model is asked about each image."),
                io.String.Input("model_id", default="", tooltip="LM Studio model key or loaded instance id of a "
                                "vision model (e.g. qwen/qwen3-vl-4b). Empty uses the model that is loaded."),
                io.Combo.Input("connection_mode", options=[mode.value for mode in ConnectionMode],
                               default=ConnectionMode.REST.value,
                               tooltip="As on LM Studio Chat: SDK, LM Studio's REST API, or OpenAI-compatible "
                               "(also any other OpenAI-compatible server or router)."),
                io.String.Input("server_url", default="http://127.0.0.1:1234",
                                tooltip="The server's address. A bare host gets port 1234."),
                io.Float.Input("temperature", default=0.3, min=0.0, max=2.0, step=0.05,
                               tooltip="Sampling temperature; low keeps captions factual."),
                io.Int.Input("max_tokens", default=-1, min=-1, max=1_000_000,
                             tooltip="Most tokens a caption may take, reasoning included; -1 for no limit."),
                io.String.Input("system_prompt", optional=True, multiline=True, default="",
                                tooltip="Instructions that lead each chat. Empty sends none."),
                io.Boolean.Input("recursive", optional=True, default=False,
                                 tooltip="Also caption the images of its subfolders (hidden ones left out)."),
                io.String.Input("extensions", optional=True, default=DEFAULT_EXTENSIONS,
                                tooltip="Which files are images, by extension, comma-separated."),
                io.String.Input("caption_extension", optional=True, default="txt",
                                tooltip="The caption file's extension: txt for kohya-style trainers, or caption."),
                io.Boolean.Input("overwrite", optional=True, default=False,
                                 tooltip="Caption images that have a caption already, replacing it. Off: they are "
                                 "kept, so a run queued again goes on where it stopped."),
                io.Custom(OPTIONS_TYPE).Input("options", optional=True, tooltip="Settings from an LM Studio Chat "
                                              "Options node (image size, sampling, structured output, concurrency, "
                                              "error policy). Unconnected: the defaults."),
                preset_input(),  # added later: last, as a saved workflow holds the widgets' values by position
            ],
            outputs=[
                io.String.Output("report", display_name="report", tooltip="Counts, skipped files and why, time, "
                                 "images per minute."),
                io.Int.Output("captioned", display_name="captioned", tooltip="Caption files written by this run."),
                io.String.Output("folder", display_name="folder", tooltip="The folder captioned, as a full path."),
            ],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, preset: str = NO_PRESET) -> bool:
        return True  # a preset gone since the workflow was saved is named in the report (as on LM Studio Chat)

    @classmethod
    def fingerprint_inputs(cls, **kwargs) -> float:
        # Always run: the folder's files may have changed, and images with a caption are skipped, so a run that
        # finds nothing to do costs only a listing.
        return float("nan")

    @classmethod
    async def execute(
        cls,
        folder: str,
        prompt: str,
        model_id: str,
        connection_mode: str,
        server_url: str,
        temperature: float,
        max_tokens: int,
        system_prompt: str = "",
        recursive: bool = False,
        extensions: str = DEFAULT_EXTENSIONS,
        caption_extension: str = "txt",
        overwrite: bool = False,
        options: ChatOptions | None = None,
        preset: str = NO_PRESET,
    ) -> io.NodeOutput:
        options = options if isinstance(options, ChatOptions) else ChatOptions()
        mode = ConnectionMode(connection_mode)
        prompt, system_prompt, options, preset_notices = apply_preset(preset, prompt, system_prompt, options, mode)
        # Everything that can be wrong with the inputs is said before anything is sent.
        root = resolve_folder(folder, folder_paths.get_input_directory())
        suffix = caption_suffix(caption_extension)
        images = find_images(root, parse_extensions(extensions), suffix, recursive=recursive)
        if not images:
            where = "it or its subfolders" if recursive else "it"
            raise LMStudioError(f"No images in {root}: none of {where} holds a file ending in {extensions}.")
        todo = [image for image in images if overwrite or not image.caption.exists()]
        base = ChatRequest(
            prompt=prompt, server_url=server_url, mode=mode, model=model_id.strip(),
            system_prompt=system_prompt, temperature=temperature, max_tokens=max_tokens, reasoning=options.reasoning,
            api_token=api_token_from_env(), **request_settings(options),
        )
        node_id = str(cls.hidden.unique_id)
        done = FolderRun(root, len(images), len(images) - len(todo))
        done.notes += [("preset", sentence) for sentence in preset_notices]
        run = ListRun()
        prompt_state().runs[node_id] = run
        run.count = len(todo)
        log.info("LM Studio Caption Folder (node %s): %d images in %s, %d to caption", node_id, len(images), root,
                 len(todo))
        try:
            await _caption_all(todo, base, options, overwrite, node_id, run, done)
        except model_management.InterruptProcessingException:
            log.info("LM Studio Caption Folder (node %s): %s", node_id, done.report(stopped=True))
            raise
        if run.abort_message is not None:
            raise RuntimeError(f"{run.abort_message}\n{done.report(stopped=True)}")
        report = done.report()
        log.info("LM Studio Caption Folder (node %s): %s", node_id, report.splitlines()[0])
        if options.after_run == UNLOAD and done.model:
            await unload_after_run(base, done.model, ItemChannel(node_id, len(todo) - 1, run))
        # The view after the run (and after a reload): every image's caption or why it has none, and the report's
        # first line as the run's notice.
        entries = [done.shown[index] for index in sorted(done.shown)]
        if entries:
            entries[-1] = {**entries[-1], "notice": report.splitlines()[0]}
        return io.NodeOutput(report, len(done.captioned), str(root), ui={"lmstudio": entries})


async def _caption_all(todo: list[FolderImage], base: ChatRequest, options: ChatOptions, overwrite: bool,
                       node_id: str, run: ListRun, done: FolderRun) -> None:
    """Caption `todo`, reading each image only when a slot is near: at most a few more than the server takes at once
    are in memory. Returns when all are done (or the error policy stopped them), or raises Cancel once the images in
    flight have stopped."""
    pool = pool_for((normalize_server_url(base.server_url), base.model), options.max_parallel,
                    lambda: parallel_slots(base))
    in_flight: set[asyncio.Task] = set()
    for index, image in enumerate(todo):
        while len(in_flight) >= max(READ_AHEAD_MIN, 2 * (pool.limit or 0)):
            _, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
        if run.stopped.is_set():
            break
        in_flight.add(asyncio.create_task(_caption_one(index, image, base, options, overwrite, node_id, run, done)))
    await asyncio.gather(*in_flight)  # every image records its own failure (`_caption_one`) and raises none
    if prompt_state().interrupted:
        raise model_management.InterruptProcessingException()


class _Unwritable(LMStudioError):
    """A caption that cannot be written (a read-only folder, a full disk): every other image would fail alike."""


async def _caption_one(index: int, image: FolderImage, base: ChatRequest, options: ChatOptions, overwrite: bool,
                       node_id: str, run: ListRun, done: FolderRun) -> None:
    """One image: read, ask (or take the answer kept from an earlier run), write its caption; every outcome recorded
    in `done` and shown on the node."""
    run.start(index)
    channel = ItemChannel(node_id, index, run)
    channel.send("clear")
    name = image.name(done.root)
    channel.send("status", name)
    try:
        data, note = await _read(image, options, done.as_is_bytes)
        if note:
            done.notes.append((name, note))
        if index == 0:
            for sentence in unsent_settings(base):
                channel.notice(sentence, sentence)
        answer, resumed = await _ask(image, data, base, options, channel, done)
        written = await _write(image, answer.text, overwrite)
    except SkippedImage as exc:
        done.skipped.append((name, str(exc)))
        log.warning("LM Studio Caption Folder (node %s): skipped %s: %s", node_id, name, exc)
        return _finish(channel, FAILED, error=f"{name}: skipped, {exc}", done=done)
    except model_management.InterruptProcessingException:  # seen by the whole prompt (`prompt_state`)
        return _finish(channel, CANCELLED, status="Cancelled")
    except Aborted:
        return _finish(channel, CANCELLED, status="Stopped: another image failed")
    except Exception as exc:  # this image fails, explained; the error policy says whether the others go on
        message = str(exc) if isinstance(exc, LMStudioError) else f"{type(exc).__name__}: {exc}"
        if isinstance(exc, LMStudioError):
            log.error("LM Studio Caption Folder (node %s): %s: %s", node_id, name, message)
        else:  # not one of the pack's own explanations: a bug to report, with its traceback
            log.exception("LM Studio Caption Folder (node %s): %s failed", node_id, name)
        done.failed.append((name, message))
        _finish(channel, FAILED, error=f"{name}: {message}", done=done)
        if options.on_error == ON_ERROR_RAISE or isinstance(exc, _Unwritable):
            run.abort(f"{name}: {message}")
        # Recorded, not raised: an exception kept by its task would keep its frames, the image's bytes among them.
        return None
    done.resumed += resumed
    if written:
        done.captioned.append(name)
        done.model = done.model or answer.stats.model or ""
    else:
        done.notes.append((name, "a caption appeared while this one was made: kept, not replaced"))
    stats = f"{name} | {answer.stats.summary()}"
    channel.send("stats", stats)
    done.shown[index] = {"index": index, "text": answer.text, "reasoning": answer.reasoning, "stats": stats}
    _finish(channel, DONE)


async def _read(image: FolderImage, options: ChatOptions, as_is_bytes: int) -> tuple[bytes, str]:
    return await asyncio.to_thread(read_image, image.image, max_side=options.max_image_side,
                                   quality=options.jpeg_quality, as_is_bytes=as_is_bytes)


async def _ask(image: FolderImage, data: bytes, base: ChatRequest, options: ChatOptions, channel: ItemChannel,
               done: FolderRun) -> tuple[Answer, bool]:
    """`_answer` for the image as read; one that a server (or a proxy before it) refused as too large goes once more
    as the smaller JPEG that files over `CAPPED_AS_IS_BYTES` are made into, and so do the images after it."""
    try:
        return await _answer(dataclasses.replace(base, images=(data,)), options, channel)
    except LMStudioError as exc:
        if exc.kind is not Failure.TOO_LARGE:
            raise
        refused = exc
    done.as_is_bytes = CAPPED_AS_IS_BYTES
    smaller, _ = await _read(image, options, CAPPED_AS_IS_BYTES)
    if len(smaller) >= len(data):
        raise refused
    done.notes.append((image.name(done.root), f"refused as too large ({len(data):,} bytes; HTTP 413): sent as a JPEG "
                       f"of {len(smaller):,} bytes, as are the later images over {CAPPED_AS_IS_BYTES:,} bytes"))
    return await _answer(dataclasses.replace(base, images=(smaller,)), options, channel)


async def _answer(request: ChatRequest, options: ChatOptions, channel: ItemChannel) -> tuple[Answer, bool]:
    """The answer kept from an earlier run of this very request (and True), or a new one, streamed onto the node."""
    store = answer_store() if options.resume else None
    key, kept = await store.lookup(request) if store is not None else ("", None)
    if kept is not None:
        channel.send("text", kept.text)
        return kept, True
    if options.free_comfy_vram:
        free_comfy_vram(channel)
    relay = StreamRelay(channel.send, channel.progress, channel.notice)
    await stream_item(request, options.max_parallel, options.busy_wait_seconds, relay, channel)
    answer = Answer("".join(relay.text).strip(), "".join(relay.reasoning),
                    relay.stats or Stats(mode=request.mode.value), relay.response_id)
    if not answer.text:
        # One that only reasoned failed before this, with what to change (`chat.no_answer`).
        raise LMStudioError("The model gave an empty answer: no caption written.")
    if store is not None:
        await store.keep(key, answer)
    return answer, False


async def _write(image: FolderImage, text: str, overwrite: bool) -> bool:
    try:
        return await asyncio.to_thread(write_caption, image.caption, text, overwrite=overwrite)
    except OSError as exc:
        raise _Unwritable(f"Could not write {image.caption}: {exc}") from exc


def _finish(channel: ItemChannel, state: str, *, status: str = "", error: str = "",
            done: FolderRun | None = None) -> None:
    if error:
        channel.send("error", error)
        if done is not None:
            done.shown[channel.index] = {"index": channel.index, "text": "", "reasoning": "", "stats": "",
                                         "error": error}
    channel.state(state)
    if status:
        channel.send("status", status)
    channel.send("done")
