"""The nodes in ComfyUI's real frontend (comfyui-frontend-package 1.35.9, the one ComfyUI 0.8.0 pins), in
Debian's headless Chromium, against a small stand-in of the server's API (tests/real_frontend.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import real_frontend
from browser import Chromium, chromium_path

STATIC = real_frontend.frontend_static()
if chromium_path() is None or STATIC is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI must have Chromium and comfyui-frontend-package for the real-frontend tests")
    pytest.skip("needs Debian's chromium and comfyui-frontend-package", allow_module_level=True)

FIXTURES = Path(__file__).resolve().parent / "js" / "fixtures"
READY = "window.app?.graph && window.LiteGraph?.registered_node_types?.LMStudioStreamChat"
FRAMES = "for (let i = 0; i < 6; i++) await new Promise((r) => requestAnimationFrame(r));"
FRESH_NODE = f"""(async () => {{
  const app = window.app;
  app.graph.clear();
  const node = LiteGraph.createNode("LMStudioStreamChat");
  node.pos = [100, 60];  // clear of the sidebar, at the default zoom
  app.graph.add(node);
  app.canvas.ds.scale = 1;
  app.canvas.ds.offset = [0, 0];
  app.canvas.setDirty(true, true);
  {FRAMES}
  await new Promise((r) => setTimeout(r, 300));
  {FRAMES}
  window.__node = node;
  const rect = (el) => {{ const r = el.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; }};
  const prompt = node.widgets.find((w) => w.name === "prompt");
  const style = getComputedStyle(prompt.element);
  const view = node.lmstudioStreamView.root;
  return {{
    widgets: node.widgets.map((w) => [w.name, w.y, w.computedHeight ?? null]),
    view: rect(view), prompt: rect(prompt.element),
    line: parseFloat(style.lineHeight) || 1.2 * parseFloat(style.fontSize),
    window: [innerWidth, innerHeight], size: [...node.size],
    status: view.querySelector(".lms-status").textContent, error: view.querySelector(".lms-error").textContent,
    picker: node.widgets.find((w) => w.name === "pick model").value,
  }};
}})()"""


@pytest.fixture
async def comfyui(aiohttp_server, lmstudio):
    server = await aiohttp_server(real_frontend.app(STATIC))
    browser = Chromium()
    await browser.start()
    await browser.goto(f"http://127.0.0.1:{server.port}/", ready=READY)
    yield browser, server
    ours = [line for line in browser.console if "lmstudio" in line.lower() and "EXCEPTION" in line]
    await browser.close()
    assert not ours, ours


async def test_a_fresh_node_shows_its_view_on_screen(comfyui, tmp_path):
    browser, _ = comfyui
    fresh = await browser.evaluate(FRESH_NODE)
    names = [name for name, _, _ in fresh["widgets"]]
    assert names == ["prompt", "model_id", "connection_mode", "server_url", "temperature", "max_tokens", "debug_mode",
                     "system_prompt", "seed", "control_after_generate", "preset", "pick model", "lmstudio_stream"]
    left, top, right, bottom = fresh["view"]
    width, height = fresh["window"]
    assert 0 <= left and right <= width and 0 <= top and bottom <= height, fresh  # on screen, no resizing
    prompt_height = fresh["prompt"][3] - fresh["prompt"][1]
    assert prompt_height >= 3 * fresh["line"], fresh  # the prompt box shows at least three lines
    assert fresh["status"] == fresh["error"] == ""  # no wall of red text for a fresh node
    assert fresh["picker"] == "(LM Studio not reachable; refresh the list to retry)"
    print(f"\nfresh node: {len(names) - 1} widgets above the view; view at {top:.0f}-{bottom:.0f} px of a "
          f"{height} px window; prompt box {prompt_height:.0f} px ({prompt_height / fresh['line']:.1f} lines); "
          f"node {fresh['size'][0]:.0f}x{fresh['size'][1]:.0f}")
    await browser.screenshot(Path(os.environ.get("FRONTEND_SCREENSHOT", tmp_path / "fresh.png")))


async def test_stream_events_reach_the_node_through_the_real_api(comfyui, tmp_path):
    browser, server = comfyui
    await browser.evaluate(FRESH_NODE)
    node_id = await browser.evaluate("String(window.__node.id)")
    for index in range(3):
        await real_frontend.push(server.app, "lmstudio.stream.update",
                                 {"node_id": node_id, "chunk_type": "clear", "content": "", "index": index, "count": 3})
    for index, text in ((0, "A red square."), (1, "A blue circle."), (2, "A green star.")):
        for kind, content in (("item", "running"), ("text", text), ("item", "done"), ("done", "")):
            await real_frontend.push(server.app, "lmstudio.stream.update",
                                     {"node_id": node_id, "chunk_type": kind, "content": content, "index": index,
                                      "count": 3})
    view = await browser.evaluate(f"""(async () => {{
        for (let i = 0; i < 50 && !document.querySelectorAll(".lms-entry").length; i++)
            await new Promise((r) => setTimeout(r, 20));
        {FRAMES}
        const root = window.__node.lmstudioStreamView.root;
        return {{list: root.querySelector(".lms-list").textContent,
                 entries: [...root.querySelectorAll(".lms-entry")].map((e) => e.textContent)}};
    }})()""")
    assert view["entries"] == ["#1A red square.", "#2A blue circle.", "#3A green star."]
    assert view["list"].startswith("item ") and "3 done" in view["list"]
    await browser.screenshot(Path(os.environ.get("FRONTEND_LIST_SCREENSHOT", tmp_path / "list.png")))


async def test_a_first_release_workflow_loads_with_its_settings(comfyui):
    browser, _ = comfyui
    workflow = json.loads((FIXTURES / "first_release_generate_then_caption.json").read_text())
    loaded = await browser.evaluate(f"""(async () => {{
        await window.app.loadGraphData({json.dumps(workflow)});
        {FRAMES}
        const nodes = window.app.graph.nodes;
        const chat = nodes.find((n) => n.type === "LMStudioStreamChat");
        const options = nodes.find((n) => n.type === "LMStudioChatOptions");
        const values = (node) => Object.fromEntries(node.widgets.map((w) => [w.name, w.value]));
        const link = chat.inputs.find((i) => i.name === "options").link;
        return {{chat: values(chat), options: options && values(options),
                 linked: link != null && window.app.graph.links.get?.(link)?.origin_id === options.id}};
    }})()""")
    chat, options = loaded["chat"], loaded["options"]
    assert chat["prompt"].startswith("Describe this image in one sentence")
    assert (chat["system_prompt"], chat["seed"], chat["control_after_generate"]) == ("", 0, "fixed")
    assert options["after_run"] == "unload" and options["free_comfy_vram"] is True and options["max_parallel"] == 0
    assert loaded["linked"]
