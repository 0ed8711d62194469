"""The pack's layout, from its modules' own import statements: no cycles, and data flows one way.

    node.py -> caption_folder_node.py -> node_parts.py / options_node.py / json_field_node.py / cli.py ->
      list_item.py -> client.py -> rest_backend / openai_backend / sdk_process -> http_common, sdk_runtime, relay,
      answer_store, slots, folder_images -> utils, sse, limiter, backoff, list_run, structured, sdk_wire, presets,
      video_frames ->
      chat ->
      conversation
    and in the SDK worker process: sdk_worker -> sdk_backend -> sdk_runtime, sdk_wire ...
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = {path.stem: path for path in ROOT.glob("*.py")}
# Each module may import only modules of a lower layer.
LAYERS = {
    "conversation": 0,
    "chat": 1,
    "utils": 2, "sse": 2, "limiter": 2, "backoff": 2, "list_run": 2, "structured": 2, "prompt_graph": 2,
    "sdk_wire": 2, "presets": 2, "video_frames": 2,
    "http_common": 3, "sdk_runtime": 3, "relay": 3, "answer_store": 3, "slots": 3, "folder_images": 3,
    "rest_backend": 4, "openai_backend": 4, "sdk_backend": 4, "sdk_process": 4,
    "client": 5, "sdk_worker": 5,
    "options_node": 6,
    "json_field_node": 7, "list_item": 7,
    "node_parts": 8, "cli": 8,
    "caption_folder_node": 9,
    "node": 10,
    "__init__": 11,
}
COMFY = ("comfy", "comfy_api", "comfy_execution", "server", "nodes", "execution", "folder_paths")


def imports(name: str) -> set[str]:
    """The pack's modules that `name` imports (relative imports)."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found & MODULES.keys()


def absolute_imports(name: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_every_module_has_a_layer():
    assert set(MODULES) == set(LAYERS)


def test_imports_only_go_down_the_layers():
    for name in MODULES:
        for target in imports(name):
            assert LAYERS[target] < LAYERS[name], f"{name} imports {target}"


def test_no_import_cycle():
    graph = {name: imports(name) for name in MODULES}
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        assert name not in visiting, " -> ".join([*visiting[visiting.index(name):], name])
        if name in done:
            return
        visiting.append(name)
        for target in graph[name]:
            visit(target)
        visiting.pop()
        done.add(name)

    for name in graph:
        visit(name)


def test_only_the_node_modules_import_comfyui():
    for name in MODULES:
        if name not in ("node", "caption_folder_node", "node_parts", "list_item", "options_node", "json_field_node",
                        "__init__"):
            assert not absolute_imports(name) & set(COMFY), name


def test_backends_do_not_know_each_other():
    backends = {"rest_backend", "openai_backend", "sdk_backend", "sdk_process"}
    for name in backends:
        assert not imports(name) & (backends - {name}), name


async def test_every_node_has_a_help_page_and_the_dependencies_agree():
    """ComfyUI shows web/docs/<node_id>.md as a node's help; the Registry reads pyproject's list, Manager the file."""
    import tomllib

    import lmstudio_pack

    for node in await (await lmstudio_pack.comfy_entrypoint()).get_node_list():
        assert (ROOT / "web" / "docs" / f"{node.GET_SCHEMA().node_id}.md").is_file(), node
    listed = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"] == listed
