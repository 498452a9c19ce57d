#!/usr/bin/env bash
# Tests rnn-dp across several hosts over real TCP, on a throwaway cluster of two test hosts on
# this machine (scripts/cluster/: network + UTS namespaces, a bridge in a namespace of its own,
# veth pairs, addresses of 10.213.0.0/24 that exist only inside them; mpirun starts its daemons
# through scripts/cluster/agent.sh instead of ssh, ranks talk with --mca btl tcp,self). Checks
#   0. the hosts: their own host names, only test addresses, no default route; mpirun puts
#      ranks 0,1 on host 1 and ranks 2,3 on host 2;
#   1. ranks on different hosts talk over the test link: bench-allreduce's bandwidth drops to
#      the link's rate when tc shapes it to 1 Gbit/s;
#   2. np=4 on 2 hosts with training.reproducible trains bitwise the model of np=4 on one host
#      (shared memory) and of one process;
#   3. without reproducible, np=4 on 2 hosts is within 1e-5 (relative) of one process;
#   4. 2% packet loss and 5 ms jitter on one link: the run completes with the same model, bitwise;
#   5. a link cut mid-run (ip link set down): every rank ends within training.timeout_seconds plus
#      a few seconds, each with one line naming the step and the collective; the last checkpoint
#      is intact; resuming on the host that remains reproduces the uninterrupted run, bitwise;
#      the whole job (mpirun and the lost host's daemon) ends within 30 s;
#   6. every process of one host SIGKILLed: the job ends within 30 s;
#   7. Slurm on the two hosts (slurmctld on host 1, one slurmd per host; scripts/cluster/slurm.sh):
#      a. sbatch -N 2 scripts/slurm/rnn-dp.sbatch (srun --mpi=pmix, 4 ranks) trains the
#         single-process model, bitwise (reproducible mode);
#      b. host 2's slurmd SIGKILLed mid-job: Slurm marks the node DOWN and requeues the job; once
#         that slurmd is back the job starts again, resumes from its checkpoint and ends with the
#         uninterrupted run's model, bitwise.
# Must run as root (namespaces, veth, tc); installs iproute2 with apt-get when `ip` is missing,
# slurm-wlm and munge when missing (as test-slurm.sh does), and safetensors + numpy with pip.
# If the namespaces cannot be made it FAILs (it does not skip). Everything it made is removed by name on exit (RNN_DP_TEST_KEEP=DIR first copies the
# runs' files there). Prints PASS/FAIL lines and "N passed, M failed"; exits nonzero on any
# failure. Uses .build/release/rnn-dp (or $RNN_DP); does not build. About 1.5 minutes on an idle
# 2-core machine.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$REPO"
T0=$(date +%s)
NPASS=0
NFAIL=0
pass() { echo "PASS: $*"; NPASS=$((NPASS + 1)); }
fail() { echo "FAIL: $*"; NFAIL=$((NFAIL + 1)); }
note() { echo "== [$(($(date +%s) - T0))s] $*"; }
# A failure the rest cannot go on after: the EXIT trap cleans up.
fatal() { fail "$*"; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
le() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a <= b) }'; }   # le A B: A <= B (decimals)

if [ "$(id -u)" -ne 0 ]; then
    echo "FAIL: test-multihost.sh makes network namespaces, veth pairs and tc rules: run it as root"
    echo "test-multihost: 0 passed, 1 failed"
    exit 1
fi

