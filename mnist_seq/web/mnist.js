"use strict";
// A drawing or photo as a 28x28 MNIST-style digit, step for step as `predict.to_mnist`
// does it in Python (Pillow's Lanczos resampling included), so that the page without a
// server feeds its model the same pixels as `mnist-seq predict` does.

// Python's round(): halves go to the even neighbour.
function roundHalfEven(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}
function lanczos(x) {
  const sinc = t => (t === 0 ? 1 : Math.sin(Math.PI * t) / (Math.PI * t));
  return x >= -3 && x < 3 ? sinc(x) * sinc(x / 3) : 0;
}
// Pillow's weights for resampling `inSize` pixels to `outSize` along one axis.
function coefficients(inSize, outSize) {
  const scale = inSize / outSize, filterscale = Math.max(scale, 1), support = 3 * filterscale;
  const out = [];
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize);
    const k = [];
    for (let x = xmin; x < xmax; x++) k.push(lanczos((x - center + 0.5) / filterscale));
    const total = k.reduce((a, b) => a + b, 0);
    out.push({xmin, k: total ? k.map(w => w / total) : k});
  }
  return out;
}
// One resampling pass along x (stride 1) or y (stride w). `bits8`: Pillow's 8-bit path
// (fixed-point weights, each pass rounded to 0..255); else its float path.
function pass(src, w, h, outW, outH, alongX, bits8) {
  const coeffs = coefficients(alongX ? w : h, alongX ? outW : outH);
  const out = bits8 ? new Uint8Array(outW * outH) : new Float32Array(outW * outH);
  const P = 2 ** 22;
  const fixed = coeffs.map(c => c.k.map(v => (v < 0 ? Math.trunc(-0.5 + v * P) : Math.trunc(0.5 + v * P))));
  for (let y = 0; y < outH; y++) for (let x = 0; x < outW; x++) {
    const i = alongX ? x : y, c = coeffs[i], k = bits8 ? fixed[i] : c.k;
    let ss = bits8 ? P / 2 : 0;
    for (let j = 0; j < k.length; j++) {
      const sx = alongX ? c.xmin + j : x, sy = alongX ? y : c.xmin + j;
      ss += src[sy * w + sx] * k[j];
    }
    out[y * outW + x] = bits8 ? Math.min(255, Math.max(0, Math.floor(ss / P))) : ss;
  }
  return out;
}
function resize(src, w, h, outW, outH, bits8) {
  let a = src;
  if (outW !== w) a = pass(a, w, h, outW, h, true, bits8);
  if (outH !== h) a = pass(a, outW, h, outW, outH, false, bits8);
  return a;
}
// Pillow's thumbnail size: fit in `box` x `box`, the aspect ratio kept.
function thumbnailSize(w, h, box) {
  const aspect = w / h, pick = (n, key) => Math.max(key(Math.floor(n)) <= key(Math.ceil(n)) ? Math.floor(n) : Math.ceil(n), 1);
  if (box / box >= aspect) return [pick(box * aspect, n => Math.abs(aspect - n / box)), box];
  return [box, pick(box / aspect, n => (n === 0 ? 0 : Math.abs(aspect - box / n)))];
}
// The min (or max) over each k x k window, edges repeated: vertical, then horizontal.
function rankFilter(a, w, h, k, op) {
  const r = k >> 1, tmp = new Uint8Array(w * h), out = new Uint8Array(w * h);
  const clamp = (v, n) => Math.min(n - 1, Math.max(0, v));
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
    let m = a[clamp(y - r, h) * w + x];
    for (let d = -r + 1; d <= r; d++) m = op(m, a[clamp(y + d, h) * w + x]);
    tmp[y * w + x] = m;
  }
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
    let m = tmp[y * w + clamp(x - r, w)];
    for (let d = -r + 1; d <= r; d++) m = op(m, tmp[y * w + clamp(x + d, w)]);
    out[y * w + x] = m;
  }
  return out;
}
function quantile(values, q) {  // NumPy's default (linear) percentile
  const s = Float64Array.from(values).sort(), at = q * (s.length - 1), lo = Math.floor(at);
  const hi = Math.min(lo + 1, s.length - 1), t = at - lo;
  return t >= 0.5 ? s[hi] - (s[hi] - s[lo]) * (1 - t) : s[lo] + (s[hi] - s[lo]) * t;
}
function median(values) { return quantile(values, 0.5); }

