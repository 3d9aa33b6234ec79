// convnext serve: the page. Plain JavaScript, no build step: pick or drop an image, POST it to /v1/predict,
// draw the top-5 (or every class, for a model with fewer) as bars; the Grad-CAM toggle asks the server for
// the heat map of the top class. An error replaces the previous result: no old bars beside a new error.
"use strict";

const $ = (id) => document.getElementById(id);
const TOPK = 5;
let current = null; // {file, result, camResult}
let maxUploadBytes = Infinity; // from /v1/model: a file over it is refused here, without uploading it
let numClasses = null; // from /v1/model: a 2-class fine-tune shows 2 bars, not an error about topk=5
let latest = 0; // the newest upload: an older answer that arrives late is dropped
let photoUrl = null;

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

function clearResult() {
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
        $("model-info").textContent =
          `${info.model} · ${info.num_classes} classes · ${info.backend} ${info.precision} on ${info.device} · ` +
          `${info.preprocessing.img_size} px`;
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
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (e) => classify(e.dataTransfer.files[0]));
  loadInfo();
});
