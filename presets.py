"""Prompt presets: a system prompt (and, where it fits, a prompt and a JSON schema) chosen by name.

Built-in ones, plus the user's own from a JSON file in ComfyUI's user folder, read again whenever it changed (no
restart). A node's own text always wins: a preset fills only what the node leaves empty, so a saved workflow that
spells out its prompts runs the same whatever happens to the preset, and one that relies on a preset that is gone
says so (`resolve`) and runs with its own.

The user's file maps a name to its texts; `json_schema` is a JSON Schema (an object, or its text):

    {"My caption style": {"system_prompt": "...", "prompt": "...", "json_schema": {"type": "object", ...}}}

No ComfyUI imports: the caller says where the file is.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("lmstudio_stream")

NO_PRESET = "none"
USER_PRESETS_FILE = "lmstudio-presets.json"  # in ComfyUI's user folder of the default user (`user/default/`)
BUILT_IN_SOURCE = "built-in"


@dataclass(frozen=True)
class Preset:
    name: str
    system_prompt: str
    prompt: str = ""
    json_schema: str = ""  # JSON text; "" for a free answer
    source: str = BUILT_IN_SOURCE  # "built-in", or the user's file


_PROMPT_PARTS_SCHEMA = json.dumps({
    "type": "object",
    "properties": {
        "subject": {"type": "string"},
        "setting": {"type": "string"},
        "style": {"type": "string"},
        "lighting": {"type": "string"},
        "camera": {"type": "string"},
        "positive": {"type": "string"},
        "negative": {"type": "string"},
    },
    "required": ["subject", "setting", "style", "lighting", "camera", "positive", "negative"],
    "additionalProperties": False,
}, indent=1)

BUILT_IN: tuple[Preset, ...] = (
    Preset("Short caption",
           "You caption images for an image dataset. Answer with one sentence of at most 25 words that says what "
           "the image shows: the main subject, what it is doing and where. No preamble, no quotes, no opinions.",
           "Caption this image."),
    Preset("Detailed caption",
           "You caption images for training an image model. Write one paragraph of 60 to 120 words, plain text: "
           "the main subject and its appearance, the action, the setting and background, the composition and "
           "framing, the lighting, the colours, and the medium or style (photo, painting, 3D render, ...). Say only "
           "what is visible; no preamble, no lists, no opinions.",
           "Describe this image."),
    Preset("Booru-style tags",
           "You tag images the way anime image boards do. Answer with one line of comma-separated lowercase tags, "
           "most important first: the count of people (1girl, 2boys, no humans), the subject's features, clothing, "
           "pose and expression, the objects, the setting, the framing (close-up, full body), the lighting and the "
           "style. Use underscores inside a tag only where the board does (long_hair). 15 to 40 tags; nothing else.",
           "Tag this image."),
    Preset("SDXL prompt",
           "You write prompts for Stable Diffusion XL. Turn the user's idea, or the image given, into one prompt: "
           "comma-separated phrases, the subject first, then details, setting, composition, lighting, colour and "
           "style, then quality words (highly detailed, sharp focus). At most 75 words. Answer with the prompt only.",
           ""),
    Preset("Flux prompt",
           "You write prompts for FLUX image models, which read natural language. Turn the user's idea, or the image "
           "given, into two to four plain sentences: the subject and what it does, the setting, the composition and "
           "camera (lens, angle, depth of field), the lighting and mood, the style. Put any text that must appear in "
           "the image in quotes. Answer with the prompt only.",
           ""),
    Preset("Video prompt",
           "You write prompts for text-to-video and image-to-video models (Wan, LTX-Video, HunyuanVideo). Turn the "
           "user's idea, or the frames given, into one paragraph of 50 to 120 words in the present tense: the "
           "subject and its motion from start to end, the camera's movement (static, pan, dolly, orbit), the "
           "setting, the lighting and the style. Describe one continuous shot. Answer with the prompt only.",
           ""),
    Preset("Image to prompt parts (JSON)",
           "You take images apart into the parts of a text-to-image prompt. Fill every field briefly: subject, "
           "setting, style, lighting, camera (framing, angle, lens), positive (a full comma-separated prompt that "
           "recreates the image) and negative (what to avoid, comma-separated).",
           "Take this image apart into prompt parts.",
           _PROMPT_PARTS_SCHEMA),
)


@dataclass(frozen=True)
class Catalogue:
    """Every preset by name (the user's replace built-in ones of the same name), and what was wrong with the user's
    file ('' when nothing)."""

    presets: dict[str, Preset]
    problem: str = ""

    def names(self) -> list[str]:
        return [NO_PRESET, *self.presets]


def catalogue(user_file: Path) -> Catalogue:
    """The presets, the user's file read again only when it changed since the last call."""
    try:
        stat = user_file.stat()
    except OSError:
        return Catalogue({p.name: p for p in BUILT_IN})  # no file of one's own: the built-in ones
    key = (str(user_file), stat.st_mtime_ns, stat.st_size)
    if _cache.get(key) is None:
        _cache.clear()
        _cache[key] = _read(user_file)
    return _cache[key]


_cache: dict[tuple[str, int, int], Catalogue] = {}


def _read(user_file: Path) -> Catalogue:
    built_in = {p.name: p for p in BUILT_IN}
    try:
        data = json.loads(user_file.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("it must be a JSON object that maps each preset's name to its texts")
        own = {str(name): _preset(str(name), texts, str(user_file)) for name, texts in data.items()}
    except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        problem = f"Your presets file {user_file} was not read: {exc}"
        log.warning("LM Studio presets: %s", problem)
        return Catalogue(built_in, problem)
    return Catalogue(built_in | own)


def _preset(name: str, texts: Any, source: str) -> Preset:
    if name == NO_PRESET:
        raise ValueError(f"'{NO_PRESET}' is not a preset's name (it means no preset)")
    if not isinstance(texts, dict) or not isinstance(texts.get("system_prompt", ""), str):
        raise ValueError(f"preset '{name}' must be an object with a system_prompt text (and prompt, json_schema)")
    schema = texts.get("json_schema", "")
    return Preset(name, texts.get("system_prompt", ""), str(texts.get("prompt", "")),
                  schema if isinstance(schema, str) else json.dumps(schema, indent=1), source)


@dataclass(frozen=True)
class Resolved:
    """The texts a run uses once its preset filled what the node left empty, and what the node should say."""

    prompt: str
    system_prompt: str
    json_schema: str
    notice: str = ""


def resolve(name: str, presets: Catalogue, *, prompt: str, system_prompt: str, json_schema: str) -> Resolved:
    """Fill what the node left empty (blank) from preset `name`; the node's own text always wins."""
    if not name or name == NO_PRESET:
        return Resolved(prompt, system_prompt, json_schema)
    preset = presets.presets.get(name)
    if preset is None:
        where = f" ({presets.problem})" if presets.problem else ""
        return Resolved(prompt, system_prompt, json_schema,
                        f"Preset '{name}' no longer exists (removed or renamed in your presets file{where}): this run "
                        "used the node's own prompts. Pick another preset, or 'none'.")
    return Resolved(_own_or(prompt, preset.prompt), _own_or(system_prompt, preset.system_prompt),
                    _own_or(json_schema, preset.json_schema))


def _own_or(own: str, preset_text: str) -> str:
    return own if own.strip() else preset_text


def fingerprint(name: str, presets: Catalogue) -> str:
    """What a run's preset amounts to, so a preset whose text changed runs again instead of ComfyUI's cached result."""
    preset = presets.presets.get(name)
    return json.dumps([name, preset.system_prompt, preset.prompt, preset.json_schema] if preset else [name])
