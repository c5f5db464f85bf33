"use strict";
// The drawing pad and the run cards, shared by serve's page and the page that
// `mnist-seq export --format web` writes. Each page's reader.js defines
// readDigit(source, explain): the pad's canvas or an uploaded File -> {input: 28x28,
// runs: [...]}; `explain` (a finished drawing) asks for the pixels that decided, where
// the page's reader can give them.
const pad = document.getElementById("draw"), ctx = pad.getContext("2d");
const status = document.getElementById("status");
let strokes = [], current = null, pending = null, busy = false, timer = null;
let pendingExplain = false;
let generation = 0;  // a clear starts a new one: answers to older drawings are dropped

function redraw() {
  ctx.fillStyle = "#000"; ctx.fillRect(0, 0, pad.width, pad.height);
  ctx.strokeStyle = "#fff"; ctx.lineWidth = 20; ctx.lineCap = ctx.lineJoin = "round";
  for (const s of strokes) {
    ctx.beginPath(); ctx.moveTo(s[0][0], s[0][1]);
    for (const [x, y] of s) ctx.lineTo(x, y);
    if (s.length === 1) ctx.lineTo(s[0][0] + 0.1, s[0][1]);
    ctx.stroke();
  }
}
function point(e) {
  const r = pad.getBoundingClientRect();
  return [(e.clientX - r.left) * pad.width / r.width, (e.clientY - r.top) * pad.height / r.height];
}
pad.addEventListener("pointerdown", e => {
  pad.setPointerCapture(e.pointerId); current = [point(e)]; strokes.push(current); redraw();
});
pad.addEventListener("pointermove", e => {
  if (!current) return;
  current.push(point(e)); redraw();
  if (!timer) timer = setTimeout(() => { timer = null; send(); }, 150);  // read as you draw
});
for (const end of ["pointerup", "pointercancel"]) pad.addEventListener(end, () => {
  // The drawing is done: one last read of all of it, none left over from the moves.
  if (current) { current = null; clearTimeout(timer); timer = null; send(true); }
});
document.getElementById("clear").onclick = () => {
  strokes = []; pending = null; generation++; redraw(); clearResults();
};
document.getElementById("undo").onclick = () => { strokes.pop(); redraw(); strokes.length ? send(true) : clearResults(); };
document.getElementById("upload").onchange = e => {
  const file = e.target.files[0]; e.target.value = "";
  if (file) { strokes = []; redraw(); read(file, true); }
};

