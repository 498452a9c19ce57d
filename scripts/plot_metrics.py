#!/usr/bin/env python3
"""Plot learning curves from rnn-dp metrics.jsonl files.

    python3 scripts/plot_metrics.py OUT.png RUN_DIR_OR_METRICS [LABEL=RUN ...] [--x step|elapsed|samples] [--log]

Each argument after OUT.png is a run directory (holding metrics.jsonl) or a metrics.jsonl file,
optionally prefixed with "LABEL=". Training loss is drawn as a thin line, validation loss (where
logged) as markers joined by a thicker line. Needs matplotlib.
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(path):
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    out, runs, xkey, logy = argv[1], [], "step", False
    args = argv[2:]
    i = 0
    while i < len(args):
        if args[i] == "--x":
            xkey = {"step": "step", "elapsed": "elapsed", "samples": "samples_seen"}[args[i + 1]]
            i += 2
            continue
        if args[i] == "--log":
            logy = True
            i += 1
            continue
        label, _, path = args[i].rpartition("=")
        runs.append((label or os.path.basename(os.path.normpath(path)), path))
        i += 1
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for n, (label, path) in enumerate(runs):
        rows = [r for r in load(path) if xkey in r]
        color = f"C{n}"
        train = [(r[xkey], r["loss"]) for r in rows if r.get("loss") is not None]
        val = [(r[xkey], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
        if train:
            ax.plot(*zip(*train), color=color, lw=0.8, alpha=0.6, label=f"{label} train")
        if val:
            ax.plot(*zip(*val), color=color, lw=2, marker="o", ms=3, label=f"{label} validation")
    ax.set_xlabel({"step": "step", "elapsed": "wall time (s)", "samples_seen": "samples seen"}[xkey])
    ax.set_ylabel("loss")
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv)
