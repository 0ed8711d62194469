"""The live view in ComfyUI's real frontends, served by real ComfyUI servers, in Debian's headless Chromium: frontend
1.35.9 (ComfyUI 0.8.0), 1.49.6 (ComfyUI 0.33.0) and 1.58.1 (the newest, on 0.33.0), each in classic nodes and in
Nodes 2.0 (the Vue renderer, setting `Comfy.VueNodes.Enabled`). Runs go through the real executor to the LM
Studio stand-in. `FRONTEND_SCREENSHOTS=DIR` keeps a picture of each check."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
import pytest_asyncio
from PIL import Image

from browser import Chromium, chromium_path
from fake_lmstudio import MODEL, FakeLMStudio, native_model, rest_script, serve

if chromium_path() is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI must have Chromium (apt-get install chromium) for the real-frontend tests")
    pytest.skip("needs Debian's chromium", allow_module_level=True)

# (ComfyUI, frontend served with --front-end-root or None for the one it pins, the frontend's version)
FRONTENDS = [("0.8.0", None, "1.35.9"), ("0.33.0", None, "1.49.6"), ("0.33.0", "1.58.1", "1.58.1")]
RENDERERS = ("classic", "nodes2")
FIXTURES = Path(__file__).resolve().parent / "js" / "fixtures"
EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "example_workflows").glob("*.json"))
VIEW_MIN = 148  # what classic nodes give the view at the default size

# Page helpers, defined once per page load.
HELPERS = """
window.T = {
  frames: async (n = 4) => { for (let i = 0; i < n; i++) await new Promise((r) => requestAnimationFrame(r)); },
  sleep: (ms) => new Promise((r) => setTimeout(r, ms)),
  until: async (test, ms = 15000) => {
    const end = Date.now() + ms;
    while (Date.now() < end) { const v = test(); if (v) return v; await T.sleep(25); }
    return test();
  },
  rect: (el) => { const r = el.getBoundingClientRect(); return {top: r.top, bottom: r.bottom, left: r.left,
                                                              right: r.right, height: r.height, width: r.width}; },
  widget: (node, name) => node.widgets.find((w) => w.name === name),
  set: (node, name, value) => { const w = T.widget(node, name); w.value = value; w.callback?.(value); },
  add: async (type, pos) => {
    const node = LiteGraph.createNode(type);
    node.pos = pos;
    app.graph.add(node);
    await T.frames(6);
    return node;
  },
  fresh: async () => {
    app.graph.clear();
    app.canvas.ds.scale = 1;
    app.canvas.ds.offset = [0, 0];
    app.canvas.setDirty(true, true);
    await T.frames(4);
  },
  // The node's own element in Nodes 2.0; null in classic nodes (drawn on the canvas).
  nodeElement: (node) => document.querySelector(`[data-node-id="${node.id}"]`),
  view: (node) => node.lmstudioStreamView.root,
  parts: (node) => {
    const root = T.view(node);
    const pick = (sel) => root.querySelector(sel);
    const shown = (el) => el && el.offsetParent !== null && getComputedStyle(el).display !== "none";
    const entries = [["head", ".lms-thoughts-head"], ["reasoning", ".lms-reasoning"], ["answer", ".lms-answer"],
                     ["error", ".lms-error"], ["footer", ".lms-footer"], ["answers", ".lms-answers"],
                     ["status", ".lms-status"], ["list", ".lms-list"], ["preset", ".lms-preset"]];
    const parts = {root: T.rect(root)};
    for (const [name, sel] of entries) if (shown(pick(sel))) parts[name] = T.rect(pick(sel));
    return parts;
  },
  text: (node, sel) => T.view(node).querySelector(sel).textContent,
  // What the view shows of a run: answer, reasoning, statistics and the list.
  shows: (node) => ({answer: T.text(node, ".lms-answer"), reasoning: T.text(node, ".lms-reasoning"),
                     stats: T.text(node, ".lms-stats"), list: T.text(node, ".lms-list"),
                     entries: [...T.view(node).querySelectorAll(".lms-entry")].map((e) => e.textContent),
                     onPage: T.view(node).isConnected && T.rect(T.view(node)).height > 0}),
  chatNode: () => app.graph.nodes.find((n) => n.type === "LMStudioStreamChat"),
};
"""


def overlaps(parts: dict) -> list[tuple[str, str]]:
    """Pairs of the view's visible parts whose boxes overlap, and parts outside the view."""
    names = [n for n in parts if n != "root"]
    bad = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]
           if parts[a]["top"] < parts[b]["bottom"] - 0.5 and parts[b]["top"] < parts[a]["bottom"] - 0.5]
    root = parts["root"]
    bad += [(n, "outside") for n in names
            if parts[n]["top"] < root["top"] - 0.5 or parts[n]["bottom"] > root["bottom"] + 0.5]
    return bad


