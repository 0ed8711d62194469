// LM Studio Chat: reasoning and answer streaming live onto the node.
// The server sends `lmstudio.stream.update` events ({node_id, chunk_type, content}); this draws them into a
// display-only DOM widget (serialize: false: never saved in the workflow nor part of the prompt).
// Model text is only ever inserted as text nodes, never parsed as HTML.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import {
  VIEW_CLASSES,
  PICK_PROMPT,
  REFRESH_MODELS,
  STREAM_EVENT,
  answerList,
  applyUpdate,
  createFrameScheduler,
  createState,
  findNode,
  findNodeByLocator,
  headline,
  isBlank,
  isNearBottom,
  latestOutputs,
  migrateWorkflow,
  modelsRoute,
  NO_PRESET,
  PRESETS_ROUTE,
  pickItem,
  pickerOptions,
  pickerValue,
  presetPreview,
  stateFromExecuted,
  textPatch,
  visibleItem,
} from "./lmstudio_stream_core.js";

const WIDGET_TYPE = "lmstudio_stream_view";
// What the view asks for. Classic nodes draw a DOM widget 10 px inside its slot, top and bottom (148 px of view);
// Nodes 2.0 draws it with no margin, so the same figure there is never less than classic nodes give. 168: a fresh
// node (nine outputs since the conversation output) still shows its whole view on a 768-pixel screen.
const MIN_HEIGHT = 168;
// The frontend gives a multiline widget one line (~30 px) when the node is laid out at its smallest; the prompt is
// what people write, so it gets at least three lines.
const PROMPT_LINES = 3;
const DOM_WIDGET_MARGINS = 20; // the frontend draws a DOM widget 10 px inside its slot, top and bottom

const STYLE = `
.lmstudio-stream { display: flex; flex-direction: column; gap: 4px; height: 100%; min-height: 0; overflow: hidden;
  box-sizing: border-box; font: 12px/1.4 var(--font-family, sans-serif); color: var(--input-text, #ddd); }
.lmstudio-stream > * { flex: none; }
.lmstudio-stream .lms-status { min-height: 1.4em; opacity: 0.8; font-size: 11px; }
.lmstudio-stream .lms-thoughts { display: flex; flex-direction: column; flex: 1 1 0; min-height: 4.4em; }
.lmstudio-stream .lms-thoughts.lms-collapsed { flex: none; min-height: 0; }
.lmstudio-stream .lms-thoughts.lms-collapsed .lms-pane { display: none; }
.lmstudio-stream .lms-thoughts-head { flex: none; cursor: pointer; opacity: 0.7; font-size: 11px; user-select: none;
  background: none; border: 0; padding: 0; color: inherit; text-align: left; }
.lmstudio-stream .lms-pane { margin: 0; padding: 4px 6px; overflow: auto; white-space: pre-wrap; box-sizing: border-box;
  word-break: break-word; border-radius: 4px; background: var(--comfy-input-bg, #222); flex: 1 1 0; min-height: 2.8em;
  font: inherit; }
.lmstudio-stream .lms-reasoning { font-style: italic; opacity: 0.65; }
.lmstudio-stream .lms-answer { flex: 2 1 0; }
.lmstudio-stream .lms-footer { display: flex; gap: 6px; align-items: center; font-size: 11px; opacity: 0.8; }
.lmstudio-stream .lms-stats { flex: 1; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.lmstudio-stream .lms-error { color: var(--error-text, #ff6b6b); white-space: pre-wrap; max-height: 5.6em; overflow: auto; }
.lmstudio-stream .lms-error:empty, .lmstudio-stream .lms-status:empty, .lmstudio-stream .lms-list:empty,
.lmstudio-stream .lms-notice:empty, .lmstudio-stream .lms-answers:empty { display: none; }
.lmstudio-stream .lms-list { font-size: 11px; font-weight: bold; opacity: 0.85; }
.lmstudio-stream .lms-preset { font-size: 11px; opacity: 0.75; white-space: pre-wrap; word-break: break-word;
  flex: 0 1 auto; min-height: 1.4em; max-height: 5.6em; overflow: auto; }
.lmstudio-stream .lms-preset:empty { display: none; }
/* Notices give way first when the view is short (down to one line, scrolled), and never take more than four lines. */
.lmstudio-stream .lms-notice { font-size: 11px; color: var(--warning-text, #e0b050); white-space: pre-wrap;
  flex: 0 1 auto; min-height: 1.4em; max-height: 5.6em; overflow: auto; }
.lmstudio-stream .lms-answers { flex: 1 1 0; min-height: 3em; overflow: auto; border-radius: 4px;
  background: var(--comfy-input-bg, #222); padding: 2px 0; }
.lmstudio-stream.lms-listmode .lms-answer { flex: 1 1 0; }
.lmstudio-stream .lms-entry { display: flex; gap: 6px; padding: 1px 6px; cursor: pointer; white-space: nowrap; }
.lmstudio-stream .lms-entry:hover, .lmstudio-stream .lms-entry.lms-current { background: rgba(255,255,255,0.08); }
.lmstudio-stream .lms-entry-label { opacity: 0.6; flex: none; }
.lmstudio-stream .lms-entry-text { overflow: hidden; text-overflow: ellipsis; }
.lmstudio-stream .lms-entry.lms-failed .lms-entry-text { color: var(--error-text, #ff6b6b); }
.lmstudio-stream button { font-size: 11px; padding: 1px 6px; cursor: pointer; }
/* Nodes 2.0 (the Vue renderer, inside .lg-node-widgets) mounts the element in a grid row that sizes to its content
   (1.35.9) or stretches it (1.47+): either way the view needs a height of its own, never less than classic nodes
   give it. */
.lg-node-widgets .lmstudio-stream { height: auto; min-height: ${MIN_HEIGHT}px; }
`;

