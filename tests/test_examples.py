"""example_workflows/*.json: valid UI workflows whose nodes, inputs and widget values fit the real schemas."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmstudio_pack.caption_folder_node import LMStudioCaptionFolder
from lmstudio_pack.json_field_node import LMStudioJSONField
from lmstudio_pack.node import LMStudioStreamChat
from lmstudio_pack.options_node import LMStudioChatOptions
from lmstudio_pack.presets import BUILT_IN
from lmstudio_pack.structured import parse_schema

OURS = {node.GET_SCHEMA().node_id: node
        for node in (LMStudioStreamChat, LMStudioCaptionFolder, LMStudioChatOptions, LMStudioJSONField)}

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "example_workflows").glob("*.json"))


def example(name: str) -> dict:
    return json.loads(next(p for p in EXAMPLES if p.name == name).read_text())

# Core nodes the examples use, as ComfyUI's nodes.py defines them: linkable inputs, outputs, widget count
# (KSampler's seed brings a control_after_generate value).
CORE = {
    "LoadImage": ({}, [("IMAGE", "IMAGE"), ("MASK", "MASK")], 2),
    "LoadVideo": ({}, [("VIDEO", "VIDEO")], 2),  # comfy_extras/nodes_video.py: the file and its upload button
    "CheckpointLoaderSimple": ({}, [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")], 1),
    "CLIPTextEncode": ({"clip": "CLIP", "text": "STRING"}, [("CONDITIONING", "CONDITIONING")], 1),
    "EmptyLatentImage": ({}, [("LATENT", "LATENT")], 3),
    "KSampler": ({"model": "MODEL", "positive": "CONDITIONING", "negative": "CONDITIONING",
                  "latent_image": "LATENT"}, [("LATENT", "LATENT")], 7),
    "VAEDecode": ({"samples": "LATENT", "vae": "VAE"}, [("IMAGE", "IMAGE")], 0),
    "SaveImage": ({"images": "IMAGE"}, [], 1),
    "PreviewImage": ({"images": "IMAGE"}, [], 0),
    # comfy_extras/nodes_dataset.py and nodes_rebatch.py: list outputs; `texts` is a widget that takes a link.
    "LoadImageDataSetFromFolder": ({}, [("images", "IMAGE")], 1),
    "SaveImageTextDataSetToFolder": ({"images": "IMAGE", "texts": "STRING"}, [], 3),
    "RebatchImages": ({"images": "IMAGE"}, [("IMAGE", "IMAGE")], 1),
    "PreviewAny": ({"source": "*"}, [], 0),  # comfy_extras/nodes_preview_any.py: "Preview as Text"
}


WIDGET_TYPES = ("STRING", "COMBO", "INT", "FLOAT", "BOOLEAN")


def our_layout(node_class=LMStudioStreamChat):
    """Linkable inputs, outputs and widget values of one of our nodes, from its schema."""
    schema = node_class.GET_SCHEMA()
    inputs = {i.id: i.io_type.replace("COMBO", "STRING") for i in schema.inputs}
    outputs = [(o.id, o.io_type) for o in schema.outputs]
    widgets = [i for i in schema.inputs if i.io_type in WIDGET_TYPES and not getattr(i, "force_input", False)]
    return inputs, outputs, widgets


def test_the_examples():
    assert [p.name for p in EXAMPLES] == ["caption_a_folder_from_disk.json", "caption_an_image.json",
                                          "caption_dataset_for_lora.json", "caption_with_a_preset.json",
                                          "describe_a_video.json", "describe_then_prompt_in_three_turns.json",
                                          "generate_then_caption.json",
                                          "image_to_prompt_parts_json.json", "refine_prompt_for_sdxl.json",
                                          "sdxl_batch_captions.json"]


def test_the_preset_example_leaves_the_prompts_to_a_built_in_preset():
    chat = next(n for n in example("caption_with_a_preset.json")["nodes"] if n["type"] == "LMStudioStreamChat")
    names = [w.id for w in our_layout(LMStudioStreamChat)[2]]
    values = dict(zip(names, [v for i, v in enumerate(chat["widgets_values"]) if i != names.index("seed") + 1],
                      strict=True))
    assert values["prompt"] == values["system_prompt"] == ""
    assert values["preset"] in {p.name for p in BUILT_IN}


def test_the_json_example_reads_three_fields_of_a_schema_into_clip():
    workflow = example("image_to_prompt_parts_json.json")
    nodes = {n["id"]: n for n in workflow["nodes"]}
    options = next(n for n in nodes.values() if n["type"] == "LMStudioChatOptions")["widgets_values"]
    names = [i.id for i in LMStudioChatOptions.GET_SCHEMA().inputs]
    schema = parse_schema(options[names.index("json_schema")])
    assert schema is not None and schema["required"] == ["positive", "negative", "style"]
    fields = {n["widgets_values"][0]: n["id"] for n in nodes.values() if n["type"] == "LMStudioJSONField"}
    into = {(nodes[src]["type"], nodes[dst]["type"]) for _, src, _, dst, _, _ in workflow["links"]
            if src in fields.values()}
    assert set(fields) == {"positive", "negative", "style"}
    assert into == {("LMStudioJSONField", "CLIPTextEncode"), ("LMStudioJSONField", "PreviewAny")}
    assert sum(1 for _, src, _, dst, _, _ in workflow["links"]
               if src in fields.values() and nodes[dst]["type"] == "CLIPTextEncode") == 2


def test_the_chat_example_chains_three_turns():
    workflow = example("describe_then_prompt_in_three_turns.json")
    chats = [n for n in workflow["nodes"] if n["type"] == "LMStudioStreamChat"]
    chained = [(src, dst) for _, src, slot, dst, _, kind in workflow["links"] if kind == "LMSTUDIO_CONVERSATION"]
    assert len(chats) == 3 and chained == [(chats[0]["id"], chats[1]["id"]), (chats[1]["id"], chats[2]["id"])]


def test_the_folder_example_previews_the_report():
    workflow = example("caption_a_folder_from_disk.json")
    types = {n["id"]: n["type"] for n in workflow["nodes"]}
    assert [(types[src], slot, types[dst]) for _, src, slot, dst, _, _ in workflow["links"]] == [
        ("LMStudioCaptionFolder", 0, "PreviewAny")]


def test_list_examples_caption_every_image():
    """The dataset example saves one caption per image; the batch example rebatches SDXL's 4 renders into a list."""
    dataset = example("caption_dataset_for_lora.json")
    types = {n["id"]: n["type"] for n in dataset["nodes"]}
    chains = {(types[src], types[dst], link_type) for _, src, _, dst, _, link_type in dataset["links"]}
    assert ("LoadImageDataSetFromFolder", "LMStudioStreamChat", "IMAGE") in chains
    assert ("LMStudioStreamChat", "SaveImageTextDataSetToFolder", "STRING") in chains
    # A failed caption stops the run rather than reach the folder; queued again, the finished ones come back at once.
    assert ("LMStudioChatOptions", "LMStudioStreamChat", "LMSTUDIO_CHAT_OPTIONS") in chains
    options = next(n for n in dataset["nodes"] if n["type"] == "LMStudioChatOptions")["widgets_values"]
    names = [i.id for i in LMStudioChatOptions.GET_SCHEMA().inputs]
    assert options[names.index("on_error")] == "raise" and options[names.index("resume")] is True
    batch = example("sdxl_batch_captions.json")
    by_type = {n["type"]: n for n in batch["nodes"]}
    assert by_type["EmptyLatentImage"]["widgets_values"][2] == 4 and by_type["RebatchImages"]["widgets_values"] == [1]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_is_a_consistent_workflow(path):
    workflow = json.loads(path.read_text())
    assert workflow["version"] == 0.4
    nodes = {n["id"]: n for n in workflow["nodes"]}
    assert len(nodes) == len(workflow["nodes"]) and workflow["last_node_id"] >= max(nodes)
    assert workflow["last_link_id"] >= max(link[0] for link in workflow["links"])
    for link_id, src, slot, dst, dst_slot, link_type in workflow["links"]:
        assert link_id in (nodes[src]["outputs"][slot]["links"] or [])
        assert nodes[dst]["inputs"][dst_slot]["link"] == link_id
        assert nodes[src]["outputs"][slot]["type"] == link_type
        assert nodes[dst]["inputs"][dst_slot]["type"] in (link_type, "*")  # "*": an input of any type
    assert any(n["type"] in ("LMStudioStreamChat", "LMStudioCaptionFolder") for n in nodes.values())


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_nodes_fit_their_schemas(path):
    for node in json.loads(path.read_text())["nodes"]:
        if node["type"] in OURS:
            inputs, outputs, our_widgets = our_layout(OURS[node["type"]])
            values = node["widgets_values"]
            expected = sum(2 if getattr(w, "control_after_generate", None) else 1 for w in our_widgets)
            assert len(values) == expected
            cursor = 0
            for widget in our_widgets:  # each value fits its widget: combos hold an option, numbers a number
                value = values[cursor]
                if widget.io_type == "COMBO":
                    assert value in widget.options, (widget.id, value)
                elif widget.io_type in ("INT", "FLOAT"):
                    assert isinstance(value, (int, float)) and widget.min <= value <= widget.max, (widget.id, value)
                elif widget.io_type == "BOOLEAN":
                    assert isinstance(value, bool), widget.id
                else:
                    assert isinstance(value, str), widget.id
                cursor += 2 if getattr(widget, "control_after_generate", None) else 1
        else:
            assert node["type"] in CORE, node["type"]
            inputs, outputs, widget_count = CORE[node["type"]]
            assert len(node["widgets_values"]) == widget_count, node["type"]
        assert [(o["name"], o["type"]) for o in node["outputs"]] == outputs
        for entry in node["inputs"]:
            assert inputs[entry["name"]] == entry["type"], (node["type"], entry["name"])