# One page a frontend and renderer, shared by that pair's tests (a page load takes seconds): every test, its
# fixtures and the page run on the module's loop.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=[(f, r) for f in FRONTENDS for r in RENDERERS],
                        ids=lambda p: f"{p[0][2]}-{p[1]}")
async def page(request, real_comfyui_servers):
    """A page of the real frontend in one renderer, and its server; the page's helpers as `T`."""
    (version, frontend, label), renderer = request.param
    server = real_comfyui_servers(version, frontend)
    vue = renderer == "nodes2"
    await server.post("/settings/Comfy.VueNodes.Enabled", vue)
    browser = Chromium()
    await browser.start()
    await browser.send("Emulation.setDeviceMetricsOverride",
                       {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False})
    origin = server.url
    await browser.send("Browser.grantPermissions", {"origin": origin,
                                                    "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})
    ready = ("window.app?.graph && window.LiteGraph?.registered_node_types?.LMStudioStreamChat && "
             f"window.app.extensionManager?.setting?.get('Comfy.VueNodes.Enabled') === {json.dumps(vue)}")
    await browser.goto(f"{origin}/", ready=ready)
    await browser.evaluate(HELPERS)
    browser.label, browser.vue, browser.server, browser.ready = f"{label}-{renderer}", vue, server, ready
    yield browser
    await browser.close()


@pytest_asyncio.fixture(loop_scope="module")
async def lmstudio():
    """The LM Studio stand-in of one test, served on the module's loop (the page's), closed after the test."""
    from lmstudio_pack.sdk_process import WORKER

    fake = FakeLMStudio()
    runner = await serve(fake)
    yield fake
    await WORKER.close_connections()
    await runner.cleanup()


@pytest_asyncio.fixture(loop_scope="module")
async def ui(page, lmstudio):
    """The shared page with an empty graph; afterwards the server idle again and no exception of ours logged."""
    seen = len(page.console)
    await page.evaluate("T.fresh()")
    yield page
    await idle(page.server)
    ours = [line for line in page.console[seen:] if "EXCEPTION" in line and "lmstudio" in line.lower()]
    assert not ours, ours


async def idle(server) -> None:
    """Nothing queued or running on `server`: what one test queued never streams into the next test's nodes."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        for attempt in range(200):
            async with session.get(f"{server.url}/queue") as response:
                queue = await response.json()
            if not queue["queue_running"] and not queue["queue_pending"]:
                return
            if attempt == 0:
                await session.post(f"{server.url}/interrupt")
            await asyncio.sleep(0.05)
    raise RuntimeError(f"ComfyUI {server.version} stayed busy after a test")


async def keep_picture(page: Chromium, name: str) -> None:
    if folder := os.environ.get("FRONTEND_SCREENSHOTS"):
        Path(folder).mkdir(parents=True, exist_ok=True)
        # Classic nodes draw widget values on the canvas only when it is redrawn: values the test set through the
        # widgets (as no person does) would show stale in the picture otherwise.
        await page.evaluate("(async () => { app.canvas.setDirty(true, true); await T.frames(2); })()")
        await page.screenshot(Path(folder) / f"{page.label}-{name}.png")


async def chat_node(page: Chromium, fake, mode: str = "REST API", pos=(100, 60)) -> None:
    await page.evaluate(f"""(async () => {{
        window.__node = await T.add("LMStudioStreamChat", {json.dumps(list(pos))});
        T.set(__node, "server_url", {json.dumps(fake.url)});
        T.set(__node, "model_id", {json.dumps(MODEL)});
        T.set(__node, "connection_mode", {json.dumps(mode)});
        T.set(__node, "prompt", "Describe the picture.");
        await T.frames(4);
    }})()""")


async def corner(page: Chromium) -> tuple[float, float, float]:
    """The node's bottom-right resize corner on screen, in either renderer, and how far the node is drawn below
    its layout height (1.35.9's Vue node is taller than its size: a drag first takes up that slack)."""
    return tuple(await page.evaluate("""(() => {
        const element = T.nodeElement(__node);
        if (element) {
            const r = element.getBoundingClientRect();
            const slack = element.offsetHeight - parseFloat(element.style.getPropertyValue("--node-height"));
            return [r.right - 3, r.bottom - 3, Math.max(0, slack || 0)];
        }
        const canvas = app.canvas.canvas.getBoundingClientRect(), {offset, scale} = app.canvas.ds;
        return [canvas.left + (__node.pos[0] + __node.size[0] + offset[0]) * scale - 4,
                canvas.top + (__node.pos[1] + __node.size[1] + offset[1]) * scale - 4, 0];
    })()"""))


async def test_a_fresh_node_shows_a_full_view_that_grows_with_the_node(ui, lmstudio):
    await chat_node(ui, lmstudio)
    fresh = await ui.evaluate("({view: T.rect(T.view(__node)), size: [...__node.size], "
                              "widgets: __node.widgets.map((w) => w.name)})")
    assert fresh["widgets"][-1] == "lmstudio_stream"
    height = fresh["view"]["height"]
    assert height >= VIEW_MIN, fresh
    await keep_picture(ui, "fresh")
    # Room below the node for the drag: the canvas panned up, as a person would.
    await ui.evaluate("(async () => { app.canvas.ds.offset = [0, -450]; app.canvas.setDirty(true, true); "
                      "await T.frames(6); })()")
    x, y, slack = await corner(ui)
    await ui.drag((x, y), (x + 60, y + slack + 200))
    await ui.evaluate("T.frames(8)")
    grown = await ui.evaluate("({view: T.rect(T.view(__node)), size: [...__node.size]})")
    print(f"\n{ui.label}: fresh view {height:.0f} px high in a {fresh['size'][1]:.0f} px node; "
          f"dragged 200 px taller: view {grown['view']['height']:.0f} px, node {grown['size'][1]:.0f} px")
    # Both renderers share what the node gains among the parts that stretch (prompt, system prompt, view): a third
    # each, as classic nodes always have.
    assert grown["view"]["height"] >= height + 55, (fresh, grown)
    assert grown["view"]["width"] >= fresh["view"]["width"] + 40, (fresh, grown)
    parts = await ui.evaluate("T.parts(__node)")
    assert not overlaps(parts), parts
    await keep_picture(ui, "grown")


async def test_a_streamed_run_keeps_reasoning_and_answer_apart(ui, lmstudio):
    long_answer = [f"Line {i} of a long answer that wraps and scrolls.\n" for i in range(40)]
    lmstudio.rest_events = rest_script([f"thought {i} " for i in range(30)], long_answer)
    lmstudio.event_delay = 0.03
    await chat_node(ui, lmstudio)
    await ui.evaluate("app.queuePrompt(0, 1)")
    mid = await ui.evaluate("""(async () => {
        await T.until(() => T.text(__node, ".lms-answer").length > 80);
        await T.frames(2);
        return {parts: T.parts(__node), reasoning: T.text(__node, ".lms-reasoning"),
                answer: T.text(__node, ".lms-answer"), head: T.text(__node, ".lms-thoughts-head")};
    })()""")
    assert mid["reasoning"].startswith("thought 0 thought 1") and mid["answer"].startswith("Line 0")
    assert not overlaps(mid["parts"]), mid["parts"]
    assert all(mid["parts"][p]["height"] >= 30 for p in ("reasoning", "answer")), mid["parts"]
    await keep_picture(ui, "streaming")
    done = await ui.evaluate("""(async () => {
        await T.until(() => T.text(__node, ".lms-stats").includes("tokens/s"));
        // The canvas panned up, as a person scrolls to the foot of a tall node: every part of the view on screen.
        app.canvas.ds.offset = [0, -200];
        app.canvas.setDirty(true, true);
        await T.frames(6);
        const pane = T.view(__node).querySelector(".lms-answer");
        return {stats: T.text(__node, ".lms-stats"), answer: pane.textContent, parts: T.parts(__node),
                followed: pane.scrollHeight - pane.scrollTop - pane.clientHeight < 4,
                scrollable: pane.scrollHeight > pane.clientHeight, center: (() => { const r = T.rect(pane);
                  return [(r.left + r.right) / 2, (r.top + r.bottom) / 2]; })(),
                copy: (() => { const r = T.rect(T.view(__node).querySelector(".lms-copy"));
                  return [(r.left + r.right) / 2, (r.top + r.bottom) / 2]; })()};
    })()""")
    assert done["answer"] == "".join(long_answer) and "tokens/s: 51.0" in done["stats"]
    assert done["scrollable"] and done["followed"], done  # the pane followed the stream to its end
    assert not overlaps(done["parts"]), done["parts"]
    # A person clicks into the answer and scrolls it up with the wheel: the pane scrolls, the canvas does not
    # zoom (Nodes 2.0 since 1.47 hands the wheel to a widget only once the focus is inside, as for its text boxes).
    await ui.mouse("mousePressed", *done["center"])
    await ui.mouse("mouseReleased", *done["center"])
    before = await ui.evaluate("({top: T.view(__node).querySelector('.lms-answer').scrollTop, "
                               "scale: app.canvas.ds.scale})")
    await ui.wheel(*done["center"], -240)
    await ui.evaluate("T.sleep(200)")
    after = await ui.evaluate("({top: T.view(__node).querySelector('.lms-answer').scrollTop, "
                              "scale: app.canvas.ds.scale})")
    assert after["top"] < before["top"] and after["scale"] == before["scale"], (before, after)
    # Copy, clicked as a person clicks it.
    await ui.mouse("mousePressed", *done["copy"])
    await ui.mouse("mouseReleased", *done["copy"])
    copied = await ui.evaluate("""(async () => {
        await T.until(() => T.text(__node, ".lms-copy") !== "Copy", 2000);
        return {label: T.text(__node, ".lms-copy"), clip: await navigator.clipboard.readText()};
    })()""")
    assert copied == {"label": "Copied", "clip": "".join(long_answer)}, copied


async def list_node(page: Chromium, fake, name: str, count: int) -> None:
    """A chat node fed by core's Load Image Dataset from Folder, over a folder of `count` images."""
    folder = page.server.input_dir / f"{name}_{page.label}"
    folder.mkdir(exist_ok=True)
    for index in range(count):
        Image.new("RGB", (24, 24), (60 * index, 90, 120)).save(folder / f"img_{index}.png")
    await chat_node(page, fake, pos=(420, 60))
    await page.evaluate(f"""(async () => {{
        const loader = await T.add("LoadImageDataSetFromFolder", [60, 80]);
        const folder = T.widget(loader, "folder");
        folder.options.values = [...new Set([...(folder.options.values || []), {json.dumps(folder.name)}])];
        T.set(loader, "folder", {json.dumps(folder.name)});
        loader.connect(0, __node, __node.inputs.findIndex((i) => i.name === "image"));
        await T.frames(4);
    }})()""")


async def test_a_list_run_shows_every_answer(ui, lmstudio):
    lmstudio.echo = True
    lmstudio.event_delay = 0.02
    await list_node(ui, lmstudio, "list", 3)
    await ui.evaluate("app.queuePrompt(0, 1)")
    shown = await ui.evaluate("""(async () => {
        await T.until(() => T.view(__node).querySelectorAll(".lms-entry").length === 3
                            && T.text(__node, ".lms-list").includes("3 done"));
        await T.frames(2);
        return {entries: [...T.view(__node).querySelectorAll(".lms-entry")].map((e) => e.textContent),
                list: T.text(__node, ".lms-list"), parts: T.parts(__node)};
    })()""")
    assert shown["entries"] == [f"#{i}Answer to Describe the picture." for i in (1, 2, 3)], shown
    assert "3 done" in shown["list"]
    assert not overlaps(shown["parts"]), shown["parts"]
    assert shown["parts"]["answers"]["height"] >= 30 and shown["parts"]["answer"]["height"] >= 30, shown["parts"]
    await keep_picture(ui, "list")


async def test_the_folder_captioner_shows_each_image_and_the_report(ui, lmstudio):
    lmstudio.describe_images = True
    folder = ui.server.input_dir / f"folder_{ui.label}"
    folder.mkdir(exist_ok=True)
    for index in range(3):
        Image.new("RGB", (20 + index, 30), (60 * index, 90, 120)).save(folder / f"img_{index}.png")
    shown = await ui.evaluate(f"""(async () => {{
        window.__node = await T.add("LMStudioCaptionFolder", [100, 60]);
        const values = [["folder", {json.dumps(folder.name)}], ["server_url", {json.dumps(lmstudio.url)}],
                        ["model_id", {json.dumps(MODEL)}], ["connection_mode", "REST API"]];
        for (const [name, value] of values) T.set(__node, name, value);
        await T.frames(4);
        app.queuePrompt(0, 1);
        await T.until(() => T.view(__node).querySelectorAll(".lms-entry").length === 3
                            && T.text(__node, ".lms-notice").startsWith("Captioned 3 of 3"));
        await T.frames(2);
        return {{entries: [...T.view(__node).querySelectorAll(".lms-entry")].map((e) => e.textContent),
                 notice: T.text(__node, ".lms-notice"), parts: T.parts(__node),
                 widgets: __node.widgets.map((w) => w.name)}};
    }})()""")
    assert shown["entries"] == [f"#{i + 1}An image of {20 + i} x 30" for i in range(3)], shown
    assert shown["widgets"][-1] == "lmstudio_stream" and "pick model" in shown["widgets"], shown
    assert not overlaps(shown["parts"]), shown["parts"]
    assert [(folder / f"img_{i}.txt").read_text() for i in range(3)] == [f"An image of {20 + i} x 30" for i in range(3)]
    await keep_picture(ui, "folder")


async def test_a_cancelled_list_queued_again_shows_the_resumed_answers_and_the_rest(ui, lmstudio):
    """Resumed items finish at once, before later items start: the view must keep them, not start over."""
    lmstudio.echo = True
    lmstudio.event_delay = 0.02
    await list_node(ui, lmstudio, "resume", 4)
    await ui.evaluate("T.set(__node, 'control_after_generate', 'fixed')")  # the same seed: the same requests
    lmstudio.held = 2  # two items answer, the other two wait in the server until Cancel
    await ui.evaluate("app.queuePrompt(0, 1)")
    await ui.evaluate("T.until(() => T.view(__node).querySelectorAll('.lms-entry').length === 2)")
    await ui.server.post("/interrupt")
    await ui.evaluate("T.until(() => T.text(__node, '.lms-list').includes('cancelled'))")
    lmstudio.held = None
    await ui.evaluate("app.queuePrompt(0, 1)")
    shown = await ui.evaluate("""(async () => {
        await T.until(() => T.view(__node).querySelectorAll(".lms-entry").length === 4
                            && T.text(__node, ".lms-list").includes("4 done"));
        await T.frames(2);
        return {entries: [...T.view(__node).querySelectorAll(".lms-entry")].map((e) => e.textContent),
                notice: T.text(__node, ".lms-notice"), parts: T.parts(__node)};
    })()""")
    assert shown["entries"] == [f"#{i}Answer to Describe the picture." for i in (1, 2, 3, 4)], shown
    assert shown["notice"].startswith("2 of 4 answers came back finished from the last run"), shown
    assert not overlaps(shown["parts"]), shown["parts"]
    await keep_picture(ui, "resumed")


async def test_the_last_run_stays_after_a_tab_switch_and_a_reload_and_nothing_stale_elsewhere(ui, lmstudio):
    """A tab switch shows what the frontend keeps per workflow again; a page reload, what the server's history kept
    of this workflow's runs; the same workflow where the server never ran it, nothing."""
    lmstudio.event_delay = 0.01
    # A workflow of its own, as a person starts one (`T.fresh` clears the page's graph, which leaves it without an
    # id until it is loaded again: a run of such a graph cannot be told from another's after a reload).
    workflow_id = await ui.evaluate("""(async () => {
        await app.extensionManager.command.execute("Comfy.NewBlankWorkflow");
        app.canvas.ds.scale = 1;
        app.canvas.ds.offset = [0, 0];
        await T.frames(4);
        return app.graph.id;
    })()""")
    assert workflow_id and workflow_id != "00000000-0000-0000-0000-000000000000"
    await list_node(ui, lmstudio, "stays", 2)
    await ui.evaluate("app.queuePrompt(0, 1)")
    ran = await ui.evaluate("""(async () => {
        await T.until(() => T.view(__node).querySelectorAll(".lms-entry").length === 2
                            && T.text(__node, ".lms-list").includes("2 done"));
        await T.frames(2);
        return T.shows(__node);
    })()""")
    assert ran["answer"] == "A red square." and ran["reasoning"] == "Let me look.", ran
    assert "tokens/s" in ran["stats"] and len(ran["entries"]) == 2 and ran["onPage"], ran
    await idle(ui.server)  # the run's history entry is written

    switched = await ui.evaluate("""(async () => {
        const command = app.extensionManager.command;
        await command.execute("Comfy.NewBlankWorkflow");
        await T.frames(4);
        const away = {nodes: app.graph.nodes.length, chat: Boolean(T.chatNode())};
        await command.execute("Workspace.PreviousOpenedWorkflow");
        await T.until(() => T.chatNode() && T.chatNode() !== __node);
        await T.until(() => T.chatNode().lmstudioStreamView.root.querySelectorAll(".lms-entry").length === 2, 5000);
        await T.frames(4);
        window.__node = T.chatNode();
        return {away, shows: T.shows(__node)};
    })()""")
    assert switched["away"] == {"nodes": 0, "chat": False}, switched  # really another workflow
    assert switched["shows"] == ran, (switched, ran)
    await keep_picture(ui, "after-tab-switch")

    saved = await ui.evaluate("JSON.stringify(app.graph.serialize())")
    await ui.goto(ui.server.url + "/", ready=ui.ready)  # the page reloaded: the frontend keeps no outputs
    await ui.evaluate(HELPERS)
    reloaded = await ui.evaluate("""(async () => {
        await T.until(() => T.chatNode()?.lmstudioStreamView?.root.querySelectorAll(".lms-entry").length === 2);
        await T.frames(4);
        window.__node = T.chatNode();
        return T.shows(__node);
    })()""")
    assert reloaded == ran, (reloaded, ran)
    await keep_picture(ui, "after-reload")

    await ui.server.post("/history", {"clear": True})  # as on a machine whose server never ran this workflow
    elsewhere = await ui.evaluate(f"""(async () => {{
        await app.loadGraphData({saved});
        await T.frames(4);
        await T.sleep(1000);  // time for the history's answer
        return T.shows(T.chatNode());
    }})()""")
    assert elsewhere == {"answer": "", "reasoning": "", "stats": "", "list": "", "entries": [],
                         "onPage": True}, elsewhere


async def test_further_image_sockets_grow_as_images_are_linked(ui, lmstudio):
    """Core's Autogrow in both renderers: one free socket after the linked ones; the node face keeps at most 12
    widgets above the view; the images reach LM Studio in socket order."""
    await chat_node(ui, lmstudio, pos=(420, 60))
    shown = await ui.evaluate("""(async () => {
        const sockets = () => __node.inputs.map((i) => i.name);
        const fresh = sockets();
        const sizes = [[64, 32], [20, 40], [24, 24]];
        const images = [];
        for (const [i, [w, h]] of sizes.entries()) {
            const source = await T.add("EmptyImage", [40, 60 + 190 * i]);
            T.set(source, "width", w);
            T.set(source, "height", h);
            images.push(source);
        }
        images[0].connect(0, __node, __node.inputs.findIndex((i) => i.name === "image"));
        await T.frames(4);
        const free = () => __node.inputs.findIndex((i) => i.name.includes("image_") && i.link == null);
        images[1].connect(0, __node, free());
        await T.frames(4);
        images[2].connect(0, __node, free());
        await T.frames(6);
        const names = __node.widgets.map((w) => w.name);
        return {fresh, grown: sockets(), above: names.indexOf("lmstudio_stream"), parts: T.parts(__node)};
    })()""")
    further = [name for name in shown["grown"] if "image_" in name]
    # One free socket, beside `image` (1.35.9 shows none for a group that needs none: the pack adds it there).
    assert shown["fresh"][:2] == ["image", "more_images.image_2"], shown
    assert [name for name in shown["fresh"] if "image_" in name] == ["more_images.image_2"], shown
    assert further == ["more_images.image_2", "more_images.image_3", "more_images.image_4"], shown
    assert shown["above"] <= 12, shown
    await keep_picture(ui, "images")
    await ui.evaluate("app.queuePrompt(0, 1)")
    await ui.evaluate("T.until(() => T.text(__node, '.lms-stats').includes('tokens/s'))")
    from test_comfyui_server import image_sizes

    assert image_sizes(lmstudio.chat_requests()[-1].body) == [(64, 32), (20, 40), (24, 24)]


async def test_a_chained_turn_says_which_turn_it_streams(ui, lmstudio):
    """Two chat nodes, the second continuing the first's conversation: its view says "turn 2 of the chat"."""
    lmstudio.echo = True
    await chat_node(ui, lmstudio, pos=(40, 60))
    shown = await ui.evaluate(f"""(async () => {{
        const first = __node;
        const second = await T.add("LMStudioStreamChat", [480, 60]);
        const values = [["server_url", {json.dumps(lmstudio.url)}], ["model_id", {json.dumps(MODEL)}],
                        ["connection_mode", "REST API"], ["prompt", "Shorten it"]];
        for (const [name, value] of values) T.set(second, name, value);
        first.connect(first.outputs.findIndex((o) => o.name === "conversation"), second,
                      second.inputs.findIndex((i) => i.name === "conversation"));
        await T.frames(4);
        app.queuePrompt(0, 1);
        await T.until(() => T.text(second, ".lms-stats").includes("tokens/s"));
        await T.frames(2);
        window.__node = second;
        return {{first: T.text(first, ".lms-list"), second: T.text(second, ".lms-list"),
                 answer: T.text(second, ".lms-answer"), parts: T.parts(second)}};
    }})()""")
    assert shown["first"] == "" and shown["second"] == "turn 2 of the chat", shown
    assert shown["answer"] == "Answer to Shorten it" and not overlaps(shown["parts"]), shown
    body = lmstudio.chat_requests()[-1].body
    assert body["previous_response_id"] in lmstudio.stored
    await keep_picture(ui, "turn")


async def test_the_picker_lists_the_server_and_an_error_shows_on_the_node(ui, lmstudio):
    lmstudio.models = [native_model(MODEL, loaded=True), native_model("z/text-only", vision=False)]
    await chat_node(ui, lmstudio)
    picked = await ui.evaluate("""(async () => {
        const list = T.widget(__node, "pick model");
        list.value = "(refresh the list)";
        list.callback(list.value);  // the list's last entry lists again
        // A refresh the server_url change scheduled (400 ms after typing) may supersede this one: wait for the
        // list itself.
        await T.until(() => T.widget(__node, "pick model").options.values.length > 2);
        await T.frames(4);
        const picker = T.widget(__node, "pick model");
        const values = [...picker.options.values];
        const shown = (T.nodeElement(__node) ?? document.body).textContent;
        picker.callback(values[2]);
        T.widget(__node, "pick model").value = values[2];
        await T.frames(6);
        const inputs = [...(T.nodeElement(__node)?.querySelectorAll("input") ?? [])].map((i) => i.value);
        return {values, current: picker.value, shownHasLabel: shown.includes(values[1]),
                modelId: T.widget(__node, "model_id").value, inputs};
    })()""")
    assert picked["values"] == ["(pick a model)", f"{MODEL}  [loaded, vision]", "z/text-only", "(refresh the list)"], \
        picked
    assert picked["modelId"] == "z/text-only"
    if ui.vue:  # the Vue node draws the values itself: what it shows must follow what the pack wrote
        assert picked["shownHasLabel"] and "z/text-only" in picked["inputs"], picked
    lmstudio.http_error = (404, {"error": {"message": "no such model", "code": "model_not_found"}})
    await ui.evaluate("app.queuePrompt(0, 1)")
    error = await ui.evaluate("""(async () => {
        await T.until(() => T.text(__node, ".lms-error").length > 0);
        await T.frames(2);
        const el = T.view(__node).querySelector(".lms-error");
        return {text: el.textContent, color: getComputedStyle(el).color, parts: T.parts(__node)};
    })()""")
    assert "Model 'z/text-only' not found" in error["text"], error
    assert error["parts"]["error"]["height"] > 10 and not overlaps(error["parts"]), error["parts"]
    assert error["color"] != "rgb(221, 221, 221)"  # drawn in the error colour, not as plain text
    await keep_picture(ui, "error")


async def test_a_presets_text_shows_before_the_run_and_is_what_runs(ui, lmstudio):
    from lmstudio_pack.presets import BUILT_IN

    tags = next(p for p in BUILT_IN if p.name == "Booru-style tags")
    await chat_node(ui, lmstudio)
    shown = await ui.evaluate("""(async () => {
        const preset = T.widget(__node, "preset");
        preset.value = "Booru-style tags";
        preset.callback(preset.value);
        await T.until(() => T.text(__node, ".lms-preset").length > 0);
        await T.frames(4);
        const el = T.view(__node).querySelector(".lms-preset");
        const first = {text: el.textContent, height: el.offsetHeight, parts: T.parts(__node)};
        T.set(__node, "prompt", "");
        const own = T.widget(__node, "system_prompt");
        own.value = "My own rules.";
        own.callback?.(own.value);
        await T.until(() => T.text(__node, ".lms-preset").includes("system prompt: this node's own"));
        const second = el.textContent;
        own.value = "";
        own.callback?.(own.value);
        await T.until(() => !T.text(__node, ".lms-preset").includes("this node's own"));
        return {first, second};
    })()""")
    assert shown["first"]["text"].startswith('Preset "Booru-style tags"\nsystem prompt: You tag images'), shown
    assert shown["first"]["height"] > 10 and not overlaps(shown["first"]["parts"]), shown
    assert "system prompt: this node's own" in shown["second"], shown
    await keep_picture(ui, "preset")
    await ui.evaluate("app.queuePrompt(0, 1)")
    await ui.evaluate("T.until(() => T.text(__node, '.lms-stats').length > 0)")
    body = lmstudio.chat_requests()[-1].body
    assert (body["system_prompt"], body["input"]) == (tags.system_prompt, tags.prompt)
    loaded = await ui.evaluate(f"""(async () => {{
        await app.loadGraphData({(EXAMPLES[0].parent / "caption_with_a_preset.json").read_text()});
        const chat = app.graph.nodes.find((n) => n.type === "LMStudioStreamChat");
        await T.until(() => T.text(chat, ".lms-preset").length > 0);
        return T.text(chat, ".lms-preset");
    }})()""")
    assert loaded.startswith('Preset "Booru-style tags"'), loaded


async def test_first_release_workflows_migrate_and_the_examples_load(ui):
    workflow = json.loads((FIXTURES / "first_release_generate_then_caption.json").read_text())
    loaded = await ui.evaluate(f"""(async () => {{
        await app.loadGraphData({json.dumps(workflow)});
        await T.frames(6);
        const nodes = app.graph.nodes;
        const chat = nodes.find((n) => n.type === "LMStudioStreamChat");
        const options = nodes.find((n) => n.type === "LMStudioChatOptions");
        const values = (node) => Object.fromEntries(node.widgets.map((w) => [w.name, w.value]));
        const link = chat.inputs.find((i) => i.name === "options").link;
        return {{chat: values(chat), options: options && values(options),
                 linked: link != null && app.graph.links.get?.(link)?.origin_id === options.id,
                 view: T.view(chat).offsetHeight}};  // layout pixels: the workflow brings its own zoom
    }})()""")
    chat, options = loaded["chat"], loaded["options"]
    assert chat["prompt"].startswith("Describe this image in one sentence")
    assert (chat["system_prompt"], chat["seed"], chat["control_after_generate"]) == ("", 0, "fixed")
    assert options["after_run"] == "unload" and options["free_comfy_vram"] is True and loaded["linked"]
    assert loaded["view"] >= VIEW_MIN, loaded["view"]
    for path in EXAMPLES:
        missing = await ui.evaluate(f"""(async () => {{
            await app.loadGraphData({path.read_text()});
            await T.frames(4);
            return app.graph.nodes.filter((n) => !LiteGraph.registered_node_types[n.type]).map((n) => n.type);
        }})()""")
        assert missing == [], (path.name, missing)
