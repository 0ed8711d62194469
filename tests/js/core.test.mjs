// Pure widget logic: accumulate, route, coalesce, format. Run: node --test tests/js
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  applyUpdate,
  createFrameScheduler,
  createState,
  findNode,
  isNearBottom,
  parseExecutionId,
  stateFromExecuted,
  textPatch,
} from "../../web/js/lmstudio_stream_core.js";

test("a run accumulates reasoning and answer in order, clear resets", () => {
  const state = createState();
  state.text = "old answer";
  const updates = [
    ["clear", ""], ["status", "Loading model 40%"], ["reasoning", "Let "], ["reasoning", "me see."],
    ["text", "A red "], ["text", "square."], ["stats", "tokens/s: 51.0 | mode: SDK"], ["done", ""],
  ];
  for (const [kind, content] of updates) assert.equal(applyUpdate(state, kind, content), true);
  assert.deepEqual(state, {
    reasoning: "Let me see.", text: "A red square.", status: "", stats: "tokens/s: 51.0 | mode: SDK",
    error: "", running: false,
  });
});

test("status clears when the answer starts; Cancelled survives done", () => {
  const state = createState();
  applyUpdate(state, "clear", "");
  applyUpdate(state, "status", "Processing prompt 80%");
  assert.equal(state.running, true);
  applyUpdate(state, "text", "x");
  assert.equal(state.status, "");
  applyUpdate(state, "status", "Cancelled");
  applyUpdate(state, "done", "");
  assert.equal(state.status, "Cancelled");
});

test("errors are kept; unknown chunk types are ignored", () => {
  const state = createState();
  assert.equal(applyUpdate(state, "error", "LM Studio connection failed."), true);
  assert.equal(state.error, "LM Studio connection failed.");
  const before = { ...state };
  assert.equal(applyUpdate(state, "tool_call", "{}"), false);
  assert.equal(applyUpdate(state, undefined, "x"), false);
  assert.deepEqual(state, before);
});

test("non-string content is coerced, never evaluated", () => {
  const state = createState();
  applyUpdate(state, "text", null);
  applyUpdate(state, "text", 42);
  assert.equal(state.text, "42");
});

test("executed ui output restores the state, errors included", () => {
  const ok = stateFromExecuted({ lmstudio: [{ text: "Answer", reasoning: "Thought", stats: "mode: SDK" }] });
  assert.deepEqual(ok, { reasoning: "Thought", text: "Answer", status: "", stats: "mode: SDK", error: "", running: false });
  const failed = stateFromExecuted({
    lmstudio: [{ text: "Error: LM Studio connection failed.", reasoning: "", stats: "error | mode: REST API" }],
  });
  assert.equal(failed.error, "LM Studio connection failed.");
  assert.equal(failed.text, "");
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