function injectStyle() {
  if (document.getElementById("lmstudio-stream-style")) return;
  const style = document.createElement("style");
  style.id = "lmstudio-stream-style";
  style.textContent = STYLE;
  document.head.appendChild(style);
}

function element(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text) el.textContent = text;
  return el;
}

/** A pane that shows a growing text with one Text node, and follows it unless the user scrolled up. */
function createPane(className) {
  const pane = element("pre", `lms-pane ${className}`);
  pane.tabIndex = -1; // a click focuses it, so Nodes 2.0 lets the wheel scroll it (see data-capture-wheel)
  const text = document.createTextNode("");
  pane.appendChild(text);
  return {
    pane,
    show(next) {
      if (text.data === next) return;
      const follow = isNearBottom(pane);
      const patch = textPatch(text.data, next);
      if (patch.append !== undefined) text.appendData(patch.append);
      else text.data = patch.replace;
      if (follow) pane.scrollTop = pane.scrollHeight;
    },
  };
}

/** The answers of a list, one line each (text only), in list order; a click shows that item in the panes. */
function createAnswers(onPick) {
  const box = element("div", "lms-answers");
  let key = "";
  return {
    box,
    show(entries, current) {
      const next = JSON.stringify(entries.map((e) => [e.index, e.failed, e.text.length, e.index === current]));
      if (next === key) return;
      key = next;
      box.replaceChildren(...entries.map((entry) => {
        const row = element("div", `lms-entry${entry.failed ? " lms-failed" : ""}${
          entry.index === current ? " lms-current" : ""}`);
        const text = element("span", "lms-entry-text", entry.text);
        row.title = entry.text;
        row.append(element("span", "lms-entry-label", entry.label), text);
        row.addEventListener("click", () => onPick(entry.index));
        return row;
      }));
    },
  };
}

