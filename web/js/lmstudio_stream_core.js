// Pure logic of the LM Studio stream widget: no DOM, no ComfyUI imports, so `node --test` can load it.
// ComfyUI also loads every .js file under web/ as an extension; this one only exports.

export const STREAM_EVENT = "lmstudio.stream.update";
export const NODE_CLASS = "LMStudioStreamChat";
// The nodes that carry the live view: the chat node, and the folder captioner (one list item per image).
export const VIEW_CLASSES = new Set([NODE_CLASS, "LMStudioCaptionFolder"]);

/** One list item's view: a single run is a list of one. */
export function createItem() {
  return { reasoning: "", text: "", status: "", stats: "", error: "", state: "queued", done: false };
}

/**
 * A widget's state: every item of the run by its index, which one the panes show (`focus`), whether the user
 * chose it (`pinned`), the list's length so far and a notice for the whole run.
 */
export function createState() {
  return { items: new Map(), count: 0, focus: 0, pinned: false, running: false, notice: "", turn: 1 };
}

const CHUNK_TYPES = new Set(["clear", "reset", "item", "reasoning", "text", "status", "stats", "error", "notice",
                             "turn", "done"]);

/**
 * Apply one `lmstudio.stream.update` chunk to `state`. `index` and `count` name the list item (absent from
 * older servers: a single item). Returns false for a chunk type this widget does not know (the server may grow
 * new ones), true otherwise.
 */
export function applyUpdate(state, chunkType, content, index = 0, count = 1) {
  if (!CHUNK_TYPES.has(chunkType)) return false;
  const value = typeof content === "string" ? content : String(content ?? "");
  const at = Number.isInteger(index) && index >= 0 ? index : 0;
  // Item 0 starts first: a new run. An item that comes back at once from the last run may be done before a later
  // item starts, so a later item's clear starts a new run only when the old run had finished that very item.
  if (chunkType === "clear" && (at === 0 || (!state.running && state.items.get(at)?.done))) {
    Object.assign(state, createState(), { running: true });
  }
  state.count = Math.max(state.count, Number.isInteger(count) ? count : 1, at + 1);
  let item = state.items.get(at);
  if (!item) state.items.set(at, (item = createItem()));
  switch (chunkType) {
    case "clear":
      Object.assign(item, createItem());
      break;
    case "reset": // a retry: the failed attempt's text goes
      Object.assign(item, { reasoning: "", text: "", error: "" });
      break;
    case "item":
      item.state = value;
      break;
    case "reasoning":
      item.reasoning += value;
      break;
    case "text":
      item.text += value;
      item.status = "";
      break;
    case "status":
      item.status = value;
      break;
    case "stats":
      item.stats = value;
      break;
    case "error":
      item.error = value;
      break;
    case "notice":
      state.notice = value;
      break;
    case "turn": // this run continues a chat: which turn of it
      state.turn = Number.parseInt(value, 10) || 1;
      break;
    case "done":
      item.done = true;
      if (item.status !== "Cancelled") item.status = "";
      state.running = [...state.items.values()].some((other) => !other.done);
      break;
  }
  if (!state.pinned) state.focus = followedItem(state);
  return true;
}

/** The item the panes follow: the first one still streaming, else the one shown so far. */
export function followedItem(state) {
  const running = [...state.items.entries()].filter(([, item]) => item.state === "running" && !item.done);
  if (running.length) return Math.min(...running.map(([index]) => index));
  if (state.items.has(state.focus) || !state.items.size) return state.focus;
  return Math.min(...state.items.keys()); // a page opened mid-list may never have seen item 0
}

/** What the panes show: the focused item. */
export function visibleItem(state) {
  return state.items.get(state.focus) ?? createItem();
}

/** Show one item and stop following the stream (`null` follows again). */
export function pickItem(state, index) {
  state.pinned = index !== null && state.items.has(index);
  state.focus = state.pinned ? index : followedItem(state);
}

/** "item 3 of 12 · 2 done · 1 failed (#5) · 4 running · 5 queued"; empty for a single item. Numbers count from 1. */
export function listSummary(state) {
  if (state.count <= 1) return "";
  const items = [...state.items.values()];
  const tally = (name) => items.filter((item) => item.state === name).length;
  const failed = [...state.items.entries()].filter(([, item]) => item.state === "failed").map(([i]) => `#${i + 1}`);
  const parts = [`item ${state.focus + 1} of ${state.count}`, `${tally("done")} done`];
  if (failed.length) parts.push(`${failed.length} failed (${failed.join(", ")})`);
  if (tally("running")) parts.push(`${tally("running")} running`);
  const queued = state.count - items.length + tally("queued");
  if (queued > 0) parts.push(`${queued} queued`);
  if (tally("cancelled")) parts.push(`${tally("cancelled")} cancelled`);
  return parts.join(" · ");
}

