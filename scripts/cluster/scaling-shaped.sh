#!/usr/bin/env bash
# Scaling over shaped links: rnn-dp bench and bench-allreduce with one rank per test host
# (scripts/cluster/), each host's link shaped to a profile, for several gradient exchanges.
#
#   scripts/cluster/scaling-shaped.sh [--hosts "2 4"] [--profiles "10g 1g 1g-100us"]
#       [--exchanges "blocking buckets bf16 fp16 local4 local16"] [--cases "lstm-h256x2 rnn-h128"]
#       [--repeats 3] [--steps 16] [--warmup 2] [--bucket-mb 1] [--max-mb 16]
#       [--allreduce-repeats 10] [--out runs/scaling-shaped]
#
# A profile is plain (no shaping) or RATE[-LATENCY]: RATE 1g, 10g, 500m (bit/s, a tbf on both
# ends of every host's link), LATENCY the added one-way host-to-host latency (100us: 50 us on each
# of the two links a packet crosses; delay needs netem, or linkem where the kernel has no netem).
# Exchanges: blocking (one allreduce after backward, --bucket-mb 0), buckets (--bucket-mb B,
# nonblocking, overlapped with backward), bf16 and fp16 (--compression), localK (local SGD,
# parameters averaged every K steps; bench reports mean step times for these).
# Weak scaling, 1 BLAS thread per rank, ranks placed one per host (--map-by node). N = 1 is one
# rank on host 1, the compute baseline. The repeats are the outer loop (a shared machine's drift
# spreads over every configuration). Raw output in OUT/raw; scaling_shaped_report.py writes
# OUT/shaped.csv, OUT/fits.csv, OUT/projection.csv and prints the tables of docs/SCALING.md.
# Needs root; brings up its own cluster (ID scal-<pid>) and removes it on exit.
# The binary is $RNN_DP, else .build/release/rnn-dp.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
ROOT="$(cd "$HERE/../.." && pwd -P)"
HOSTS="2 4"
PROFILES="10g 1g 1g-100us"
EXCHANGES="blocking buckets bf16 fp16 local4 local16"
CASES="lstm-h256x2 rnn-h128"
REPEATS=3
STEPS=16
WARMUP=2
BUCKET_MB=1
MAX_MB=16
AR_REPEATS=10
OUT="$ROOT/runs/scaling-shaped"
usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "scaling-shaped.sh: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
    [ $# -ge 2 ] || { [ "$1" = -h ] || [ "$1" = --help ]; } || die "$1 needs a value"
    case "$1" in
        --hosts) HOSTS="$2"; shift 2 ;;
        --profiles) PROFILES="$2"; shift 2 ;;
        --exchanges) EXCHANGES="$2"; shift 2 ;;
        --cases) CASES="$2"; shift 2 ;;
        --repeats) REPEATS="$2"; shift 2 ;;
        --steps) STEPS="$2"; shift 2 ;;
        --warmup) WARMUP="$2"; shift 2 ;;
        --bucket-mb) BUCKET_MB="$2"; shift 2 ;;
        --max-mb) MAX_MB="$2"; shift 2 ;;
        --allreduce-repeats) AR_REPEATS="$2"; shift 2 ;;
        --out) case "$2" in /*) OUT="$2" ;; *) OUT="$PWD/$2" ;; esac; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
[ "$(id -u)" -eq 0 ] || die "needs root (it makes the test hosts)"
MAXH=1
for n in $HOSTS; do [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 2 ] || die "--hosts: '$n' is not a host count >= 2"; [ "$n" -gt "$MAXH" ] && MAXH=$n; done
for e in $EXCHANGES; do [[ "$e" =~ ^(blocking|buckets|bf16|fp16|local[0-9]+)$ ]] || die "--exchanges: unknown '$e'"; done

# profile_spec PROFILE: the cl_shape words for every link, or "" for plain
profile_spec() {
    local p="$1" rate lat spec=""
    [ "$p" = plain ] && { echo ""; return 0; }
    [[ "$p" =~ ^([0-9]+)([gm])(-([0-9]+)us)?$ ]] || return 1
    rate="${BASH_REMATCH[1]}${BASH_REMATCH[2]}bit"; lat="${BASH_REMATCH[4]}"
    spec="rate=$rate"
    [ -n "$lat" ] && spec="$spec delay=$((lat / 2))us"
    echo "$spec"
}
for p in $PROFILES; do profile_spec "$p" >/dev/null || die "--profiles: '$p' is not plain or RATE[-LATENCYus] (1g, 10g-20us)"; done
exchange_args() {
    case "$1" in
        blocking) echo "--bucket-mb 0" ;;
        buckets) echo "--bucket-mb $BUCKET_MB" ;;
        bf16|fp16) echo "--bucket-mb 0 --compression $1" ;;
        local*) echo "--bucket-mb 0 --local-sgd ${1#local}" ;;
    esac
}

cd "$ROOT"
# shellcheck source=../setup.sh
source scripts/setup.sh
rnn_dp_setup python3 >&2 || echo "scaling-shaped.sh: setup incomplete; continuing with what is installed" >&2
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_base_warn_component_unused=0 OPENBLAS_NUM_THREADS=1
BIN="${RNN_DP:-$ROOT/.build/release/rnn-dp}"
[ -x "$BIN" ] || die "no rnn-dp at $BIN (build it, or set RNN_DP)"
# shellcheck source=lib.sh
source "$HERE/lib.sh"
ID="scal-$$"
trap 'cl_down "$ID"' EXIT
trap 'exit 130' INT TERM
cl_up "$ID" "$MAXH" 1 || die "could not bring up $MAXH test hosts"
read -r -a MPI_ARGS <<<"$(cl_mpirun_args)"
H1="$(cl_host 1)"
mpi() { cl_exec "$H1" mpirun "${MPI_ARGS[@]}" --map-by node "$@"; }

RAW="$OUT/raw"
mkdir -p "$RAW"
rm -f "$RAW"/*.json "$RAW"/*.err "$RAW"/*.load
{
    echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "cores=$(nproc)"
    echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "hosts=$HOSTS"; echo "profiles=$PROFILES"; echo "exchanges=$EXCHANGES"; echo "cases=$CASES"
    echo "repeats=$REPEATS"; echo "steps=$STEPS"; echo "warmup=$WARMUP"; echo "bucket_mb=$BUCKET_MB"
    echo "emulator=$(tc -n "$(cl_switch)" qdisc add dev lo root netem delay 0us 2>/dev/null && tc -n "$(cl_switch)" qdisc del dev lo root && echo netem || echo linkem)"
    echo "mpi=$(mpirun --version 2>/dev/null | head -n1)"
    echo "git=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)"
} >"$RAW/settings.txt"

shape_all() {
    local spec i
    spec="$(profile_spec "$1")"
    for ((i = 1; i <= MAXH; i++)); do
        # shellcheck disable=SC2086
        cl_shape "$(cl_host "$i")" clear && { [ -z "$spec" ] || cl_shape "$(cl_host "$i")" $spec; } || die "cannot shape link $i to '$1'"
    done
}
# run FILE ARGS...: up to 3 attempts; stdout (JSON lines) to FILE, stderr to FILE.err
run() {
    local file="$1"; shift
    local a
    for a in 1 2 3; do
        cut -d' ' -f1 /proc/loadavg >"$file.load"
        if "$@" >"$file" 2>"$file.err" && grep -q '^{' "$file"; then return 0; fi
        echo "scaling-shaped.sh: attempt $a failed: $* (see $file.err)" >&2
        sleep 2
    done
    echo "scaling-shaped.sh: giving up on $file" >&2
    return 1
}
CASE_ARGS=()
for c in $CASES; do CASE_ARGS+=(--case "$c"); done
COMMON=(bench "${CASE_ARGS[@]}" --steps "$STEPS" --warmup "$WARMUP" --threads 1 --json)
nex=$(echo $EXCHANGES | wc -w); nh=$(echo $HOSTS | wc -w); np=$(echo $PROFILES | wc -w)
total=$((REPEATS * np * (1 + nh * nex)))
k=0
T0=$(date +%s)
for r in $(seq "$REPEATS"); do
    for prof in $PROFILES; do
        shape_all "$prof"
        k=$((k + 1)); echo "[$k/$total, $(($(date +%s) - T0)) s] repeat $r, $prof, N=1" >&2
        run "$RAW/bench-$prof-np1-blocking-r$r.json" mpi -np 1 "$BIN" "${COMMON[@]}" --bucket-mb 0
        for n in $HOSTS; do
            for ex in $EXCHANGES; do
                k=$((k + 1)); echo "[$k/$total, $(($(date +%s) - T0)) s] repeat $r, $prof, N=$n, $ex" >&2
                # shellcheck disable=SC2046
                run "$RAW/bench-$prof-np$n-$ex-r$r.json" mpi -np "$n" "$BIN" "${COMMON[@]}" $(exchange_args "$ex")
            done
        done
    done
done
for prof in $PROFILES; do
    shape_all "$prof"
    for n in $HOSTS; do
        echo "bench-allreduce: $prof, N=$n" >&2
        run "$RAW/allreduce-$prof-np$n.json" mpi -np "$n" "$BIN" bench-allreduce --repeats "$AR_REPEATS" --max-mb "$MAX_MB" --json
    done
done
shape_all plain
echo "scaling-shaped.sh: sweep took $(($(date +%s) - T0)) s" >&2
python3 "$HERE/scaling_shaped_report.py" "$OUT"
