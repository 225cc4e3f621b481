"""Output: markdown tables (stdout and ``RESULTS.md``), ``results.json`` and ``ratios.png``.

Ratios are scratchnet/torch throughput (or torch time / scratchnet time for ops): above 1
means scratchnet is faster. The report opens with a headline table (numba against torch)
that the README embeds; every table is rendered from ``results.json``, so

    python -m benchmarks.report          # benchmarks/RESULTS.md from the published results

re-renders the published report without measuring anything.
"""
import argparse
import json
import os

import numpy as np

BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
PUBLISHED = os.path.join(BENCHMARKS, "results")
PUBLISHED_REPORT = os.path.join(BENCHMARKS, "RESULTS.md")
HEADLINE = "Headline: numba backend against torch on the CPU"

SHORT = {"scratchnet-numba": "numba", "scratchnet-numpy": "numpy", "torch-cpu": "torch",
         "torch-cuda": "torch-cuda"}


def _num(v, digits=0):
    return "—" if v is None else f"{v:,.{digits}f}"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _ratio(r):
    return "—" if r is None else f"{r['median']:.2f}× ({r['min']:.2f}–{r['max']:.2f})"


def _machine(res):
    m, t = res["machine"], res["machine"]["threads"]
    peak = res.get("gemm_peak")
    lines = [
        f"Machine: {m['cpu']}, {m['cores_available']} cores available; Python {m['python']}, "
        f"NumPy {m['numpy']}, Numba {m['numba']} ({m['numba_threading_layer']}), "
        f"torch {m['torch']}" + (f", GPU {m['cuda_device']}" if m.get("cuda_device") else "") + ".",
        f"Threads: Numba {t['numba']}, torch {t['torch_intra_op']} (interop "
        f"{t['torch_interop']}), OpenBLAS {t['openblas_while_numba_runs']} under the numba "
        f"backend and {t['openblas_while_numpy_runs']} under the numpy backend.",
    ]
    if peak:
        lines.append(f"float32 GEMM peak: {peak['gflops']:.0f} GFLOP/s (numpy sgemm "
                     f"{peak['size']}², {peak['threads']} threads).")
    s = res["settings"]
    if s.get("date"):
        lines.insert(0, f"Run: {s['date']}, `{s['command'].strip()}`.")
    if any("train" in m for m in res["models"].values()):
        lines.append(f"Throughput: median of {s['rounds']} interleaved rounds "
                     f"(~{s['round_seconds']} s each) after warm-up; JIT compile time "
                     f"excluded (see its own table). "
                     f"Ratio: median over rounds of scratchnet/torch-cpu throughput in the same "
                     f"round (range in brackets); above 1 means scratchnet is faster. Each "
                     f"backend runs its rounds paired with torch alone (the per-op timings "
                     f"too); torch's column is its pairing with numba.")
    return "\n".join("- " + line for line in lines)


def _throughput(res, part, sides):
    peak = (res.get("gemm_peak") or {}).get("gflops")
    scratch = [s for s in sides if s in ("scratchnet-numba", "scratchnet-numpy")]
    header = ["model", "batch"] + [f"{SHORT[s]} samples/s" for s in sides]
    header += [f"{SHORT[s]}/torch" for s in scratch] + [f"{SHORT[s]} GFLOP/s" for s in sides]
    rows = []
    for name, m in res["models"].items():
        if part not in m:
            continue
        batch = m["batch_size"] if part == "train" else m["inference_batch"]
        row = [name, batch]
        row += [_num(m[part][s]["median"]) if s in m[part] else "refused" if s in m["refused"]
                else "—" for s in sides]
        row += [_ratio(m["ratios"][part].get(s)) for s in scratch]
        for s in sides:
            g = m["gflops"][part].get(s)
            # the peak is the CPU's: a GPU's GFLOP/s is shown without a percentage
            on_cpu = g is not None and peak and s != "torch-cuda"
            pct = f" ({100 * g / peak:.0f} %)" if on_cpu else ""
            row.append("—" if g is None else f"{g:.1f}{pct}")
        rows.append(row)
    return _table(header, rows)