/** The line above the panes: which turn of a chat ("turn 2 of the chat") and the list's summary, as they apply. */
export function headline(state) {
  return [state.turn > 1 ? `turn ${state.turn} of the chat` : "", listSummary(state)].filter(Boolean).join(" · ");
}

/** The list's finished answers, in list order, for the answers pane: [{index, label, text, failed}]. */
export function answerList(state) {
  if (state.count <= 1) return [];
  return [...state.items.entries()]
    .filter(([, item]) => item.done)
    .sort(([a], [b]) => a - b)
    .map(([index, item]) => ({
      index,
      label: `#${index + 1}`,
      text: item.error ? `Error: ${item.error}` : item.text,
      failed: Boolean(item.error) || item.state === "failed",
    }));
}

/** The state carried by the node's `executed` message (`ui` output), for cached runs and late page loads. */
export function stateFromExecuted(output) {
  const entries = Array.isArray(output?.lmstudio) ? output.lmstudio.filter((e) => e && typeof e === "object") : [];
  if (!entries.length) return null;
  const state = createState();
  entries.forEach((entry, position) => {
    const item = createItem();
    const text = String(entry.text ?? "");
    item.reasoning = String(entry.reasoning ?? "");
    item.stats = String(entry.stats ?? "");
    item.done = true;
    if (typeof entry.error === "string" && entry.error) {
      item.error = entry.error; // a failed list item answers "" (never a caption), its error comes apart
      item.state = "failed";
    } else if (item.stats.startsWith("error") && text.startsWith("Error: ")) { // a single run, or an older server
      item.error = text.slice("Error: ".length);
      item.state = "failed";
    } else {
      item.text = text;
      item.state = "done";
    }
    state.items.set(Number.isInteger(entry.index) ? entry.index : position, item);
  });
  state.count = Math.max(entries.length, ...[...state.items.keys()].map((i) => i + 1));
  state.focus = Math.min(...state.items.keys());
  // Each item carries the run's notices as they stood when it returned: the latest word is the one to show. Items
  // return out of list order (an answer back from the last run comes at once), so `returned` says which is latest
  // (absent from older servers: list order).
  const returned = (entry, position) => (Number.isInteger(entry.returned) ? entry.returned : position);
  const latest = entries
    .map((entry, position) => [returned(entry, position), entry.notice])
    .filter(([, notice]) => typeof notice === "string" && notice)
    .sort(([a], [b]) => a - b);
  state.notice = latest.length ? latest[latest.length - 1][1] : "";
  state.turn = Math.max(1, ...entries.map((entry) => (Number.isInteger(entry.turn) ? entry.turn : 1)));
  return state;
}

/**
 * The newest output of each chat node among the server's runs of one workflow, from ComfyUI's `/history` answer
 * (prompt id -> {prompt: [number, id, prompt, extra_data, ...], outputs}): a Map of execution id -> output. Runs
 * of other workflows (their `extra_pnginfo.workflow.id` differs) are never taken, so a workflow opened elsewhere
 * shows nothing stale.
 */
export function latestOutputs(history, workflowId) {
  const found = new Map();
  if (!workflowId || !history || typeof history !== "object") return found;
  const number = (run) => (Number.isFinite(run.prompt[0]) ? run.prompt[0] : -1);
  const runs = Object.values(history)
    .filter((run) => Array.isArray(run?.prompt) && run.prompt[3]?.extra_pnginfo?.workflow?.id === workflowId)
    .sort((a, b) => number(b) - number(a));
  for (const run of runs) {
    for (const [id, output] of Object.entries(run.outputs ?? {})) {
      if (!found.has(id) && stateFromExecuted(output)) found.set(id, output);
    }
  }
  return found;
}

/** The node a frontend's node locator names ("34", or "<subgraph uuid>:34" inside a subgraph), or null. */
export function findNodeByLocator(rootGraph, locatorId) {
  const match = /^(?:([0-9a-f-]{36}):)?(\d+)$/i.exec(String(locatorId ?? ""));
  if (!match || !rootGraph) return null;
  const graph = match[1] ? rootGraph.subgraphs?.get?.(match[1]) : rootGraph;
  return graph?.getNodeById?.(Number(match[2])) ?? null;
}