function createView() {
  const root = element("div", "lmstudio-stream");
  // The frontend's own text widgets' convention: in Nodes 2.0 the wheel scrolls what is inside rather than zooming
  // the canvas (1.35.9: on hover; 1.47 and later: once a click put the focus inside, as for its text boxes).
  root.dataset.captureWheel = "true";
  const list = element("div", "lms-list");
  const preset = element("div", "lms-preset"); // the preset's texts, before a run as after it (not a run's state)
  const notice = element("div", "lms-notice");
  const status = element("div", "lms-status");
  // A plain flex column, not <details>: its contents sit in a pseudo-element that flex layout cannot size, and the
  // pane spilled over the answer.
  const thoughts = element("div", "lms-thoughts");
  const summary = element("button", "lms-thoughts-head", "▾ Reasoning");
  summary.type = "button";
  summary.addEventListener("click", () => {
    thoughts.classList.toggle("lms-collapsed");
    schedule();
  });
  const reasoning = createPane("lms-reasoning");
  thoughts.append(summary, reasoning.pane);
  const answer = createPane("lms-answer");
  const error = element("div", "lms-error");
  const footer = element("div", "lms-footer");
  const stats = element("span", "lms-stats");
  const copy = element("button", "lms-copy", "Copy");
  copy.type = "button";
  copy.title = "Copy the answer";
  footer.append(stats, copy);
  const answers = createAnswers((index) => {
    // A click shows that item; clicking the item shown again follows the stream once more.
    pickItem(state, state.pinned && state.focus === index ? null : index);
    schedule();
  });
  root.append(list, preset, notice, status, thoughts, answer.pane, error, footer, answers.box);

  let state = createState();
  const draw = () => {
    const item = visibleItem(state);
    list.textContent = headline(state);
    root.classList.toggle("lms-listmode", state.count > 1);
    notice.textContent = state.notice;
    status.textContent = item.status;
    thoughts.style.display = item.reasoning ? "" : "none";
    const label = state.running && !item.done && !item.text ? "Reasoning…" : "Reasoning";
    summary.textContent = `${thoughts.classList.contains("lms-collapsed") ? "▸" : "▾"} ${label}`;
    reasoning.show(item.reasoning);
    answer.show(item.text);
    error.textContent = item.error;
    stats.textContent = item.stats;
    stats.title = item.stats;
    answers.show(answerList(state), state.focus);
  };
  const schedule = createFrameScheduler(draw, (fn) => requestAnimationFrame(fn));
  copy.addEventListener("click", () => copyText(visibleItem(state).text, copy));
  draw();
  return {
    root,
    update(chunkType, content, index, count) {
      if (applyUpdate(state, chunkType, content, index, count)) schedule();
    },
    replace(next) {
      state = next;
      schedule();
    },
    showPreset(text) {
      if (preset.textContent !== text) preset.textContent = text;
    },
    get state() {
      return state;
    },
  };
}

async function copyText(text, button) {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
    } else {
      // ComfyUI opened over plain http from another machine has no clipboard API: copy through a textarea.
      const area = document.createElement("textarea");
      area.value = text;
      area.style.position = "fixed";
      area.style.opacity = "0";
      document.body.appendChild(area);
      area.select();
      const copied = document.execCommand("copy");
      area.remove();
      if (!copied) throw new Error("copy refused");
    }
    button.textContent = "Copied";
  } catch {
    button.textContent = "Copy failed";
  }
  setTimeout(() => (button.textContent = "Copy"), 1200);
}

/**
 * The node's widget as the renderer sees it now. Nodes 2.0 (1.35.9) wraps `node.widgets` in reactive proxies when
 * the node joins the graph: a write through a reference kept from before would never reach the Vue node.
 */
