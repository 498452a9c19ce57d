#!/usr/bin/env bash
# Strong- and weak-scaling sweep of rnn-dp bench under mpirun, the allreduce alpha-beta fit, and a
# projection to thousands of ranks (docs/SCALING.md).
#
#   scripts/scaling.sh [--ranks "1 2"] [--cases "lstm-h256x2 rnn-h128"] [--repeats 3]
#                      [--steps 15] [--warmup 3] [--bucket-mb 4] [--modes "weak strong"]
#                      [--oversubscribe] [--out runs/scaling] [--max-mb 16] [--allreduce-repeats 10]
#                      [--allreduce-ranks "N ..."] [--wait-idle SECONDS]
#                      [--mpirun-args "..."] [--launcher mpirun|srun]   (srun: --mpi=$RNN_DP_SRUN_MPI, default pmix)
#                      [--alpha 2e-6 --beta 1/12.5e9 --network-name infiniband-100g]
#                      [--buckets "0 1 4 16"] [--max-ranks 4096]
#
# For every repeat, mode and rank count it runs one `rnn-dp bench --json` with every case (the
# repeats are the outer loop, so slow drift of a shared machine spreads over all rank counts), then
# `rnn-dp bench-allreduce` once at the largest rank count >= 2 (or at each of --allreduce-ranks;
# with --oversubscribe the fit at the largest N <= cores is used). On a shared machine,
# --wait-idle S waits up to S seconds before each run until the CPUs are >= 90% idle over 2 s.
# Raw output goes to OUT/raw/;
# scripts/scaling_report.py aggregates (medians over repeats) and projects into OUT/scaling.csv,
# OUT/scaling.json, OUT/projection.csv and OUT/compare.csv. Plot with
#   python3 scripts/plot_scaling.py --in OUT --out OUT/figures
# The binary is $RNN_DP, else $(swift build -c release --show-bin-path)/rnn-dp (which does not build).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

RANKS="1 2"
CASES="lstm-h256x2 rnn-h128"
REPEATS=3
STEPS=15
WARMUP=3
BUCKET_MB=4
MODES="weak strong"
OVERSUB=0
OUT=""
MAX_MB=16
AR_REPEATS=10
AR_RANKS=""
WAIT_IDLE=0
MPIRUN_ARGS=""
LAUNCHER=mpirun
REPORT_ARGS=()

usage() { sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "scaling.sh: $*" >&2; exit 2; }
need() { [ $# -ge 2 ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --ranks) need "$@"; RANKS="$2"; shift 2 ;;
        --cases|--case) need "$@"; CASES="$2"; shift 2 ;;
        --repeats) need "$@"; REPEATS="$2"; shift 2 ;;
        --steps) need "$@"; STEPS="$2"; shift 2 ;;
        --warmup) need "$@"; WARMUP="$2"; shift 2 ;;
        --bucket-mb) need "$@"; BUCKET_MB="$2"; shift 2 ;;
        --modes|--mode) need "$@"; MODES="$2"; shift 2 ;;
        --oversubscribe) OVERSUB=1; shift ;;
        --out) need "$@"; OUT="$2"; shift 2 ;;
        --max-mb) need "$@"; MAX_MB="$2"; shift 2 ;;
        --allreduce-repeats) need "$@"; AR_REPEATS="$2"; shift 2 ;;
        --allreduce-ranks) need "$@"; AR_RANKS="$2"; shift 2 ;;
        --wait-idle) need "$@"; WAIT_IDLE="$2"; shift 2 ;;
        --mpirun-args) need "$@"; MPIRUN_ARGS="$2"; shift 2 ;;
        --launcher) need "$@"; LAUNCHER="$2"; shift 2 ;;
        --alpha|--beta|--network-name|--buckets|--max-ranks|--backward-fraction|--strong-batch)
            need "$@"; REPORT_ARGS+=("$1" "$2"); shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