/** Whether a view has shown nothing yet: no run streamed into it, none restored. */
export function isBlank(state) {
  return state.items.size === 0 && !state.running;
}

/** "12:34" (a node inside subgraph node 12) -> [12, 34]; null if it is not an execution id. */
export function parseExecutionId(nodeId) {
  const parts = String(nodeId ?? "").split(":");
  const ids = parts.map((part) => (/^\d+$/.test(part) ? Number(part) : NaN));
  return ids.length && ids.every(Number.isFinite) ? ids : null;
}

/** Resolve an execution id through nested subgraphs from the root graph; null if any step is missing. */
export function findNode(rootGraph, nodeId) {
  const path = parseExecutionId(nodeId);
  if (!path || !rootGraph) return null;
  let graph = rootGraph;
  let node = null;
  for (const id of path) {
    node = graph?.getNodeById?.(id) ?? null;
    if (!node) return null;
    graph = node.subgraph;
  }
  return node;
}

/** Coalesce redraws: however many times `schedule()` is called, `draw` runs once per frame. */
export function createFrameScheduler(draw, requestFrame) {
  let pending = false;
  return function schedule() {
    if (pending) return;
    pending = true;
    requestFrame(() => {
      pending = false;
      draw();
    });
  };
}

/** Whether a scrolled pane sits at (or within `slack` px of) its bottom: keep following new text then. */
export function isNearBottom({ scrollTop, clientHeight, scrollHeight }, slack = 12) {
  return scrollHeight - (scrollTop + clientHeight) <= slack;
}

/**
 * What to do to a rendered text to show `next`: append the new tail when it only grew (cheap while
 * streaming), otherwise replace it.
 */
export function textPatch(rendered, next) {
  if (next.length >= rendered.length && next.startsWith(rendered)) {
    return { append: next.slice(rendered.length) };
  }
  return { replace: next };
}

// ----------------------------------------------------------------------------------------- model picker

export const PICK_PROMPT = "(pick a model)";
export const REFRESH_MODELS = "(refresh the list)";
export const MODELS_ROUTE = "/lmstudio/models";

/** The picker's label for one model of the route's list: loaded and vision-capable ones are marked. */
export function modelLabel(model) {
  const tags = [];
  if (model.loaded_ids?.length) tags.push("loaded");
  if (model.vision === true) tags.push("vision");
  return tags.length ? `${model.key}  [${tags.join(", ")}]` : model.key;
}

/**
 * Picker options from the route's answer `{models, error}`: labels in the server's order (loaded first) and
 * the model key behind each label. An unreachable server gives one label that says so, never an empty list.
 */
export function pickerOptions(body) {
  const keys = new Map();
  if (body?.error) {
    return { labels: [`(LM Studio not reachable; refresh the list to retry)`], keys, error: String(body.error) };
  }
  for (const model of body?.models ?? []) keys.set(modelLabel(model), model.key);
  if (!keys.size) return { labels: ["(no models found)"], keys, error: null };
  return { labels: [...keys.keys()], keys, error: null };
}

/** The label to show for the node's current model_id; a typed id not in the list shows the prompt. */
export function pickerValue(options, modelId) {
  for (const [label, key] of options.keys) if (key === modelId) return label;
  return PICK_PROMPT;
}

/** The route URL for a node's server_url. */
export function modelsRoute(serverUrl) {
  return `${MODELS_ROUTE}?server_url=${encodeURIComponent(serverUrl ?? "")}`;
}

// ----------------------------------------------------------------------------------------------- presets

export const PRESETS_ROUTE = "/lmstudio/presets";
export const NO_PRESET = "none";

function clipped(text, most = 160) {
  const flat = text.trim().replace(/\s+/g, " ");
  return flat.length > most ? `${flat.slice(0, most - 1)}…` : flat;
}

/**
 * What the node says about its preset before a run: which texts the preset gives and which the node's own replace
 * (a preset fills only what the node leaves empty), or that the preset is gone. `presets` is the route's
 * `presets` (name -> {system_prompt, prompt, json_schema}); `own` the node's {prompt, system_prompt}. Text only.
 */