def _input_note(res):
    """A line saying which models' inference inputs hold exact zeros; None when none does."""
    shares = {name: m["input_nonzero"]["infer"] for name, m in res["models"].items()
              if "input_nonzero" in m}
    sparse = {name: share for name, share in shares.items() if share < 1}
    if not sparse:
        return None
    listed = ", ".join(f"{name} {100 * share:.0f} %" for name, share in sparse.items())
    others = " (every other model's: 100 %)" if len(sparse) < len(shares) else ""
    return (f"Nonzero share of the inference input: {listed}{others}; those models read "
            f"pixels in [0, 1], where MNIST's background is exactly 0. The per-op table times "
            f"mlp128's first layer on both kinds of input.")


def _parity(res):
    rows = []
    for name, m in res["models"].items():
        for side, p in m.get("parity", {}).items():
            if "loss_rel_error" in p:
                rows.append([name, SHORT[side], f"{p['loss_rel_error']:.1e}",
                             f"{p['max_grad_rel_error']:.1e} ({p['worst_parameter']})",
                             "ok" if p["ok"] else "REFUSED"])
            else:
                rows.append([name, SHORT[side], "—", "—", f"REFUSED: {p['reason']}"])
    return _table(["model", "backend", "loss rel. error", "max grad rel. error", "speed reported"],
                  rows)


def _ops(res):
    impls = [i for i in ("numba", "numpy", "torch") if any(i in c["timings"] for c in res["ops"])]
    header = ["op", "where"] + [f"{i} fwd / bwd ms" for i in impls]
    header += [f"{i} speed-up fwd / bwd" for i in impls if i != "torch"]
    rows = []
    for c in res["ops"]:
        row = [c["op"], c["where"]]
        for i in impls:
            t = c["timings"].get(i, {})
            row.append(f"{t['forward']['median_ms']:.3f} / {t['backward']['median_ms']:.3f}"
                       if "forward" in t else t.get("error", "—"))
        for i in impls:
            if i != "torch":
                r = c["speedup_vs_torch"].get(i)
                row.append(f"{r['forward']:.2f}× / {r['backward']:.2f}×" if r else "—")
        rows.append(row)
    return _table(header, rows)


def _jit(res):
    rows = []
    for name, m in res["models"].items():
        j = m.get("jit")
        if not j:
            continue
        cold, warm = j["cold"], j["warm"]
        if "error" in cold or "error" in warm:
            rows.append([name, cold.get("error", ""), warm.get("error", ""), "—", "—"])
            continue
        rows.append([name, f"{cold['first_step_s']:.2f}", f"{warm['first_step_s']:.2f}",
                     f"{1e3 * warm['steady_step_s']:.1f}", f"{cold['import_s']:.2f}"])
    return _table(["model", "first step, cold cache (s)", "first step, warm cache (s)",
                   "steady step (ms)", "import scratchnet (s)"], rows)


def _memory(res):
    rows = []
    for name, m in res["models"].items():
        for side, r in (m.get("memory") or {}).items():
            if "error" in r:
                rows.append([name, SHORT[side], r["error"], "—", "—", "—"])
                continue
            rows.append([name, SHORT[side], _num(r.get("peak_rss_mb")),
                         _num(r.get("training_growth_mb"), 1),
                         _num(r.get("numpy_traced_peak_mb"), 1),
                         _num(r.get("cuda_max_allocated_mb"), 1)])
    return _table(["model", "side", "peak RSS in training (MB)", "growth over setup (MB)",
                   "NumPy traced peak (MB)", "CUDA max allocated (MB)"], rows)


def _tta(res):
    t = res["time_to_accuracy"]
    rows = [[SHORT[s], f"{r['seconds']:.1f}", _num(r["samples_per_s"]),
             f"{100 * r['test_accuracy']:.2f} %", r["steps"]] for s, r in t["sides"].items()]
    return (t["description"] + "\n\n"
            + _table(["side", "wall time (s)", "samples/s", "test accuracy", "steps"], rows))