# ---- what it needs --------------------------------------------------------------------------
# shellcheck source=setup.sh
source scripts/setup.sh
export PATH="$PATH:/usr/sbin:/sbin"
need=()
{ command -v ip >/dev/null 2>&1 && command -v tc >/dev/null 2>&1 && command -v ss >/dev/null 2>&1; } || need+=(iproute2)
command -v unshare >/dev/null 2>&1 || need+=(util-linux)
command -v mpirun >/dev/null 2>&1 || need+=(openmpi-bin)
if [ ${#need[@]} -gt 0 ]; then
    note "installing ${need[*]}"
    _rnn_dp_apt "${need[@]}" || { echo "FAIL: could not install ${need[*]}"; echo "test-multihost: 0 passed, 1 failed"; exit 1; }
fi
if ! python3 -c "import safetensors.numpy, numpy" 2>/dev/null; then
    note "installing safetensors and numpy with pip"
    python3 -m pip install --quiet safetensors numpy 2>/dev/null \
        || python3 -m pip install --quiet --break-system-packages safetensors numpy 2>/dev/null
    python3 -c "import safetensors.numpy, numpy" 2>/dev/null \
        || { echo "FAIL: needs python3 with safetensors and numpy (pip install safetensors numpy)"; echo "test-multihost: 0 passed, 1 failed"; exit 1; }
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_base_warn_component_unused=0 OPENBLAS_NUM_THREADS=1

BIN="${RNN_DP:-$REPO/.build/release/rnn-dp}"
for _ in $(seq 60); do [ -x "$BIN" ] && break; sleep 1; done
[ -x "$BIN" ] || { echo "FAIL: no rnn-dp binary at $BIN (build it first: swift build -c release)"; echo "test-multihost: 0 passed, 1 failed"; exit 1; }
BIN="$(cd "$(dirname "$BIN")" && pwd -P)/$(basename "$BIN")"
DATA="$REPO/../shared/data/tinyshakespeare.txt"
[ -f "$DATA" ] || { echo "FAIL: no training data at $DATA"; echo "test-multihost: 0 passed, 1 failed"; exit 1; }
DATA="$(cd "$(dirname "$DATA")" && pwd -P)/tinyshakespeare.txt"

# shellcheck source=cluster/lib.sh
source "$REPO/scripts/cluster/lib.sh"
ID="rnndp-$$"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/rnn-dp-multihost.XXXXXX")" || { echo "FAIL: mktemp -d"; exit 1; }
BGPIDS=()   # mpirun jobs started in the background

cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    for p in "${BGPIDS[@]}"; do kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    if declare -F cl_slurm_down >/dev/null; then CL_SLURM_TIMEOUT=10 cl_slurm_down; fi
    cl_down "$ID"
    if ip netns list 2>/dev/null | grep -q "^$ID-"; then echo "cleanup: namespaces $ID-* are still there"; NFAIL=$((NFAIL + 1)); fi
    if [ -n "${RNN_DP_TEST_KEEP:-}" ]; then
        mkdir -p "$RNN_DP_TEST_KEEP" && cp -r "$TMP"/. "$RNN_DP_TEST_KEEP/" && echo "test-multihost: kept the runs' files in $RNN_DP_TEST_KEEP"
    fi
    rm -rf "$TMP"
    echo "test-multihost: $(($(date +%s) - T0)) s"
    echo "test-multihost: $NPASS passed, $NFAIL failed"
    [ "$rc" -eq 0 ] && [ "$NFAIL" -gt 0 ] && rc=1
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "test-multihost: interrupted"; exit 130' INT TERM

# ---- the cluster ----------------------------------------------------------------------------
note "bringing up 2 test hosts ($ID-h1, $ID-h2) on a bridge in $ID-sw"
cl_up "$ID" 2 2 || fatal "could not create the test hosts (network namespaces, veth pairs, bridge): this test needs them and does not skip"
H1="$(cl_host 1)"; H2="$(cl_host 2)"
read -r -a MPI_ARGS <<<"$(cl_mpirun_args)"
# mpi HEAD_HOST ARGS...: mpirun on a test host with the cluster's options
mpi() { local h="$1"; shift; cl_exec "$h" mpirun "${MPI_ARGS[@]}" "$@"; }
W="$TMP/runs"
mkdir -p "$W"

# The training config: a tiny LSTM (H=12), a global batch of 7 (uneven shards on 4 ranks).
cat >"$W/c.yaml" <<EOF
seed: 11
data:
  kind: text
  path: $DATA
  validation_fraction: 0.1
model:
  cell: lstm
  hidden_size: 12
  layers: 1
training:
  global_batch_size: 7
  sequence_length: 16
  steps: 300
  optimizer:
    name: sgd
    learning_rate: 0.1
    momentum: 0.9
  clip_norm: 5.0
  check_every: 50
  eval_samples: 14
  threads: 1
  timeout_seconds: 4
checkpoint:
  every: 10
  keep: 3
output:
  log_every: 50
EOF
STEPS=300
train() { # train LAUNCH... -- DIR [key=value ...]: rnn-dp train under LAUNCH (empty: one process)
    local launch=()
    while [ "$1" != -- ]; do launch+=("$1"); shift; done
    shift
    local dir="$1"; shift
    local sets=() kv
    for kv in "$@"; do sets+=(--set "$kv"); done
    ${launch[@]+"${launch[@]}"} "$BIN" train --config "$W/c.yaml" --set "output.directory=$dir" ${sets[@]+"${sets[@]}"} >"$dir.log" 2>&1
}
show_log() { echo "---- $1"; grep -v '^  \|^step \|diagnostics\|^checkpoint: ' "$1" | sed 's/^/  | /' | tail -n "${2:-25}"; }

# compare A B [TOL]: without TOL, every tensor bitwise equal; with TOL, |a-b| / max(|b|, 1e-2)
# below TOL for every value (the measure of Tests/MultiRankTests), and the files differ from an
# untrained model ($W/untrained/model.safetensors) by far more than TOL.
compare() {
    python3 - "$@" <<'EOF'
import sys, numpy as np
from safetensors.numpy import load_file
a, b = load_file(sys.argv[1]), load_file(sys.argv[2])
tol = float(sys.argv[3]) if len(sys.argv) > 3 else None
if sorted(a) != sorted(b):
    print("  tensor names differ:", sorted(set(a) ^ set(b))); sys.exit(1)
bad = [k for k in a if a[k].dtype != b[k].dtype or a[k].shape != b[k].shape]
if bad:
    print("  dtypes or shapes differ:", bad); sys.exit(1)
if tol is None:
    bad = [k for k in sorted(a) if a[k].tobytes() != b[k].tobytes()]
    if bad:
        print("  tensors differ:", ", ".join(bad)); sys.exit(1)
    print(f"  {len(a)} tensors, {sum(v.size for v in a.values())} values, bitwise equal"); sys.exit(0)
rel = lambda x, y: float(np.max(np.abs(x.astype(np.float64) - y) / np.maximum(np.abs(y.astype(np.float64)), 1e-2)))
worst = max(rel(a[k], b[k]) for k in a)
u = load_file(sys.argv[4])
moved = max(rel(b[k], u[k]) for k in b)
same = all(a[k].tobytes() == b[k].tobytes() for k in a)
print(f"  worst relative difference {worst:.3g} (tolerance {tol:g}); training moved the parameters by {moved:.3g}; bitwise equal: {same}")
sys.exit(0 if worst < tol and moved > 1000 * tol else 1)
EOF
}
model_step() { "$BIN" inspect "$1" 2>/dev/null | sed -n 's/^step: //p'; }
rank_pids() { # rank_pids HOST: the rnn-dp processes on HOST
    local p
    for p in $(cl_host_pids "$1"); do [ "$(cat "/proc/$p/comm" 2>/dev/null)" = rnn-dp ] && echo "$p"; done
}
alive_any() { local p; for p in "$@"; do [ -d "/proc/$p" ] && [ "$(sed -n 's/^[0-9]* (.*) \([A-Z]\).*/\1/p' "/proc/$p/stat" 2>/dev/null)" != Z ] && return 0; done; return 1; }

# ---- 0. the hosts ---------------------------------------------------------------------------
note "0. host names, addresses, routes, rank placement"
why=""
for i in 1 2; do
    h="$(cl_host "$i")"
    [ "$(cl_exec "$h" hostname)" = "$h" ] || why="$why; $h does not call itself $h"
    addrs="$(ip -n "$h" -4 -o addr show | awk '{print $2, $4}' | tr '\n' ' ')"
    [ "$addrs" = "lo 127.0.0.1/8 tn0 $(cl_addr "$i")/24 " ] || why="$why; $h has addresses '$addrs'"
    [ -z "$(ip -n "$h" route show default)" ] || why="$why; $h has a default route"
    [ -z "$(ip -n "$h" -6 route show default)" ] || why="$why; $h has an IPv6 default route"
done
[ -z "$(ip -4 -o addr show | grep -F " $CL_NET.")" ] || why="$why; an address of $CL_NET.0/24 exists in the root namespace"
[ -z "$(ip -o link show | grep -E ' (tn0|p[0-9]+)[@:]')" ] || why="$why; a test interface exists in the root namespace"
[ "$(hostname)" != "$H1" ] || why="$why; the root namespace's host name changed"
mpi "$H1" -np 4 sh -c 'echo "$OMPI_COMM_WORLD_RANK $(hostname)"' >"$W/placement.txt" 2>&1 || why="$why; mpirun -np 4 hostname failed"
placement="$(sort -n "$W/placement.txt" | tr '\n' ' ')"
[ "$placement" = "0 $H1 1 $H1 2 $H2 3 $H2 " ] || why="$why; rank placement is '$placement'"
if [ -z "$why" ]; then
    pass "0. two test hosts with their own names, only 10.213.0.x addresses, no default route; ranks 0,1 on $H1, 2,3 on $H2"
else
    fail "0. ${why#; }"
fi

# ---- 1. TCP across hosts: bandwidth follows the shaped link ----------------------------------
bw_at() { # bw_at FILE BYTES: algorithm bandwidth (GB/s) of bench-allreduce --json at BYTES
    python3 -c '
import json, sys
for line in open(sys.argv[1]):
    line = line.strip()
    if line.startswith("{"):
        o = json.loads(line)
        if o.get("bytes") == int(sys.argv[2]):
            print("%.4f" % (o["bytes"] / o["seconds"] / 1e9)); break
' "$1" "$2"
}
note "1. bench-allreduce, one rank per host: plain link, then both links shaped to 1 Gbit/s"
mpi "$H1" -np 2 --map-by node "$BIN" bench-allreduce --repeats 10 --max-mb 1 --json >"$W/ar-plain.json" 2>"$W/ar-plain.err"
rc1=$?
cl_shape "$H1" rate=1gbit && cl_shape "$H2" rate=1gbit || fail "1. tc could not shape the links"
mpi "$H1" -np 2 --map-by node "$BIN" bench-allreduce --repeats 10 --max-mb 1 --json >"$W/ar-1g.json" 2>"$W/ar-1g.err"
rc2=$?
cl_shape "$H1" clear; cl_shape "$H2" clear
plain="$(bw_at "$W/ar-plain.json" 1048576)"; shaped="$(bw_at "$W/ar-1g.json" 1048576)"
echo "  1 MiB allreduce: ${plain:-?} GB/s on the plain link, ${shaped:-?} GB/s at 1 Gbit/s (line rate 0.125 GB/s)"
# On 2 ranks each sends and receives n bytes per allreduce of n bytes: at most 0.125 GB/s.
if [ "$rc1" = 0 ] && [ "$rc2" = 0 ] && [ -n "$plain" ] && [ -n "$shaped" ] \
    && le "$shaped" 0.14 && le 0.01 "$shaped" && le "$(awk -v s="$shaped" 'BEGIN { print 2 * s }')" "$plain"; then
    pass "1. ranks on two hosts talk over the test link: 1 MiB allreduce ${plain} GB/s plain, ${shaped} GB/s with the links shaped to 1 Gbit/s"
else
    cat "$W/ar-plain.err" "$W/ar-1g.err" | tail -n 20
    fail "1. bench-allreduce (exit $rc1, $rc2): bandwidth ${plain:-?} GB/s plain, ${shaped:-?} GB/s shaped (want 0.01-0.14 shaped and at most half the plain rate)"
fi

# ---- 2. reproducible: 2 hosts = 1 host = 1 process, bitwise ------------------------------------
note "2. training.reproducible: np=4 on 2 hosts, np=4 on one host (shared memory), one process"
R=(training.reproducible=true)
train mpi "$H1" -np 4 -- "$W/r-2hosts" "${R[@]}"; rc_a=$?
train mpirun -np 4 --oversubscribe --bind-to none -- "$W/r-1host" "${R[@]}"; rc_b=$?
train -- "$W/r-np1" "${R[@]}"; rc_c=$?
if [ "$rc_a$rc_b$rc_c" = 000 ] && grep -q "world: MPI (Open MPI), 4 ranks, 2 on this node" "$W/r-2hosts.log" \
    && grep -q "replicas: parameters bitwise identical on all 4 ranks at step $STEPS" "$W/r-2hosts.log" \
    && compare "$W/r-2hosts/model.safetensors" "$W/r-1host/model.safetensors" \
    && compare "$W/r-2hosts/model.safetensors" "$W/r-np1/model.safetensors"; then
    pass "2. reproducible mode: np=4 on 2 hosts (TCP) = np=4 on one host (shared memory) = 1 process, bitwise ($STEPS steps)"
else
    for f in r-2hosts r-1host r-np1; do show_log "$W/$f.log" 10; done
    fail "2. reproducible runs: exit codes $rc_a/$rc_b/$rc_c, or not 4 ranks with 2 per host, or the models differ"
fi

# ---- 3. default exchange: within 1e-5 of one process --------------------------------------------
note "3. default exchange: np=4 on 2 hosts against one process"
S3=40
train mpi "$H1" -np 4 -- "$W/f-2hosts" training.steps=$S3; rc_a=$?
train -- "$W/f-np1" training.steps=$S3; rc_b=$?
train -- "$W/untrained" training.steps=0; rc_c=$?
if [ "$rc_a$rc_b$rc_c" = 000 ] && grep -q "replicas: parameters bitwise identical on all 4 ranks at step $S3" "$W/f-2hosts.log" \
    && compare "$W/f-2hosts/model.safetensors" "$W/f-np1/model.safetensors" 1e-5 "$W/untrained/model.safetensors"; then
    pass "3. float32 allreduce over TCP: np=4 on 2 hosts within 1e-5 of one process ($S3 steps)"
else
    show_log "$W/f-2hosts.log" 10
    fail "3. default exchange: exit codes $rc_a/$rc_b/$rc_c, or the model is not within 1e-5 of one process"
fi

# ---- 4. 2% loss and 5 ms jitter on one link --------------------------------------------------
note "4. host 2's link: delay 5 ms, jitter 5 ms, 2% loss (both directions)"
S4=30
cl_shape "$H2" delay=5ms jitter=5ms loss=2% || fail "4. tc netem failed"
t4="$(now)"
train mpi "$H1" -np 4 -- "$W/lossy" "${R[@]}" training.steps=$S4 training.timeout_seconds=120; rc_a=$?
d4="$(since "$t4")"
# Packets the emulator dropped, both directions: netem's counters, or linkem's (printed when it
# stops, on clear) where the kernel has no netem.
drops="$(tc -s -n "$H2" qdisc show dev tn0 | sed -n '/netem/,/dropped/s/.*dropped \([0-9]*\).*/\1/p' | head -n 1)"
drops_sw="$(tc -s -n "$(cl_switch)" qdisc show dev p2 | sed -n '/netem/,/dropped/s/.*dropped \([0-9]*\).*/\1/p' | head -n 1)"
drops=$(( ${drops:-0} + ${drops_sw:-0} ))
cl_shape "$H2" clear
train -- "$W/lossy-np1" "${R[@]}" training.steps=$S4; rc_b=$?
emu=netem
if [ -f "$CL_DIR/linkem-h2.log" ]; then
    emu="linkem, as this kernel has no netem"
    read -r ldrops lfwd <<<"$(cl_linkem_counts 2)"
    drops=$((drops + ${ldrops:-0}))
    echo "  linkem: $(tail -n 1 "$CL_DIR/linkem-h2.log")"
fi
echo "  $S4 steps in $d4 s; $emu dropped $drops packets on host 2's link"
if [ "$rc_a$rc_b" = 00 ] && [ "$drops" -gt 0 ] \
    && compare "$W/lossy/model.safetensors" "$W/lossy-np1/model.safetensors"; then
    pass "4. 2% loss + 5 ms jitter on one link ($emu): the run completes (${d4} s, $drops packets dropped) with the same model, bitwise"
else
    show_log "$W/lossy.log"
    fail "4. lossy link: exit codes $rc_a/$rc_b, no packets dropped ($drops), or a different model"
fi

# ---- 5. a link cut mid-run ---------------------------------------------------------------------
TIMEOUT=4
note "5. cut host 2's link mid-run (training.timeout_seconds=$TIMEOUT), then resume on host 1"
rm -rf "$W/cut"
cl_exec "$H1" mpirun "${MPI_ARGS[@]}" -np 4 --output-filename "$W/cut-ranks" "$BIN" train --config "$W/c.yaml" \
    --set "output.directory=$W/cut" --set training.reproducible=true --set training.timeout_seconds=$TIMEOUT \
    >"$W/cut.log" 2>&1 &
CUTPID=$!
BGPIDS+=("$CUTPID")
for _ in $(seq 300); do
    [ "$(sed 's/[^0-9]//g' "$W/cut/checkpoints/latest" 2>/dev/null | sed 's/^0*//')" -ge 60 ] 2>/dev/null && break
    alive_any "$CUTPID" || break
    sleep 0.05
done
P1=($(rank_pids "$H1")); P2=($(rank_pids "$H2"))
# The ranks on host 2 hold TCP connections to host 1's address, on the test interface.
tcp2="$(ip netns exec "$H2" ss -Htnp state established 2>/dev/null | grep -F 'rnn-dp' | grep -cF " $(cl_addr 1):")"
tcut="$(now)"
cl_link "$H2" down || fail "5. could not bring host 2's link down"
ended=""
for _ in $(seq 600); do
    alive_any "${P1[@]}" "${P2[@]}" || { ended="$(since "$tcut")"; break; }
    sleep 0.05
done
job=""
for _ in $(seq 400); do   # about 40 s
    if ! alive_any "$CUTPID" && [ -z "$(cl_host_pids "$H2")" ]; then job="$(since "$tcut")"; break; fi
    sleep 0.1
done
wait "$CUTPID"; rc_cut=$?
echo "  ranks: ${#P1[@]} on host 1, ${#P2[@]} on host 2 (host 2 had $tcp2 TCP connections from rnn-dp to $(cl_addr 1)); all ranks ended ${ended:-never} s after the cut, the whole job ${job:-not within 40} s after it"
why=""
[ "${#P1[@]}" = 2 ] && [ "${#P2[@]}" = 2 ] || why="$why; not 2 ranks per host when the link was cut"
[ "${tcp2:-0}" -ge 2 ] || why="$why; host 2's ranks had no TCP connections to host 1"
[ -n "$ended" ] && le "$ended" $((TIMEOUT + 4)) || why="$why; the ranks did not all end within $((TIMEOUT + 4)) s"
[ -n "$job" ] && le "$job" 30 || why="$why; mpirun or host 2's daemon still ran 30 s after the cut"
[ "$rc_cut" -ne 0 ] || why="$why; mpirun exited 0"
[ ! -f "$W/cut/model.safetensors" ] || why="$why; the run finished before the cut (no mid-run cut)"
err_step=""
for r in 0 1 2 3; do
    f="$W/cut-ranks/1/rank.$r/stderr"
    n="$(grep -c "^rnn-dp: error (rank $r): step [0-9]*: .* did not complete within $TIMEOUT.0 s (training.timeout_seconds)" "$f" 2>/dev/null)"
    [ "$n" = 1 ] || { why="$why; rank $r printed ${n:-no} watchdog lines"; continue; }
    line="$(grep "^rnn-dp: error (rank $r)" "$f")"
    echo "  rank $r: $line"
    s="$(sed -n 's/^rnn-dp: error (rank [0-9]*): step \([0-9]*\): \(.*\) did not complete.*/\1/p' <<<"$line")"
    c="$(sed -n 's/^rnn-dp: error (rank [0-9]*): step [0-9]*: \(.*\) did not complete.*/\1/p' <<<"$line")"
    [ -n "$s" ] && [ -n "$c" ] || why="$why; rank $r's line names no step or collective"
    [ "$r" = 0 ] && err_step="$s"
done
latest="$W/cut/checkpoints/$(cat "$W/cut/checkpoints/latest" 2>/dev/null)"
ck_step="$(model_step "$latest")"
ck_ok="$("$BIN" inspect "$latest" 2>/dev/null | grep -c '^checksum: ok')"
echo "  last checkpoint: $(basename "$latest"), step ${ck_step:-?}, checksum ok: ${ck_ok:-0}"
[ "${ck_ok:-0}" -ge 1 ] || why="$why; the last checkpoint is not intact"
[ -n "$ck_step" ] && [ -n "$err_step" ] && [ "$ck_step" -le "$err_step" ] && [ "$ck_step" -ge 60 ] || why="$why; checkpoint step '${ck_step}' not in 60..error step '${err_step}'"
if [ -z "$why" ]; then
    pass "5a. link cut at step ~$err_step: every rank ended ${ended} s later (timeout $TIMEOUT s) with one line naming the step and the collective; job over in ${job} s; checkpoint of step $ck_step intact"
else
    show_log "$W/cut.log"
    fail "5a. link cut: ${why#; }"
fi
# Resume on the host that remains (host 2's link still down): 2 ranks on host 1.
mpi "$H1" -np 2 --host "$H1:2" "$BIN" train --resume "$W/cut/checkpoints" >"$W/cut-resume.log" 2>&1
rc_res=$?
if [ "$rc_res" = 0 ] && grep -q "world: MPI (Open MPI), 2 ranks, 2 on this node" "$W/cut-resume.log" \
    && [ "$(model_step "$W/cut/model.safetensors")" = "$STEPS" ] \
    && compare "$W/cut/model.safetensors" "$W/r-2hosts/model.safetensors"; then
    pass "5b. resumed on host 1 alone (2 ranks) from step $ck_step: the final model is bitwise the uninterrupted 2-host run's"
else
    show_log "$W/cut-resume.log"
    fail "5b. resume on host 1: exit $rc_res, or not 2 ranks, or a different model"
fi
cl_link "$H2" up || fail "5. could not bring host 2's link back up"

# ---- 6. every process of one host SIGKILLed ------------------------------------------------------
note "6. SIGKILL every process on host 2 mid-run (watchdog off: Open MPI must notice)"
for _ in $(seq 50); do cl_reaches "$H1" "$(cl_addr 2)" && break; sleep 0.1; done
rm -rf "$W/kill"
cl_exec "$H1" mpirun "${MPI_ARGS[@]}" -np 4 "$BIN" train --config "$W/c.yaml" --set "output.directory=$W/kill" \
    --set training.steps=1000000 --set training.timeout_seconds=0 >"$W/kill.log" 2>&1 &
KPID=$!
BGPIDS+=("$KPID")
for _ in $(seq 300); do [ -f "$W/kill/checkpoints/latest" ] && break; alive_any "$KPID" || break; sleep 0.05; done
P1=($(rank_pids "$H1")); V=($(cl_host_pids "$H2"))
tkill="$(now)"
[ ${#V[@]} -gt 0 ] && kill -KILL "${V[@]}"
job=""
for _ in $(seq 400); do
    alive_any "$KPID" "${P1[@]}" || { job="$(since "$tkill")"; break; }
    sleep 0.1
done
wait "$KPID"; rc_kill=$?
echo "  killed ${#V[@]} processes on host 2; mpirun and host 1's ${#P1[@]} ranks ended ${job:-not within 40} s later (exit $rc_kill)"
if [ "${#V[@]}" -ge 3 ] && [ "${#P1[@]}" = 2 ] && [ -n "$job" ] && le "$job" 30 && [ "$rc_kill" -ne 0 ]; then
    pass "6. every process of host 2 SIGKILLed: the job ended in ${job} s"
else
    show_log "$W/kill.log"
    fail "6. SIGKILL of host 2: ${#V[@]} processes killed, ${#P1[@]} ranks on host 1, job end after ${job:-more than 40} s, exit $rc_kill"
fi

# ---- 7. Slurm across the two hosts ---------------------------------------------------------------
note "7. Slurm: slurmctld on host 1, one slurmd per host"
# shellcheck source=cluster/slurm.sh
source "$REPO/scripts/cluster/slurm.sh"
need=()
for tool in slurmctld slurmd sbatch srun scontrol squeue sinfo; do command -v "$tool" >/dev/null 2>&1 || { need+=(slurm-wlm); break; }; done
command -v munged >/dev/null 2>&1 || need+=(munge)
if [ ${#need[@]} -gt 0 ]; then
    note "installing ${need[*]}"
    _rnn_dp_apt "${need[@]}" || fatal "7. could not install ${need[*]}"
fi
cl_slurm_up "$TMP/slurm" || fatal "7. the two-node Slurm cluster did not come up"
nodes="$(cl_slurm sinfo -h -N -o '%N %T' | tr '\n' ' ')"
echo "  nodes: $nodes"
# What the ranks need to talk over the test network (srun passes the environment on).
SLURM_ENV=(env RNN_DP="$BIN" OMPI_MCA_pml=ob1 OMPI_MCA_btl=tcp,self OMPI_MCA_btl_tcp_if_include="$CL_NET.0/24"
    OMPI_MCA_oob_tcp_if_include="$CL_NET.0/24" OMPI_MCA_mpi_yield_when_idle=1)
job_field() { cl_slurm scontrol show job -o "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1; }

note "7a. sbatch -N 2 --ntasks-per-node=2 scripts/slurm/rnn-dp.sbatch (srun --mpi=pmix), reproducible"
CL_SLURM_TIMEOUT=120 cl_slurm "${SLURM_ENV[@]}" RNN_DP_OUTPUT="$W/slurm-a" sbatch --wait --quiet -N 2 --ntasks-per-node=2 \
    --ntasks=4 --time=10 --job-name=mh-a --output="$W/slurm-a.out" "$REPO/scripts/slurm/rnn-dp.sbatch" "$W/c.yaml" \
    training.reproducible=true
rc=$?
if [ "$rc" = 0 ] && grep -q "world: MPI (Open MPI), 4 ranks, 2 on this node" "$W/slurm-a.out" \
    && grep -q "on $ID-h\[1-2\]" "$W/slurm-a.out" \
    && compare "$W/slurm-a/model.safetensors" "$W/r-np1/model.safetensors"; then
    pass "7a. sbatch -N 2: srun --mpi=pmix runs 4 ranks on both Slurm nodes and trains the single-process model, bitwise"
else
    show_log "$W/slurm-a.out"
    fail "7a. two-node sbatch: exit $rc, or not 4 ranks on $ID-h[1-2], or a different model"
fi

note "7b. one node's slurmd dies mid-job: Slurm marks it DOWN and requeues; slurmd back: the job resumes"
S7=20000  # long enough (~60 s; 6000 steps finished before the node was declared DOWN on a fast run) that the node is declared DOWN (~15 s) before the job ends
train -- "$W/slurm-b-ref" training.reproducible=true training.steps=$S7 training.check_every=500; rc_ref=$?
JOB="$(cl_slurm "${SLURM_ENV[@]}" RNN_DP_OUTPUT="$W/slurm-b" sbatch --parsable -N 2 --ntasks-per-node=2 --ntasks=4 \
    --time=10 --job-name=mh-b --output="$W/slurm-b.out" "$REPO/scripts/slurm/rnn-dp.sbatch" "$W/c.yaml" \
    training.reproducible=true training.steps=$S7 training.check_every=500 training.timeout_seconds=20)"
JOB="${JOB%%;*}"
for _ in $(seq 600); do [ -f "$W/slurm-b/checkpoints/latest" ] && break; sleep 0.1; done
tk="$(now)"
cl_slurmd_kill 2 || fail "7b. could not kill host 2's slurmd"
down=""; restarts=""
for _ in $(seq 600); do   # until the job is requeued (pending again, Restarts=1)
    st="$(job_field "$JOB" JobState)"; restarts="$(job_field "$JOB" Restarts)"
    [ "${restarts:-0}" -ge 1 ] && { down="$(since "$tk")"; break; }
    case "$st" in COMPLETED|FAILED|CANCELLED|TIMEOUT) break ;; esac
    sleep 0.1
done
node2="$(cl_slurm sinfo -h -n "$(cl_host 2)" -o %T)"
echo "  job $JOB: requeued ${down:-never} s after host 2's slurmd died (node state then: $node2)"
cl_slurmd_start 2 || fail "7b. could not restart host 2's slurmd"
final=""
for _ in $(seq 1200); do
    st="$(job_field "$JOB" JobState)"
    case "$st" in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL) final="$st"; break ;; esac
    sleep 0.2
done
echo "  job $JOB ended $final after $(since "$tk") s; $(grep -c 'start [0-9]* (SLURM_RESTART_COUNT=' "$W/slurm-b.out") starts in its log"
if [ "$rc_ref" = 0 ] && [ -n "$down" ] && [ "$final" = COMPLETED ] && grep -q "start 2 (SLURM_RESTART_COUNT=1)" "$W/slurm-b.out" \
    && grep -q "resume: yes" "$W/slurm-b.out" \
    && compare "$W/slurm-b/model.safetensors" "$W/slurm-b-ref/model.safetensors"; then
    pass "7b. slurmd of host 2 killed: job requeued after ${down} s, resumed on both nodes once slurmd was back, same model as one uninterrupted process, bitwise"
else
    show_log "$W/slurm-b.out" 40
    fail "7b. requeue on a dead slurmd: requeued after ${down:-never} s, final state ${final:-?}, or no second start, no resume, or a different model"
fi
cl_slurm_down

note "done"
[ "$NFAIL" -eq 0 ]
