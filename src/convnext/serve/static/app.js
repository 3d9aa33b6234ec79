// convnext serve: the page. Plain JavaScript, no build step: pick or drop an image, POST it to /v1/predict,
// draw the top-5 (or every class, for a model with fewer) as bars; the Grad-CAM toggle asks the server for
// the heat map of the top class. A detector's boxes and masks, or a segmenter's coloured classes, are drawn
// on a canvas with a legend. An error replaces the previous result: no old bars beside a new error.
"use strict";

const $ = (id) => document.getElementById(id);
const TOPK = 5;
let current = null; // {file, result, camResult}
let maxUploadBytes = Infinity; // from /v1/model: a file over it is refused here, without uploading it
let numClasses = null; // from /v1/model: a 2-class fine-tune shows 2 bars, not an error about topk=5
let latest = 0; // the newest upload: an older answer that arrives late is dropped
let photoUrl = null;
let task = null; // from /v1/model: "detection" or "segmentation" for a dense model, else a classifier
let palette = []; // from /v1/model: the colour of each class (dense models)
let dense = null; // {result, image}: the dense answer on screen

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function post(file, withCam) {
  const body = new FormData();
  body.append("file", file);
  const params = new URLSearchParams({ cam: withCam });
  if (numClasses) params.set("topk", Math.min(TOPK, numClasses));
  const t0 = performance.now();
  let response;
  try {
    response = await fetch(`/v1/predict?${params}`, { method: "POST", body });
  } catch (e) {
    throw new Error("The server cannot be reached; is convnext serve still running?");
  }
  let answer = null;
  try {
    answer = await response.json();
  } catch (e) {
    throw new Error(`The server answered ${response.status} without a readable message.`);
  }
  if (!response.ok) throw new Error(answer.error || `The server answered ${response.status}.`);
  answer.roundTripMs = performance.now() - t0;
  return answer;
}

function drawBars(result) {
  const list = $("bars");
  list.replaceChildren();
  for (const p of result.predictions) {
    const li = document.createElement("li");
    li.dataset.index = p.index;
    const row = document.createElement("div");
    row.className = "row";
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = p.label;
    label.title = `class ${p.index}: ${p.label}`;
    const pct = document.createElement("span");
    pct.className = "pct";
    pct.textContent = `${(p.prob * 100).toFixed(2)}%`;
    row.append(label, pct);
    const track = document.createElement("div");
    track.className = "track";
    const fill = document.createElement("div");
    fill.className = "fill";
    fill.style.width = `${Math.max(p.prob * 100, 0.5)}%`;
    track.append(fill);
    li.append(row, track);
    list.append(li);
  }
  $("k").textContent = result.predictions.length;
  $("latency").textContent =
    `${result.latency_ms.toFixed(1)} ms on the server, ${result.roundTripMs.toFixed(1)} ms round trip ` +
    `(${result.model})`;
}

function showCam(on) {
  const cam = current && current.camResult;
  $("cam-image").hidden = !(on && cam);
  $("photo").hidden = Boolean(on && cam);
  $("colorbar").hidden = !(on && cam);
  if (on && cam) {
    const img = $("cam-image");
    img.onload = () => img.classList.toggle("pixelated", img.naturalWidth < 128);
    img.src = `data:image/png;base64,${cam.cam}`;
  }
}

// ---------------------------------------------------------------- detection and segmentation models
// The API answers with boxes, labels, scores and COCO RLE masks (detection) or the class shares and the
// label map as a PNG whose grey value is the class (segmentation); both are drawn here on a canvas.

function colourOf(index) {
  const c = palette.length ? palette[index % palette.length] : [47, 111, 222];
  return c;
}

function rleCounts(s) {
  // pycocotools' compressed RLE string -> run lengths (column-major, zeros first), as its rleFrString
  const counts = [];
  let p = 0;
  while (p < s.length) {
    let x = 0, k = 0, more = 1, c = 0;
    while (more) {
      c = s.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = c & 0x20;
      p++;
      k++;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

function maskLayer(rle, rgb, alpha) {
  // an RLE mask as a canvas of its colour where the mask is set
  const [h, w] = rle.size;
  const layer = document.createElement("canvas");
  layer.width = w;
  layer.height = h;
  const ctx = layer.getContext("2d");
  const img = ctx.createImageData(w, h);
  let i = 0, on = false;
  for (const run of rleCounts(rle.counts)) {
    if (on) {
      for (let j = i; j < i + run; j++) {
        const y = j % h, x = Math.floor(j / h), o = 4 * (y * w + x);
        img.data[o] = rgb[0]; img.data[o + 1] = rgb[1]; img.data[o + 2] = rgb[2]; img.data[o + 3] = alpha;
      }
    }
    i += run;
    on = !on;
  }
  ctx.putImageData(img, 0, 0);
  return layer;
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("The browser cannot show this image."));
    img.src = src;
  });
}

