"""The DOM widget in headless Chromium on a harness page with stand-ins for the frontend's `app` and `api`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from aiohttp import web

from browser import Chromium, chromium_path

ROOT = Path(__file__).resolve().parent.parent
HARNESS = Path(__file__).resolve().parent / "js" / "harness"

if chromium_path() is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI must have Chromium (apt-get install chromium): the widget tests need it")
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True)


def harness_app() -> web.Application:
    """Serves the harness like ComfyUI serves a pack: WEB_DIRECTORY under /extensions/<folder>/, and the pack's
    routes (registered on PromptServer at import) under /api."""
    from server import PromptServer

    import lmstudio_pack.node  # noqa: F401  (registers the routes)

    async def harness(_: web.Request) -> web.FileResponse:
        return web.FileResponse(HARNESS / "harness.html")

    app = web.Application()
    app.router.add_get("/harness.html", harness)
    app.router.add_static("/scripts/", HARNESS / "scripts")
    app.router.add_static("/extensions/lmstudio-stream-chat/", ROOT / "web")
    api = web.Application()
    api.add_routes(PromptServer.instance.routes)
    app.add_subapp("/api", api)
    return app


@pytest.fixture
async def page(aiohttp_server, lmstudio):
    server = await aiohttp_server(harness_app())
    browser = Chromium()
    await browser.start()
    await browser.goto(f"http://127.0.0.1:{server.port}/harness.html?server={lmstudio.url}")
    yield browser
    errors = [line for line in browser.console if line.startswith("EXCEPTION")]
    await browser.close()
    assert not errors, errors


async def run(page, script: str):
    return await page.evaluate(f"(async () => {{ const h = window.harness; {script} }})()")


async def test_added_widgets_are_display_only_and_come_last(page):
    widgets = await run(page, """return h.nodes.main.widgets.map((w) => [w.name, w.type, w.serialize ?? null,
                                                                          w.options?.serialize ?? null]);""")
    assert widgets == [["prompt", "text", None, None], ["model_id", "text", None, None],
                       ["server_url", "text", None, None], ["pick model", "combo", False, False],
                       ["lmstudio_stream", "lmstudio_stream_view", False, False]]
    assert await run(page, "return h.nodes.other.widgets.length;") == 0


async def test_model_picker_lists_the_nodes_server_and_sets_model_id(page, lmstudio):
    from fake_lmstudio import native_model

    lmstudio.models = [native_model("z/text", vision=False), native_model("a/vlm"), native_model("m/on", loaded=True)]
    result = await run(page, """
        const picker = h.widget("main", "pick model");
        picker.value = "(refresh the list)";
        picker.callback(picker.value);  // what picking the list's last entry does
        for (let i = 0; i < 200 && !picker.options.values.includes("z/text"); i++)
            await new Promise((r) => setTimeout(r, 25));
        const values = [...picker.options.values];
        picker.callback(values[1]);
        return {values, modelId: h.widget("main", "model_id").value};
    """)
    assert result["values"] == ["(pick a model)", "m/on  [loaded, vision]", "a/vlm  [vision]", "z/text",
                                "(refresh the list)"]
    assert result["modelId"] == "m/on"


async def test_model_picker_follows_server_url_and_reports_unreachable(page, free_port):
    result = await run(page, f"""
        const picker = h.widget("main", "pick model");
        const url = h.widget("main", "server_url");
        url.value = "http://127.0.0.1:{free_port}";
        url.callback(url.value);
        for (let i = 0; i < 200 && !picker.options.values.some((v) => v.includes("not reachable")); i++)
            await new Promise((r) => setTimeout(r, 25));
        await h.frames();
        return {{values: [...picker.options.values], picked: picker.value, status: h.view("main").status,
                 modelId: h.widget("main", "model_id").value}};
    """)
    assert result["values"] == ["(pick a model)", "(LM Studio not reachable; refresh the list to retry)",
                                "(refresh the list)"]
    assert result["picked"] == "(LM Studio not reachable; refresh the list to retry)"  # one short line, in the picker
    assert result["status"] == ""  # no wall of red text on a fresh node: the full explanation waits for a run
    assert result["modelId"] == ""  # a failed listing never touches the saved model_id


async def test_stream_order_reasoning_answer_status_stats(page):
    view = await run(page, """
        h.send("7", "clear", "");
        h.send("7", "status", "Loading model 40%");
        await h.frames();
        const loading = h.view("main").status;
        for (const t of ["Let ", "me ", "see."]) h.send("7", "reasoning", t);
        for (const t of ["A red ", "square."]) h.send("7", "text", t);
        h.send("7", "stats", "tokens/s: 51.0 | mode: SDK");
        h.send("7", "done", "");
        await h.frames();
        const pane = document.querySelector("[data-type=LMStudioStreamChat] .lms-reasoning");
        return {...h.view("main"), loading, italic: getComputedStyle(pane).fontStyle,
                opacity: getComputedStyle(pane).opacity};
    """)
    assert view["loading"] == "Loading model 40%"
    assert (view["reasoning"], view["answer"]) == ("Let me see.", "A red square.")
    assert view["stats"] == "tokens/s: 51.0 | mode: SDK" and view["status"] == "" and view["error"] == ""
    assert view["reasoningVisible"] and view["italic"] == "italic" and float(view["opacity"]) < 1


async def test_clear_empties_everything(page):
    view = await run(page, """
        h.send("7", "text", "old");
        h.send("7", "error", "old error");
        h.send("7", "clear", "");
        await h.frames();
        return h.view("main");
    """)
    assert (view["answer"], view["error"], view["reasoning"], view["reasoningVisible"]) == ("", "", "", False)


async def test_error_style(page):
    result = await run(page, """
        h.send("7", "clear", "");
        h.send("7", "error", "LM Studio connection failed. Tried http://127.0.0.1:1234/api/v1/chat.");
        h.send("7", "done", "");
        await h.frames();
        const el = document.querySelector("[data-type=LMStudioStreamChat] .lms-error");
        return {error: h.view("main").error, color: getComputedStyle(el).color};
    """)
    assert result["error"].startswith("LM Studio connection failed.")
    assert result["color"] == "rgb(255, 107, 107)"


async def test_subgraph_foreign_and_unknown_events(page):
    views = await run(page, """
        h.send("12:34", "text", "inside the subgraph");
        h.send("8", "text", "for a node that is not ours");
        h.send("99", "text", "for no node at all");
        h.send("12:99", "text", "for no node at all");
        h.send("7", "future_chunk_type", "ignored");
        h.api.receive("lmstudio.stream.update", null);
        h.api.receive("lmstudio.stream.update", "garbage");
        await h.frames();
        return {main: h.view("main"), inner: h.view("inner"), other: h.view("other")};
    """)
    assert views["inner"]["answer"] == "inside the subgraph"
    assert views["main"]["answer"] == "" and views["other"] is None


async def test_model_output_stays_text(page):
    payload = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script><b>bold</b>'
    result = await run(page, f"""
        const payload = {json.dumps(payload)};
        const before = h.view("main").elements;
        h.send("7", "clear", "");
        h.send("7", "reasoning", payload);
        h.send("7", "text", payload);
        h.send("7", "stats", payload);
        h.send("7", "error", payload);
        h.send("7", "status", payload);
        await h.frames(3);
        await new Promise((r) => setTimeout(r, 100));
        const root = document.querySelector("[data-type=LMStudioStreamChat] .lmstudio-stream");
        return {{view: h.view("main"), before, tags: root.querySelectorAll("img, script, b").length,
                 xss: window.__xss ?? null}};
    """)
    view = result["view"]
    assert view["answer"] == payload and view["reasoning"] == payload and view["error"] == payload
    assert result["tags"] == 0 and result["xss"] is None
    assert view["elements"] == result["before"]  # no element was created by model text


async def test_burst_of_5000_deltas_renders_in_time(page):
    result = await run(page, """
        h.send("7", "clear", "");
        await h.frames();
        let draws = 0;
        const observer = new MutationObserver(() => draws++);
        observer.observe(document.querySelector("[data-type=LMStudioStreamChat] .lms-answer"),
                         {characterData: true, childList: true, subtree: true});
        const start = performance.now();
        for (let i = 0; i < 5000; i++) h.send("7", i < 1000 ? "reasoning" : "text", `t${i} `);
        const dispatched = performance.now() - start;
        await h.frames(1);
        const rendered = performance.now() - start;
        observer.disconnect();
        return {dispatched, rendered, draws, view: h.view("main")};
    """)
    expected = "".join(f"t{i} " for i in range(1000, 5000))
    assert result["view"]["answer"] == expected
    assert result["view"]["reasoning"] == "".join(f"t{i} " for i in range(1000))
    assert result["draws"] <= 2  # one redraw for the whole burst, not one per delta
    assert result["rendered"] < 1000, result
    print(f"\n5,000-delta burst: dispatched in {result['dispatched']:.1f} ms, on screen after "
          f"{result['rendered']:.1f} ms, {result['draws']} redraw(s)")


async def test_auto_scroll_follows_unless_the_user_scrolled_up(page):
    result = await run(page, """
        const pane = document.querySelector("[data-type=LMStudioStreamChat] .lms-answer");
        h.send("7", "clear", "");
        h.send("7", "text", "line\\n".repeat(200));
        await h.frames();
        const followed = pane.scrollHeight - pane.clientHeight - pane.scrollTop;
        pane.scrollTop = 0;  // the user scrolls up to read
        h.send("7", "text", "more\\n".repeat(50));
        await h.frames();
        return {followed, kept: pane.scrollTop, overflowing: pane.scrollHeight > pane.clientHeight,
                height: pane.clientHeight};
    """)
    assert result["overflowing"] and result["followed"] <= 1 and result["kept"] == 0
    assert result["height"] < 600  # long text scrolls inside the pane; the widget does not grow


async def test_executed_fallback_for_cached_runs_and_late_pages(page):
    view = await run(page, """
        h.nodes.late.onExecuted({lmstudio: [{text: "Cached answer", reasoning: "Cached thought",
                                              stats: "tokens/s: 10.0 | mode: REST API"}]});
        await h.frames();
        return h.view("late");
    """)
    assert (view["answer"], view["reasoning"], view["stats"]) == ("Cached answer", "Cached thought",
                                                                  "tokens/s: 10.0 | mode: REST API")


async def test_screenshot(page, tmp_path):
    await run(page, """
        h.send("7", "clear", "");
        h.send("7", "reasoning", "The user wants a caption. The image shows a red square on a white background; "
                                 + "keep it short and literal.");
        h.send("7", "text", "A solid red square centred on a plain white background.");
        h.send("7", "stats", "tokens/s: 51.0 | TTFT: 0.81 s | input tokens: 17 | output tokens: 50 (reasoning 12) "
                             + "| mode: REST API | model: qwen/qwen3-vl-4b");
        h.send("7", "done", "");
        h.send("9", "clear", "");
        h.send("9", "status", "Loading model 45%");
        h.send("12:34", "clear", "");
        h.send("12:34", "error", "LM Studio connection failed. Tried http://127.0.0.1:1234/api/v1/chat.");
        await h.frames();
    """)
    target = Path(os.environ.get("WIDGET_SCREENSHOT", tmp_path / "widget.png"))
    await page.screenshot(target)
    assert target.stat().st_size > 5000


async def test_copy_button_copies_the_answer(page):
    result = await run(page, """
        h.send("7", "clear", "");
        h.send("7", "text", "The answer to copy.");
        await h.frames();
        const button = document.querySelector("[data-type=LMStudioStreamChat] .lms-copy");
        const settle = () => new Promise((r) => setTimeout(r, 30));
        // a secure context (localhost): the clipboard API
        let viaApi = null;
        Object.defineProperty(navigator, "clipboard", {configurable: true,
            value: {writeText: async (text) => { viaApi = text; }}});
        button.click();
        await settle();
        const apiLabel = button.textContent;
        // plain http from another machine: no secure context, the textarea fallback
        let viaFallback = null;
        Object.defineProperty(window, "isSecureContext", {configurable: true, value: false});
        document.execCommand = (command) => { viaFallback = [command, document.activeElement.value]; return true; };
        button.click();
        await settle();
        return {viaApi, apiLabel, viaFallback, fallbackLabel: button.textContent,
                leftovers: document.querySelectorAll("textarea").length};
    """)
    assert result["viaApi"] == "The answer to copy." and result["apiLabel"] == "Copied"
    assert result["viaFallback"] == ["copy", "The answer to copy."] and result["fallbackLabel"] == "Copied"
    assert result["leftovers"] == 0


async def test_a_list_shows_one_item_at_a_time_and_every_answer_after(page):
    result = await run(page, """
        for (let i = 0; i < 3; i++) h.send("7", "clear", "", i, 3);
        for (const i of [0, 1]) h.send("7", "item", "running", i, 3);
        h.send("7", "text", "Caption zero", 0, 3);
        h.send("7", "text", "Caption one", 1, 3);
        await h.frames();
        const during = h.view("main");
        h.send("7", "item", "done", 0, 3); h.send("7", "done", "", 0, 3);
        h.send("7", "error", "LM Studio answered HTTP 500", 1, 3);
        h.send("7", "item", "failed", 1, 3); h.send("7", "done", "", 1, 3);
        h.send("7", "item", "running", 2, 3);
        h.send("7", "text", "Caption two", 2, 3);
        h.send("7", "item", "done", 2, 3); h.send("7", "done", "", 2, 3);
        await h.frames();
        const after = h.view("main");
        document.querySelectorAll("[data-type=LMStudioStreamChat] .lms-entry")[0].click();
        await h.frames();
        return {during, after, picked: h.view("main").answer};
    """)
    assert result["during"]["answer"] == "Caption zero"  # never two items in one pane
    assert result["during"]["list"] == "item 1 of 3 · 0 done · 2 running · 1 queued"
    assert result["after"]["list"] == "item 3 of 3 · 2 done · 1 failed (#2)"
    assert result["after"]["answers"] == ["#1Caption zero", "#2Error: LM Studio answered HTTP 500", "#3Caption two"]
    assert result["picked"] == "Caption zero"


async def test_a_cached_list_shows_every_answer(page):
    view = await run(page, """
        h.nodes.late.onExecuted({lmstudio: [0, 1, 2].map((i) => ({index: i, text: `Cached ${i}`, reasoning: "",
                                                                   stats: "mode: SDK"}))});
        await h.frames();
        return h.view("late");
    """)
    assert view["answers"] == ["#1Cached 0", "#2Cached 1", "#3Cached 2"] and view["answer"] == "Cached 0"


async def test_a_batch_notice_is_shown(page):
    view = await run(page, """
        h.send("7", "clear", "", 0, 1);
        h.send("7", "notice", "Only the first of 4 images was sent.", 0, 1);
        await h.frames();
        return h.view("main");
    """)
    assert view["notice"] == "Only the first of 4 images was sent."
