// Pure widget logic: accumulate, route, coalesce, format. Run: node --test tests/js
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  answerList,
  applyUpdate,
  createFrameScheduler,
  createState,
  findNode,
  headline,
  isNearBottom,
  listSummary,
  parseExecutionId,
  pickItem,
  presetPreview,
  stateFromExecuted,
  textPatch,
  visibleItem,
} from "../../web/js/lmstudio_stream_core.js";

test("a run accumulates reasoning and answer in order, clear resets", () => {
  const state = createState();
  applyUpdate(state, "text", "old answer");
  const updates = [
    ["clear", ""], ["status", "Loading model 40%"], ["reasoning", "Let "], ["reasoning", "me see."],
    ["text", "A red "], ["text", "square."], ["stats", "tokens/s: 51.0 | mode: SDK"], ["done", ""],
  ];
  for (const [kind, content] of updates) assert.equal(applyUpdate(state, kind, content), true);
  assert.deepEqual(visibleItem(state), {
    reasoning: "Let me see.", text: "A red square.", status: "", stats: "tokens/s: 51.0 | mode: SDK",
    error: "", state: "queued", done: true,
  });
  assert.equal(state.running, false);
  assert.equal(listSummary(state), ""); // a single item shows no list
});

test("status clears when the answer starts; Cancelled survives done", () => {
  const state = createState();
  applyUpdate(state, "clear", "");
  applyUpdate(state, "status", "Processing prompt 80%");
  assert.equal(state.running, true);
  applyUpdate(state, "text", "x");
  assert.equal(visibleItem(state).status, "");
  applyUpdate(state, "status", "Cancelled");
  applyUpdate(state, "done", "");
  assert.equal(visibleItem(state).status, "Cancelled");
});

test("errors are kept; unknown chunk types are ignored", () => {
  const state = createState();
  assert.equal(applyUpdate(state, "error", "LM Studio connection failed."), true);
  assert.equal(visibleItem(state).error, "LM Studio connection failed.");
  const before = structuredClone(state);
  assert.equal(applyUpdate(state, "tool_call", "{}"), false);
  assert.equal(applyUpdate(state, undefined, "x"), false);
  assert.deepEqual(state, before);
});

test("non-string content is coerced, never evaluated", () => {
  const state = createState();
  applyUpdate(state, "text", null);
  applyUpdate(state, "text", 42);
  assert.equal(visibleItem(state).text, "42");
});

test("executed ui output restores the state, errors included", () => {
  const ok = stateFromExecuted({ lmstudio: [{ text: "Answer", reasoning: "Thought", stats: "mode: SDK" }] });
  assert.deepEqual(visibleItem(ok), { reasoning: "Thought", text: "Answer", status: "", stats: "mode: SDK", error: "",
                                      state: "done", done: true });
  assert.equal(ok.running, false);
  const failed = stateFromExecuted({
    lmstudio: [{ text: "Error: LM Studio connection failed.", reasoning: "", stats: "error | mode: REST API" }],
  });
  assert.equal(visibleItem(failed).error, "LM Studio connection failed.");
  assert.equal(visibleItem(failed).text, "");
  assert.equal(stateFromExecuted({ images: [] }), null);
  assert.equal(stateFromExecuted(undefined), null);
});

test("execution ids parse, including subgraph paths", () => {
  assert.deepEqual(parseExecutionId("7"), [7]);
  assert.deepEqual(parseExecutionId(7), [7]);
  assert.deepEqual(parseExecutionId("12:34:5"), [12, 34, 5]);
  for (const bad of ["", "a", "12:", ":3", "1:x", null, undefined, "1.5"]) assert.equal(parseExecutionId(bad), null);
});

function graph(nodes) {
  const byId = new Map(nodes.map((n) => [n.id, n]));
  return { getNodeById: (id) => byId.get(id) ?? null };
}

test("findNode walks into nested subgraphs", () => {
  const inner = { id: 34, comfyClass: "LMStudioStreamChat" };
  const nested = { id: 5, comfyClass: "LMStudioStreamChat" };
  const sub2 = { id: 34, subgraph: graph([nested]) };
  const subgraphNode = { id: 12, subgraph: graph([inner]) };
  const root = graph([{ id: 7, comfyClass: "LMStudioStreamChat" }, subgraphNode, { id: 13, subgraph: graph([sub2]) }]);
  assert.equal(findNode(root, "7").id, 7);
  assert.equal(findNode(root, "12:34"), inner);
  assert.equal(findNode(root, "13:34:5"), nested);
  assert.equal(findNode(root, "99"), null);
  assert.equal(findNode(root, "7:1"), null); // 7 is not a subgraph
  assert.equal(findNode(root, "12:99"), null);
  assert.equal(findNode(null, "7"), null);
});