async function classLayer(labelMapB64, w, h, alpha) {
  // the label map PNG (grey value = class) as a canvas of the classes' colours
  const png = await loadImage(`data:image/png;base64,${labelMapB64}`);
  const layer = document.createElement("canvas");
  layer.width = w;
  layer.height = h;
  const ctx = layer.getContext("2d");
  ctx.drawImage(png, 0, 0, w, h);
  const img = ctx.getImageData(0, 0, w, h);
  for (let o = 0; o < img.data.length; o += 4) {
    const rgb = colourOf(img.data[o]);
    img.data[o] = rgb[0]; img.data[o + 1] = rgb[1]; img.data[o + 2] = rgb[2]; img.data[o + 3] = alpha;
  }
  ctx.putImageData(img, 0, 0);
  return layer;
}

function legendItem(rgb, name, value, title) {
  const li = document.createElement("li");
  const swatch = document.createElement("span");
  swatch.className = "swatch";
  swatch.style.background = `rgb(${rgb.join(",")})`;
  const label = document.createElement("span");
  label.className = "name";
  label.textContent = name;
  label.title = title;
  const v = document.createElement("span");
  v.className = "value";
  v.textContent = value;
  li.append(swatch, label, v);
  return li;
}

async function drawDense() {
  const { result, image } = dense;
  const [h, w] = result.size;
  const canvas = $("canvas");
  canvas.dataset.drawn = "";
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d");
  const legend = $("legend");
  legend.replaceChildren();
  const segmentation = result.task === "segmentation";
  const alone = segmentation && $("mask-only").checked;
  ctx.clearRect(0, 0, w, h);
  if (!alone) ctx.drawImage(image, 0, 0, w, h);
  if (segmentation) {
    const layer = await classLayer(result.label_map, w, h, 255);
    ctx.globalAlpha = alone ? 1 : 0.5;
    ctx.drawImage(layer, 0, 0);
    ctx.globalAlpha = 1;
    for (const c of result.classes) {
      legend.append(legendItem(colourOf(c.index), c.name, `${(c.fraction * 100).toFixed(1)}%`, `class ${c.index}`));
    }
    $("dense-title").textContent = `${result.classes.length} classes`;
  } else {
    const side = Math.max(w, h);
    const width = Math.max(2, Math.round(side / 300));
    ctx.font = `${Math.max(12, Math.round(side / 40))}px system-ui, sans-serif`;
    for (const d of result.detections) {
      if (d.mask) ctx.drawImage(maskLayer(d.mask, colourOf(d.label), 128), 0, 0);
    }
    for (const d of result.detections) {
      const rgb = colourOf(d.label);
      const [x1, y1, x2, y2] = d.box;
      ctx.strokeStyle = `rgb(${rgb.join(",")})`;
      ctx.lineWidth = width;
      ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
      const text = `${d.name} ${d.score.toFixed(2)}`;
      const tw = ctx.measureText(text).width + 6;
      const th = parseInt(ctx.font, 10) + 4;
      ctx.fillStyle = `rgb(${rgb.join(",")})`;
      ctx.fillRect(x1, Math.max(0, y1 - th), tw, th);
      ctx.fillStyle = "#fff";
      ctx.fillText(text, x1 + 3, Math.max(0, y1 - th) + th - 5);
      legend.append(legendItem(rgb, d.name, d.score.toFixed(3), `label ${d.label}`));
    }
    $("dense-title").textContent = `${result.detections.length} detections`;
  }
  $("dense-latency").textContent =
    `${result.latency_ms.toFixed(1)} ms on the server, ${result.roundTripMs.toFixed(1)} ms round trip (${result.model})`;
  canvas.dataset.drawn = "1";
}