isint() { [[ "$1" =~ ^[0-9]+$ ]]; }
for n in $RANKS; do isint "$n" && [ "$n" -ge 1 ] || die "--ranks: '$n' is not a rank count >= 1"; done
[ -n "$RANKS" ] || die "--ranks is empty"
[ -n "$CASES" ] || die "--cases is empty"
for v in "$REPEATS" "$STEPS" "$MAX_MB" "$AR_REPEATS"; do isint "$v" && [ "$v" -ge 1 ] || die "'$v' must be an integer >= 1"; done
isint "$WAIT_IDLE" || die "--wait-idle: '$WAIT_IDLE' must be a number of seconds"
isint "$WARMUP" || die "--warmup: '$WARMUP' must be an integer >= 0"
[[ "$BUCKET_MB" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--bucket-mb: '$BUCKET_MB' is not a number >= 0"
for m in $MODES; do [ "$m" = weak ] || [ "$m" = strong ] || die "--modes: '$m' is not weak or strong"; done
case "$LAUNCHER" in mpirun|srun) ;; *) die "--launcher: '$LAUNCHER' is not mpirun or srun" ;; esac

if [ -z "$OUT" ]; then OUT="$ROOT/runs/scaling"; else case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac; fi
cd "$ROOT"
# shellcheck source=setup.sh
source scripts/setup.sh
# On a cluster node (modules, no apt, no Swift) setup may fail: carry on with what is installed.
if ! rnn_dp_setup python3 >&2; then
    echo "scaling.sh: setup.sh could not install everything; continuing with what is installed" >&2
    [ "$(id -u)" -eq 0 ] && export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
command -v "$LAUNCHER" >/dev/null 2>&1 || die "no $LAUNCHER on PATH"
command -v python3 >/dev/null 2>&1 || die "no python3 on PATH"

if [ -n "${RNN_DP:-}" ]; then
    BIN="$RNN_DP"
else
    # --show-bin-path does not build; it may wait on SwiftPM's lock while someone else builds.
    BINDIR="$(timeout 120 swift build -c release --show-bin-path 2>/dev/null || true)"
    BIN="${BINDIR:-$ROOT/.build/release}/rnn-dp"
fi
# The binary can be replaced while we run (a rebuild): wait for it rather than fail.
wait_bin() {
    local i
    for i in $(seq 30); do [ -x "$BIN" ] && return 0; sleep 2; done
    die "no rnn-dp at $BIN: build it (swift build -c release) or set RNN_DP"
}
wait_bin

CORES="$(nproc 2>/dev/null || echo 1)"
MAXN=1
for n in $RANKS; do [ "$n" -gt "$MAXN" ] && MAXN=$n; done
[ -n "$AR_RANKS" ] || { [ "$MAXN" -ge 2 ] && AR_RANKS="$MAXN"; } || true
for n in $AR_RANKS; do isint "$n" && [ "$n" -ge 2 ] || die "--allreduce-ranks: '$n' is not a rank count >= 2"; done
for n in $AR_RANKS; do [ "$n" -gt "$MAXN" ] && MAXN=$n; done
# One machine only: inside a Slurm or PBS allocation the ranks may span several nodes.
if [ "$LAUNCHER" = mpirun ] && [ -z "${SLURM_JOB_ID:-}${PBS_JOBID:-}" ] && [ "$MAXN" -gt "$CORES" ] && [ "$OVERSUB" = 0 ]; then
    die "$MAXN ranks on $CORES cores: pass --oversubscribe (the timings of oversubscribed runs are not speed measurements)"
fi

launch() {  # launch N ARGS...: run rnn-dp on N ranks
    local n=$1; shift
    if [ "$LAUNCHER" = srun ]; then
        # As scripts/slurm/common.sh: Open MPI wired up through PMIx unless RNN_DP_SRUN_MPI says otherwise.
        # shellcheck disable=SC2086
        srun --mpi="${RNN_DP_SRUN_MPI:-pmix}" --ntasks="$n" --kill-on-bad-exit=1 $MPIRUN_ARGS "$BIN" "$@"
    else
        local extra=()
        [ "$OVERSUB" = 1 ] && extra+=(--oversubscribe)
        # shellcheck disable=SC2086
        mpirun -np "$n" ${extra[@]+"${extra[@]}"} $MPIRUN_ARGS "$BIN" "$@"
    fi
}

