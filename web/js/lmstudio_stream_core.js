// Pure logic of the LM Studio stream widget: no DOM, no ComfyUI imports, so `node --test` can load it.
// ComfyUI also loads every .js file under web/ as an extension; this one only exports.

export const STREAM_EVENT = "lmstudio.stream.update";
export const NODE_CLASS = "LMStudioStreamChat";

/** A widget's state: what the panes show. */
export function createState() {
  return { reasoning: "", text: "", status: "", stats: "", error: "", running: false };
}

/**
 * Apply one `lmstudio.stream.update` chunk to `state`. Returns false for a chunk type this widget does not
 * know (the server may grow new ones), true otherwise.
 */
export function applyUpdate(state, chunkType, content) {
  const value = typeof content === "string" ? content : String(content ?? "");
  switch (chunkType) {
    case "clear":
      Object.assign(state, createState(), { running: true });
      return true;
    case "reasoning":
      state.reasoning += value;
      return true;
    case "text":
      state.text += value;
      state.status = "";
      return true;
    case "status":
      state.status = value;
      return true;
    case "stats":
      state.stats = value;
      return true;
    case "error":
      state.error = value;
      return true;
    case "done":
      state.running = false;
      if (state.status !== "Cancelled") state.status = "";
      return true;
    default:
      return false;
  }
}

/** The state carried by the node's `executed` message (`ui` output), for cached runs and late page loads. */
export function stateFromExecuted(output) {
  const entry = output?.lmstudio?.[0];
  if (!entry || typeof entry !== "object") return null;
  const state = createState();
  const text = String(entry.text ?? "");
  state.reasoning = String(entry.reasoning ?? "");
  state.stats = String(entry.stats ?? "");
  if (state.stats.startsWith("error") && text.startsWith("Error: ")) {
    state.error = text.slice("Error: ".length);
  } else {
    state.text = text;
  }
  return state;
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
    return { labels: [`(LM Studio not reachable: refresh to retry)`], keys, error: String(body.error) };
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
