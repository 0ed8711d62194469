// Stand-in for the ComfyUI frontend's `app` (frontend 1.35, comfyui-facts.md section 6): registerExtension,
// beforeRegisterNodeDef / onNodeCreated / onExecuted, addDOMWidget, graphs with getNodeById and subgraphs.
class Graph {
  constructor() {
    this.nodes = new Map();
  }
  add(node) {
    this.nodes.set(node.id, node);
    node.graph = this;
    return node;
  }
  getNodeById(id) {
    return this.nodes.get(id) ?? null;
  }
}

class Node {
  constructor(type) {
    this.comfyClass = type;
    this.type = type;
    this.widgets = [];
    this.size = [300, 120];
    this.element = document.createElement("div");
    this.element.className = "node";
    this.element.dataset.type = type;
    const title = document.createElement("div");
    title.className = "node-title";
    title.textContent = type;
    this.element.appendChild(title);
  }
  addWidget(type, name, value, callback, options = {}) {
    const widget = { type, name, value, callback, options };
    this.widgets.push(widget);
    return widget;
  }
  addDOMWidget(name, type, element, options = {}) {
    const widget = { name, type, element, options, serialize: options.serialize };
    this.widgets.push(widget);
    const holder = document.createElement("div");
    holder.className = "dom-widget";
    holder.style.height = `${Math.max(options.getMinHeight?.() ?? 0, this.size[1] - 30)}px`;
    holder.appendChild(element);
    this.element.appendChild(holder);
    return widget;
  }
  setSize(size) {
    this.size = size;
    this.element.style.width = `${size[0]}px`;
  }
}

const rootGraph = new Graph();
const nodeTypes = new Map();

export const app = {
  extensions: [],
  graph: rootGraph,
  rootGraph,
  registerExtension(extension) {
    this.extensions.push(extension);
  },
  async registerNodeDef(name) {
    const nodeType = class extends Node {};
    const nodeData = { name, category: "LM Studio", input: { required: {}, hidden: {} }, output_name: [] };
    for (const extension of this.extensions) await extension.beforeRegisterNodeDef?.(nodeType, nodeData, this);
    nodeTypes.set(name, nodeType);
  },
  createNode(name, id, graph = rootGraph, widgetValues = {}) {
    const NodeType = nodeTypes.get(name) ?? Node;
    const node = new NodeType(name);
    node.id = id;
    // The frontend makes the schema's widgets before onNodeCreated.
    for (const [widgetName, value] of Object.entries(widgetValues)) node.addWidget("text", widgetName, value, null);
    node.onNodeCreated?.();
    for (const extension of this.extensions) extension.nodeCreated?.(node, this);
    graph.add(node);
    document.getElementById("canvas").appendChild(node.element);
    return node;
  },
  createSubgraphNode(id) {
    const node = new Node("Subgraph");
    node.id = id;
    node.subgraph = new Graph();
    return rootGraph.add(node);
  },
  async setup() {
    for (const extension of this.extensions) await extension.setup?.(this);
  },
};
window.comfyAPI = { app: { app } };
