"""Stand-in for `comfy_api.latest._io` with ComfyUI 0.8.0's signatures (comfyui-facts.md section 1)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Hidden(str, Enum):
    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"
    dynprompt = "DYNPROMPT"
    auth_token_comfy_org = "AUTH_TOKEN_COMFY_ORG"
    api_key_comfy_org = "API_KEY_COMFY_ORG"


class HiddenHolder:
    def __init__(self, values: dict[str, Any]) -> None:
        for hidden in Hidden:
            setattr(self, hidden.name, values.get(hidden.value))

    def __getattr__(self, name: str) -> None:
        return None  # anything not requested reads as None, as in ComfyUI


class RemoteOptions:
    def __init__(self, route: str, refresh_button: bool, control_after_refresh: str = "first",
                 timeout: int | None = None, max_retries: int | None = None, refresh: int | None = None) -> None:
        self.route, self.refresh_button, self.control_after_refresh = route, refresh_button, control_after_refresh
        self.timeout, self.max_retries, self.refresh = timeout, max_retries, refresh


class Input:
    io_type = "*"

    def __init__(self, id: str, display_name: str | None = None, optional: bool = False, tooltip: str | None = None,
                 lazy: bool | None = None, extra_dict: dict | None = None, raw_link: bool | None = None) -> None:
        self.id, self.display_name, self.optional, self.tooltip, self.lazy = id, display_name, optional, tooltip, lazy
        self.extra_dict, self.raw_link = extra_dict or {}, raw_link


class WidgetInput(Input):
    def __init__(self, id: str, display_name: str | None = None, optional: bool = False, tooltip: str | None = None,
                 lazy: bool | None = None, default: Any = None, socketless: bool | None = None,
                 widget_type: str | None = None, force_input: bool | None = None, extra_dict: dict | None = None,
                 raw_link: bool | None = None) -> None:
        super().__init__(id, display_name, optional, tooltip, lazy, extra_dict, raw_link)
        self.default, self.socketless = default, socketless
        self.widget_type, self.force_input = widget_type, force_input


class Output:
    io_type = "*"

    def __init__(self, id: str | None = None, display_name: str | None = None, tooltip: str | None = None,
                 is_output_list: bool = False) -> None:
        self.id, self.display_name, self.tooltip, self.is_output_list = id, display_name or id, tooltip, is_output_list


class String:
    class Input(WidgetInput):
        io_type = "STRING"

        def __init__(self, id: str, display_name: str | None = None, optional: bool = False, tooltip: str | None = None,
                     lazy: bool | None = None, multiline: bool = False, placeholder: str | None = None,
                     default: str | None = None, dynamic_prompts: bool | None = None, socketless: bool | None = None,
                     force_input: bool | None = None, extra_dict: dict | None = None, raw_link: bool | None = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                             extra_dict, raw_link)
            self.multiline, self.placeholder, self.dynamic_prompts = multiline, placeholder, dynamic_prompts

    class Output(Output):
        io_type = "STRING"


class Int:
    class Input(WidgetInput):
        io_type = "INT"

        def __init__(self, id: str, display_name: str | None = None, optional: bool = False, tooltip: str | None = None,
                     lazy: bool | None = None, default: int | None = None, min: int | None = None,
                     max: int | None = None, step: int | None = None, control_after_generate: bool | None = None,
                     display_mode: str | None = None, socketless: bool | None = None, force_input: bool | None = None,
                     extra_dict: dict | None = None, raw_link: bool | None = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                             extra_dict, raw_link)
            self.min, self.max, self.step = min, max, step
            self.control_after_generate, self.display_mode = control_after_generate, display_mode

    class Output(Output):
        io_type = "INT"


class Float:
    class Input(WidgetInput):
        io_type = "FLOAT"

        def __init__(self, id: str, display_name: str | None = None, optional: bool = False, tooltip: str | None = None,
                     lazy: bool | None = None, default: float | None = None, min: float | None = None,
                     max: float | None = None, step: float | None = None, round: float | None = None,
                     display_mode: str | None = None, socketless: bool | None = None, force_input: bool | None = None,
                     extra_dict: dict | None = None, raw_link: bool | None = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                             extra_dict, raw_link)
            self.min, self.max, self.step, self.round, self.display_mode = min, max, step, round, display_mode

    class Output(Output):
        io_type = "FLOAT"


class Boolean:
    class Input(WidgetInput):
        io_type = "BOOLEAN"

        def __init__(self, id: str, display_name: str | None = None, optional: bool = False, tooltip: str | None = None,
                     lazy: bool | None = None, default: bool | None = None, label_on: str | None = None,
                     label_off: str | None = None, socketless: bool | None = None, force_input: bool | None = None,
                     extra_dict: dict | None = None, raw_link: bool | None = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                             extra_dict, raw_link)
            self.label_on, self.label_off = label_on, label_off

    class Output(Output):
        io_type = "BOOLEAN"


class Combo:
    class Input(WidgetInput):
        io_type = "COMBO"

        def __init__(self, id: str, options: list[str] | type[Enum] | None = None, display_name: str | None = None,
                     optional: bool = False, tooltip: str | None = None, lazy: bool | None = None,
                     default: str | None = None, control_after_generate: bool | None = None,
                     upload: Any = None, image_folder: Any = None, remote: RemoteOptions | None = None,
                     socketless: bool | None = None, extra_dict: dict | None = None, raw_link: bool | None = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, None,
                             extra_dict, raw_link)
            if isinstance(options, type) and issubclass(options, Enum):
                options = [member.value for member in options]
            self.options, self.control_after_generate, self.remote = options, control_after_generate, remote
            self.upload, self.image_folder = upload, image_folder


def Custom(io_type: str) -> type:
    """A socket type of the node pack's own, with `Input` and `Output` (0.8.0 `_io.Custom`)."""

    class CustomType:
        class Input(Input):
            pass

        class Output(Output):
            pass

    CustomType.Input.io_type = CustomType.Output.io_type = io_type
    return CustomType


