// node --test tests/web : the pure logic behind the Inf-DiT frontend extension.
import assert from "node:assert/strict";
import test from "node:test";

import { applyBlocksMessage, cellStates, estimateLabel, estimateQuery, evaluationsLabel, evaluationsQuery, findNode, formatBytes, layoutGrid,
  parseBlocksMessage, progressLabel } from "../../web/grid.js";

const message = { node: "7", grid: [2, 3], done: [[0, 0], [0, 1]], running: [[0, 2]], image: 0, images: 2,
  evaluation: 4, evaluations: 39, value: 10, max: 78 };

test("a blocks message becomes grid state", () => {
  const state = parseBlocksMessage(message);
  assert.equal(state.node, "7");
  assert.equal(state.rows, 2);
  assert.equal(state.cols, 3);
  assert.deepEqual(cellStates(state), [["done", "done", "running"], ["waiting", "waiting", "waiting"]]);
});

test("absent or foreign messages are ignored, not thrown on", () => {
  for (const bad of [undefined, null, 3, {}, { grid: [0, 2], done: [] }, { grid: [2, 2], done: "x" },
    { grid: [2], done: [] }, { grid: [2, 2], done: [[0]] }]) {
    assert.equal(parseBlocksMessage(bad), null);
  }
  const old = parseBlocksMessage({ grid: [1, 1], done: [] }); // a minimal (older) payload still draws
  assert.deepEqual(cellStates(old), [["waiting"]]);
  assert.equal(old.node, null);
});

test("blocks outside the grid are dropped", () => {
  const state = parseBlocksMessage({ grid: [1, 2], done: [[0, 0], [5, 5]], running: [[0, -1], [0, 1]] });
  assert.deepEqual(cellStates(state), [["done", "running"]]);
});

test("the grid layout fits the area with square cells", () => {
  for (const [rows, cols, w, h] of [[1, 1, 300, 100], [32, 32, 300, 140], [2, 8, 300, 140], [8, 2, 300, 140]]) {
    const { size, box, cell } = layoutGrid(rows, cols, w, h);
    assert.ok(size >= 1);
    assert.ok(box.w <= w && box.h <= h, `${rows}x${cols} fits`);
    const last = cell(rows - 1, cols - 1);
    assert.ok(last.x + last.size <= w && last.y + last.size <= h);
    assert.ok(cell(0, 1).x > cell(0, 0).x || cols === 1);
  }
});

test("progress label counts images, passes and blocks", () => {
  assert.equal(progressLabel(parseBlocksMessage(message)), "image 1/2 · pass 5/39 · 2/6 blocks");
  assert.equal(progressLabel(parseBlocksMessage({ ...message, images: 1 })), "pass 5/39 · 2/6 blocks");
  assert.equal(progressLabel(parseBlocksMessage({ ...message, images: 1, run_pass: 1, run_passes: 2, scale: 2 })),
    "x2 stage 2/2 · pass 5/39 · 2/6 blocks");
});

test("estimate query and label", () => {
  const q = new URLSearchParams(estimateQuery({ block_batch: 2, memory_budget_gb: 6, frontier: "offloaded to CPU",
    scan: "auto", estimate_width: 4096, estimate_height: 2048, other: 1 }));
  assert.equal(q.get("block_batch"), "2");
  assert.equal(q.get("width"), "4096");
  assert.equal(q.get("height"), "2048");
  assert.equal(q.get("frontier"), "offloaded to CPU");
  assert.equal(q.has("other"), false);
  assert.equal(estimateLabel({ total: 3 * 1024 ** 3, block_batch: 4 }), "peak ≈ 3.00 GiB at 4 block(s)/pass");
  assert.equal(estimateLabel({ total: 3 * 1024 ** 3, host: 6 * 1024 ** 3, block_batch: 4 }),
    "peak ≈ 3.00 GiB + host 6.00 GiB at 4 block(s)/pass");
  assert.equal(estimateLabel({ error: "bad" }), null);
  assert.equal(estimateLabel(undefined), null);
  assert.equal(formatBytes(512 * 1024 ** 2), "512 MiB");
  assert.equal(formatBytes(NaN), "?");
});

test("messages with a group add its blocks to the pass's done list; group 0 or a new pass starts over", () => {
  const msg = (group, done, evaluation = 0) => parseBlocksMessage({ grid: [2, 2], done, running: [], group, evaluation });
  let state = applyBlocksMessage(null, msg(0, [[0, 0]]));
  state = applyBlocksMessage(state, msg(1, [[0, 1]]));
  state = applyBlocksMessage(state, msg(2, [[1, 0]]));
  assert.deepEqual(cellStates(state), [["done", "done"], ["done", "waiting"]]);
  assert.deepEqual(applyBlocksMessage(state, msg(0, [[0, 0]], 1)).done, [[0, 0]]); // the next network pass
  const old = parseBlocksMessage({ grid: [2, 2], done: [[0, 0], [1, 1]] }); // an older payload replaces the state
  assert.deepEqual(applyBlocksMessage(state, old).done, [[0, 0], [1, 1]]);
});

// A graph as LiteGraph keeps it: nodes by id (numbers in the root graph), a subgraph node holding its graph.
function graphOf(nodes) {
  const byId = new Map(nodes.map((n) => [n.id, n]));
  return { getNodeById: (id) => byId.get(id) ?? null };
}

test("the node of a message is found inside subgraphs, by its path", () => {
  const inner = { id: 3, title: "Inf-DiT Upscale in the blueprint" };
  const deeper = { id: 2, title: "two levels down" };
  const nested = { id: 4, subgraph: graphOf([deeper]) };
  const blueprint = { id: 5, subgraph: graphOf([inner, nested]) };
  const plain = { id: 7, title: "top level" };
  const root = graphOf([plain, blueprint]);
  assert.equal(findNode(root, "7"), plain);
  assert.equal(findNode(root, 7), plain);
  assert.equal(findNode(root, "5:3"), inner); // Number("5:3") is NaN: the grid never drew here before
  assert.equal(findNode(root, "5:4:2"), deeper);
  assert.equal(findNode(root, "5:9"), null);
  assert.equal(findNode(root, "7:1"), null); // a plain node holds no graph
  assert.equal(findNode(null, "7"), null);
});

test("evaluations query and label", () => {
  assert.equal(evaluationsQuery({ steps: 0, solver: "heun", seed: 5 }, { sampler: false }), "solver=heun&steps=0");
  assert.equal(evaluationsQuery({ steps: 3 }, { sampler: true, sigmas: true }), "steps=3&sampler=1&sigmas=1");
  assert.equal(evaluationsLabel({ text: "39 network evaluations a pass: heun, 20 steps" }), "39 network evaluations a pass: heun, 20 steps");
  assert.equal(evaluationsLabel({ error: "unknown solver" }), null);
  assert.equal(evaluationsLabel(null), null);
});