export function presetPreview(name, presets, own) {
  if (!name || name === NO_PRESET || !presets) return "";
  const preset = presets[name];
  if (!preset) return `Preset "${name}" no longer exists: this node's own prompts run. Pick another, or none.`;
  const lines = [`Preset "${name}"`];
  const part = (label, text, mine) => {
    if (!text?.trim()) return;
    lines.push(mine?.trim() ? `${label}: this node's own (the preset's is not used)` : `${label}: ${clipped(text)}`);
  };
  part("system prompt", preset.system_prompt, own?.system_prompt);
  part("prompt", preset.prompt, own?.prompt);
  if (preset.json_schema?.trim()) {
    let fields = "";
    try {
      fields = Object.keys(JSON.parse(preset.json_schema).properties ?? {}).join(", ");
    } catch {
      fields = "";
    }
    lines.push(`JSON answer${fields ? `: ${fields}` : ""} (SDK, OpenAI-compatible; unless the options set a schema)`);
  }
  return lines.join("\n");
}

// ----------------------------------------------------------------------------------------- old workflows

export const OPTIONS_CLASS = "LMStudioChatOptions";
export const OPTIONS_TYPE = "LMSTUDIO_CHAT_OPTIONS";
// The first release kept every setting on the chat node: 7 contract widgets, then these (seed with its control).
const FIRST_RELEASE_VALUES = 18;
const MOVED = { send_all_images: 7, max_image_side: 8, jpeg_quality: 9, on_error: 10, reasoning: 12, after_run: 15,
                idle_ttl_minutes: 16, free_comfy_vram: 17 };
const OPTION_DEFAULTS = [false, 1024, 90, "output error text", "auto", "keep loaded", 10, false, 0];

function isFirstRelease(node) {
  const values = node?.widgets_values;
  return node?.type === NODE_CLASS && Array.isArray(values) && values.length === FIRST_RELEASE_VALUES &&
    typeof values[MOVED.send_all_images] === "boolean" && ["output error text", "raise"].includes(values[MOVED.on_error]);
}

/** A graph's id counters and link format: top level of a v0.4 workflow, or a v1 workflow or subgraph (`state`). */
function graphBook(graph) {
  const v04 = Array.isArray(graph.links?.[0]) || (graph.version === 0.4 && !graph.state);
  return {
    nextNodeId() {
      if (graph.state) return (graph.state.lastNodeId = (graph.state.lastNodeId ?? 0) + 1);
      return (graph.last_node_id = (graph.last_node_id ?? 0) + 1);
    },
    nextLinkId() {
      if (graph.state) return (graph.state.lastLinkId = (graph.state.lastLinkId ?? 0) + 1);
      return (graph.last_link_id = (graph.last_link_id ?? 0) + 1);
    },
    link(id, from, to, slot) {
      graph.links ??= [];
      graph.links.push(v04 ? [id, from, 0, to, slot, OPTIONS_TYPE]
        : { id, origin_id: from, origin_slot: 0, target_id: to, target_slot: slot, type: OPTIONS_TYPE });
    },
  };
}

function migrateNode(graph, node) {
  const old = node.widgets_values;
  node.widgets_values = [...old.slice(0, 7), old[11], old[13], old[14]]; // + system_prompt, seed and its control
  const options = [...Object.values(MOVED).map((i) => old[i]), 0];
  node.inputs = (node.inputs ?? []).filter((input) => !(input.name in MOVED));
  if (options.every((value, i) => value === OPTION_DEFAULTS[i])) return;
  // A setting differed from its default: an options node keeps it, linked to the chat node.
  const book = graphBook(graph);
  const id = book.nextNodeId();
  const linkId = book.nextLinkId();
  const [x, y] = Array.isArray(node.pos) ? node.pos : [node.pos?.[0] ?? 0, node.pos?.[1] ?? 0];
  graph.nodes.push({
    id, type: OPTIONS_CLASS, pos: [x - 360, y + 40], size: [320, 290], flags: {}, order: node.order ?? 0,
    mode: node.mode ?? 0, inputs: [], outputs: [{ name: "options", type: OPTIONS_TYPE, links: [linkId] }],
    properties: { "Node name for S&R": OPTIONS_CLASS }, widgets_values: options,
  });
  node.inputs.push({ name: "options", type: OPTIONS_TYPE, link: linkId });
  book.link(linkId, id, node.id, node.inputs.length - 1);
}

/**
 * Bring chat nodes saved by the first release (every setting on the node) to today's layout, in the workflow
 * JSON before the frontend builds it: values back in their places, the moved settings on a linked options node
 * when any differed from its default. Returns how many nodes were migrated.
 */
export function migrateWorkflow(workflow) {
  let migrated = 0;
  const graphs = [workflow, ...(workflow?.definitions?.subgraphs ?? [])];
  for (const graph of graphs) {
    for (const node of [...(graph?.nodes ?? [])]) {
      if (!isFirstRelease(node)) continue;
      migrateNode(graph, node);
      migrated += 1;
    }
  }
  return migrated;
}
