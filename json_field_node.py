"""LM Studio JSON Field: one field of a JSON answer as text, a whole number, a number and a boolean, so one field can
feed CLIP Text Encode and another a number input. The reading itself lives in `structured.py`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from comfy_api.latest import io

from .options_node import CATEGORY, newer_schema_fields
from .prompt_graph import linked_outputs
from .structured import as_bool, as_float, as_int, as_string, read_field

# The outputs in order, each with what an unlinked one gives (it is never converted, so it never fails).
_OUTPUTS: list[tuple[str, Callable[[Any, str], Any], Any]] = [
    ("string", lambda value, _: as_string(value), ""),
    ("int", as_int, 0),
    ("float", as_float, 0.0),
    ("boolean", as_bool, False),
]


class LMStudioJSONField(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LMStudioJSONField",
            display_name="LM Studio JSON Field",
            category=CATEGORY,
            description="Read one field of a JSON answer (LM Studio Chat with a json_schema in its options) as text, "
            "a whole number, a number and a boolean.",
            **newer_schema_fields(search_aliases=["JSON", "parse JSON", "JSON field", "structured output"]),
            inputs=[
                io.String.Input("json", force_input=True, tooltip="A JSON document, e.g. LM Studio Chat's "
                                "response_text with a json_schema."),
                io.String.Input("path", default="", tooltip="Where the field is: `subject`, `style.colors.0`, "
                                "`items[2].name`. Empty: the whole document."),
            ],
            outputs=[
                io.String.Output("string", display_name="string", tooltip="The field as text (an object or a list as "
                                 "JSON; null as empty)."),
                io.Int.Output("int", display_name="int", tooltip="The field as a whole number."),
                io.Float.Output("float", display_name="float", tooltip="The field as a number."),
                io.Boolean.Output("boolean", display_name="boolean", tooltip="The field as true or false."),
            ],
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
        )

    @classmethod
    def execute(cls, json: str, path: str) -> io.NodeOutput:
        value = read_field(json, path)
        # Without a prompt to tell (a caller of its own), every output is made.
        prompt = cls.hidden.prompt
        linked = linked_outputs(prompt, str(cls.hidden.unique_id)) if prompt else set(range(len(_OUTPUTS)))
        # Only a linked output is converted: a text field feeding CLIP Text Encode must not fail for want of a number.
        return io.NodeOutput(*(convert(value, path) if index in linked else unlinked
                               for index, (_, convert, unlinked) in enumerate(_OUTPUTS)))