async function postDense(file) {
  const body = new FormData();
  body.append("file", file);
  const t0 = performance.now();
  let response;
  try {
    const params = new URLSearchParams();
    if (task === "detection") params.set("score_threshold", $("threshold").value || "0.5");
    response = await fetch(`/v1/predict?${params}`, { method: "POST", body });
  } catch (e) {
    throw new Error("The server cannot be reached; is convnext serve still running?");
  }
  let answer = null;
  try {
    answer = await response.json();
  } catch (e) {
    throw new Error(`The server answered ${response.status} without a readable message.`);
  }
  if (!response.ok) throw new Error(answer.error || `The server answered ${response.status}.`);
  answer.roundTripMs = performance.now() - t0;
  return answer;
}

async function predictDense(file, mine) {
  try {
    const result = await postDense(file);
    if (mine !== latest) return;
    clearResult();
    photoUrl = URL.createObjectURL(file);
    dense = { file, result, image: await loadImage(photoUrl) };
    $("dense").hidden = false;
    await drawDense();
  } catch (e) {
    if (mine !== latest) return;
    clearResult();
    showError(e.message);
  }
}

function clearResult() {
  dense = null;
  $("dense").hidden = true;
  $("legend").replaceChildren();
  $("canvas").dataset.drawn = "";
  current = null;
  $("result").hidden = true;
  $("bars").replaceChildren();
  $("latency").textContent = "";
  $("photo").removeAttribute("src");
  $("cam-image").removeAttribute("src");
  $("cam-image").hidden = true;
  $("colorbar").hidden = true;
  if (photoUrl) URL.revokeObjectURL(photoUrl);
  photoUrl = null;
}

async function classify(file) {
  showError("");
  if (!file) return;
  const mine = ++latest;
  if (file.size > maxUploadBytes) {
    const mb = (n) => (n / 2 ** 20).toFixed(1);
    clearResult();
    showError(`${file.name} is ${mb(file.size)} MB, over the server's ${mb(maxUploadBytes)} MB limit.`);
    return;
  }
  if (task) return predictDense(file, mine);
  const withCam = $("cam-toggle").checked;
  try {
    const result = await post(file, withCam);
    if (mine !== latest) return;
    clearResult();
    current = { file, result, camResult: withCam ? result : null };
    photoUrl = URL.createObjectURL(file);
    const photo = $("photo");
    photo.onload = () => photo.classList.toggle("pixelated", photo.naturalWidth < 128);
    photo.src = photoUrl;
    $("result").hidden = false;
    drawBars(result);
    showCam(withCam);
  } catch (e) {
    if (mine !== latest) return;
    clearResult(); // the bars of the previous image must not stand beside this image's error
    showError(e.message);
  }
}

async function toggleCam() {
  showError("");
  const on = $("cam-toggle").checked;
  if (on && current && !current.camResult) {
    try {
      current.camResult = await post(current.file, true);
      drawBars(current.camResult);
    } catch (e) {
      showError(e.message);
      $("cam-toggle").checked = false;
      return;
    }
  }
  showCam(on);
}

async function loadInfo() {
  for (;;) {
    try {
      const r = await fetch("/v1/model");
      const info = await r.json();
      if (r.ok) {
        task = info.task || null;
        palette = info.palette || [];
        $("model-info").textContent =
          `${info.model} · ${task ? `${task} · ` : ""}${info.num_classes} classes · ${info.backend} ` +
          `${info.precision} on ${info.device} · ${info.preprocessing.img_size} px`;
        $("mask-only-label").hidden = task !== "segmentation";
        $("threshold-label").hidden = task !== "detection";
        $("cam-toggle").disabled = !info.cam;
        numClasses = info.num_classes;
        maxUploadBytes = info.limits.max_upload_mb * 2 ** 20;
        return;
      }
      $("model-info").textContent = info.error || "loading the model…";
    } catch (e) {
      $("model-info").textContent = "the server cannot be reached";
    }
    await new Promise((res) => setTimeout(res, 1000));
  }
}

window.addEventListener("DOMContentLoaded", () => {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => classify(e.target.files[0]));
  $("cam-toggle").addEventListener("change", toggleCam);
  $("mask-only").addEventListener("change", () => dense && drawDense());
  $("threshold").addEventListener("change", () => dense && dense.file && classify(dense.file));
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (e) => classify(e.dataTransfer.files[0]));
  loadInfo();
});