// gray: w*h floats in [0, 1] -> 784 uint8 pixels, light ink on black, centred by mass.
function toMnist(gray, w, h) {
  const f = Math.fround;
  let u8 = Uint8Array.from(gray, v => Math.floor(f(v * 255)));
  if (Math.max(w, h) > 256) {
    const [tw, th] = thumbnailSize(w, h, 256);
    u8 = resize(u8, w, h, tw, th, true); w = tw; h = th;
  }
  let a = Float32Array.from(u8, v => v / 255);
  const border = [];
  for (let x = 0; x < w; x++) border.push(a[x], a[(h - 1) * w + x]);
  for (let y = 0; y < h; y++) border.push(a[y * w], a[y * w + w - 1]);
  if (median(border) > 0.5) a = a.map(v => 1 - v);
  // Uneven lighting: a grey opening wider than any stroke keeps only the background.
  const k = Math.max(15, Math.floor(Math.min(w, h) / 4)) | 1;
  const bright = Uint8Array.from(a, v => Math.floor(f(v * 255)));
  const background = rankFilter(rankFilter(bright, w, h, k, Math.min), w, h, k, Math.max);
  a = a.map((v, i) => Math.max(0, v - f(background[i] / 255)));
  const peak = quantile(a, 0.995);
  if (peak < 0.1) throw new Error("no digit found: the image has no ink that stands out from its background");
  a = a.map(v => { const s = Math.min(1, v / peak); return s < 0.25 ? 0 : s; });
  // The box is set by clear ink only, so faint specks far away cannot widen it.
  let top = h, bottom = -1, left = w, right = -1;
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) if (a[y * w + x] >= 0.5) {
    top = Math.min(top, y); bottom = Math.max(bottom, y); left = Math.min(left, x); right = Math.max(right, x);
  }
  const cw = right - left + 1, ch = bottom - top + 1, crop = new Float32Array(cw * ch);
  for (let y = 0; y < ch; y++) for (let x = 0; x < cw; x++) crop[y * cw + x] = a[(y + top) * w + x + left];
  // Fit the ink's bounding box into 20x20, keeping its aspect ratio.
  const scale = 20 / Math.max(cw, ch);
  const dw = Math.max(1, roundHalfEven(cw * scale)), dh = Math.max(1, roundHalfEven(ch * scale));
  const digit = resize(crop, cw, ch, dw, dh, false).map(v => Math.min(1, Math.max(0, v)));
  // Centre by the centre of mass in 28x28, as MNIST was made.
  let total = 0, my = 0, mx = 0;
  for (let y = 0; y < dh; y++) for (let x = 0; x < dw; x++) {
    const v = digit[y * dw + x]; total += v; my += y * v; mx += x * v;
  }
  total = total || 1;
  const oy = Math.min(Math.max(roundHalfEven(14 - my / total), 0), 28 - dh);
  const ox = Math.min(Math.max(roundHalfEven(14 - mx / total), 0), 28 - dw);
  const out = new Uint8Array(784);
  for (let y = 0; y < dh; y++) for (let x = 0; x < dw; x++) {
    out[(y + oy) * 28 + x + ox] = roundHalfEven(digit[y * dw + x] * 255);
  }
  return out;
}

// The pad's canvas or an uploaded image as grayscale (Pillow's "L": ITU-R 601-2 luma),
// transparency over white.
async function grayOf(source) {
  const canvas = document.createElement("canvas");
  let image = source;
  if (!(source instanceof HTMLCanvasElement)) {
    try { image = await createImageBitmap(source); } catch (e) { throw new Error("the uploaded image: not a readable image"); }
  }
  canvas.width = image.width; canvas.height = image.height;
  const c = canvas.getContext("2d");
  c.fillStyle = "#fff"; c.fillRect(0, 0, canvas.width, canvas.height); c.drawImage(image, 0, 0);
  const rgba = c.getImageData(0, 0, canvas.width, canvas.height).data;
  const gray = new Float32Array(canvas.width * canvas.height);
  for (let i = 0; i < gray.length; i++) {
    const l = (rgba[4 * i] * 19595 + rgba[4 * i + 1] * 38470 + rgba[4 * i + 2] * 7471 + 0x8000) >> 16;
    gray[i] = l / 255;
  }
  return {gray, w: canvas.width, h: canvas.height};
}
