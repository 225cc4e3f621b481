// Shared by both pages: the API, the run chooser, colour maps and a small line chart.
"use strict";

const Studio = (() => {
  async function api(path, options) {
    const response = await fetch(path, options);
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (!response.ok) {
      const message = body && body.error ? body.error : `${response.status} ${response.statusText}`;
      throw new Error(message);
    }
    return body;
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("data-") || k === "title" || k === "id") node.setAttribute(k, v);
      else node[k] = v;
    }
    for (const child of children) if (child != null) node.append(child);
    return node;
  }

  function bytes(b64) {
    const raw = atob(b64);
    const out = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
    return out;
  }

  // viridis at 9 stops, interpolated: dark purple (low) to yellow (high)
  const VIRIDIS = [[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
                   [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]];
  function colourTable(stops) {
    const table = new Uint8Array(256 * 3);
    for (let v = 0; v < 256; v++) {
      const t = v / 255 * (stops.length - 1), i = Math.min(Math.floor(t), stops.length - 2), f = t - i;
      for (let c = 0; c < 3; c++) table[v * 3 + c] = Math.round(stops[i][c] * (1 - f) + stops[i + 1][c] * f);
    }
    return table;
  }
  const MAPS = {
    gray: colourTable([[0, 0, 0], [255, 255, 255]]),
    viridis: colourTable(VIRIDIS),
    // filters: blue for negative weights, near-white for zero, orange-red for positive
    diverging: colourTable([[33, 102, 172], [146, 197, 222], [247, 247, 247], [244, 165, 130], [178, 24, 43]]),
  };

  // Paint h x w uint8 values (from offset) into a new canvas, each pixel scale x scale.
  function pixelCanvas(values, offset, h, w, scale, map) {
    const table = MAPS[map || "gray"];
    const small = document.createElement("canvas");
    small.width = w; small.height = h;
    const ctx = small.getContext("2d");
    const img = ctx.createImageData(w, h);
    for (let i = 0; i < h * w; i++) {
      const v = values[offset + i];
      img.data[4 * i] = table[3 * v]; img.data[4 * i + 1] = table[3 * v + 1];
      img.data[4 * i + 2] = table[3 * v + 2]; img.data[4 * i + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    const canvas = document.createElement("canvas");
    canvas.width = Math.round(w * scale); canvas.height = Math.round(h * scale);
    const big = canvas.getContext("2d");
    big.imageSmoothingEnabled = false;
    big.drawImage(small, 0, 0, canvas.width, canvas.height);
    return canvas;
  }

  function query(name) { return new URLSearchParams(location.search).get(name); }

  // Fill the header's run chooser; calls onChange(run) now and whenever the choice changes.
  // Fills the run <select> with the runs that pass filter and calls onChange(run, runs) with
  // the chosen one (null while there are none). The list is fetched again every refreshMs, so
  // runs started after the page opened appear, and each option's status stays current.
  async function runChooser(select, filter, onChange, refreshMs = 5000) {
    let usable = [], chosen = null;
    const label = (run) => {
      const bits = [run.name];
      if (run.model && !run.name.includes(run.model)) bits.push(run.model);
      if (run.status) bits.push(run.status);
      return bits.join(" · ");
    };
    const choose = (runs) => {
      const run = usable.find((r) => r.id === chosen);
      const url = new URL(location.href);
      url.searchParams.set("run", run.id);
      history.replaceState(null, "", url);
      for (const a of document.querySelectorAll("header nav a")) {
        const link = new URL(a.href);
        link.searchParams.set("run", run.id);
        a.href = link;
      }
      onChange(run, runs);
    };
    async function refresh(first) {
      let runs;
      try {
        ({ runs } = await api("/api/runs"));
      } catch (error) {
        if (first) throw error;
        return;  // the server may be restarting: try again next time
      }
      usable = runs.filter(filter);
      if (!usable.length) {
        if (first || chosen !== null) {
          select.innerHTML = "";
          select.append(el("option", { text: "no runs found", value: "" }));
          select.disabled = true;
          chosen = null;
          onChange(null, runs);
        }
        return;
      }
      select.disabled = false;
      const ids = new Set(usable.map((r) => r.id));
      for (const option of [...select.options]) if (!ids.has(option.value)) option.remove();
      usable.forEach((run, i) => {  // update in place: an open dropdown stays open
        let option = [...select.options].find((o) => o.value === run.id);
        if (!option) {
          option = el("option", { value: run.id, text: label(run) });
          select.insertBefore(option, select.options[i] || null);
        } else if (option.text !== label(run)) option.text = label(run);
      });
      if (chosen !== null && ids.has(chosen)) {
        select.value = chosen;
        return;
      }
      const wanted = query("run");
      chosen = ids.has(wanted) ? wanted : usable[0].id;
      select.value = chosen;
      choose(runs);
    }
    select.addEventListener("change", () => {
      chosen = select.value;
      choose(usable);
    });
    await refresh(true);
    setInterval(refresh, refreshMs);
  }

  function niceTicks(lo, hi, count) {
    const span = hi - lo || 1;
    const step0 = span / count, mag = Math.pow(10, Math.floor(Math.log10(step0)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= step0);
    const ticks = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(+v.toFixed(10));
    return ticks;
  }

  // ticks for a log10 axis from y0 to y1 (in log10 units): 1-2-5 steps when the range is small
  function logTicks(y0, y1) {
    const steps = y1 - y0 < 2.5 ? [1, 2, 5] : [1];
    const ticks = [];
    for (let k = Math.floor(y0); k <= Math.ceil(y1); k++) {
      for (const m of steps) {
        const t = k + Math.log10(m);
        if (t >= y0 && t <= y1) ticks.push(t);
      }
    }
    return ticks;
  }

  // series: [{name, colour, points: [[x, y]], width, dots, faint}]; options: {yLabel, xLabel,
  // percent, log, yMin, yMax}
  function lineChart(canvas, series, options) {
    const opts = options || {};
    const dpr = window.devicePixelRatio || 1;
    const W = canvas.clientWidth, H = canvas.clientHeight;
    canvas.width = W * dpr; canvas.height = H * dpr;
    const ctx = canvas.getContext("2d");
    ctx.scale(dpr, dpr);
    ctx.clearRect(0, 0, W, H);
    const pad = { l: 52, r: 14, t: 10, b: 34 };
    const f = opts.log ? (v) => Math.log10(v) : (v) => v;
    const all = series.flatMap((s) => s.points).filter((p) => p[1] != null && isFinite(p[1]) && (!opts.log || p[1] > 0));
    ctx.font = "12px system-ui, sans-serif";
    if (!all.length) {
      ctx.fillStyle = "#6a7282";
      ctx.textAlign = "center";
      ctx.fillText(opts.empty || "no data yet", W / 2, H / 2);
      return;
    }
    let x0 = Math.min(0, ...all.map((p) => p[0])), x1 = Math.max(...all.map((p) => p[0]));
    if (opts.xMax) x1 = Math.max(x1, opts.xMax);
    if (x1 <= x0) x1 = x0 + 1;
    let y0 = opts.yMin != null ? opts.yMin : Math.min(...all.map((p) => f(p[1])));
    let y1 = opts.yMax != null ? opts.yMax : Math.max(...all.map((p) => f(p[1])));
    if (y1 - y0 < 1e-9) { y0 -= 0.5; y1 += 0.5; }
    const margin = (y1 - y0) * 0.06;
    if (opts.yMin == null) y0 -= margin;
    if (opts.yMax == null) y1 += margin;
    const X = (x) => pad.l + (x - x0) / (x1 - x0) * (W - pad.l - pad.r);
    const Y = (y) => H - pad.b - (f(y) - y0) / (y1 - y0) * (H - pad.t - pad.b);
    const Yraw = (v) => H - pad.b - (v - y0) / (y1 - y0) * (H - pad.t - pad.b);
    ctx.strokeStyle = "#e3e6ee"; ctx.fillStyle = "#6a7282"; ctx.lineWidth = 1;
    ctx.textAlign = "right"; ctx.textBaseline = "middle";
    const yTicks = opts.log ? logTicks(y0, y1) : niceTicks(y0, y1, 5);
    for (const t of yTicks) {
      const y = Yraw(t);
      ctx.beginPath(); ctx.moveTo(pad.l, y); ctx.lineTo(W - pad.r, y); ctx.stroke();
      const label = opts.log ? `${+Math.pow(10, t).toPrecision(2)}` : opts.percent ? `${(t * 100).toFixed(t * 100 % 1 ? 1 : 0)}%` : `${+t.toPrecision(3)}`;
      ctx.fillText(label, pad.l - 6, y);
    }
    ctx.textAlign = "center"; ctx.textBaseline = "top";
    for (const t of niceTicks(x0, x1, Math.min(8, Math.max(1, Math.round(x1 - x0)) * 2))) {
      ctx.fillText(`${+t.toPrecision(3)}`, X(t), H - pad.b + 5);
    }
    ctx.fillText(opts.xLabel || "epoch", pad.l + (W - pad.l - pad.r) / 2, H - 15);
    ctx.save();
    ctx.beginPath(); ctx.rect(pad.l - 5, pad.t - 5, W - pad.l - pad.r + 10, H - pad.t - pad.b + 10); ctx.clip();
    for (const s of series) {
      const pts = s.points.filter((p) => p[1] != null && isFinite(p[1]) && (!opts.log || p[1] > 0));
      ctx.strokeStyle = s.colour; ctx.fillStyle = s.colour;
      ctx.globalAlpha = s.faint ? 0.45 : 1;
      if (s.width !== 0 && pts.length > 1) {
        ctx.lineWidth = s.width || 2; ctx.lineJoin = "round";
        ctx.beginPath();
        pts.forEach((p, i) => (i ? ctx.lineTo(X(p[0]), Y(p[1])) : ctx.moveTo(X(p[0]), Y(p[1]))));
        ctx.stroke();
      }
      if (s.dots || pts.length === 1) {
        for (const p of pts) { ctx.beginPath(); ctx.arc(X(p[0]), Y(p[1]), 3.5, 0, 2 * Math.PI); ctx.fill(); }
      }
    }
    ctx.restore();
    ctx.globalAlpha = 1;
  }

  function legend(container, series) {
    container.innerHTML = "";
    for (const s of series) {
      if (!s.points.length) continue;
      const swatch = el("i");
      swatch.style.background = s.colour;
      if (s.faint) swatch.style.opacity = 0.45;
      container.append(el("span", {}, swatch, s.name));
    }
  }

  function duration(seconds) {
    if (seconds == null || !isFinite(seconds)) return "–";
    seconds = Math.round(seconds);
    const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
    return h ? `${h} h ${m} min` : m ? `${m} min ${s} s` : `${s} s`;
  }

  return { api, el, bytes, pixelCanvas, runChooser, lineChart, legend, duration, query };
})();