function send(explain = false) {
  if (!strokes.length) return;
  document.body.dataset.busy = "1";  // from now, not from when the digit is read
  read(pad, explain);
}
async function read(source, explain = false) {
  // Keep only the latest drawing while one is read (explained if any waiting one was).
  if (busy) { pending = source; pendingExplain = pendingExplain || explain; return; }
  busy = true; document.body.dataset.busy = "1";
  const asked = generation;
  try {
    const data = await readDigit(source, explain);
    if (asked !== generation) return;  // cleared meanwhile
    status.className = ""; status.textContent = "";
    show(data);
    document.body.dataset.reads = Number(document.body.dataset.reads || 0) + 1;
  } catch (err) {
    status.className = "error"; status.textContent = "Error: " + err.message;
  } finally {
    busy = false;
    if (pending) { const s = pending, e = pendingExplain; pending = null; pendingExplain = false; read(s, e); }
    else document.body.dataset.busy = "0";
  }
}
function clearResults() {
  document.getElementById("runs").innerHTML = ""; status.className = "";
  status.textContent = "Draw with the mouse, a finger or a pen.";
  document.getElementById("seen").getContext("2d").clearRect(0, 0, 28, 28);
}
function paint(canvas, pixels, colour) {
  const h = pixels.length, w = pixels[0].length, c = canvas.getContext("2d");
  const img = c.createImageData(w, h);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
    const v = pixels[y][x], i = 4 * (y * w + x);
    img.data[i] = img.data[i + 1] = img.data[i + 2] = colour ? 255 - v : v; img.data[i + 3] = 255;
  }
  c.putImageData(img, 0, 0);
}
function el(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const k of kids) e.append(k);
  return e;
}
function show(data) {
  paint(document.getElementById("seen"), data.input, false);
  const box = document.getElementById("runs"); box.innerHTML = "";
  for (const run of data.runs) {
    const card = el("div", {class: "run", "data-run": run.name, "data-type": run.type});
    card.append(el("h2", {}, run.name + " ", el("span", {class: "kind"}, "(" + run.type + ")")));
    const bars = el("div", {class: "bars"});
    for (const t of run.top) {
      const bar = el("div", {class: "bar"}, el("span", {class: "d"}, String(t.class)));
      const fill = el("div", {style: `width:${Math.max(1, 180 * t.probability)}px`});
      bar.append(fill, el("span", {}, (100 * t.probability).toFixed(1) + "%")); bars.append(bar);
    }
    card.append(el("div", {class: "answer"}, el("div", {class: "top1"}, String(run.top[0].class)), bars));
    if (run.rows) card.append(...rowsChart(run.rows, data.input));
    if (run.feature_maps) card.append(...featureMaps(run.feature_maps));
    if (run.saliency) card.append(...saliencyMaps(run.saliency, data.input));
    box.append(card);
  }
}
// An LSTM reads the 28 rows one by one: each digit's probability after each row, and
// the row being read marked on the chart and on the digit, stepping through as you watch.
function rowsChart(rows, input) {
  const W = 220;
  const chart = el("canvas", {width: W, height: 150}), digit = el("canvas", {width: 84, height: 84});
  const colours = ["#e6194b","#3cb44b","#4363d8","#f58231","#911eb4","#42d4f4","#f032e6","#9a6324","#800000","#000075"];
  const final = rows[rows.length - 1], best = final.indexOf(Math.max(...final));
  function draw(upto) {
    const c = chart.getContext("2d"); c.clearRect(0, 0, W, 150);
    c.strokeStyle = "#ddd"; c.strokeRect(20, 5, W - 25, 125);
    c.fillStyle = "#666"; c.font = "10px sans-serif"; c.fillText("1", 0, 12); c.fillText("0", 0, 132);
    c.fillText("row 1", 20, 145); c.fillText("row 28", W - 40, 145);
    for (let d = 0; d < 10; d++) {
      c.strokeStyle = colours[d]; c.lineWidth = d === best ? 2.5 : 1; c.beginPath();
      for (let r = 0; r <= upto; r++) {
        const x = 20 + (W - 25) * r / 27, y = 130 - 125 * rows[r][d];
        r ? c.lineTo(x, y) : c.moveTo(x, y);
      }
      c.stroke();
    }
    const x = 20 + (W - 25) * upto / 27; c.strokeStyle = "#000"; c.setLineDash([3, 3]);
    c.beginPath(); c.moveTo(x, 5); c.lineTo(x, 130); c.stroke(); c.setLineDash([]);
    const top = rows[upto].indexOf(Math.max(...rows[upto]));
    c.fillStyle = colours[top]; c.font = "bold 12px sans-serif";
    c.fillText(`after row ${upto + 1}: ${top} (${(100 * rows[upto][top]).toFixed(0)}%)`, 26, 18);
    const g = digit.getContext("2d"), img = g.createImageData(28, 28);
    for (let y = 0; y < 28; y++) for (let x2 = 0; x2 < 28; x2++) {
      const i = 4 * (y * 28 + x2), v = y <= upto ? input[y][x2] : input[y][x2] * 0.25;
      img.data[i] = img.data[i + 1] = img.data[i + 2] = v; img.data[i + 3] = 255;
      if (y === upto) { img.data[i] = Math.max(v, 200); }
    }
    const tmp = el("canvas", {width: 28, height: 28}); tmp.getContext("2d").putImageData(img, 0, 0);
    g.imageSmoothingEnabled = false; g.drawImage(tmp, 0, 0, 84, 84);
  }
  let r = 0; draw(0);
  const step = setInterval(() => { r += 1; if (r > 27 || !chart.isConnected && r > 1) clearInterval(step); else draw(r); }, 45);
  return [el("div", {class: "note"}, "Each digit's probability after each row read (row marked):"),
          el("div", {class: "answer"}, digit, chart)];
}
function featureMaps(maps) {
  const [h, w, n] = maps.shape, grid = el("div", {class: "maps"});
  for (const image of maps.images) {
    const c = el("canvas", {class: "pixels", width: w, height: h, style: "width:36px;height:36px"});
    paint(c, image, false); grid.append(c);
  }
  return [el("div", {class: "note"}, `The first convolution's ${n} feature maps (depth ${n}: one per filter), ${h}x${w} each:`), grid];
}
// Which pixels pushed the answer towards each class (red) or away (blue), over the digit.
function saliencyMaps(saliency, input) {
  const row = el("div", {class: "answer saliency"});
  saliency.maps.forEach((map, k) => {
    const c = el("canvas", {class: "pixels", width: 28, height: 28, "data-class": saliency.classes[k],
                            style: "width:84px;height:84px"});
    const g = c.getContext("2d"), img = g.createImageData(28, 28);
    for (let y = 0; y < 28; y++) for (let x = 0; x < 28; x++) {
      // The square root lifts the many small pushes beside the few large ones.
      const m = map[y][x] / 100, v = Math.sign(m) * Math.sqrt(Math.abs(m));
      const i = 4 * (y * 28 + x), base = 255 - 0.35 * input[y][x];
      img.data[i] = v < 0 ? base * (1 + v) : base;
      img.data[i + 1] = base * (1 - Math.abs(v));
      img.data[i + 2] = v > 0 ? base * (1 - v) : base;
      img.data[i + 3] = 255;
    }
    g.putImageData(img, 0, 0);
    const label = k === 0 ? `towards ${saliency.classes[0]}` : `towards ${saliency.classes[1]} (runner-up)`;
    row.append(el("figure", {}, c, el("figcaption", {}, label)));
  });
  return [el("div", {class: "note"}, "The pixels that decided: red pushed towards the digit, blue against:"), row];
}
redraw();