function liveWidget(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

/** A model picker fed by the pack's route for the node's own server_url; it writes the key into model_id. */
function attachModelPicker(node) {
  if (!liveWidget(node, "model_id") || !liveWidget(node, "server_url")) return null;
  let options = pickerOptions({ models: [] });
  let request = 0;
  let showing = false;
  const picker = node.addWidget("combo", "pick model", PICK_PROMPT, (label) => {
    if (showing) return; // the pack showing a value, not a person choosing one
    if (label === REFRESH_MODELS) {
      refresh(); // shows the fresh list, and the model_id's entry in it, when the server answers
      return;
    }
    const key = options.keys.get(label);
    if (key === undefined) return;
    const modelId = liveWidget(node, "model_id");
    modelId.value = key;
    modelId.callback?.(key);
    node.setDirtyCanvas?.(true, true);
  }, { values: [PICK_PROMPT, REFRESH_MODELS], serialize: false });
  picker.serialize = false; // display-only: neither saved in the workflow nor sent in the prompt

  async function refresh() {
    const mine = ++request;
    let body;
    try {
      const response = await api.fetchApi(modelsRoute(liveWidget(node, "server_url").value));
      body = await response.json();
    } catch (error) {
      body = { error: `ComfyUI could not list models: ${error}` };
    }
    if (mine !== request) return; // a newer refresh (server_url changed meanwhile) wins
    options = pickerOptions(body);
    const live = liveWidget(node, "pick model") ?? picker;
    // The last entry lists again (LM Studio started, a model loaded since): an entry, not a button of its own, so
    // the node face keeps its height for what people set.
    live.options.values = [PICK_PROMPT, ...options.labels, REFRESH_MODELS];
    // Unreachable: the picker itself says so in one short line; the full explanation waits for a run, so a
    // fresh node greets nobody with red text.
    const value = options.error ? options.labels[0] : pickerValue(options, liveWidget(node, "model_id").value);
    live.value = value;
    // Nodes 2.0 in frontend 1.35.9 shows a widget's new value only once its callback runs.
    showing = true;
    try {
      live.callback?.(value);
    } finally {
      showing = false;
    }
    node.setDirtyCanvas?.(true, true);
  }

  let timer = null;
  const serverUrl = liveWidget(node, "server_url");
  const onUrlChange = serverUrl.callback;
  serverUrl.callback = function (...args) {
    const result = onUrlChange?.apply(this, args);
    clearTimeout(timer);
    timer = setTimeout(refresh, 400); // typing a URL: list once it settles
    return result;
  };
  return { refresh };
}

let presetsFetch = null;
let presetsFetchedAt = 0;
// The presets route re-reads the user's file when it changed; nodes showing a preset ask it at most this often.
const PRESETS_FRESH_MS = 2000;

async function fetchPresets() {
  if (!presetsFetch || Date.now() - presetsFetchedAt > PRESETS_FRESH_MS) {
    presetsFetchedAt = Date.now();
    presetsFetch = api.fetchApi(PRESETS_ROUTE).then((r) => r.json()).then((body) => body.presets ?? null)
      .catch(() => null);
  }
  return presetsFetch;
}

/** The view shows the node's preset's texts (and which of the node's own replace them) as they are picked. */
function attachPresetPreview(node) {
  if (!liveWidget(node, "preset")) return;
  let request = 0;
  const update = async () => {
    const name = liveWidget(node, "preset")?.value;
    const mine = ++request;
    const presets = name && name !== NO_PRESET ? await fetchPresets() : null;
    if (mine !== request) return; // a newer pick won
    const own = { prompt: liveWidget(node, "prompt")?.value ?? "", system_prompt:
      liveWidget(node, "system_prompt")?.value ?? "" };
    node.lmstudioStreamView?.showPreset(presetPreview(name, presets, own));
  };
  for (const name of ["preset", "prompt", "system_prompt"]) {
    const widget = liveWidget(node, name);
    const previous = widget?.callback;
    if (widget) {
      widget.callback = function (...args) {
        const result = previous?.apply(this, args);
        update();
        return result;
      };
    }
  }
  node.lmstudioPresetPreview = update;
  setTimeout(update, 0); // a loaded workflow's saved preset, once its values are in
}

/** At least PROMPT_LINES lines for the prompt box, in the textarea's own font. */
function roomForPrompt(node) {
  const prompt = node.widgets?.find((w) => w.name === "prompt");
  if (!prompt?.options || !prompt.element) return;
  prompt.options.getMinHeight = () => {
    const style = getComputedStyle(prompt.element);
    const line = parseFloat(style.lineHeight) || 1.25 * (parseFloat(style.fontSize) || 12);
    const padding = (parseFloat(style.paddingTop) || 0) + (parseFloat(style.paddingBottom) || 0);
    return Math.ceil(PROMPT_LINES * line + padding) + DOM_WIDGET_MARGINS;
  };
}

/**
 * Nodes 2.0 before frontend 1.47 (1.35.9) mounts a DOM widget in a grid row sized to its content, so the view would
 * never grow with the node; 1.47 and later stretch the row (its wrapper is a flex column) and need nothing here.
 * There, and only there, the view takes the share of the height a user adds to the node that a stretching row gets
 * in later frontends: an equal share with the rows that do stretch (the text boxes).
 */
function followVueNodeHeight(root) {
  const mounted = new ResizeObserver(() => {
    const nodeElement = root.closest(".lg-node");
    const wrapper = root.parentElement;
    if (!nodeElement || !wrapper || getComputedStyle(wrapper).display === "flex") return;
    mounted.disconnect();
    let layoutHeight = null;
    const fit = () => {
      const next = nodeElement.style.getPropertyValue("--node-height");
      if (next === layoutHeight) return; // the node was moved, not resized
      layoutHeight = next;
      // The node's natural height: the view at its minimum, the node not held to its layout height. Measured and
      // restored in one go, before the next paint.
      root.style.minHeight = "";
      nodeElement.style.minHeight = "0px";
      const natural = nodeElement.offsetHeight;
      nodeElement.style.minHeight = "";
      const grid = root.closest(".lg-node-widgets");
      const stretching = (grid?.style.gridTemplateRows.match(/\bauto\b/g) ?? []).length;
      const added = Math.max(0, (parseFloat(next) || 0) - natural);
      if (added > 0) root.style.minHeight = `${MIN_HEIGHT + added / (stretching + 1)}px`;
    };
    new MutationObserver(fit).observe(nodeElement, { attributes: true, attributeFilter: ["style"] });
    fit();
  });
  mounted.observe(root);
}

const MORE_IMAGES = "more_images";

/**
 * The further image sockets are core's Autogrow group with no socket required. Frontends before 1.47 (1.35.9, which
 * ComfyUI 0.8.0 pins) show such a group no socket at all, and grow one only from a linked socket: there, and only
 * there (no socket of the group on the node), the first socket is added, named as the frontend names it, so the
 * frontend's own Autogrow grows the group from it. A fresh node gets it beside `image`; a loaded one at the end,
 * where moving no socket keeps every saved link on its slot.
 */
function ensureFirstImageSocket(node, { fresh }) {
  const group = node.comfyDynamic?.autogrow?.[MORE_IMAGES];
  if (!group?.names?.length || node.inputs?.some((input) => input.name.startsWith(`${MORE_IMAGES}.`))) return;
  const name = group.names[0];
  node.addInput(`${MORE_IMAGES}.${name}`, "IMAGE", { label: name, localized_name: name });
  const at = node.inputs.findIndex((input) => input.name === "image");
  if (fresh && at >= 0) node.inputs.splice(at + 1, 0, node.inputs.pop());
}

function attachView(node) {
  injectStyle();
  const view = createView();
  followVueNodeHeight(view.root);
  node.addDOMWidget("lmstudio_stream", WIDGET_TYPE, view.root, {
    serialize: false,
    hideOnZoom: false,
    getMinHeight: () => MIN_HEIGHT,
  });
  node.lmstudioStreamView = view;
  if (node.size?.[0] < 380) node.setSize?.([380, node.size[1]]);
  return view;
}

/** What the frontend keeps of a chat node's last run, shown again in its new view. */
function showOutput(node, output) {
  const state = VIEW_CLASSES.has(node?.comfyClass) && node.lmstudioStreamView ? stateFromExecuted(output) : null;
  if (state) node.lmstudioStreamView.replace(state);
}

// How many of the server's latest runs a reloaded page looks through for its chat nodes' last answers.
const HISTORY_RUNS = 64;

/**
 * After a page reload the frontend keeps no node outputs: the chat nodes of the workflow shown take their last
 * answers from the server's history of this workflow's runs (matched by the workflow's id). Views that already
 * show something (a run streaming, outputs the frontend restored on a tab switch) are left alone.
 */
async function showFromHistory() {
  const root = app.rootGraph ?? app.graph;
  const workflowId = root?.id;
  const blank = (node) => VIEW_CLASSES.has(node?.comfyClass) && node.lmstudioStreamView
    && isBlank(node.lmstudioStreamView.state);
  const subgraphs = [...(root?.subgraphs?.values?.() ?? [])];
  if (!workflowId || ![root, ...subgraphs].some((graph) => graph.nodes?.some(blank))) return;
  let history;
  try {
    history = await (await api.fetchApi(`/history?max_items=${HISTORY_RUNS}`)).json();
  } catch {
    return; // no history to be had: the views stay blank, as before a first run
  }
  if ((app.rootGraph ?? app.graph)?.id !== workflowId) return; // another workflow was opened meanwhile
  for (const [executionId, output] of latestOutputs(history, workflowId)) {
    const node = findNode(app.rootGraph ?? app.graph, executionId);
    if (blank(node)) showOutput(node, output);
  }
}

function onStreamUpdate(event) {
  const detail = event?.detail;
  if (!detail || typeof detail !== "object") return;
  const node = findNode(app.rootGraph ?? app.graph, detail.node_id);
  if (!VIEW_CLASSES.has(node?.comfyClass) || !node.lmstudioStreamView) return;
  node.lmstudioStreamView.update(detail.chunk_type, detail.content, detail.index, detail.count);
}

app.registerExtension({
  name: "LMStudio.StreamChat",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!VIEW_CLASSES.has(nodeData?.name)) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function (...args) {
      const result = onNodeCreated?.apply(this, args);
      ensureFirstImageSocket(this, { fresh: true });
      // Appended after the schema's widgets, so saved widgets_values keep their positions.
      this.lmstudioModelPicker = attachModelPicker(this);
      roomForPrompt(this);
      attachView(this);
      attachPresetPreview(this);
      // After a workflow loads, server_url holds its saved value: list from there.
      setTimeout(() => this.lmstudioModelPicker?.refresh(), 0);
      return result;
    };
    const onConfigure = nodeType.prototype.onConfigure;
    nodeType.prototype.onConfigure = function (...args) {
      const result = onConfigure?.apply(this, args);
      ensureFirstImageSocket(this, { fresh: false }); // a workflow saved without the socket
      this.lmstudioPresetPreview?.(); // the saved preset's texts
      return result;
    };
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output, ...rest) {
      const result = onExecuted?.apply(this, [output, ...rest]);
      showOutput(this, output);
      return result;
    };
  },
  onNodeOutputsUpdated(outputs) {
    // The frontend put back the node outputs it keeps per workflow (a tab switched back to, a run loaded from the
    // queue): each chat node's new view shows its last run again, as core's Preview as Text does. Keys are node
    // locators, or execution ids from the queue. A view that is streaming keeps its run.
    const root = app.rootGraph ?? app.graph;
    for (const [key, output] of Object.entries(outputs ?? {})) {
      const node = findNodeByLocator(root, key) ?? findNode(root, key);
      if (node?.lmstudioStreamView && !node.lmstudioStreamView.state.running) showOutput(node, output);
    }
  },
  afterConfigureGraph() {
    showFromHistory(); // not awaited: the workflow does not wait for the server's answer
  },
  setup() {
    api.addEventListener(STREAM_EVENT, onStreamUpdate);
  },
  beforeConfigureGraph(graphData) {
    // Workflows saved with the first release listed every setting on the chat node: rewrite them before loading.
    const migrated = migrateWorkflow(graphData);
    if (migrated) console.info(`LM Studio Chat: ${migrated} node(s) from an older workflow brought up to date`);
  },
});
