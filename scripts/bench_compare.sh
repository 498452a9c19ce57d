#!/usr/bin/env bash
# rnn-dp bench and scripts/bench_pytorch.py side by side: for each case, ROUNDS alternating runs
# of both (THREADS BLAS/torch threads each, default 1), then the median tokens/s of each, their
# ratio, the median of the per-round ratios (each round runs the two programs back to back) and
# the ratio of the best rounds (on a shared machine noise only slows a run down, so the best
# round of each is the least disturbed; BENCHMARKS.md quotes all three when they disagree).
#   scripts/bench_compare.sh [ROUNDS=3] [STEPS=20] [THREADS=1]
# CASES="gru-h512 lstm-h1024" scripts/bench_compare.sh ... runs only those cases.
# Needs a release build of rnn-dp (swift build -c release) and torch (pip install torch).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
STEPS=${2:-20}
THREADS=${3:-1}
BIN="$(swift build -c release --show-bin-path)/rnn-dp"
[ -x "$BIN" ] || { echo "bench_compare: build rnn-dp first: swift build -c release" >&2; exit 2; }
python3 -c "import torch" 2>/dev/null || { echo "bench_compare: needs torch (pip install torch)" >&2; exit 2; }
OUT=$(mktemp -d)
for case in ${CASES:-rnn-h128 lstm-h256x2 gru-h512 lstm-h1024}; do
    for r in $(seq "$ROUNDS"); do
        "$BIN" bench --case "$case" --steps "$STEPS" --threads "$THREADS" --json >> "$OUT/rnndp.jsonl"
        python3 scripts/bench_pytorch.py --case "$case" --steps "$STEPS" --threads "$THREADS" --json >> "$OUT/torch.jsonl"
    done
done
python3 - "$OUT" <<'PY'
import json, statistics, sys
d = sys.argv[1]
def load(name):
    out = {}
    for line in open(f"{d}/{name}"):
        r = json.loads(line)
        out.setdefault(r["case"], []).append(r)
    return out
ours, theirs = load("rnndp.jsonl"), load("torch.jsonl")
print(f"{'case':<13} {'rnn-dp tok/s':>13} {'PyTorch tok/s':>14} {'ratio':>6} {'per-round':>10} {'of bests':>9} {'rnn-dp of sgemm':>16} {'torch input':>12}")
for case in ours:
    a = statistics.median(r["tokens_per_s"] for r in ours[case])
    b = statistics.median(r["tokens_per_s"] for r in theirs[case])
    paired = statistics.median(x["tokens_per_s"] / y["tokens_per_s"] for x, y in zip(ours[case], theirs[case]))
    best = max(r["tokens_per_s"] for r in ours[case]) / max(r["tokens_per_s"] for r in theirs[case])
    f = statistics.median(r["fraction_of_sgemm"] for r in ours[case])
    print(f"{case:<13} {a:13.0f} {b:14.0f} {a / b:6.2f} {paired:10.2f} {best:9.2f} {f * 100:15.0f}% {theirs[case][0]['input']:>12}")
print(f"({len(ours[next(iter(ours))])} alternating rounds per case, medians, {ours[next(iter(ours))][0]['threads']} thread(s) each; raw results in {d})")
PY
