// Pure logic of the Inf-DiT frontend extension (no DOM, no ComfyUI): tested with `node --test tests/web`.

export const BLOCKS_EVENT = "inf_dit.blocks";
export const ESTIMATE_ROUTE = "/inf_dit/estimate";
export const EVALUATIONS_ROUTE = "/inf_dit/evaluations";
export const COLORS = { done: "#3fa34d", running: "#e0a526", waiting: "#3a3f47", border: "#1b1e22" };

const isPair = (b) => Array.isArray(b) && b.length === 2 && b.every(Number.isInteger);

// A BLOCKS_EVENT payload checked field by field; null when it is not one (e.g. from another version).
export function parseBlocksMessage(detail) {
  if (!detail || typeof detail !== "object") return null;
  const { grid, done, running } = detail;
  if (!Array.isArray(grid) || grid.length !== 2 || !grid.every((n) => Number.isInteger(n) && n > 0)) return null;
  if (!Array.isArray(done) || !done.every(isPair)) return null;
  return {
    node: detail.node == null ? null : String(detail.node),
    rows: grid[0],
    cols: grid[1],
    done,
    running: Array.isArray(running) ? running.filter(isPair) : [],
    image: Number(detail.image ?? 0),
    images: Number(detail.images ?? 1),
    evaluation: Number(detail.evaluation ?? 0),
    evaluations: Number(detail.evaluations ?? 1),
    value: Number(detail.value ?? 0),
    max: Number(detail.max ?? 0),
    runPass: Number(detail.run_pass ?? 0), // x4/x2 pass of a multi-pass run (x8 = x4 then x2)
    runPasses: Number(detail.run_passes ?? 1),
    scale: Number(detail.scale ?? 0),
    group: Number.isInteger(detail.group) ? detail.group : null, // set: `done` holds only this group's blocks
  };
}

// The grid after one message. Messages since 0.2 carry only the group just done (`group` set): its blocks
// join the ones already done in this network pass; group 0, or another image, pass or grid, starts over.
// Older messages carry the whole done-list and replace the state.
export function applyBlocksMessage(previous, message) {
  if (!message || message.group === null) return message;
  const same = previous && previous.rows === message.rows && previous.cols === message.cols
    && previous.image === message.image && previous.evaluation === message.evaluation
    && previous.runPass === message.runPass && message.group > 0;
  const done = same ? previous.done.concat(message.done) : message.done;
  return { ...message, done };
}

// rows x cols of "done" | "running" | "waiting" for one network pass.
export function cellStates(state) {
  const cells = Array.from({ length: state.rows }, () => Array(state.cols).fill("waiting"));
  const mark = (list, value) => {
    for (const [r, c] of list) if (r >= 0 && r < state.rows && c >= 0 && c < state.cols) cells[r][c] = value;
  };
  mark(state.done, "done");
  mark(state.running, "running");
  return cells;
}

// Square cells fitting a width x height area, centred: {x, y, size} per cell plus the grid box.
export function layoutGrid(rows, cols, width, height, gap = 1) {
  const size = Math.max(1, Math.floor(Math.min((width - gap) / cols, (height - gap) / rows)) - gap);
  const w = cols * (size + gap) + gap;
  const h = rows * (size + gap) + gap;
  const x0 = Math.floor((width - w) / 2);
  const y0 = Math.floor((height - h) / 2);
  const cell = (r, c) => ({ x: x0 + gap + c * (size + gap), y: y0 + gap + r * (size + gap), size });
  return { size, box: { x: x0, y: y0, w, h }, cell };
}

export function progressLabel(state) {
  const parts = [];
  if (state.images > 1) parts.push(`image ${state.image + 1}/${state.images}`);
  if (state.runPasses > 1) parts.push(`x${state.scale} stage ${state.runPass + 1}/${state.runPasses}`);
  parts.push(`pass ${state.evaluation + 1}/${state.evaluations}`);
  parts.push(`${state.done.length}/${state.rows * state.cols} blocks`);
  return parts.join(" · ");
}

export function formatBytes(bytes) {
  if (!Number.isFinite(bytes) || bytes < 0) return "?";
  const gib = bytes / 1024 ** 3;
  return gib >= 1 ? `${gib.toFixed(2)} GiB` : `${(bytes / 1024 ** 2).toFixed(0)} MiB`;
}

// Query string for ESTIMATE_ROUTE from Block Size Control's widget values ({name: value}).
export function estimateQuery(values) {
  const q = new URLSearchParams();
  const map = { block_batch: "block_batch", memory_budget_gb: "memory_budget_gb", frontier: "frontier", scan: "scan",
    estimate_width: "width", estimate_height: "height" };
  for (const [widget, key] of Object.entries(map)) if (values[widget] !== undefined) q.set(key, String(values[widget]));
  return q.toString();
}

// One line for the node from the route's JSON answer; null when the answer is unusable.
export function estimateLabel(answer) {
  if (!answer || typeof answer !== "object" || !Number.isFinite(answer.total)) return null;
  const host = Number.isFinite(answer.host) && answer.host > 0 ? ` + host ${formatBytes(answer.host)}` : "";
  return `peak ≈ ${formatBytes(answer.total)}${host} at ${answer.block_batch} block(s)/pass`;
}

// The node a progress message names. Inside a subgraph ComfyUI names it by its path, "5:3" (node 3 of the
// subgraph that node 5 of the root graph holds), so each part is looked up in the graph the previous one
// holds; a plain id is one part. Ids may be numbers or strings. Null when any part is missing.
export function findNode(graph, id) {
  let node = null;
  for (const part of String(id).split(":")) {
    if (!graph) return null;
    node = graph.getNodeById(Number.isNaN(Number(part)) ? part : Number(part)) ?? graph.getNodeById(part) ?? null;
    if (!node) return null;
    graph = node.subgraph ?? null;
  }
  return node;
}

// Query string for EVALUATIONS_ROUTE from Inf-DiT Upscale's widget values and which inputs are wired.
export function evaluationsQuery(values, wired) {
  const q = new URLSearchParams();
  for (const name of ["solver", "steps"]) if (values[name] !== undefined) q.set(name, String(values[name]));
  for (const name of ["sampler", "sigmas"]) if (wired?.[name]) q.set(name, "1");
  return q.toString();
}

// The route's text for the node; null when the answer is unusable.
export function evaluationsLabel(answer) {
  return answer && typeof answer.text === "string" ? answer.text : null;
}
