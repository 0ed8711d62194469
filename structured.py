"""Structured output: a JSON Schema checked before anything is sent, every answer checked against it, and one field
read out of a JSON document. No ComfyUI imports.

The schema is the JSON Schema itself (what goes under OpenAI's `json_schema.schema` and the SDK's `jsonSchema`),
checked against its own metaschema with `jsonschema`, so a typo is refused here rather than by a server mid-list.
"""

from __future__ import annotations

import json
from typing import Any

from jsonschema.exceptions import SchemaError, ValidationError
from jsonschema.validators import validator_for

from .chat import LMStudioError

Schema = dict[str, Any]


def parse_schema(text: str) -> Schema | None:
    """The JSON Schema in `text`, or None for an empty text; a text that is not one is refused with a reason."""
    if not text.strip():
        return None
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise LMStudioError(f"json_schema is not JSON: {exc}. Paste a JSON Schema such as "
                            '{"type": "object", "properties": {"subject": {"type": "string"}}}.') from None
    if not isinstance(schema, dict):
        raise LMStudioError(f"json_schema must be a JSON object (a JSON Schema), not {type(schema).__name__}.")
    if "schema" in schema and not {"type", "properties", "$schema"} & set(schema):
        raise LMStudioError("json_schema holds a wrapper (its schema sits under \"schema\"): paste the JSON Schema "
                            "itself, the object under \"schema\".")
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        raise LMStudioError(f"json_schema is not a valid JSON Schema: {exc.message} (at {_where(exc.path)}).") from None
    return schema


def check_answer(text: str, schema: Schema) -> None:
    """Raise a human error unless `text` is one JSON document that matches `schema`."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        cut = " (it ends early: raise max_tokens)" if text.strip() and not text.rstrip().endswith(("}", "]")) else ""
        raise LMStudioError(f"The answer is not JSON{cut}: {exc}. It began: {text[:200]!r}. The server may not "
                            "support structured output: use LM Studio in SDK or OpenAI-compatible mode.") from None
    try:
        validator_for(schema)(schema).validate(document)
    except ValidationError as exc:
        raise LMStudioError(f"The answer does not match json_schema: {exc.message} (at {_where(exc.path)}).") from None


def _where(path: Any) -> str:
    parts = list(path)
    return ".".join(str(part) for part in parts) if parts else "the top"


# ------------------------------------------------------------------------------------------ one field


def read_field(text: str, path: str) -> Any:
    """The value at `path` (`subject`, `items.0.name`, `items[0].name`; empty: the whole document) in JSON `text`."""
    if not text.strip():
        raise LMStudioError("The text is empty, not JSON (an answer that failed is empty: see the chat node).")
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise LMStudioError(f"The text is not JSON: {exc}. It began: {text[:120]!r}.") from None
    walked: list[str] = []
    for step in _steps(path):
        value = _step(value, step, ".".join(walked) or "the document")
        walked.append(step)
    return value


def _steps(path: str) -> list[str]:
    return [step for step in path.replace("[", ".").replace("]", "").split(".") if step.strip()]


def _step(value: Any, step: str, where: str) -> Any:
    step = step.strip()
    if isinstance(value, dict):
        if step not in value:
            keys = ", ".join(map(repr, value)) or "none"
            raise LMStudioError(f"No field {step!r} in {where}; its fields: {keys}.")
        return value[step]
    if isinstance(value, list):
        if not step.lstrip("-").isdigit():
            raise LMStudioError(f"{where} is a list: use a number to pick an entry, not {step!r}.")
        index = int(step)
        if not -len(value) <= index < len(value):
            raise LMStudioError(f"No entry {index} in {where}: it has {len(value)} (0 to {len(value) - 1}).")
        return value[index]
    raise LMStudioError(f"{where} is {_kind(value)} ({value!r}), so it has no field {step!r}.")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object"}[type(value)]


def as_string(value: Any) -> str:
    """Text for a text input: strings as they are, everything else as compact JSON; null is empty."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def as_int(value: Any, path: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return int(value)
    raise LMStudioError(f"{path or 'The document'} is {_kind(value)} ({_short(value)}), not a whole number.")


def as_float(value: Any, path: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise LMStudioError(f"{path or 'The document'} is {_kind(value)} ({_short(value)}), not a number.")


def as_bool(value: Any, path: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise LMStudioError(f"{path or 'The document'} is {_kind(value)} ({_short(value)}), not true or false.")


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."
