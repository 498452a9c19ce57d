#!/usr/bin/env python3
"""Figures of a scaling sweep (scripts/scaling.sh) and of training runs.

    python3 scripts/plot_scaling.py --in OUT --out DIR [--prefix scaling-]
        [--metrics [LABEL=]RUN_DIR_OR_METRICS ...] [--cores N]

OUT is the sweep's directory (scaling.json, or scaling.csv; projection.csv for the projection).
Writes into DIR:
  PREFIXspeedup.png        speedup against the ideal, strong and weak scaling, per case
  PREFIXefficiency.png     parallel efficiency (speedup / N)
  PREFIXbreakdown.png      per N: compute, exposed communication, hidden (overlapped) communication
  PREFIXprojection.png     projected efficiency up to thousands of ranks per case and bucket size,
                           one row per network (measured, given), measured points overlaid
  PREFIXloss-time.png      training loss against wall time        (with --metrics)
  PREFIXloss-samples.png   training loss against samples seen     (with --metrics)
Ranks beyond --cores (default: the sweep's recorded core count) are shaded as oversubscribed.
Needs matplotlib (Agg backend, no display).
"""
import argparse
import csv
import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plot_metrics import load as load_metrics  # noqa: E402

MODES = ("strong", "weak")
LINESTYLES = ["-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1))]
DPI = 110


def number(v):
    if v is None or v == "":
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return v
    return int(x) if x.is_integer() and "." not in str(v) and "e" not in str(v).lower() else x


def read_csv(path):
    with open(path, newline="") as f:
        return [{k: number(v) if k not in ("mode", "case", "network") else v for k, v in r.items()}
                for r in csv.DictReader(f)]


def load_sweep(path):
    """(rows, runs, projection, settings) from a sweep directory or a scaling.json / scaling.csv."""
    d = path if os.path.isdir(path) else os.path.dirname(path)
    rows, runs, settings = [], [], {}
    js = path if path.endswith(".json") else os.path.join(d, "scaling.json")
    cs = path if path.endswith(".csv") else os.path.join(d, "scaling.csv")
    if os.path.exists(js) and not path.endswith(".csv"):
        with open(js) as f:
            doc = json.load(f)
        rows, runs, settings = doc.get("rows", []), doc.get("runs", []), doc.get("settings", {})
    elif os.path.exists(cs):
        rows = read_csv(cs)
    else:
        sys.exit(f"plot_scaling: neither {js} nor {cs} exists")
    pj = os.path.join(d, "projection.csv")
    projection = read_csv(pj) if os.path.exists(pj) else []
    return rows, runs, projection, settings


def cases_of(rows):
    seen = []
    for r in rows:
        if r["case"] not in seen:
            seen.append(r["case"])
    return seen


def shade_oversubscribed(ax, cores, max_n):
    if cores and max_n > cores:
        ax.axvspan(cores + 0.5, max_n * 1.15, color="0.85", zorder=0)
        ax.text(cores + 0.6, ax.get_ylim()[1], "oversubscribed\n(> cores)", va="top", ha="left", fontsize=7, color="0.35")


def run_speedups(rows, runs, mode, case):
    """Per-run speedup against the median N = 1 of the same mode and case: {N: [speedups]}."""
    base = next((r for r in rows if r["mode"] == mode and r["case"] == case and r["ranks"] == 1), None)
    out = {}
    if not base:
        return out
    for r in runs:
        if r.get("scaling") != mode or r.get("case") != case:
            continue
        if mode == "strong":
            s = base["step_s"] / r["step_s"]
        else:
            s = r["tokens_per_s"] / base["tokens_per_s"]
        out.setdefault(int(r["ranks"]), []).append(s)
    return out


def plot_speedup(rows, runs, cores, out, efficiency=False):
    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    fig, axes = plt.subplots(1, len(modes), figsize=(5.2 * len(modes), 4.2), dpi=DPI, squeeze=False)
    for ax, mode in zip(axes[0], modes):
        mrows = [r for r in rows if r["mode"] == mode]
        ns = sorted({r["ranks"] for r in mrows})
        for k, case in enumerate(cases_of(mrows)):
            pts = sorted((r["ranks"], r["speedup"]) for r in mrows if r["case"] == case and r["speedup"] is not None)
            if not pts:
                continue
            xs = [p[0] for p in pts]
            ys = [p[1] / p[0] if efficiency else p[1] for p in pts]
            spread = run_speedups(rows, runs, mode, case)
            lo, hi = [], []
            for x, y in zip(xs, ys):
                vals = [v / x if efficiency else v for v in spread.get(x, [])] or [y]
                lo.append(y - min(vals))
                hi.append(max(vals) - y)
            ax.errorbar(xs, ys, yerr=[[max(v, 0) for v in lo], [max(v, 0) for v in hi]], marker="o", capsize=3,
                        color=f"C{k}", label=f"{case} (median, min-max of repeats)")
        if efficiency:
            ax.axhline(1.0, color="k", ls="--", lw=1, label="ideal")
            ax.set_ylabel("efficiency (speedup / N)")
            ax.set_ylim(0, max(1.2, max((r["efficiency"] or 0) for r in mrows) * 1.1))
        else:
            ax.plot(ns, ns, color="k", ls="--", lw=1, label="ideal (N)")
            ax.set_ylabel("speedup" + (" (t1 / tN)" if mode == "strong" else " (tokens/s ratio)"))
            ax.set_ylim(0, max(ns) * 1.2)
        ax.set_xlabel("ranks N")
        ax.set_xticks(ns)
        ax.set_xlim(0.5, max(ns) + 0.5)
        ax.set_title(f"{mode} scaling" + (" (global batch fixed)" if mode == "strong" else " (batch per rank fixed)"))
        shade_oversubscribed(ax, cores, max(ns))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right" if not efficiency else "lower left")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def plot_breakdown(rows, cores, out):
    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    cases = cases_of(rows)
    fig, axes = plt.subplots(len(cases), len(modes), figsize=(5 * len(modes), 3.3 * len(cases)), dpi=DPI,
                             squeeze=False)
    for i, case in enumerate(cases):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            rs = sorted((r for r in rows if r["mode"] == mode and r["case"] == case), key=lambda r: r["ranks"])
            xs = list(range(len(rs)))
            comp = [r["compute_s"] * 1e3 for r in rs]
            exp_ = [r["exposed_comm_s"] * 1e3 for r in rs]
            hid = [max(r["comm_s"] - r["exposed_comm_s"], 0) * 1e3 for r in rs]
            ax.bar(xs, comp, color="C0", label="compute (fwd + bwd + optimizer)")
            ax.bar(xs, exp_, bottom=comp, color="C3", label="exposed comm (waited for)")
            ax.bar(xs, hid, bottom=[a + b for a, b in zip(comp, exp_)], color="none", edgecolor="C2", hatch="///",
                   label="hidden comm (overlapped, not on the step)")
            ax.plot(xs, [r["step_s"] * 1e3 for r in rs], "k_", ms=22, mew=2, label="step time (median)")
            ax.set_xticks(xs)
            ax.set_xticklabels([f"N={r['ranks']}" + ("*" if cores and r["ranks"] > cores else "") for r in rs])
            ax.set_ylabel("ms per step")
            ax.set_title(f"{case}, {mode} scaling", fontsize=10)
            ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower left", ncol=4, fontsize=7, frameon=False)
    if cores and any(r["ranks"] > cores for r in rows):
        fig.text(0.99, 0.005, f"* more ranks than the {cores} cores (oversubscribed)", ha="right", fontsize=7)
    fig.tight_layout(rect=(0, 0.2 / len(cases) if len(cases) > 1 else 0.09, 1, 1))
    fig.savefig(out)
    plt.close(fig)


def plot_projection(rows, projection, cores, out):
    networks = []
    for p in projection:
        if p["network"] not in networks:
            networks.append(p["network"])
    modes = [m for m in ("weak", "strong") if any(p["mode"] == m for p in projection)]
    cases = cases_of(projection)
    buckets = sorted({p["bucket_mb"] for p in projection})
    fig, axes = plt.subplots(len(networks), len(modes), figsize=(6 * len(modes), 4.2 * len(networks) + 1.2), dpi=DPI,
                             squeeze=False)
    for i, net in enumerate(networks):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            ps = [p for p in projection if p["network"] == net and p["mode"] == mode]
            if not ps:
                ax.set_visible(False)
                continue
            # Strong scaling: the largest projected global batch in full; the swept (smaller) batch,
            # which is what the measured points ran, as a thin line for the one-allreduce exchange.
            gb = max(p["global_batch"] for p in ps if p["ranks"] == 1) if mode == "strong" else None
            small = [p for p in ps if gb is not None and p["global_batch"] != gb and p["bucket_mb"] == buckets[0]]
            if gb is not None:
                ps = [p for p in ps if p["global_batch"] == gb]
            for k, case in enumerate(cases):
                for b, bucket in enumerate(buckets):
                    line = sorted((p["ranks"], p["efficiency"]) for p in ps if p["case"] == case and p["bucket_mb"] == bucket)
                    if line:
                        ax.plot(*zip(*line), color=f"C{k}", ls=LINESTYLES[b % len(LINESTYLES)], lw=1.4,
                                label=f"{case}, " + ("one allreduce" if bucket == 0 else f"{bucket:g} MiB buckets"))
                for sb in sorted({p["global_batch"] for p in small}):
                    line = sorted((p["ranks"], p["efficiency"]) for p in small if p["case"] == case and p["global_batch"] == sb)
                    if line:
                        ax.plot(*zip(*line), color=f"C{k}", lw=0.8, alpha=0.6, marker=".",
                                label=f"{case}, global batch {sb} (swept), " +
                                      ("one allreduce" if buckets[0] == 0 else f"{buckets[0]:g} MiB buckets"))
                meas = sorted((r["ranks"], r["efficiency"], r["global_batch"]) for r in rows
                              if r["mode"] == mode and r["case"] == case and r.get("efficiency") is not None)
                fits = [m for m in meas if not cores or m[0] <= cores]
                over = [m for m in meas if cores and m[0] > cores]
                if fits:
                    label = f"{case} measured here" + (f" (global batch {fits[0][2]})" if mode == "strong" else "")
                    ax.plot([m[0] for m in fits], [m[1] for m in fits], "o", color=f"C{k}", mec="k", ms=6, label=label)
                if over:
                    ax.plot([m[0] for m in over], [m[1] for m in over], "o", mfc="none", mec=f"C{k}", mew=1.5, ms=7,
                            label=f"{case} measured, oversubscribed (not a speed measurement)")
            a, bta = ps[0]["alpha"], ps[0]["beta"]
            title = f"{mode} scaling, network '{net}': alpha {a * 1e6:.3g} us, 1/beta {1 / bta / 1e9:.3g} GB/s"
            if gb is not None:
                title += f"\nglobal batch {gb} (1 sample per rank at N = {gb})"
            ax.set_title(title, fontsize=9)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("ranks N")
            ax.set_ylabel("projected efficiency")
            ax.set_ylim(0, 1.05)
            ax.grid(alpha=0.3, which="both")
    # One legend for all panels (every panel draws the same cases and bucket sizes).
    entries = {}
    for ax in axes.flat:
        for h, l in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(l, h)
    ncol = 3
    fig.legend(list(entries.values()), list(entries.keys()), loc="lower center", ncol=ncol, fontsize=7, frameon=False)
    rows_of_legend = math.ceil(len(entries) / ncol)
    fig.tight_layout(rect=(0, min(0.4, 0.022 * rows_of_legend * 2 / len(networks)), 1, 1))
    fig.savefig(out)
    plt.close(fig)


def plot_loss(runs, xkey, out):
    labels = {"elapsed": "wall time (s)", "samples_seen": "samples seen"}
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=DPI)
    for n, (label, path) in enumerate(runs):
        rows = [r for r in load_metrics(path) if r.get(xkey) is not None]
        train = [(r[xkey], r["loss"]) for r in rows if r.get("loss") is not None]
        val = [(r[xkey], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
        if train:
            ax.plot(*zip(*train), color=f"C{n}", lw=1, alpha=0.8, label=f"{label} train")
        if val:
            ax.plot(*zip(*val), color=f"C{n}", lw=2, marker="o", ms=4, ls="--", label=f"{label} validation")
    ax.set_xlabel(labels[xkey])
    ax.set_ylabel("loss (nats per character)")
    ax.set_title("training loss against " + labels[xkey].split(" (")[0])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--in", dest="inp", help="sweep directory, scaling.json or scaling.csv")
    ap.add_argument("--out", required=True, help="directory for the PNGs")
    ap.add_argument("--prefix", default="scaling-")
    ap.add_argument("--metrics", nargs="*", default=[], help="[LABEL=]run directory or metrics.jsonl")
    ap.add_argument("--cores", type=int, default=None, help="cores of the machine (default: from the sweep)")
    a = ap.parse_args(argv)
    if not a.inp and not a.metrics:
        ap.error("nothing to plot: give --in and/or --metrics")
    os.makedirs(a.out, exist_ok=True)
    written = []

    def path(name):
        p = os.path.join(a.out, a.prefix + name + ".png")
        written.append(p)
        return p

    if a.inp:
        rows, runs, projection, settings = load_sweep(a.inp)
        if not rows:
            sys.exit("plot_scaling: the sweep has no rows")
        cores = a.cores or (int(settings["cores"]) if str(settings.get("cores", "")).isdigit() else None)
        plot_speedup(rows, runs, cores, path("speedup"))
        plot_speedup(rows, runs, cores, path("efficiency"), efficiency=True)
        plot_breakdown(rows, cores, path("breakdown"))
        if projection:
            plot_projection(rows, projection, cores, path("projection"))
        else:
            print("plot_scaling: no projection.csv; skipping the projection figure", file=sys.stderr)
    if a.metrics:
        runs = []
        for m in a.metrics:
            label, _, p = m.rpartition("=")
            runs.append((label or os.path.basename(os.path.normpath(p)), p))
        plot_loss(runs, "elapsed", path("loss-time"))
        plot_loss(runs, "samples_seen", path("loss-samples"))
    for p in written:
        print(f"wrote {p}")


if __name__ == "__main__":
    main()
