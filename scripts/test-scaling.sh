#!/usr/bin/env bash
# CI test of the scaling tools (docs/SCALING.md): a tiny strong + weak sweep (np = 1, 2, rnn-h128,
# 3 steps), the CSV/JSON checks, the projection's hand-computed case, a 20-step 2-rank training
# run for the loss figures, plot_scaling.py, and a check that every figure is a plausible PNG.
# Needs a built rnn-dp ($RNN_DP or swift build -c release), mpirun, python3 with matplotlib and
# numpy. Prints PASS or FAIL; exits nonzero on failure. Takes well under a minute when idle.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
START=$(date +%s)
TMP="$(mktemp -d "${TMPDIR:-/tmp}/rnn-dp-scaling-test.XXXXXX")"
STATUS=1
finish() {
    rm -rf "$TMP"
    if [ "$STATUS" = 0 ]; then echo "test-scaling: PASS ($(( $(date +%s) - START )) s)"
    else echo "test-scaling: FAIL" >&2; fi
}
trap finish EXIT
fail() { echo "test-scaling: $*" >&2; exit 1; }

source scripts/setup.sh
rnn_dp_setup python3 >&2 || fail "setup failed"
if ! python3 -c "import matplotlib, numpy" 2>/dev/null; then
    echo "setup: installing matplotlib and numpy with pip" >&2
    python3 -m pip install --quiet matplotlib numpy 2>/dev/null \
        || python3 -m pip install --quiet --break-system-packages matplotlib numpy \
        || fail "needs matplotlib and numpy (pip install matplotlib numpy)"
fi
if [ -z "${RNN_DP:-}" ]; then
    BINDIR="$(timeout 120 swift build -c release --show-bin-path 2>/dev/null || true)"
    export RNN_DP="${BINDIR:-$ROOT/.build/release}/rnn-dp"
fi
for _ in $(seq 30); do [ -x "$RNN_DP" ] && break; sleep 2; done
[ -x "$RNN_DP" ] || fail "no rnn-dp at $RNN_DP (swift build -c release, or set RNN_DP)"

echo "== 1. the projection reproduces hand-computed cases"
python3 - <<'PY' || fail "projection self-check"
import math, sys
sys.path.insert(0, "scripts")
import scaling_report as s
def close(a, b, what):
    if not math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15):
        sys.exit(f"{what}: got {a!r}, expected {b!r}")
# T = 2 (p-1) alpha + 2 (p-1)/p n beta = 2*3*1e-6 + 2*3/4*4e6*1e-9 = 6e-6 + 6e-3
close(s.allreduce_time(4e6, 4, 1e-6, 1e-9), 0.006006, "T(4e6 B, 4 ranks)")
close(s.allreduce_time(4e6, 1, 1e-6, 1e-9), 0.0, "T(p = 1)")
# One allreduce after the backward pass: step = compute + T, AllreduceModel.project(overlap: 0).
step, comm, exposed, k = s.step_time(0.1, 4e6, 4, 1e-6, 1e-9, bucket_mb=0)
close(step, 0.106006, "step, bucket 0"); close(exposed, 0.006006, "exposed, bucket 0")
close(step, s.swift_project(0.1, 4e6, 4, 1e-6, 1e-9)[0], "same as ScalingModel.project")
# 1 MiB buckets of 4e6 B: 3 full + 854,272 B; W = 2/3 * 0.3 = 0.2 s hides all but the last.
sizes = s.bucket_sizes(4e6, 1)
assert sizes == [1048576, 1048576, 1048576, 854272], sizes
step, comm, exposed, k = s.step_time(0.3, 4e6, 4, 1e-6, 1e-9, bucket_mb=1, backward_fraction=2 / 3)
close(comm, 4 * 6e-6 + 1.5 * 4e6 * 1e-9, "total comm of 4 buckets")
close(exposed, s.allreduce_time(854272, 4, 1e-6, 1e-9), "exposed = the last bucket")
# No compute to hide behind: the buckets' sum is exposed (one more latency per bucket than bucket 0).
step, comm, exposed, k = s.step_time(0.0, 4e6, 4, 1e-6, 1e-9, bucket_mb=1)
close(exposed, comm, "no overlap window")
close(s.parse_number("1/12.5e9"), 8e-11, "1/12.5e9")
print("projection: T(4e6 B, p=4, alpha=1e-6, beta=1e-9) = 0.006006 s as computed by hand; buckets OK")
PY

