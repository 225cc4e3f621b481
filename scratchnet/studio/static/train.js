// The training page: a run's curves, norms, progress and test digits, following events.jsonl.
"use strict";

(() => {
  const { api, el, bytes, pixelCanvas, lineChart, legend, duration } = Studio;
  const COLOURS = { train: "#4a55d8", val: "#e8833a", test: "#1f9d55" };
  const PALETTE = ["#4a55d8", "#e8833a", "#1f9d55", "#d64545", "#8e5bd6", "#1aa3b8", "#c0a020", "#d45fa0"];
  const POLL_MS = 1000;
  const STALE_AFTER_S = 600;
  let state = null;

  function fresh(run) {
    return { run, cursor: 0, batches: [], epochs: new Map(), start: null, end: null,
             detail: null, count: 0, digitsFor: null, live: true };
  }

  async function chooseRun(run) {
    if (state) state.live = false;  // stops the previous run's polling loop
    if (!run) {
      document.getElementById("run-title").textContent = "No runs found";
      document.getElementById("run-config").textContent = "start one with: scratchnet train --model lenet";
      document.getElementById("test-digits").innerHTML = "";
      return;
    }
    state = fresh(run);
    const mine = state;
    try {
      mine.detail = await api(`/api/runs/${run.id}`);
    } catch (error) {
      document.getElementById("run-config").textContent = error.message;
    }
    for (const record of (mine.detail && mine.detail.history) || []) mine.epochs.set(record.epoch, record);
    render();
    loadDigits(mine);
    poll(mine);
  }

  async function poll(mine) {
    if (!mine.live) return;
    try {
      const answer = await api(`/api/runs/${mine.run.id}/events?since=${mine.cursor}`);
      if (!mine.live) return;
      let epochEnded = false;
      if (answer.next < mine.cursor) {  // the log was rewritten: read it again from the start
        Object.assign(mine, { batches: [], start: null, end: null, count: 0 });
      }
      mine.cursor = answer.next;
      mine.more = answer.more;
      for (const event of answer.events) {
        mine.count++;
        if (event.type === "start") { mine.start = event; mine.end = null; }
        else if (event.type === "batch") mine.batches.push(event);
        else if (event.type === "epoch") { mine.epochs.set(event.epoch, event); epochEnded = true; }
        else if (event.type === "end") { mine.end = event; epochEnded = true; }
      }
      if (answer.events.length) render();
      if (epochEnded) loadDigits(mine);
    } catch (error) {
      document.getElementById("run-config").textContent = error.message;
    }
    setTimeout(() => poll(mine), mine.more ? 0 : POLL_MS);
  }

  function status() {
    if (state.end) return state.end.status;
    if (state.start) {
      // no end event and silent for 10 minutes: the training process is gone
      const last = state.batches.length ? state.batches[state.batches.length - 1] : state.start;
      return Date.now() / 1000 - (last.time || 0) > STALE_AFTER_S ? "stale" : "running";
    }
    return (state.detail && state.detail.status) || "unknown";
  }

  function fmt(value, digits) {
    return value == null || !isFinite(value) ? "–" : (+value).toPrecision(digits || 3);
  }

  function render() {
    const s = state, d = s.detail || {}, config = (s.start && s.start.config) || d.config || {};
    const model = (s.start && s.start.model) || d.model || config.model || "";
    document.getElementById("run-title").textContent = `${s.run.name}`;
    const bits = [model];
    if (config.optimizer) bits.push(`${config.optimizer.toUpperCase()} lr ${config.lr}`);
    if (config.batch_size) bits.push(`batch ${config.batch_size}`);
    document.getElementById("run-config").textContent = bits.filter(Boolean).join(" · ");
    const badge = document.getElementById("run-status");
    badge.textContent = status();
    badge.className = `badge ${status()}`;
    document.getElementById("status").setAttribute("data-events", String(s.count));

    const last = s.batches[s.batches.length - 1];
    const epochs = (s.start && s.start.epochs) || d.epochs || config.epochs;
    const lastEpoch = Math.max(0, ...s.epochs.keys());
    const epoch = last ? last.epoch : lastEpoch || null;
    document.getElementById("epoch").textContent = epoch ? `${epoch} / ${epochs || "?"}` : "–";
    const finished = status() === "finished";
    if (last) {
      document.getElementById("batch").textContent = `${last.batch} / ${last.batches}`;
      document.getElementById("epoch-progress").style.width = `${100 * last.batch / last.batches}%`;
      document.getElementById("speed").textContent = last.samples_per_s != null ? `${Math.round(last.samples_per_s)} /s` : "–";
      document.getElementById("lr").textContent = fmt(last.lr);
    } else {
      document.getElementById("batch").textContent = "–";
      document.getElementById("epoch-progress").style.width = finished ? "100%" : "0";
      const rec = s.epochs.get(lastEpoch);
      document.getElementById("lr").textContent = rec ? fmt(rec.lr) : "–";
      document.getElementById("speed").textContent = rec && rec.samples_per_s ? `${Math.round(rec.samples_per_s)} /s` : "–";
    }
    document.getElementById("eta").textContent = finished ? "done"
      : status() === "running" && last ? duration(last.eta_s) : "–";
    renderCurves();
    renderNorms();
  }

  // at: where on the epoch axis a record's value belongs (its epoch's end, or its middle for
  // a mean over the epoch's batches)
  function epochSeries(key, at = 0) {
    return [...state.epochs.values()].sort((a, b) => a.epoch - b.epoch)
      .filter((r) => r[key] != null).map((r) => [r.epoch - at, r[key]]);
  }

  function curves(kind) {
    const batchPoints = state.batches.map((b) => [b.epoch - 1 + b.batch / b.batches, b[kind]]);
    const test = epochSeries(`test_${kind}`);
    const final = state.detail && state.detail.test && state.detail.test[`test_${kind}`];
    if (!test.length && final != null && state.epochs.size) test.push([Math.max(...state.epochs.keys()), final]);
    return [
      { name: "train (batches)", colour: COLOURS.train, points: batchPoints, width: 1.2, faint: true },
      { name: "train (epoch mean)", colour: COLOURS.train, points: epochSeries(`train_${kind}`, 0.5), dots: true },
      { name: "validation", colour: COLOURS.val, points: epochSeries(`val_${kind}`), dots: true },
      { name: "test", colour: COLOURS.test, points: test, dots: true },
    ];
  }

  function renderCurves() {
    const epochs = (state.start && state.start.epochs) || (state.detail && state.detail.epochs);
    const loss = curves("loss");
    lineChart(document.getElementById("loss-chart"), loss, { yMin: 0, xMax: epochs });
    legend(document.getElementById("loss-legend"), loss);
    const acc = curves("accuracy");
    const lowest = Math.min(1, ...acc.flatMap((s) => s.points.map((p) => p[1])).filter((v) => v != null));
    lineChart(document.getElementById("accuracy-chart"), acc,
      { percent: true, yMax: 1, yMin: Math.max(0, Math.floor(lowest * 10) / 10), xMax: epochs });
    legend(document.getElementById("accuracy-legend"), acc);
  }

  function renderNorms() {
    const box = document.getElementById("norms");
    const withNorms = state.batches.filter((b) => b.norms);
    const chartSeries = [];
    if (withNorms.length) {
      const names = Object.keys(withNorms[withNorms.length - 1].norms).filter((n) => n.endsWith("weight"));
      names.forEach((name, i) => chartSeries.push({
        name: name.replace(/\.weight$/, ""), colour: PALETTE[i % PALETTE.length], width: 1.6,
        points: withNorms.filter((b) => b.norms[name]).map((b) => [b.epoch - 1 + b.batch / b.batches, b.norms[name].grad]),
      }));
    }
    const noEvents = state.detail && !state.detail.has_events && !state.count;
    const epochs = (state.start && state.start.epochs) || (state.detail && state.detail.epochs);
    lineChart(document.getElementById("norm-chart"), chartSeries, {
      log: true, xMax: epochs, empty: noEvents ? "this run has no events.jsonl: only epoch records" : null });
    legend(document.getElementById("norm-legend"), chartSeries);
    if (!withNorms.length) return;
    const norms = withNorms[withNorms.length - 1].norms;
    const entries = Object.entries(norms);
    const maxW = Math.max(...entries.map(([, v]) => v.weight || 0)) || 1;
    const maxG = Math.max(...entries.map(([, v]) => v.grad || 0)) || 1;
    const table = el("table", { class: "norm-table" });
    table.append(el("tr", {}, el("th", { text: "parameter" }), el("th", { text: "weight" }), el("th", {}),
                    el("th", { text: "gradient" }), el("th", {})));
    for (const [name, v] of entries) {
      const wBar = el("div", { class: "norm-bar" });
      wBar.style.width = `${100 * (v.weight || 0) / maxW}%`;
      const gBar = el("div", { class: "norm-bar grad" });
      gBar.style.width = `${100 * (v.grad || 0) / maxG}%`;
      table.append(el("tr", {}, el("td", { class: "mono", text: name }),
        el("td", { class: "num", text: fmt(v.weight) }), el("td", { style: "width:25%" }, wBar),
        el("td", { class: "num", text: fmt(v.grad) }), el("td", { style: "width:25%" }, gBar)));
    }
    box.innerHTML = "";
    box.append(table);
  }

  async function loadDigits(mine) {
    const box = document.getElementById("test-digits");
    const summary = document.getElementById("digits-summary");
    let result;
    try {
      result = await api(`/api/runs/${mine.run.id}/test-digits`);
    } catch (error) {
      if (mine !== state) return;
      box.innerHTML = "";
      box.append(el("p", { class: "empty", text: error.message }));
      return;
    }
    if (mine !== state) return;
    summary.textContent = `${(result.accuracy * 100).toFixed(1)} % right on ${result.evaluated} test digits; ` +
      `${result.misclassified} mistakes first, in red: predicted (true)`;
    box.innerHTML = "";
    for (const sample of result.samples) {
      const [h, w] = sample.image.shape;
      const c = pixelCanvas(bytes(sample.image.data), 0, h, w, 1.5, "gray");
      const pred = el("div", { class: "pred" });
      pred.append(sample.predicted.join(""));
      if (!sample.correct) pred.append(el("span", { class: "true", text: ` (${sample.label.join("")})` }));
      const tops = sample.top.map((head) => head.map(([c, p]) => `${c}: ${(p * 100).toFixed(1)}%`).join(", "));
      box.append(el("div", {
        class: sample.correct ? "digit" : "digit wrong", "data-testid": "test-digit",
        "data-correct": String(sample.correct), title: `true ${sample.label.join("")}; top guesses ${tops.join(" | ")}`,
      }, c, pred));
    }
  }

  window.addEventListener("resize", () => state && render());
  Studio.runChooser(document.getElementById("run-select"), () => true, chooseRun)
    .catch((error) => { document.getElementById("run-config").textContent = error.message; });
})();