def _headline(res):
    """One row per model: numba's training and inference throughput as a multiple of torch's,
    and the first step's wait on a cold and a warm kernel cache."""
    rows = []
    for name, m in res["models"].items():
        ratios = m.get("ratios", {})
        jit = m.get("jit") or {}
        cold, warm = jit.get("cold", {}), jit.get("warm", {})
        rows.append([name, _short_ratio(ratios.get("train", {}).get("scratchnet-numba")),
                     _short_ratio(ratios.get("infer", {}).get("scratchnet-numba")),
                     f"{cold['first_step_s']:.1f} s" if "first_step_s" in cold else "—",
                     f"{warm['first_step_s']:.1f} s" if "first_step_s" in warm else "—"])
    return _table(["model", "training speed vs torch", "inference speed vs torch",
                   "first step, cold cache", "first step, warm cache"], rows)


def _short_ratio(r):
    return "—" if r is None else f"{r['median']:.2f}×"


def _headline_note(res):
    m, t = res["machine"], res["machine"]["threads"]
    return (f"Median throughput of scratchnet's numba backend divided by torch {m['torch']}'s "
            f"on the same batches (above 1: scratchnet faster), {t['numba']} threads each, on "
            f"{m['cpu']} ({m['cores_available']} cores); the first step includes compiling "
            f"the kernels (cold cache) or loading them (warm cache).")


# the accuracy runs' tables, by file name: each gets its own section, so the README can embed it
ACCURACY_SECTIONS = {"accuracy.md": "Accuracy of full training runs (MNIST)",
                     "accuracy_multidigit.md": "Accuracy of full training runs (two-digit MNIST)"}


def _accuracy_tables(folder):
    """["## title", table] for each accuracy run table found in ``folder``; [] if none."""
    parts = []
    for name, title in ACCURACY_SECTIONS.items():
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                parts += [f"## {title}", f.read().strip()]
    return parts


def markdown(res, chart=None, accuracy=()):
    """Every table, as markdown (printed to stdout and written to RESULTS.md).

    chart: the path of ratios.png relative to the report, shown under the headline when
    given. accuracy: sections of full training runs' tables (see ACCURACY_SECTIONS), appended.
    """
    sides = res["settings"]["sides"]
    parts = ["# scratchnet benchmark results"]
    if any("ratios" in m for m in res["models"].values()) and "scratchnet-numba" in sides:
        parts += [f"## {HEADLINE}", _headline(res), _headline_note(res)]
    if chart:
        parts.append(f"![scratchnet/torch throughput per model]({chart})")
    parts += ["## Machine and method", _machine(res)]
    if res.get("notes"):
        parts.append("\n".join(f"- {n}" for n in res["notes"]))
    if any("train" in m for m in res["models"].values()):
        parts += ["## Training step throughput (tutorial batch size)",
                  _throughput(res, "train", sides),
                  "## Inference throughput (batch 1000)", _throughput(res, "infer", sides)]
        note = _input_note(res)
        parts += [note] if note else []
        parts += ["## Correctness guard (first batch, float32, vs torch)", _parity(res)]
    if res.get("ops"):
        parts += ["## Per-op time (median ms per call; speed-up = torch time / scratchnet "
                  "time, each backend paired with torch)", _ops(res)]
    if any(m.get("jit") for m in res["models"].values()):
        parts += ["## JIT compile time (numba backend, fresh process)", _jit(res)]
    if any(m.get("memory") for m in res["models"].values()):
        parts += ["## Memory of a training run (one fresh process per side)", _memory(res)]
    if res.get("time_to_accuracy", {}).get("sides"):
        parts += ["## Time to accuracy (one epoch)", _tta(res)]
    parts += list(accuracy)
    return "\n\n".join(parts) + "\n"


