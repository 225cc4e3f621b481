// The draw page: a canvas, the network's answer, and what every layer made of the drawing.
"use strict";

(() => {
  const { api, el, bytes, pixelCanvas } = Studio;
  const canvas = document.getElementById("draw-canvas");
  const ctx = canvas.getContext("2d");
  const predictionBox = document.getElementById("prediction");
  const layersBox = document.getElementById("activations");
  const errorBox = document.getElementById("error");
  const seen = document.getElementById("seen-canvas");
  let run = null, twoDigit = false, inked = false, drawing = false, last = null, sequence = 0;

  function clearCanvas() {
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    inked = false;
  }

  function resetResults() {
    predictionBox.removeAttribute("data-digit");
    predictionBox.innerHTML = "";
    predictionBox.append(el("p", { class: "empty", text: twoDigit
      ? "Draw two digits, one above the other, to see what the network reads."
      : "Draw a digit to see what the network thinks it is." }));
    seen.getContext("2d").clearRect(0, 0, seen.width, seen.height);
    errorBox.textContent = "";
  }

  function setShape(two) {
    twoDigit = two;
    // two-digit models read 42 rows x 28 columns: the canvas keeps that 3:2 shape
    canvas.width = two ? 240 : 280;
    canvas.height = two ? 360 : 280;
    seen.width = two ? 140 : 168;
    seen.height = two ? 210 : 168;
    document.getElementById("draw-title").textContent = two ? "Draw two digits, one above the other" : "Draw a digit";
    document.getElementById("seen-hint").innerHTML = two
      ? "42 × 28: both digits centred and scaled<br>as the two-digit training images are"
      : "28 × 28, centred and scaled<br>as MNIST was (as <code>scratchnet predict</code> does)";
    clearCanvas();
    resetResults();
  }

  function point(event) {
    const box = canvas.getBoundingClientRect();
    return [(event.clientX - box.left) * canvas.width / box.width,
            (event.clientY - box.top) * canvas.height / box.height];
  }

  function stroke(from, to) {
    ctx.strokeStyle = "#111";
    ctx.lineWidth = canvas.width / 12;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(from[0], from[1]);
    ctx.lineTo(to[0], to[1]);
    ctx.stroke();
    inked = true;
  }

  canvas.addEventListener("pointerdown", (event) => {
    event.preventDefault();
    canvas.setPointerCapture(event.pointerId);
    drawing = true;
    last = point(event);
    stroke(last, last);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!drawing) return;
    const p = point(event);
    stroke(last, p);
    last = p;
  });
  const endStroke = () => {
    if (!drawing) return;
    drawing = false;
    predictCanvas();
  };
  canvas.addEventListener("pointerup", endStroke);
  canvas.addEventListener("pointercancel", endStroke);
  canvas.addEventListener("lostpointercapture", endStroke);

  document.getElementById("clear").addEventListener("click", () => {
    sequence++;  // an answer still on its way is for a drawing that is gone
    clearCanvas();
    resetResults();
    renderLayers(null);
  });

  document.getElementById("upload").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    event.target.value = "";
    if (!file || !run) return;
    showUpload(file);
    await predict(file, file.type || "application/octet-stream");
  });

  // a random digit of the test set, drawn dark on white as a person would, then read like one
  document.getElementById("test-digit").addEventListener("click", async () => {
    if (!run) return;
    errorBox.textContent = "";
    try {
      const { samples } = await api(`/api/runs/${run.id}/test-digits`);
      const sample = samples[Math.floor(Math.random() * samples.length)];
      const [h, w] = sample.image.shape;
      const values = bytes(sample.image.data).map((v) => 255 - v);
      const picture = pixelCanvas(values, 0, h, w, 1, "gray");
      clearCanvas();
      ctx.imageSmoothingEnabled = true;
      ctx.drawImage(picture, 0, 0, canvas.width, canvas.height);
      inked = true;
      predictCanvas();
    } catch (error) {
      errorBox.textContent = error.message;
    }
  });

  function showUpload(file) {
    const url = URL.createObjectURL(file);
    const img = new Image();
    img.onload = () => {
      clearCanvas();
      const scale = Math.min(canvas.width / img.width, canvas.height / img.height);
      const w = img.width * scale, h = img.height * scale;
      ctx.drawImage(img, (canvas.width - w) / 2, (canvas.height - h) / 2, w, h);
      URL.revokeObjectURL(url);
    };
    img.src = url;
  }

  function predictCanvas() {
    if (!run || !inked) return;
    canvas.toBlob((blob) => predict(blob, "image/png"), "image/png");
  }

  async function predict(body, type) {
    const mine = ++sequence;
    errorBox.textContent = "";
    try {
      const result = await api(`/api/runs/${run.id}/predict`, {
        method: "POST", headers: { "Content-Type": type }, body });
      if (mine !== sequence) return;
      renderPrediction(result);
      renderSeen(result.image);
      renderLayers(result);
    } catch (error) {
      if (mine === sequence) errorBox.textContent = error.message;
    }
  }

  function renderPrediction(result) {
    predictionBox.innerHTML = "";
    predictionBox.setAttribute("data-digit", result.digits.join(""));
    const heads = el("div", { class: "heads" });
    result.probabilities.forEach((probs, h) => {
      const digit = result.digits[h];
      const head = el("div", { class: "head", "data-testid": "prediction-head", "data-digit": String(digit) });
      if (result.digits.length > 1) head.append(el("div", { class: "which", text: h === 0 ? "top digit" : "bottom digit" }));
      head.append(el("div", { class: "top-guess" },
        el("span", { class: "big-digit", text: String(digit) }),
        el("span", { class: "confidence", text: `${(probs[digit] * 100).toFixed(1)}% sure` })));
      const bars = el("div", { class: "bars" });
      probs.forEach((p, c) => {
        const fill = el("div", { class: c === digit ? "fill best" : "fill" });
        fill.style.width = `${Math.max(p * 100, 0.5)}%`;
        bars.append(el("span", { class: "label", text: String(c) }),
                    el("div", { class: "track", "data-testid": "probability", "data-class": String(c), "data-value": p.toFixed(6) }, fill),
                    el("span", { class: "value", text: `${(p * 100).toFixed(1)}%` }));
      });
      head.append(bars);
      heads.append(head);
    });
    predictionBox.append(heads);
  }

  function renderSeen(image) {
    const [h, w] = image.shape;
    const small = pixelCanvas(bytes(image.data), 0, h, w, 1, "gray");
    const c = seen.getContext("2d");
    c.imageSmoothingEnabled = false;
    c.drawImage(small, 0, 0, seen.width, seen.height);
  }

  function mapScale(h, w, count) {
    return Math.max(1, (count <= 16 ? 72 : 52) / Math.max(h, w));  // few maps: bigger ones
  }

  function layerBlock(entry, tagText, tagClass, subtitle) {
    const block = el("div", { class: "layer", "data-testid": "layer", "data-layer": entry.name || entry.type });
    block.append(el("div", { class: "layer-title" },
      el("span", { class: "tag" + (tagClass ? " " + tagClass : ""), text: tagText }),
      el("h3", { text: entry.name ? `${entry.name}: ${entry.description}` : entry.description }),
      el("span", { class: "shape", text: subtitle })));
    return block;
  }

  function renderMaps(entry, maps, h, w, colourMap) {
    const values = bytes(entry.data);
    const box = el("div", { class: "maps" });
    const scale = mapScale(h, w, maps);
    for (let i = 0; i < maps; i++) {
      const c = pixelCanvas(values, i * h * w, h, w, scale, colourMap);
      c.setAttribute("data-testid", "feature-map");
      c.title = `channel ${i}`;
      box.append(c);
    }
    return box;
  }

  function renderVector(entry) {
    const values = bytes(entry.data);
    const n = values.length;
    const cols = n <= 32 ? n : n <= 256 ? 32 : 64;
    const rows = Math.ceil(n / cols);
    const cell = n <= 32 ? 22 : n <= 256 ? 13 : 8;
    const padded = new Uint8Array(rows * cols);
    padded.set(values);
    const c = pixelCanvas(padded, 0, rows, cols, cell, "viridis");
    c.setAttribute("data-testid", "feature-map");
    c.title = `${n} values`;
    const box = el("div", { class: "vector" }, c);
    if (n % 10 === 0 && n <= 20) {  // class scores: name each cell by its digit
      const labels = el("div", { class: "cell-labels" });
      for (let i = 0; i < n; i++) {
        const label = el("span", { text: String(i % 10) });
        label.style.width = `${cell}px`;
        labels.append(label);
      }
      box.append(labels);
    }
    return box;
  }

  function range(entry) {
    return `range ${entry.min.toPrecision(3)} … ${entry.max.toPrecision(3)}`;
  }

  function renderLayers(result) {
    layersBox.innerHTML = "";
    if (!result) {
      layersBox.append(el("p", { class: "empty", text: "The layers' activations appear here once the network has seen a digit." }));
      return;
    }
    if (result.filters) {
      const f = result.filters;
      const [n, h, w] = f.shape;
      const what = h * w === result.image.shape[0] * result.image.shape[1] ? "weights as images" : "filters";
      const block = layerBlock(f, `first layer's ${what}`, "filters",
        `${n} × ${h} × ${w} · blue negative, red positive`);
      block.setAttribute("data-testid", "filters");
      block.append(renderMaps(f, n, h, w, "diverging"));
      layersBox.append(block);
    }
    for (const entry of result.activations) {
      const shape = entry.shape.join(" × ");
      const block = layerBlock(entry, entry.type, "", `${shape} · ${range(entry)}`);
      if (entry.kind === "maps") {
        const [c, h, w] = entry.shape;
        block.append(renderMaps(entry, c, h, w, "viridis"));
      } else {
        block.append(renderVector(entry));
      }
      layersBox.append(block);
    }
  }

  async function chooseRun(chosen) {
    run = chosen;
    checkpointTime = null;
    if (!run) {
      errorBox.textContent = "No checkpoint found: train a model first (scratchnet train --model lenet).";
      return;
    }
    const modelName = document.getElementById("model-name");
    try {
      const detail = await api(`/api/runs/${run.id}`);
      const info = detail.model_info;
      if (!info) throw new Error(detail.model_error || "this run has no model yet");
      modelName.textContent = `${info.model} · ${info.parameters.toLocaleString()} parameters`;
      const wasInked = inked;
      if (info.two_digit !== twoDigit || !wasInked) setShape(info.two_digit);
      else predictCanvas();
    } catch (error) {
      modelName.textContent = "";
      errorBox.textContent = error.message;
    }
  }

  // while a run trains, its checkpoint changes every epoch: answer again with the new weights
  let checkpointTime = null;
  setInterval(async () => {
    if (!run || document.hidden) return;
    try {
      const detail = await api(`/api/runs/${run.id}`);
      if (checkpointTime !== null && detail.checkpoint_mtime !== checkpointTime) predictCanvas();
      checkpointTime = detail.checkpoint_mtime;
    } catch (error) { /* the next tick tries again */ }
  }, 5000);

  setShape(false);
  Studio.runChooser(document.getElementById("run-select"), (r) => r.has_checkpoint, chooseRun)
    .catch((error) => { errorBox.textContent = error.message; });
})();