echo "== 2. a tiny sweep: np = 1, 2, rnn-h128, strong and weak"
SWEEP="$TMP/sweep"
scripts/scaling.sh --ranks "1 2" --cases rnn-h128 --repeats 1 --steps 3 --warmup 1 --modes "weak strong" \
    --max-mb 1 --allreduce-repeats 3 --out "$SWEEP" >"$TMP/sweep.log" 2>&1 \
    || { tail -n 30 "$TMP/sweep.log" >&2; fail "scaling.sh failed"; }
python3 - "$SWEEP" <<'PY' || fail "sweep output"
import csv, json, math, os, sys
d = sys.argv[1]
def die(msg): sys.exit(f"{d}: {msg}")
header = ("mode,case,ranks,step_s,tokens_per_s,speedup,efficiency,compute_s,comm_s,exposed_comm_s,"
          "bytes_per_step,allreduce_gbps,global_batch,repeats").split(",")
with open(os.path.join(d, "scaling.csv"), newline="") as f:
    reader = csv.reader(f)
    got = next(reader)
    if got[:len(header)] != header:
        die(f"scaling.csv header {got}, expected it to start with {header}")
    rows = [dict(zip(got, r)) for r in reader]
keys = sorted((r["mode"], r["case"], int(r["ranks"])) for r in rows)
want = sorted((m, "rnn-h128", n) for m in ("weak", "strong") for n in (1, 2))
if keys != want:
    die(f"rows {keys}, expected {want}")
positive = ["step_s", "tokens_per_s", "speedup", "efficiency", "compute_s", "bytes_per_step", "global_batch", "repeats"]
nonneg = ["comm_s", "exposed_comm_s", "allreduce_gbps"]
for r in rows:
    for k in positive + nonneg:
        try:
            v = float(r[k])
        except ValueError:
            die(f"{k} = {r[k]!r} is not a number in {r}")
        if not math.isfinite(v) or (k in positive and v <= 0) or v < 0:
            die(f"{k} = {v} out of range in {r}")
    n, eff, sp = int(r["ranks"]), float(r["efficiency"]), float(r["speedup"])
    if n == 1 and sp != 1.0:
        die(f"speedup at N = 1 is {sp}, not 1")
    if not (0.05 <= eff <= 2.0):
        die(f"efficiency {eff} outside the sane range [0.05, 2] in {r}")
    if not math.isclose(eff, sp / n, rel_tol=1e-4):
        die(f"efficiency {eff} != speedup / N")
    if int(r["repeats"]) != 1:
        die(f"repeats {r['repeats']}, expected 1")
    gb = int(r["global_batch"])
    if gb != (32 * n if r["mode"] == "weak" else 32):
        die(f"global batch {gb} at {r['mode']} N = {n}")
    if n == 2 and float(r["comm_s"]) <= 0:
        die("no communication measured at N = 2")
    if float(r["comm_s"]) + 1e-9 < float(r["exposed_comm_s"]):
        die("comm_s < exposed_comm_s")
doc = json.load(open(os.path.join(d, "scaling.json")))
if not (doc.get("alpha") and doc["alpha"] > 0 and doc.get("beta") and doc["beta"] > 0):
    die(f"alpha/beta missing or not positive: {doc.get('alpha')}, {doc.get('beta')}")
if len(doc["rows"]) != 4 or len(doc["runs"]) != 4:
    die(f"scaling.json has {len(doc['rows'])} rows and {len(doc['runs'])} runs, expected 4 and 4")
with open(os.path.join(d, "projection.csv"), newline="") as f:
    proj = list(csv.DictReader(f))
nets = {p["network"] for p in proj}
if nets != {"measured", "infiniband-100g"}:
    die(f"projection networks {nets}")
