"""example_workflows/*.json: valid UI workflows whose nodes, inputs and widget values fit the real schemas."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmstudio_pack.node import LMStudioStreamChat

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "example_workflows").glob("*.json"))

# Core nodes the examples use, as ComfyUI's nodes.py defines them: linkable inputs, outputs, widget count
# (KSampler's seed brings a control_after_generate value).
CORE = {
    "LoadImage": ({}, [("IMAGE", "IMAGE"), ("MASK", "MASK")], 2),
    "CheckpointLoaderSimple": ({}, [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")], 1),
    "CLIPTextEncode": ({"clip": "CLIP", "text": "STRING"}, [("CONDITIONING", "CONDITIONING")], 1),
    "EmptyLatentImage": ({}, [("LATENT", "LATENT")], 3),
    "KSampler": ({"model": "MODEL", "positive": "CONDITIONING", "negative": "CONDITIONING",
                  "latent_image": "LATENT"}, [("LATENT", "LATENT")], 7),
    "VAEDecode": ({"samples": "LATENT", "vae": "VAE"}, [("IMAGE", "IMAGE")], 0),
    "SaveImage": ({"images": "IMAGE"}, [], 1),
    "PreviewImage": ({"images": "IMAGE"}, [], 0),
}


def our_layout():
    """Linkable inputs, outputs and widget values of our node, from its schema."""
    schema = LMStudioStreamChat.GET_SCHEMA()
    inputs = {i.id: i.io_type.replace("COMBO", "STRING") for i in schema.inputs}
    outputs = [(o.id, o.io_type) for o in schema.outputs]
    widgets = [i for i in schema.inputs if i.io_type != "IMAGE"]
    return inputs, outputs, widgets


def test_there_are_three_examples():
    assert [p.name for p in EXAMPLES] == ["caption_an_image.json", "generate_then_caption.json",
                                          "refine_prompt_for_sdxl.json"]


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
        assert nodes[src]["outputs"][slot]["type"] == link_type == nodes[dst]["inputs"][dst_slot]["type"]
    assert any(n["type"] == "LMStudioStreamChat" for n in nodes.values())


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_nodes_fit_their_schemas(path):
    our_inputs, our_outputs, our_widgets = our_layout()
    for node in json.loads(path.read_text())["nodes"]:
        if node["type"] == "LMStudioStreamChat":
            inputs, outputs = our_inputs, our_outputs
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