# Percent of CPU time idle over the next 2 seconds (from /proc/stat; 100 if unavailable).
idle_percent() {
    local a b
    a=($(head -n1 /proc/stat 2>/dev/null)) || { echo 100; return; }
    sleep 2
    b=($(head -n1 /proc/stat 2>/dev/null)) || { echo 100; return; }
    local total=0 i
    for i in 1 2 3 4 5 6 7 8; do total=$((total + ${b[$i]:-0} - ${a[$i]:-0})); done
    local idle=$(( ${b[4]} + ${b[5]:-0} - ${a[4]} - ${a[5]:-0} ))
    [ "$total" -gt 0 ] && echo $((100 * idle / total)) || echo 100
}
# With --wait-idle: wait (at most WAIT_IDLE seconds) for an idle machine; prints the last idle %.
wait_idle() {
    local waited=0 idle
    idle=$(idle_percent)
    while [ "$idle" -lt 90 ] && [ "$waited" -lt "$WAIT_IDLE" ]; do
        [ "$waited" = 0 ] && echo "scaling.sh: the machine is busy (${idle}% idle); waiting up to ${WAIT_IDLE} s" >&2
        sleep 3
        waited=$((waited + 5))
        idle=$(idle_percent)
    done
    echo "$idle"
}

# run_to FILE N ARGS...: stdout to FILE, stderr to FILE.err; up to 3 attempts (a binary being
# replaced mid-run, a transient MPI start-up failure).
run_to() {
    local file=$1 n=$2; shift 2
    local attempt
    for attempt in 1 2 3; do
        wait_bin
        # The load average (and with --wait-idle the idle %) before the run, kept with the results.
        local idle=""
        [ "$WAIT_IDLE" -gt 0 ] && idle=$(wait_idle)
        echo "$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo nan) $idle" >"$file.load"
        if launch "$n" "$@" >"$file" 2>"$file.err" && grep -q '^{' "$file"; then return 0; fi
        echo "scaling.sh: attempt $attempt failed: np=$n rnn-dp $* (see $file.err)" >&2
        tail -n 3 "$file.err" >&2 || true
        sleep 3
    done
    die "giving up on np=$n rnn-dp $*"
}

RAW="$OUT/raw"
mkdir -p "$RAW"
rm -f "$RAW"/bench-*.out* "$RAW"/allreduce-np*.out*
CASE_ARGS=()
for c in $CASES; do CASE_ARGS+=(--case "$c"); done
{
    echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host=$(hostname)"
    echo "cores=$CORES"
    echo "cpu=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || true)"
    echo "binary=$BIN"
    echo "ranks=$RANKS"
    echo "cases=$CASES"
    echo "repeats=$REPEATS"
    echo "steps=$STEPS"
    echo "warmup=$WARMUP"
    echo "bucket_mb=$BUCKET_MB"
    echo "modes=$MODES"
    echo "oversubscribe=$OVERSUB"
    echo "wait_idle=$WAIT_IDLE"
    echo "launcher=$LAUNCHER $MPIRUN_ARGS"
    echo "mpi=$(mpirun --version 2>/dev/null | head -n1 || true)"
    echo "git=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || true)"
} >"$RAW/settings.txt"

total=$((REPEATS * $(echo $MODES | wc -w) * $(echo $RANKS | wc -w)))
i=0
for r in $(seq "$REPEATS"); do
    for mode in $MODES; do
        for n in $RANKS; do
            i=$((i + 1))
            echo "[$i/$total] repeat $r, $mode scaling, np=$n: $CASES" >&2
            run_to "$RAW/bench-$mode-np$n-r$r.out" "$n" bench "${CASE_ARGS[@]}" --steps "$STEPS" --warmup "$WARMUP" \
                --scaling "$mode" --threads 1 --bucket-mb "$BUCKET_MB" --json
        done
    done
done

if [ -n "$AR_RANKS" ]; then
    for n in $AR_RANKS; do
        echo "bench-allreduce at np=$n (up to $MAX_MB MiB, $AR_REPEATS repeats per size)" >&2
        run_to "$RAW/allreduce-np$n.out" "$n" bench-allreduce --repeats "$AR_REPEATS" --max-mb "$MAX_MB" --json
    done
else
    echo "scaling.sh: skipping bench-allreduce: the largest rank count is 1 (alpha/beta need >= 2 ranks);" \
         "the projection uses the given network only (--alpha/--beta)" >&2
fi

python3 scripts/scaling_report.py "$OUT" ${REPORT_ARGS[@]+"${REPORT_ARGS[@]}"}
