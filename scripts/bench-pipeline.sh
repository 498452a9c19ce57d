#!/usr/bin/env bash
# docs/PARALLELISM.md's measurements: one model (bench case lstm-h512x4: 4 x LSTM H=512, T=64,
# global batch 32, Adam, one BLAS thread per rank) under data parallelism (np=2, np=4), a
# pipeline (S=2, S=4) and both (2 x 2), side by side in one run, in ROUNDS alternating rounds;
# then the pipeline bubble at S=2 over chunk sizes; then the inputs of the alpha-beta projection
# (one process's step time at batches 32..1 in chunks of 8 steps, and the allreduce fit at np=2)
# and the projection itself (scripts/pipeline_projection.py). Prints markdown tables (medians of
# the rounds' medians). Needs a release build of rnn-dp (swift build -c release) and mpirun.
#   scripts/bench-pipeline.sh [ROUNDS]   (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
BIN="${RNN_DP:-$(swift build -c release --show-bin-path)/rnn-dp}"
[ -x "$BIN" ] || { echo "bench-pipeline: build rnn-dp first: swift build -c release" >&2; exit 2; }
OUT=$(mktemp -d /tmp/rnn-dp-bench-pipeline.XXXXXX)
run() {  # label np args...
    local label=$1 np=$2; shift 2
    mpirun -np "$np" --oversubscribe --bind-to none "$BIN" bench --case lstm-h512x4 --scaling strong --steps 10 --warmup 2 --json "$@" \
        < /dev/null 2>/dev/null | grep '^{' | sed "s/^{/{\"label\":\"$label\",/" >> "$OUT/results.jsonl"
}
for r in $(seq "$ROUNDS"); do
    echo "round $r of $ROUNDS" >&2
    run "data parallel, np=2" 2
    run "pipeline S=2, k=8" 2 --pipeline 2 --chunk-steps 8
    run "data parallel, np=4" 4
    run "pipeline S=4, k=8" 4 --pipeline 4 --chunk-steps 8
    run "2 x 2 (D=2, S=2), k=8" 4 --pipeline 2 --chunk-steps 8
    for k in 64 16 8 4; do run "bubble S=2 k=$k" 2 --pipeline 2 --chunk-steps "$k"; done
done
# One process, in the pipeline's chunks: the compute of a step at each batch.
for b in 32 16 8 4 2 1; do
    "$BIN" bench --case lstm-h512x4 --scaling strong --steps 5 --warmup 1 --json --chunk-steps 8 --batch "$b" 2>/dev/null | grep '^{' \
        | sed "s/^{/{\"label\":\"one process b=$b\",/" >> "$OUT/results.jsonl"
done
mpirun -np 2 --bind-to none "$BIN" bench-allreduce --json --max-mb 64 < /dev/null 2>/dev/null | grep '"alpha"' > "$OUT/fit.json"
python3 - "$OUT/results.jsonl" "$(nproc)" <<'EOF'
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1])]
cores = int(sys.argv[2])
by = {}
for r in rows: by.setdefault(r["label"], []).append(r)
med = lambda label, key: statistics.median(r[key] for r in by[label])
print(f"| layout | ranks | step ms | tokens/s | p2p MB / messages per rank and step | allreduced MB per rank and step (collectives) | memory per rank MB |")
print("|---|---|---|---|---|---|---|")
for label in ["data parallel, np=2", "pipeline S=2, k=8", "data parallel, np=4", "pipeline S=4, k=8", "2 x 2 (D=2, S=2), k=8"]:
    r = by[label][0]
    over = " (oversubscribed)" if r["ranks"] > cores else ""
    print(f"| {label} | {r['ranks']} | {1000 * med(label, 'step_s'):.1f}{over} | {med(label, 'tokens_per_s'):.0f} | "
          f"{r['p2p_bytes'] / 1e6:.2f} / {r['p2p_messages']} | {r['allreduced_bytes'] / 1e6:.2f} ({r['collectives']}) | {r['model_bytes'] / 1e6:.0f} |")
print()
print("| chunk steps k | chunks C | step ms | stages idle, measured | idle modelled for this split | bubble (S-1)/(C+S-1) |")
print("|---|---|---|---|---|---|")
for k in [64, 16, 8, 4]:
    label = f"bubble S=2 k={k}"
    r = by[label][0]
    print(f"| {k} | {r['chunks']} | {1000 * med(label, 'step_s'):.1f} | {100 * med(label, 'bubble'):.1f}% | {100 * r['model_idle']:.1f}% | {100 * r['model_bubble']:.1f}% |")
EOF
python3 scripts/pipeline_projection.py "$OUT/results.jsonl" "$OUT/fit.json"
rm -rf "$OUT"