def _plain(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, (tuple, set)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def chart(res, path):
    """Bar chart of scratchnet/torch throughput ratios per model (training and inference)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scratch = [s for s in res["settings"]["sides"] if s.startswith("scratchnet")]
    models = [n for n, m in res["models"].items() if "ratios" in m]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    width = 0.8 / max(len(scratch), 1)
    titles = ("training step", "inference, batch 1000")
    tallest = 1.0
    for ax, part, title in zip(axes, ("train", "infer"), titles):
        for k, side in enumerate(scratch):
            rs = [res["models"][n]["ratios"][part].get(side) for n in models]
            med = [r["median"] if r else 0 for r in rs]
            err = [[r["median"] - r["min"] if r else 0 for r in rs],
                   [r["max"] - r["median"] if r else 0 for r in rs]]
            ax.bar(np.arange(len(models)) + (k - (len(scratch) - 1) / 2) * width, med, width,
                   yerr=err, capsize=3, label=SHORT[side])
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_xticks(np.arange(len(models)), models, rotation=30, ha="right")
        ax.set_title(title)
        tallest = max(tallest, max(r["median"] for rs in [
            [res["models"][n]["ratios"][part].get(side) for n in models] for side in scratch]
            for r in rs if r))
    axes[0].set_ylabel("throughput / torch CPU (>1: scratchnet faster)")
    # the medians set the scale: one noisy round's whisker would flatten every bar
    axes[0].set_ylim(0, tallest * 1.45)  # headroom for the legend
    axes[0].legend(loc="upper left", ncol=len(scratch))
    threads = res["machine"]["threads"]["requested"]
    fig.suptitle(f"scratchnet vs torch {res['machine']['torch']} on {res['machine']['cpu']}, "
                 f"threads: {threads}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(res, out_dir, report_path=None, accuracy_dir=None):
    """results.json and (when any model was timed) ratios.png in ``out_dir``, and the report.

    report_path: where the markdown goes (default ``out_dir/RESULTS.md``; a published run
    writes ``benchmarks/RESULTS.md``). accuracy_dir: a folder whose ``accuracy*.md`` tables
    the report includes. Returns (markdown text, {"json", "markdown", "chart"?: path}).
    """
    os.makedirs(out_dir, exist_ok=True)
    report_path = report_path or os.path.join(out_dir, "RESULTS.md")
    paths = {"json": os.path.join(out_dir, "results.json"), "markdown": report_path}
    with open(paths["json"], "w") as f:
        json.dump(res, f, indent=1, default=_plain)
    chart_link = None
    if any("ratios" in m for m in res["models"].values()):
        paths["chart"] = os.path.join(out_dir, "ratios.png")
        chart(res, paths["chart"])
        chart_link = os.path.relpath(paths["chart"], os.path.dirname(os.path.abspath(report_path)))
    accuracy = _accuracy_tables(accuracy_dir) if accuracy_dir else ()
    text = markdown(res, chart=chart_link, accuracy=accuracy)
    with open(report_path, "w", encoding="utf-8") as f:
        f.write(text)
    return text, paths


def published_markdown():
    """What benchmarks/RESULTS.md should say: the report of benchmarks/results/results.json,
    its chart, and the accuracy tables in benchmarks/results/accuracy."""
    with open(os.path.join(PUBLISHED, "results.json"), encoding="utf-8") as f:
        res = json.load(f)
    chart_link = None
    if os.path.isfile(os.path.join(PUBLISHED, "ratios.png")):
        chart_link = os.path.relpath(os.path.join(PUBLISHED, "ratios.png"), BENCHMARKS)
    return markdown(res, chart=chart_link,
                    accuracy=_accuracy_tables(os.path.join(PUBLISHED, "accuracy")))


def render_published():
    """Re-render benchmarks/RESULTS.md from benchmarks/results/results.json (no measuring)."""
    with open(PUBLISHED_REPORT, "w", encoding="utf-8") as f:
        f.write(published_markdown())
    return PUBLISHED_REPORT


if __name__ == "__main__":
    argparse.ArgumentParser(prog="python -m benchmarks.report",
                            description=render_published.__doc__).parse_args()
    print(f"wrote {render_published()}")
