// Inf-DiT frontend extension: the block grid on Inf-DiT Upscale while it runs (from the server's
// "inf_dit.blocks" messages), the network evaluations its settings run, and the memory estimate on Block
// Size Control. Everything is optional:
// without messages or the estimate route (older pack, older server) the nodes look like plain nodes.
import { BLOCKS_EVENT, COLORS, ESTIMATE_ROUTE, EVALUATIONS_ROUTE, cellStates, estimateLabel, estimateQuery,
  evaluationsLabel, evaluationsQuery, findNode, layoutGrid, parseBlocksMessage, progressLabel,
  applyBlocksMessage } from "./grid.js";

const comfy = window.comfyAPI ?? {};
const app = comfy.app?.app ?? (await import("../../scripts/app.js")).app;
const api = comfy.api?.api ?? (await import("../../scripts/api.js")).api;

const GRID_HEIGHT = 140;

// Run `extra` after an existing method instead of replacing it (other extensions may hook it too).
function chain(proto, name, extra) {
  const original = proto[name];
  proto[name] = function (...args) {
    const result = original?.apply(this, args);
    extra.apply(this, args);
    return result;
  };
}

// Drawn just below the node: the node's own area belongs to the progress preview image.
function drawGrid(node, ctx) {
  const state = node.infditBlocks;
  if (!state) return;
  const top = node.size[1] + 6;
  const width = node.size[0];
  const { cell } = layoutGrid(state.rows, state.cols, width - 8, GRID_HEIGHT - 22);
  const cells = cellStates(state);
  ctx.save();
  ctx.fillStyle = "rgba(20, 22, 26, 0.85)";
  ctx.fillRect(0, top, width, GRID_HEIGHT);
  ctx.fillStyle = "#ccc";
  ctx.font = "11px sans-serif";
  ctx.fillText(`Inf-DiT blocks: ${progressLabel(state)}`, 6, top + 14);
  for (let r = 0; r < state.rows; r++) {
    for (let c = 0; c < state.cols; c++) {
      const { x, y, size } = cell(r, c);
      ctx.fillStyle = COLORS[cells[r][c]];
      ctx.fillRect(4 + x, top + 18 + y, size, size);
    }
  }
  ctx.restore();
}

function drawEstimate(node, ctx) {
  if (!node.infditEstimate) return;
  ctx.save();
  ctx.fillStyle = "#9cf";
  ctx.font = "12px sans-serif";
  ctx.fillText(node.infditEstimate, 10, node.size[1] - 8);
  ctx.restore();
}

// The line each node shows, asked of the server from the node's widget values (and wired inputs).
const LABELS = {
  InfDiTBlockSize: (values) => [ESTIMATE_ROUTE, estimateQuery(values), estimateLabel],
  InfDiTUpscale: (values, wired) => [EVALUATIONS_ROUTE, evaluationsQuery(values, wired), evaluationsLabel],
};

async function refreshLabel(node, kind) {
  const values = Object.fromEntries((node.widgets ?? []).map((w) => [w.name, w.value]));
  const wired = Object.fromEntries((node.inputs ?? []).map((i) => [i.name, i.link != null]));
  const [route, query, label] = LABELS[kind](values, wired);
  try {
    const response = await api.fetchApi(`${route}?${query}`);
    node.infditEstimate = response.ok ? label(await response.json()) : null;
  } catch {
    node.infditEstimate = null; // no route on this server: show nothing
  }
  node.setDirtyCanvas(true, false);
}

// The node's line: refreshed as its widgets change, once a saved workflow has set them, and (Upscale) as
// inputs are wired; after a run, the server's own account of it.
function showLabel(nodeType, kind) {
  chain(nodeType.prototype, "onNodeCreated", function () {
    let timer = null;
    for (const widget of this.widgets ?? []) {
      const previous = widget.callback;
      widget.callback = (...args) => {
        previous?.apply(widget, args);
        clearTimeout(timer);
        timer = setTimeout(() => refreshLabel(this, kind), 250);
      };
    }
    refreshLabel(this, kind);
  });
  // Saved workflows set widget values after onNodeCreated, without calling the widget callbacks.
  chain(nodeType.prototype, "onConfigure", function () {
    refreshLabel(this, kind);
  });
  chain(nodeType.prototype, "onConnectionsChange", function () {
    if (kind === "InfDiTUpscale") refreshLabel(this, kind);
  });
  chain(nodeType.prototype, "onExecuted", function (message) {
    const text = message?.text?.[0];
    if (typeof text === "string") this.infditEstimate = text.replace(/\s*\(weights.*$/, "");
  });
  chain(nodeType.prototype, "onDrawForeground", function (ctx) {
    if (!this.flags?.collapsed) drawEstimate(this, ctx);
  });
}

app.registerExtension({
  name: "InfDiT.BlockGrid",
  setup() {
    api.addEventListener(BLOCKS_EVENT, ({ detail }) => {
      const state = parseBlocksMessage(detail);
      const node = state?.node != null ? findNode(app.graph, state.node) : null; // "5:3" inside a subgraph
      if (!node) return;
      node.infditBlocks = applyBlocksMessage(node.infditBlocks, state);
      node.setDirtyCanvas(true, false);
    });
  },
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name === "InfDiTUpscale") {
      chain(nodeType.prototype, "onDrawForeground", function (ctx) {
        if (!this.flags?.collapsed) drawGrid(this, ctx);
      });
    }
    if (nodeData.name in LABELS) showLabel(nodeType, nodeData.name);
  },
});
