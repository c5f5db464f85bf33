"use strict";
// The exported page's reader: the model runs here, in the browser, through ONNX Runtime
// Web (WebAssembly, one thread: no special headers needed from the static host).
let loaded = null;

async function loadModel() {
  const ort = await import("./ort.wasm.min.mjs");
  ort.env.wasm.wasmPaths = new URL("./", location.href).href;
  ort.env.wasm.numThreads = 1;
  const meta = await (await fetch("model.json")).json();
  const model = await ort.InferenceSession.create("model.onnx");
  const card = meta.card ? await ort.InferenceSession.create(meta.card) : null;
  return {ort, meta, model, card};
}

async function run(m, session, digit, shape) {
  const x = new m.ort.Tensor("float32", Float32Array.from(digit, v => v / 255), [1, ...shape]);
  const out = await session.run({[session.inputNames[0]]: x});
  return out[session.outputNames[0]];
}

function softmaxIfLogits(p) {
  const sum = p.reduce((a, b) => a + b, 0);
  if (Math.min(...p) >= 0 && Math.abs(sum - 1) <= 1e-3) return p;
  const top = Math.max(...p), e = p.map(v => Math.exp(v - top)), total = e.reduce((a, b) => a + b, 0);
  return e.map(v => v / total);
}

// What serve's cards show: the LSTM's answer after each row, the CNN's feature maps
// (each scaled to its own range, as `explain.maps_card` does).
function card(kind, out) {
  const d = out.dims, v = out.data;
  if (kind === "lstm") {
    return {rows: Array.from({length: d[1]}, (_, r) => Array.from(v.slice(r * d[2], (r + 1) * d[2])))};
  }
  const [h, w, n] = d.slice(1), images = [];
  for (let c = 0; c < n; c++) {
    let lo = Infinity, hi = -Infinity;
    for (let i = 0; i < h * w; i++) { lo = Math.min(lo, v[i * n + c]); hi = Math.max(hi, v[i * n + c]); }
    const span = hi > lo ? hi - lo : 1;
    images.push(Array.from({length: h}, (_, y) => Array.from({length: w},
      (_, x) => roundHalfEven(255 * (v[(y * w + x) * n + c] - lo) / span))));
  }
  return {feature_maps: {shape: [h, w, n], images}};
}

async function readDigit(source) {
  loaded = loaded || loadModel();
  const m = await loaded;
  const {gray, w, h} = await grayOf(source);
  const digit = toMnist(gray, w, h);
  const probs = softmaxIfLogits(Array.from((await run(m, m.model, digit, m.meta.input_shape)).data));
  const order = probs.map((p, c) => c).sort((a, b) => probs[b] - probs[a]).slice(0, 3);
  const entry = {name: m.meta.name, type: m.meta.kind || "model",
                 top: order.map(c => ({class: c, probability: probs[c]}))};
  if (m.card) Object.assign(entry, card(m.meta.kind, await run(m, m.card, digit, m.meta.input_shape)));
  const input = Array.from({length: 28}, (_, y) => Array.from(digit.slice(y * 28, (y + 1) * 28)));
  return {input, runs: [entry]};
}
