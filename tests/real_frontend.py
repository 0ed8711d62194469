"""Serves ComfyUI's real frontend (the `comfyui-frontend-package` that ComfyUI 0.8.0 pins) with a small stand-in of
the server's API: this pack's `web/` folder and routes, and `/object_info` built from this pack's schemas the way
0.8.0 serialises V3 nodes (comfyui-facts.md 1, 6). Enough for the frontend to boot and lay out our nodes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

ROOT = Path(__file__).resolve().parent.parent
PACK = "lmstudio-stream-chat"
SOCKETS = web.AppKey("sockets", set)


def frontend_static() -> Path | None:
    try:
        import comfyui_frontend_package
    except ImportError:
        return None
    return Path(comfyui_frontend_package.__file__).parent / "static"


def _input_info(item: Any) -> list:
    """One input as `/object_info` lists it: [type, options]."""
    options: dict[str, Any] = {}
    for name in ("default", "min", "max", "step", "multiline", "tooltip", "lazy", "control_after_generate",
                 "placeholder"):
        value = getattr(item, name, None)
        if value is not None:
            options[name] = value
    if item.io_type == "COMBO":
        options["options"] = item.options
        options["multiselect"] = False
    if (template := getattr(item, "template", None)) is not None:  # Autogrow, as `_io.py` `as_dict` gives it
        options["template"] = {"input": {"required": {template.input.id: _input_info(template.input)}},
                               "names": template.names, "min": template.min}
    return [item.io_type, options]


def object_info(node_class: Any) -> dict[str, Any]:
    schema = node_class.GET_SCHEMA()
    required = {i.id: _input_info(i) for i in schema.inputs if not i.optional}
    optional = {i.id: _input_info(i) for i in schema.inputs if i.optional}
    hidden = {h.name: h.value for h in schema.hidden}
    return {
        "input": {"required": required, "optional": optional, "hidden": hidden},
        "input_order": {"required": list(required), "optional": list(optional), "hidden": list(hidden)},
        "output": [o.io_type for o in schema.outputs],
        "output_is_list": [o.is_output_list for o in schema.outputs],
        "output_name": [o.display_name or o.id for o in schema.outputs],
        "output_tooltips": [o.tooltip for o in schema.outputs],
        "name": schema.node_id,
        "display_name": schema.display_name,
        "description": schema.description,
        "python_module": f"custom_nodes.{PACK}",
        "category": schema.category,
        "output_node": schema.is_output_node,
        "deprecated": False,
        "experimental": False,
        "api_node": False,
    }


def app(static: Path) -> web.Application:
    from server import PromptServer

    from lmstudio_pack.node import LMStudioStreamChat
    from lmstudio_pack.options_node import LMStudioChatOptions

    sockets: set[web.WebSocketResponse] = set()
    nodes = {cls.GET_SCHEMA().node_id: object_info(cls) for cls in (LMStudioStreamChat, LMStudioChatOptions)}
    web_files = (ROOT / "web").rglob("*.js")
    scripts = sorted(f"/extensions/{PACK}/{p.relative_to(ROOT / 'web').as_posix()}" for p in web_files)
    settings = {"Comfy.TutorialCompleted": True, "Comfy.InstalledVersion": "1.35.9",
                "Comfy.Validation.Workflows": False, "Comfy.Workflow.ShowMissingNodesWarning": False}

    def json_route(value: Any):
        async def handler(_: web.Request) -> web.Response:
            return web.json_response(value)
        return handler

    async def index(_: web.Request) -> web.FileResponse:
        return web.FileResponse(static / "index.html")

    async def ok(_: web.Request) -> web.Response:
        return web.json_response({})

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sockets.add(ws)
        await ws.send_str(json.dumps({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}},
                                                                 "sid": "browser-tab-1"}}))
        async for message in ws:
            if message.type != WSMsgType.TEXT:
                break
        sockets.discard(ws)
        return ws

    api = web.Application()
    api.router.add_get("/object_info", json_route(nodes))
    api.router.add_get("/extensions", json_route(scripts))
    api.router.add_get("/users", json_route({"storage": "server", "migrated": True}))
    api.router.add_get("/settings", json_route(settings))
    api.router.add_post("/settings/{id}", ok)
    api.router.add_get("/system_stats", json_route({
        "system": {"os": "posix", "python_version": "3.11", "embedded_python": False, "comfyui_version": "0.8.0",
                   "required_frontend_version": "1.35.9", "pytorch_version": "2.13.0", "argv": ["main.py"],
                   "ram_total": 0, "ram_free": 0}, "devices": []}))
    for path in ("/i18n", "/global_subgraphs"):
        api.router.add_get(path, json_route({}))
    api.router.add_get("/userdata", json_route([]))
    api.router.add_get("/embeddings", json_route([]))
    api.router.add_get("/prompt", json_route({"exec_info": {"queue_remaining": 0}}))
    api.router.add_get("/ws", websocket)
    api.add_routes(PromptServer.instance.routes)  # the pack's own routes, mirrored under /api as ComfyUI does

    root = web.Application()
    root[SOCKETS] = sockets
    root.router.add_get("/", index)
    root.router.add_get("/ws", websocket)
    root.add_subapp("/api", api)
    root.router.add_static(f"/extensions/{PACK}/", ROOT / "web")
    root.router.add_static("/", static)
    return root


async def push(app: web.Application, event: str, data: dict[str, Any]) -> None:
    """Send a websocket message to every open page, as ComfyUI's `send_sync` does."""
    for ws in list(app[SOCKETS]):
        await ws.send_str(json.dumps({"type": event, "data": data}))