test("redraws are coalesced to one per frame", () => {
  const frames = [];
  let draws = 0;
  const schedule = createFrameScheduler(() => draws++, (fn) => frames.push(fn));
  for (let i = 0; i < 5000; i++) schedule();
  assert.equal(frames.length, 1);
  frames.shift()();
  assert.equal(draws, 1);
  schedule();
  schedule();
  assert.equal(frames.length, 1);
  frames.shift()();
  assert.equal(draws, 2);
});

test("auto-scroll only when at the bottom", () => {
  assert.equal(isNearBottom({ scrollTop: 900, clientHeight: 100, scrollHeight: 1000 }), true);
  assert.equal(isNearBottom({ scrollTop: 895, clientHeight: 100, scrollHeight: 1000 }), true);
  assert.equal(isNearBottom({ scrollTop: 500, clientHeight: 100, scrollHeight: 1000 }), false);
});

test("text patches append while streaming and replace otherwise", () => {
  assert.deepEqual(textPatch("", "abc"), { append: "abc" });
  assert.deepEqual(textPatch("ab", "abc"), { append: "c" });
  assert.deepEqual(textPatch("abc", "abc"), { append: "" });
  assert.deepEqual(textPatch("abc", "xyz"), { replace: "xyz" });
  assert.deepEqual(textPatch("abc", "ab"), { replace: "ab" });
});

test("model picker labels, options and current value", async () => {
  const { modelLabel, pickerOptions, pickerValue, modelsRoute, PICK_PROMPT } = await import(
    "../../web/js/lmstudio_stream_core.js"
  );
  assert.equal(modelLabel({ key: "a/b", loaded_ids: ["a/b"], vision: true }), "a/b  [loaded, vision]");
  assert.equal(modelLabel({ key: "a/b", loaded_ids: [], vision: null }), "a/b");
  const options = pickerOptions({ models: [{ key: "m/on", loaded_ids: ["m/on"], vision: false }, { key: "x/y" }] });
  assert.deepEqual(options.labels, ["m/on  [loaded]", "x/y"]);
  assert.equal(options.keys.get("m/on  [loaded]"), "m/on");
  assert.equal(pickerValue(options, "x/y"), "x/y");
  assert.equal(pickerValue(options, "typed/by-hand"), PICK_PROMPT);
  const failed = pickerOptions({ models: [], error: "LM Studio connection failed." });
  assert.equal(failed.error, "LM Studio connection failed.");
  assert.equal(failed.labels.length, 1);
  assert.equal(failed.keys.size, 0);
  assert.deepEqual(pickerOptions({ models: [] }).labels, ["(no models found)"]);
  assert.equal(modelsRoute("http://192.168.1.5:1234/v1"), "/lmstudio/models?server_url=http%3A%2F%2F192.168.1.5%3A1234%2Fv1");
});

// ----------------------------------------------------------------------------------------------- lists

function listRun(count) {
  const state = createState();
  for (let i = 0; i < count; i++) applyUpdate(state, "clear", "", i, count);
  return state;
}

test("a list keeps every item apart and follows the first one streaming", () => {
  const state = listRun(4);
  for (const i of [0, 1]) applyUpdate(state, "item", "running", i, 4);
  applyUpdate(state, "text", "zero ", 0, 4);
  applyUpdate(state, "text", "one ", 1, 4);
  applyUpdate(state, "text", "zero again", 0, 4);
  assert.equal(visibleItem(state).text, "zero zero again"); // never two items in one pane
  assert.equal(state.items.get(1).text, "one ");
  applyUpdate(state, "item", "done", 0, 4);
  applyUpdate(state, "done", "", 0, 4);
  assert.equal(state.focus, 1); // item 0 ended: the view moves on to the next one streaming
  assert.equal(listSummary(state), "item 2 of 4 · 1 done · 1 running · 2 queued");
  assert.equal(state.running, true);
});

