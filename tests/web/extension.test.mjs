// node --test tests/web : web/inf_dit.js itself, loaded as ComfyUI's frontend loads it, against a stand-in
// app and api (window.comfyAPI): it registers its extension, listens for the block messages, and draws the
// grid state onto the node the message names, inside a subgraph too.
import assert from "node:assert/strict";
import test from "node:test";

const registered = [];
const listeners = {};
const dirty = [];
function graphOf(nodes) {
  const byId = new Map(nodes.map((n) => [n.id, n]));
  return { getNodeById: (id) => byId.get(id) ?? null };
}
const inner = { id: 3, setDirtyCanvas: () => dirty.push(3) };
const outer = { id: 7, setDirtyCanvas: () => dirty.push(7) };
const app = {
  graph: graphOf([outer, { id: 5, subgraph: graphOf([inner]) }]),
  registerExtension: (extension) => registered.push(extension),
};
const api = {
  addEventListener: (name, handler) => { listeners[name] = handler; },
  fetchApi: async () => ({ ok: false }),
};
globalThis.window = { comfyAPI: { app: { app }, api: { api } } };

await import("../../web/inf_dit.js");

test("the extension registers once, by its name", () => {
  assert.equal(registered.length, 1);
  assert.equal(registered[0].name, "InfDiT.BlockGrid");
});

test("block messages reach the node they name, at the top level and inside a subgraph", () => {
  registered[0].setup();
  const handler = listeners["inf_dit.blocks"];
  assert.equal(typeof handler, "function");
  handler({ detail: { node: "7", grid: [1, 2], done: [[0, 0]], running: [[0, 1]], value: 1, max: 2 } });
  handler({ detail: { node: "5:3", grid: [2, 2], done: [[0, 0]], running: [], value: 1, max: 4 } });
  handler({ detail: { node: "9", grid: [1, 1], done: [], running: [] } }); // a node not in the graph: ignored
  assert.deepEqual(dirty, [7, 3]);
  assert.equal(outer.infditBlocks.rows, 1);
  assert.equal(inner.infditBlocks.rows, 2);
});

test("the Upscale node gets the grid drawn after its own drawing", () => {
  const proto = { onDrawForeground: () => {} };
  registered[0].beforeRegisterNodeDef({ prototype: proto }, { name: "InfDiTUpscale" });
  const calls = [];
  const ctx = new Proxy({}, { get: (_, name) => (name in {} ? undefined : (...args) => calls.push(name)),
    set: () => true });
  const node = { ...inner, size: [200, 100], flags: {}, infditBlocks: inner.infditBlocks };
  proto.onDrawForeground.call(node, ctx);
  assert.ok(calls.includes("fillRect") && calls.includes("fillText"));
});

test("the Upscale node shows the network evaluations its settings run, and after a run the real count", async () => {
  const asked = [];
  api.fetchApi = async (url) => {
    asked.push(url);
    return { ok: true, json: async () => ({ evaluations: 13, text: "13 network evaluations a pass: ipndm, 13 steps" }) };
  };
  const proto = {};
  registered[0].beforeRegisterNodeDef({ prototype: proto }, { name: "InfDiTUpscale" });
  const node = {
    widgets: [{ name: "steps", value: 0 }, { name: "solver", value: "ipndm" }],
    inputs: [{ name: "sampler", link: null }, { name: "sigmas", link: 4 }],
    setDirtyCanvas: () => {},
  };
  proto.onNodeCreated.call(node);
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.equal(asked[0], "/inf_dit/evaluations?solver=ipndm&steps=0&sigmas=1");
  assert.equal(node.infditEstimate, "13 network evaluations a pass: ipndm, 13 steps");
  proto.onExecuted.call(node, { text: ["1 network evaluations a pass: ipndm"] });
  assert.equal(node.infditEstimate, "1 network evaluations a pass: ipndm");
  api.fetchApi = async () => ({ ok: false });
});