class Image:
    class Input(Input):
        io_type = "IMAGE"

    class Output(Output):
        io_type = "IMAGE"


class Video:
    class Input(Input):
        io_type = "VIDEO"

    class Output(Output):
        io_type = "VIDEO"


class Autogrow:
    """0.8.0's dynamic sockets (`_io.py:897-980`): the node gets the linked ones as a dict, name -> value, and
    `check_lazy_status` gets (value, flat input key) pairs, None for a value not evaluated yet."""

    io_type = "COMFY_AUTOGROW_V3"

    class TemplateNames:
        def __init__(self, input: Input, names: list[str], min: int = 1) -> None:
            self.input, self.names, self.min = input, names[:100], min

    class TemplatePrefix:
        def __init__(self, input: Input, prefix: str, min: int = 1, max: int = 10) -> None:
            self.input, self.prefix, self.min, self.max = input, prefix, min, max
            self.names = [f"{prefix}{i}" for i in range(max)]

    class Input(Input):
        io_type = "COMFY_AUTOGROW_V3"

        def __init__(self, id: str, template: Any, display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, lazy: bool | None = None, extra_dict: dict | None = None) -> None:
            super().__init__(id, display_name, optional, tooltip, lazy, extra_dict)
            self.template = template


@dataclass
class Schema:
    node_id: str
    display_name: str | None = None
    category: str = "sd"
    inputs: list[Input] = field(default_factory=list)
    outputs: list[Output] = field(default_factory=list)
    hidden: list[Hidden] = field(default_factory=list)
    description: str = ""
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    is_api_node: bool = False
    not_idempotent: bool = False
    enable_expand: bool = False

    def finalize(self) -> None:
        """Output nodes get `prompt` and `extra_pnginfo` hidden inputs (`_io.py:1320-1325`)."""
        if self.is_output_node:
            for hidden in (Hidden.prompt, Hidden.extra_pnginfo):
                if hidden not in self.hidden:
                    self.hidden.append(hidden)

    def validate(self) -> None:
        input_ids = [i.id for i in self.inputs]
        output_ids = [o.id for o in self.outputs]
        for ids, what in ((input_ids, "input"), (output_ids, "output")):
            duplicates = {x for x in ids if ids.count(x) > 1}
            if duplicates:
                raise ValueError(f"Schema {self.node_id} has duplicate {what} ids: {duplicates}")
        for item in self.inputs:
            if isinstance(item, Combo.Input) and item.default is not None and item.options is not None:
                if item.default not in item.options:
                    raise ValueError(f"Combo {item.id} default {item.default!r} not in options")


class NodeOutput:
    def __init__(self, *args: Any, ui: Any = None, expand: dict | None = None, block_execution: str | None = None):
        self.args, self.ui, self.expand, self.block_execution = args, ui, expand, block_execution

    @property
    def result(self) -> tuple[Any, ...] | None:
        return self.args if self.args else None


class ComfyNode:
    hidden: HiddenHolder = None  # type: ignore[assignment]  # None outside an execution, as in ComfyUI

    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def GET_SCHEMA(cls) -> Schema:
        schema = cls.define_schema()
        schema.finalize()
        schema.validate()
        return schema

    @classmethod
    def PREPARE_CLASS_CLONE(cls, v3_data: dict | None) -> type[ComfyNode]:
        """A per-execution clone whose `hidden` holds the requested hidden values."""
        clone = type(cls.__name__, (cls,), {})
        clone.hidden = HiddenHolder((v3_data or {}).get("hidden_inputs") or {})
        return clone

    @classmethod
    async def EXECUTE_NORMALIZED_ASYNC(cls, *args: Any, **kwargs: Any) -> NodeOutput:
        result = await cls.execute(*args, **kwargs)
        return result if isinstance(result, NodeOutput) else NodeOutput(*(result or ()))