test("failed items are listed; the answers list is in list order with its numbers", () => {
  const state = listRun(3);
  for (const [i, kind, text] of [[2, "text", "c"], [0, "text", "a"], [1, "error", "HTTP 500"]]) {
    applyUpdate(state, "item", "running", i, 3);
    applyUpdate(state, kind, text, i, 3);
    applyUpdate(state, "item", kind === "error" ? "failed" : "done", i, 3);
    applyUpdate(state, "done", "", i, 3);
  }
  assert.equal(state.running, false);
  assert.match(listSummary(state), /2 done · 1 failed \(#2\)/);
  assert.deepEqual(answerList(state), [
    { index: 0, label: "#1", text: "a", failed: false },
    { index: 1, label: "#2", text: "Error: HTTP 500", failed: true },
    { index: 2, label: "#3", text: "c", failed: false },
  ]);
});

test("a retry clears the item's text; picking an item pins it until picked again", () => {
  const state = listRun(2);
  applyUpdate(state, "item", "running", 1, 2);
  applyUpdate(state, "text", "half an ans", 1, 2);
  applyUpdate(state, "reset", "", 1, 2);
  assert.equal(state.items.get(1).text, "");
  applyUpdate(state, "item", "running", 0, 2);
  pickItem(state, 1);
  applyUpdate(state, "text", "more", 0, 2);
  assert.equal(state.focus, 1);
  pickItem(state, null);
  assert.equal(state.focus, 0);
});

test("a page opened mid-list follows the items it hears of", () => {
  const state = createState();
  applyUpdate(state, "text", "late", 5, 8);
  assert.equal(state.focus, 5);
  assert.equal(visibleItem(state).text, "late");
});

test("a new run starts with item 0; a cached list comes back from the executed message", () => {
  const state = listRun(3);
  applyUpdate(state, "clear", "", 0, 1);
  assert.equal(state.items.size, 1);
  const cached = stateFromExecuted({ lmstudio: [
    { index: 0, text: "first", reasoning: "", stats: "mode: SDK" },
    { index: 1, text: "Error: refused", reasoning: "", stats: "error | mode: SDK" },
  ] });
  assert.equal(cached.count, 2);
  assert.deepEqual(answerList(cached).map((e) => [e.label, e.text, e.failed]),
                   [["#1", "first", false], ["#2", "Error: refused", true]]);
});

// ------------------------------------------------------------------- the last run again, after a tab switch or a reload

import { findNodeByLocator, isBlank, latestOutputs } from "../../web/js/lmstudio_stream_core.js";

const WORKFLOW = "6f1c1c52-1f0e-4c7a-9a57-2b8f0c1d2e3f";
const run = (number, workflowId, outputs) => ({
  prompt: [number, `prompt-${number}`, {}, { extra_pnginfo: { workflow: { id: workflowId } } }, []], outputs,
});
const said = (text) => ({ lmstudio: [{ index: 0, text, reasoning: "", stats: "mode: SDK" }] });

test("the server's history gives each chat node of this workflow its newest run, and nothing of others", () => {
  const history = {
    a: run(3, WORKFLOW, { 5: said("newest of 5"), 9: { images: [] } }),
    b: run(1, WORKFLOW, { 5: said("older of 5"), 7: said("only run of 7") }),
    c: run(4, "another-workflow", { 5: said("another workflow's"), 8: said("another workflow's") }),
    d: { prompt: "not a run" },
  };
  const found = latestOutputs(history, WORKFLOW);
  assert.deepEqual([...found.keys()].sort(), ["5", "7"]); // 9 is no chat node's output; 8 ran in another workflow
  assert.equal(found.get("5").lmstudio[0].text, "newest of 5");
  assert.equal(found.get("7").lmstudio[0].text, "only run of 7");
  assert.equal(latestOutputs(history, undefined).size, 0); // a workflow without an id matches nothing
  assert.equal(latestOutputs(null, WORKFLOW).size, 0);
});

test("node locators name a node of the root graph or of a subgraph", () => {
  const node = (id) => ({ id });
  const graph = (ids) => ({ getNodeById: (id) => (ids.includes(id) ? node(id) : null) });
  const inner = "0a1b2c3d-0000-4000-8000-000000000001";
  const root = { ...graph([3, 34]), subgraphs: new Map([[inner, graph([7])]]) };
  assert.equal(findNodeByLocator(root, "34").id, 34);
  assert.equal(findNodeByLocator(root, `${inner}:7`).id, 7);
  assert.equal(findNodeByLocator(root, `${inner}:34`), null);
  assert.equal(findNodeByLocator(root, "12:34"), null); // an execution id, not a locator
  assert.equal(findNodeByLocator(root, "x"), null);
});

test("a view is blank until a run streams into it or one is shown again", () => {
  const state = createState();
  assert.equal(isBlank(state), true);
  applyUpdate(state, "clear", "");
  assert.equal(isBlank(state), false);
  assert.equal(isBlank(stateFromExecuted(said("shown again"))), false);
});

// ----------------------------------------------------------------------------------------- old workflows

import { readFileSync } from "node:fs";
import { migrateWorkflow } from "../../web/js/lmstudio_stream_core.js";

const fixture = (name) => JSON.parse(readFileSync(new URL(`./fixtures/${name}`, import.meta.url), "utf8"));

function consistent(workflow) {
  const nodes = new Map(workflow.nodes.map((n) => [n.id, n]));
  assert.equal(nodes.size, workflow.nodes.length);
  assert.ok(workflow.last_node_id >= Math.max(...nodes.keys()));
  for (const [id, src, slot, dst, dstSlot, type] of workflow.links) {
    assert.ok(nodes.get(src).outputs[slot].links.includes(id));
    assert.equal(nodes.get(dst).inputs[dstSlot].link, id);
    assert.equal(nodes.get(dst).inputs[dstSlot].type, type);
  }
}

test("a first-release workflow with non-default settings gets a linked options node", () => {
  const workflow = fixture("first_release_generate_then_caption.json");
  assert.equal(migrateWorkflow(workflow), 1);
  const chat = workflow.nodes.find((n) => n.type === "LMStudioStreamChat");
  const options = workflow.nodes.find((n) => n.type === "LMStudioChatOptions");
  assert.deepEqual(chat.widgets_values.slice(7), ["", 0, "fixed"]); // system_prompt, seed, control
  assert.equal(chat.widgets_values.length, 10);
  // send_all_images .. free_comfy_vram as saved (unload, free ComfyUI's VRAM), and max_parallel's default
  assert.deepEqual(options.widgets_values, [false, 1024, 90, "output error text", "auto", "unload", 10, true, 0]);
  assert.deepEqual(chat.inputs.map((i) => i.name), ["image", "options"]);
  consistent(workflow);
  assert.equal(migrateWorkflow(workflow), 0); // idempotent: a migrated workflow is today's layout
});

test("a first-release workflow with default settings keeps its values and needs no options node", () => {
  const workflow = fixture("first_release_caption_an_image.json");
  const nodes = workflow.nodes.length;
  assert.equal(migrateWorkflow(workflow), 1);
  const chat = workflow.nodes.find((n) => n.type === "LMStudioStreamChat");
  assert.equal(workflow.nodes.length, nodes);
  assert.equal(chat.widgets_values[7],
               "You caption images for an image-generation dataset. Answer with the caption only.");
  assert.deepEqual(chat.widgets_values.slice(0, 3), ["Write one detailed caption for this image: subject, setting, "
                                                     + "colours, light, style.", "", "SDK"]);
  consistent(workflow);
});

test("today's workflows and other nodes are left alone", () => {
  const today = { nodes: [{ id: 1, type: "LMStudioStreamChat", widgets_values: ["p", "", "SDK", "u", 0.7, -1, false,
                                                                                  "", 0, "fixed"] },
                          { id: 2, type: "KSampler", widgets_values: new Array(18).fill(false) }], links: [] };
  const before = structuredClone(today);
  assert.equal(migrateWorkflow(today), 0);
  assert.deepEqual(today, before);
  assert.equal(migrateWorkflow(null), 0);
});

test("a failed list item's error comes apart from its empty answer", () => {
  const state = stateFromExecuted({
    lmstudio: [
      { index: 0, text: "A cat.", reasoning: "", stats: "mode: SDK" },
      { index: 1, text: "", reasoning: "", stats: "error | mode: SDK", error: "LM Studio connection failed." },
    ],
  });
  assert.equal(state.items.get(1).error, "LM Studio connection failed.");
  assert.equal(state.items.get(1).state, "failed");
  assert.equal(state.items.get(1).text, "");
  assert.deepEqual(answerList(state).map((a) => a.failed), [false, true]);
});

test("an item back from the last run may finish before a later item starts: the run goes on", () => {
  const state = createState();
  applyUpdate(state, "clear", "", 0, 1);
  applyUpdate(state, "text", "kept caption", 0, 1);
  applyUpdate(state, "item", "done", 0, 1);
  applyUpdate(state, "notice", "1 of 1 answers came back finished from the last run", 0, 1);
  applyUpdate(state, "done", "", 0, 1);
  applyUpdate(state, "clear", "", 1, 2); // item 1 starts after item 0 finished
  assert.equal(state.items.get(0).text, "kept caption");
  assert.match(state.notice, /from the last run/);
  assert.equal(state.count, 2);
  // The next run's later item, seen without its item 0 (a page opened mid-list), does start afresh.
  applyUpdate(state, "done", "", 1, 2);
  applyUpdate(state, "clear", "", 1, 2);
  assert.equal(state.items.has(0), false);
});

test("the executed output keeps the run's notices: the last item's word stands", () => {
  const state = stateFromExecuted({
    lmstudio: [
      { index: 0, text: "A", reasoning: "", stats: "s", notice: "1 of 3 answers came back finished" },
      { index: 1, text: "B", reasoning: "", stats: "s", notice: "2 of 3 answers came back finished" },
      { index: 2, text: "C", reasoning: "", stats: "s" },
    ],
  });
  assert.equal(state.notice, "2 of 3 answers came back finished");
  assert.equal(stateFromExecuted({ lmstudio: [{ text: "A", stats: "s" }] }).notice, "");
});

test("the executed output shows the notice of the item that returned last, not of the list's last item", () => {
  // Items 1 and 2 came back from the last run, item 2 first (its image was quicker to encode); item 0 was generated.
  const state = stateFromExecuted({
    lmstudio: [
      { index: 0, text: "A", stats: "s", returned: 3, notice: "2 of 3 answers came back finished" },
      { index: 1, text: "B", stats: "s", returned: 2, notice: "2 of 3 answers came back finished" },
      { index: 2, text: "C", stats: "s", returned: 1, notice: "1 of 3 answers came back finished" },
    ],
  });
  assert.equal(state.notice, "2 of 3 answers came back finished");
  assert.deepEqual([...state.items.keys()], [0, 1, 2]); // the answers stay in list order
});

test("a turn of a chat says which, in the line above the panes, live and from the executed output", () => {
  const state = createState();
  applyUpdate(state, "clear", "", 0, 1);
  assert.equal(headline(state), "");
  applyUpdate(state, "turn", "3", 0, 1);
  assert.equal(headline(state), "turn 3 of the chat");
  applyUpdate(state, "clear", "", 1, 2);
  applyUpdate(state, "item", "running", 1, 2);
  assert.match(headline(state), /^turn 3 of the chat · item 2 of 2/);
  applyUpdate(state, "clear", "", 0, 1); // the next run starts a new chat
  assert.equal(headline(state), "");
  const cached = stateFromExecuted({ lmstudio: [{ index: 0, text: "A", stats: "s", turn: 2 }] });
  assert.equal(headline(cached), "turn 2 of the chat");
  assert.equal(headline(stateFromExecuted({ lmstudio: [{ text: "A", stats: "s" }] })), "");
});

test("a preset's texts show before a run, the node's own named where they replace the preset's", () => {
  const presets = {
    Tags: { system_prompt: "You tag images.", prompt: "Tag this image.", json_schema: "" },
    Parts: { system_prompt: "Take it apart.", prompt: "", json_schema: '{"type":"object","properties":{"a":{},"b":{}}}' },
  };
  assert.equal(presetPreview("none", presets, {}), "");
  assert.equal(presetPreview("Tags", presets, { prompt: "", system_prompt: " " }),
    'Preset "Tags"\nsystem prompt: You tag images.\nprompt: Tag this image.');
  assert.equal(presetPreview("Tags", presets, { prompt: "Mine", system_prompt: "" }),
    "Preset \"Tags\"\nsystem prompt: You tag images.\nprompt: this node's own (the preset's is not used)");
  assert.match(presetPreview("Parts", presets, {}), /JSON answer: a, b /);
  assert.match(presetPreview("Gone", presets, {}), /^Preset "Gone" no longer exists: this node's own prompts run/);
  assert.ok(presetPreview("Tags", { Tags: { system_prompt: "x ".repeat(200) } }, {}).length < 200); // one glance
  assert.equal(presetPreview("Tags", null, {}), ""); // not fetched yet
});