for p in proj:
    e = float(p["efficiency"])
    if not (0 < e <= 1 + 1e-9) or float(p["step_s"]) <= 0:
        die(f"projection row out of range: {p}")
if max(int(p["ranks"]) for p in proj) != 4096 or {float(p["bucket_mb"]) for p in proj} != {0, 1, 4, 16}:
    die("projection does not reach 4096 ranks for buckets 0 1 4 16")
with open(os.path.join(d, "compare.csv"), newline="") as f:
    comp = list(csv.DictReader(f))
if len(comp) != 4 or any(float(c["predicted_step_s"]) <= 0 for c in comp):
    die("compare.csv: expected 4 rows with a positive prediction")
print(f"sweep: {len(rows)} rows, alpha {doc['alpha']:.3g} s, beta {doc['beta']:.3g} s/B, "
      f"{len(proj)} projection rows")
PY

echo "== 3. max N = 1: bench-allreduce is skipped with a message"
scripts/scaling.sh --ranks 1 --cases rnn-h128 --repeats 1 --steps 1 --warmup 0 --modes weak --out "$TMP/one" \
    >"$TMP/one.log" 2>&1 || { tail -n 20 "$TMP/one.log" >&2; fail "scaling.sh --ranks 1 failed"; }
grep -q "skipping bench-allreduce" "$TMP/one.log" || fail "no skip message for --ranks 1"
grep -q "^infiniband-100g," "$TMP/one/projection.csv" || fail "--ranks 1: no projection with the given network"
if grep -q "^measured," "$TMP/one/projection.csv"; then fail "--ranks 1: a 'measured' network without a measurement"; fi

echo "== 4. a 20-step training run on 2 ranks (loss curves)"
mpirun -np 2 "$RNN_DP" train --config configs/shakespeare-rnn.yaml \
    --set data.path=../shared/data/tinyshakespeare.txt --set model.hidden_size=64 \
    --set training.steps=20 --set training.eval_every=10 --set training.eval_samples=64 \
    --set output.log_every=2 --set output.sample_length=0 --set output.directory="$TMP/train" \
    >"$TMP/train.log" 2>&1 || { tail -n 20 "$TMP/train.log" >&2; fail "training failed"; }
python3 - "$TMP/train/metrics.jsonl" <<'PY' || fail "metrics.jsonl"
import json, math, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
steps = [r for r in rows if r.get("loss") is not None]
if len(steps) < 10:
    sys.exit(f"{len(steps)} loss lines, expected 10")
for r in steps:
    for k in ("loss", "elapsed", "samples_seen"):
        if not math.isfinite(float(r[k])):
            sys.exit(f"{k} not finite: {r[k]}")
if not any(r.get("val_loss") is not None for r in rows):
    sys.exit("no val_loss line")
PY

echo "== 5. figures"
FIG="$TMP/figures"
python3 scripts/plot_scaling.py --in "$SWEEP" --out "$FIG" --metrics "2 ranks=$TMP/train" >"$TMP/plot.log" 2>&1 \
    || { cat "$TMP/plot.log" >&2; fail "plot_scaling.py failed"; }
python3 - "$FIG" <<'PY' || fail "figures"
import os, struct, sys
d = sys.argv[1]
want = ["speedup", "efficiency", "breakdown", "projection", "loss-time", "loss-samples"]
for name in want:
    p = os.path.join(d, f"scaling-{name}.png")
    if not os.path.exists(p):
        sys.exit(f"missing {p}")
    data = open(p, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        sys.exit(f"{p} is not a PNG")
    w, h = struct.unpack(">II", data[16:24])
    if w < 300 or h < 200 or len(data) < 5000:
        sys.exit(f"{p}: {w}x{h}, {len(data)} bytes: implausibly small")
    print(f"{name}: {w}x{h}, {len(data)} bytes")
extra = sorted(set(os.listdir(d)) - {f"scaling-{n}.png" for n in want})
if extra:
    sys.exit(f"unexpected files {extra}")
PY

STATUS=0
