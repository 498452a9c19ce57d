#!/usr/bin/env bash
# Tests the cluster scripts (scripts/slurm, scripts/pbs) on a throwaway one-node Slurm cluster:
# installs slurm-wlm and munge from Debian when missing, starts munged, slurmctld and slurmd on
# 127.0.0.1 with every file (config, key, state, spool, logs) in a temporary directory, and checks
#   a. rnn-dp.sbatch (srun --mpi=pmix, 2 tasks) trains the model `mpirun -np 2` trains, bitwise;
#   b. rnn-dp-mpirun.sbatch (mpirun inside the allocation) does too;
#   c. a job signalled with USR1 mid-run checkpoints, requeues itself, resumes and ends with the
#      parameters of an uninterrupted run (bitwise), both runs' output kept in its log; a job
#      cancelled with a plain scancel (SIGTERM) checkpoints and is not requeued;
#   d. rnn-dp-array.sbatch trains one model per array task, and a signalled task requeues alone;
#   e. scripts/pbs/rnn-dp.pbs parses (bash -n), and, run by hand as PBS would run it (there is no
#      PBS server here), checkpoints on SIGUSR1 and resumes when rerun, bitwise.
# Every daemon it started is stopped (by PID) and the temporary directory removed on exit
# (RNN_DP_TEST_KEEP=DIR first copies the jobs' files and the daemons' logs to DIR).
# Runs as root, or as a user with passwordless sudo (the daemons run as root). Prints PASS/FAIL
# lines and exits nonzero on any failure. Uses .build/release/rnn-dp (or $RNN_DP); does not build.
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

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        echo "FAIL: test-slurm.sh starts munged, slurmctld and slurmd as root: run it as root or as a user with passwordless sudo"
        exit 1
    fi
fi

# ---- what it needs --------------------------------------------------------------------------
# shellcheck source=setup.sh
source scripts/setup.sh
export PATH="$PATH:/usr/sbin:/sbin"   # the daemons live in sbin, not on a user's PATH
need=()
for tool in slurmctld slurmd sbatch srun scontrol squeue scancel sinfo; do
    command -v "$tool" >/dev/null 2>&1 || { need+=(slurm-wlm); break; }
done
command -v munged >/dev/null 2>&1 || need+=(munge)
command -v mpirun >/dev/null 2>&1 || need+=(openmpi-bin)
if [ ${#need[@]} -gt 0 ]; then
    note "installing ${need[*]}"
    _rnn_dp_apt "${need[@]}" || { echo "FAIL: could not install ${need[*]}"; exit 1; }
fi
MUNGED="$(command -v munged)"
if [ "$(id -u)" -eq 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
export OMPI_MCA_btl_base_warn_component_unused=0 OPENBLAS_NUM_THREADS=1

BIN="${RNN_DP:-$REPO/.build/release/rnn-dp}"
for _ in $(seq 60); do [ -x "$BIN" ] && break; sleep 1; done
[ -x "$BIN" ] || { echo "FAIL: no rnn-dp binary at $BIN (build it first: swift build -c release)"; exit 1; }
DATA="$REPO/../shared/data/tinyshakespeare.txt"
[ -f "$DATA" ] || { echo "FAIL: no training data at $DATA"; exit 1; }
DATA="$(cd "$(dirname "$DATA")" && pwd -P)/tinyshakespeare.txt"
CONFIG="$REPO/configs/cluster-test.yaml"

# Parameters are compared tensor by tensor with the safetensors package when it is there, else
# by the checksum of the tensor bytes that `rnn-dp inspect` prints.
PY_COMPARE=0
if command -v python3 >/dev/null 2>&1 && python3 -c "import safetensors.numpy, numpy" 2>/dev/null; then PY_COMPARE=1; fi
same_model() { # same_model A B: the two files hold bitwise identical tensors
    [ -f "$1" ] || { echo "  missing $1"; return 1; }
    [ -f "$2" ] || { echo "  missing $2"; return 1; }
    if [ "$PY_COMPARE" = 1 ]; then
        python3 - "$1" "$2" <<'EOF'
import sys, numpy as np
from safetensors.numpy import load_file
a, b = load_file(sys.argv[1]), load_file(sys.argv[2])
if sorted(a) != sorted(b):
    print("  tensor names differ:", sorted(set(a) ^ set(b))); sys.exit(1)
bad = [k for k in sorted(a) if a[k].dtype != b[k].dtype or a[k].shape != b[k].shape
       or a[k].tobytes() != b[k].tobytes()]
if bad:
    print("  tensors differ:", ", ".join(bad)); sys.exit(1)
print(f"  {len(a)} tensors, {sum(v.size for v in a.values())} values, bitwise equal")
EOF
    else
        local ca cb
        ca="$("$BIN" inspect "$1" | sed -n 's/^checksum: ok (\(.*\))$/\1/p')"
        cb="$("$BIN" inspect "$2" | sed -n 's/^checksum: ok (\(.*\))$/\1/p')"
        echo "  tensor checksums $ca / $cb (no python safetensors: compared with rnn-dp inspect)"
        [ -n "$ca" ] && [ "$ca" = "$cb" ]
    fi
}
model_step() { "$BIN" inspect "$1" 2>/dev/null | sed -n 's/^step: //p'; }
# (No `cmd | grep -q` under pipefail: grep may exit before cmd has written everything.)
inspect_has() { local out; out="$("$BIN" inspect "$1" 2>/dev/null)"; grep -qF -- "$2" <<<"$out"; }

# ---- the throwaway cluster ------------------------------------------------------------------
# The directory belongs to root (munged insists on root-owned directories around its key and
# socket); the jobs' files (work/) and the daemons' console output (log/) belong to the user.
TMP="$("${SUDO[@]}" mktemp -d "${TMPDIR:-/tmp}/rnn-dp-slurm.XXXXXX")" || { echo "FAIL: mktemp -d"; exit 1; }
"${SUDO[@]}" chmod 755 "$TMP"
"${SUDO[@]}" install -d -o "$(id -u)" -g "$(id -g)" "$TMP/work" "$TMP/log"
WORK="$TMP/work"
PIDS=()      # what `cmd &` returned for each daemon (the daemon, or sudo in front of it)
PIDFILES=()  # the daemon's own pid file
NAMES=()

alive() { # a process that exists and is not a zombie (works for root's processes too)
    local st
    st="$(sed -n 's/^[0-9]* (.*) \([A-Za-z]\).*/\1/p' "/proc/$1/stat" 2>/dev/null)"
    [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

stop_daemon() { # stop_daemon WRAPPER_PID PIDFILE NAME: SIGTERM, wait up to 15 s, then SIGKILL
    local wrapper="$1" pidfile="$2" name="$3" pid="$1" p i
    p="$("${SUDO[@]}" cat "$pidfile" 2>/dev/null)"
    if [[ "$p" =~ ^[0-9]+$ ]] && alive "$p"; then pid="$p"; fi
    "${SUDO[@]}" kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 150); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then
        echo "cleanup: $name (pid $pid) did not stop on SIGTERM: SIGKILL"
        "${SUDO[@]}" kill -KILL "$pid" 2>/dev/null || true
        for i in $(seq 50); do alive "$pid" || break; sleep 0.1; done
    fi
    if [ "$wrapper" != "$pid" ] && alive "$wrapper"; then
        "${SUDO[@]}" kill -TERM "$wrapper" 2>/dev/null || true
    fi
    wait "$wrapper" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "${SLURM_CONF:-}" ] && [ ${#PIDS[@]} -ge 2 ]; then
        # No job may outlive the cluster: cancel what is left and let slurmd end it.
        local jobs
        jobs="$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')"
        if [ -n "${jobs// /}" ]; then
            echo "cleanup: cancelling jobs $jobs"
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null
            for _ in $(seq 100); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.2; done
        fi
    fi
    if [ "$rc" -ne 0 ] && [ -d "$TMP/log" ]; then
        for f in "$TMP"/log/*.log "$TMP"/log/*.out; do
            [ -f "$f" ] || continue
            echo "---- last lines of $(basename "$f")"; "${SUDO[@]}" tail -n 25 "$f"
        done
    fi
    local i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_daemon "${PIDS[$i]}" "${PIDFILES[$i]}" "${NAMES[$i]}"; done
    if [ -n "${RNN_DP_TEST_KEEP:-}" ]; then   # debugging: keep the jobs' files and the daemons' logs
        mkdir -p "$RNN_DP_TEST_KEEP" && cp -r "$WORK" "$RNN_DP_TEST_KEEP/" && "${SUDO[@]}" cp -r "$TMP/log" "$RNN_DP_TEST_KEEP/" \
            && echo "test-slurm: kept the jobs' files and the daemons' logs in $RNN_DP_TEST_KEEP"
    fi
    "${SUDO[@]}" rm -rf "$TMP"
    echo "test-slurm: $(($(date +%s) - T0)) s"
    echo "test-slurm: $NPASS passed, $NFAIL failed"
    [ "$rc" -eq 0 ] && [ "$NFAIL" -gt 0 ] && rc=1
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "test-slurm: interrupted"; exit 130' INT TERM

free_port() { # a TCP port nobody listens on
    local p
    while :; do
        p=$((20000 + RANDOM % 20000))
        if command -v ss >/dev/null 2>&1; then
            ss -ltnH 2>/dev/null | awk '{print $4}' | grep -c ":$p\$" >/dev/null || { echo "$p"; return; }
        else
            (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
        fi
    done
}

HOST="$(hostname -s)"
NCPU="$(nproc)"
CTLD_PORT="$(free_port)"
SLURMD_PORT="$(free_port)"
while [ "$SLURMD_PORT" = "$CTLD_PORT" ]; do SLURMD_PORT="$(free_port)"; done
"${SUDO[@]}" mkdir -p "$TMP/munge" "$TMP/state" "$TMP/spool" "$TMP/run" "$TMP/etc" "$TMP/jobtmp"
"${SUDO[@]}" chmod 755 "$TMP/munge" "$TMP/etc"
"${SUDO[@]}" chmod 1777 "$TMP/jobtmp"
"${SUDO[@]}" chmod 700 "$TMP/state" "$TMP/spool"

"${SUDO[@]}" dd if=/dev/urandom of="$TMP/munge/munge.key" bs=1024 count=1 status=none
"${SUDO[@]}" chmod 400 "$TMP/munge/munge.key"
MUNGE_SOCKET="$TMP/munge/munge.socket"

"${SUDO[@]}" tee "$TMP/etc/slurm.conf" >/dev/null <<EOF
# Throwaway one-node cluster of scripts/test-slurm.sh
ClusterName=rnndptest
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job waits cred_expire seconds before it may start again (default 120).
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=5
StateSaveLocation=$TMP/state
SlurmdSpoolDir=$TMP/spool
SlurmctldPidFile=$TMP/run/slurmctld.pid
SlurmdPidFile=$TMP/run/slurmd.pid
SlurmctldLogFile=$TMP/log/slurmctld.log
SlurmdLogFile=$TMP/log/slurmd.log
TmpFS=$TMP/jobtmp
MailProg=/bin/true
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
KillWait=15
# Keep finished jobs' records (the test reads their state and restart count), which also makes
# sbatch --wait poll every 2 s instead of backing off to 32 s.
MinJobAge=0
InactiveLimit=0
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$NCPU State=UNKNOWN
PartitionName=test Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
"${SUDO[@]}" tee "$TMP/etc/cgroup.conf" >/dev/null <<EOF
# Not used (proctrack/linuxproc, task/none); present so nothing looks for /etc/slurm/cgroup.conf.
CgroupAutomount=no
EOF
"${SUDO[@]}" chmod 644 "$TMP/etc/slurm.conf" "$TMP/etc/cgroup.conf"
export SLURM_CONF="$TMP/etc/slurm.conf"

note "starting munged, slurmctld, slurmd in $TMP (ports $CTLD_PORT, $SLURMD_PORT)"
"${SUDO[@]}" "$MUNGED" --foreground --force --key-file="$TMP/munge/munge.key" --socket="$MUNGE_SOCKET" \
    --pid-file="$TMP/munge/munged.pid" --log-file="$TMP/munge/munged.log" \
    --seed-file="$TMP/munge/munged.seed" </dev/null >"$TMP/log/munged.out" 2>&1 &
PIDS+=($!); PIDFILES+=("$TMP/munge/munged.pid"); NAMES+=(munged)
for _ in $(seq 100); do [ -S "$MUNGE_SOCKET" ] && break; sleep 0.1; done
[ -S "$MUNGE_SOCKET" ] || { cat "$TMP/log/munged.out"; fatal "munged did not start"; }

"${SUDO[@]}" env SLURM_CONF="$SLURM_CONF" slurmctld -D -i -f "$SLURM_CONF" </dev/null >"$TMP/log/slurmctld.out" 2>&1 &
PIDS+=($!); PIDFILES+=("$TMP/run/slurmctld.pid"); NAMES+=(slurmctld)
ctld_up() { [[ "$(scontrol ping 2>/dev/null)" == *UP* ]]; }
for _ in $(seq 100); do ctld_up && break; sleep 0.1; done
ctld_up || { cat "$TMP/log/slurmctld.out"; fatal "slurmctld did not answer"; }

"${SUDO[@]}" env SLURM_CONF="$SLURM_CONF" slurmd -D -N localhost -f "$SLURM_CONF" </dev/null >"$TMP/log/slurmd.out" 2>&1 &
PIDS+=($!); PIDFILES+=("$TMP/run/slurmd.pid"); NAMES+=(slurmd)
state=""
for _ in $(seq 300); do
    state="$(sinfo -h -n localhost -o %T 2>/dev/null)"
    [ "$state" = idle ] && break
    sleep 0.1
done
[ "$state" = idle ] || { cat "$TMP/log/slurmd.out"; fatal "node not idle (state '$state')"; }
note "cluster up: node localhost idle, $NCPU CPUs"

# line_field LINE FIELD: a field of one `scontrol show job -o` line
line_field() { printf '%s\n' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1; }
# job_field JOBID FIELD: a field of `scontrol show job` (empty when the job is gone)
job_field() { line_field "$(scontrol show job -o "$1" 2>/dev/null)" "$2"; }
# wait_job_line JOBID SECONDS: until the job has ended; prints its last `scontrol show job -o`
# line, taken when it reached its final state. slurmctld can drop a cancelled job's record within
# a second (MinJobAge=0 notwithstanding; seen under load), so fields read later may be gone.
wait_job_line() {
    local id="$1" deadline=$(($(date +%s) + $2)) line st
    while :; do
        line="$(scontrol show job -o "$id" 2>/dev/null)" || line=""
        st="$(line_field "$line" JobState)"
        case "$st" in
            COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|PREEMPTED|BOOT_FAIL|DEADLINE|OUT_OF_MEMORY)
                printf '%s\n' "$line"; return 0 ;;
        esac
        [ "$(date +%s)" -ge "$deadline" ] && { printf '%s\n' "$line"; return 1; }
        sleep 0.3
    done
}
show_log() { echo "---- $1"; sed 's/^/  | /' "$1" | grep -v '^  | step \|diagnostics' | tail -n "${2:-40}"; }

cd "$WORK"
ref_run() { # ref_run DIR [key=value ...]: the same training under plain mpirun -np 2
    local dir="$1"; shift
    local sets=() kv
    for kv in "$@"; do sets+=(--set "$kv"); done
    mpirun -np 2 --oversubscribe "$BIN" train --config "$CONFIG" --set "data.path=$DATA" \
        --set "output.directory=$dir" --set training.threads=1 "${sets[@]}" >"$dir.log" 2>&1
}

# ---- a. srun --mpi=pmix against plain mpirun ------------------------------------------------
note "a. reference: mpirun -np 2 outside Slurm"
ref_run "$WORK/ref" || { show_log "$WORK/ref.log"; fatal "reference mpirun run failed"; }
note "a. sbatch --wait -n 2 scripts/slurm/rnn-dp.sbatch"
RNN_DP_OUTPUT="$WORK/a" sbatch --wait --quiet --ntasks=2 --cpus-per-task=1 --time=10 \
    --job-name=test-srun --output="$WORK/a.out" \
    "$REPO/scripts/slurm/rnn-dp.sbatch" "$CONFIG" "data.path=$DATA"
rc=$?
if [ "$rc" -eq 0 ] && grep -q "world: MPI (Open MPI), 2 ranks" "$WORK/a.out" && grep -q "1 BLAS thread per rank" "$WORK/a.out" \
    && same_model "$WORK/ref/model.safetensors" "$WORK/a/model.safetensors"; then
    pass "a. srun --mpi=pmix job (2 ranks) trains the model mpirun -np 2 trains, bitwise"
else
    show_log "$WORK/a.out"; fail "a. srun job: exit $rc, or not 2 MPI ranks with 1 thread, or a different model"
fi

# ---- b. mpirun inside the allocation --------------------------------------------------------
# (From here on the test polls scontrol itself, every 0.3 s.)
note "b. sbatch -n 2 scripts/slurm/rnn-dp-mpirun.sbatch (config and output in the environment)"
JOB="$(RNN_DP_CONFIG="$CONFIG" RNN_DP_OUTPUT="$WORK/b" sbatch --parsable --ntasks=2 --time=10 \
    --job-name=test-mpirun --output="$WORK/b.out" \
    "$REPO/scripts/slurm/rnn-dp-mpirun.sbatch" "data.path=$DATA")"
JOB="${JOB%%;*}"
line="$(wait_job_line "$JOB" 180)"
final="$(line_field "$line" JobState)"; rc="$(line_field "$line" ExitCode)"
if [ "$final" = COMPLETED ] && [ "$rc" = "0:0" ] && grep -q "world: MPI (Open MPI), 2 ranks" "$WORK/b.out" \
    && same_model "$WORK/ref/model.safetensors" "$WORK/b/model.safetensors"; then
    pass "b. mpirun-inside-the-allocation job (2 ranks) trains the same model, bitwise"
else
    show_log "$WORK/b.out"; fail "b. mpirun job: $final, exit $rc, or not 2 MPI ranks, or a different model"
fi

# ---- c. warning signal -> checkpoint -> requeue -> resume -----------------------------------
# The same run as a: its reference is the uninterrupted run. The signal goes out as soon as the
# first checkpoint (step 50 of 600) exists, so the run is stopped early in its course.
STEPS="$(model_step "$WORK/ref/model.safetensors")"
note "c. sbatch scripts/slurm/rnn-dp.sbatch, then scancel -b -s USR1 once it has checkpointed"
JOB="$(RNN_DP_OUTPUT="$WORK/c" sbatch --parsable --ntasks=2 --time=10 --job-name=test-requeue \
    --output="$WORK/c.out" "$REPO/scripts/slurm/rnn-dp.sbatch" "$CONFIG" "data.path=$DATA")"
JOB="${JOB%%;*}"
ok=1
for _ in $(seq 600); do
    [ -f "$WORK/c/checkpoints/latest" ] && break
    st="$(job_field "$JOB" JobState)"; [ "$st" = RUNNING ] || [ "$st" = PENDING ] || break
    sleep 0.1
done
if [ ! -f "$WORK/c/checkpoints/latest" ]; then
    show_log "$WORK/c.out"; fail "c. job $JOB wrote no checkpoint (state $(job_field "$JOB" JobState))"; ok=0
fi
if [ "$ok" = 1 ]; then
    scancel -b -s USR1 "$JOB" || { fail "c. scancel -b -s USR1 $JOB failed"; ok=0; }
fi
if [ "$ok" = 1 ]; then
    requeued=0
    for _ in $(seq 300); do
        r="$(job_field "$JOB" Restarts)"
        if [ -n "$r" ] && [ "$r" -ge 1 ]; then requeued=1; break; fi
        sleep 0.1
    done
    note "c. job $JOB: Restarts=$(job_field "$JOB" Restarts), state $(job_field "$JOB" JobState)"
    line="$(wait_job_line "$JOB" 240)"
    final="$(line_field "$line" JobState)"; rc="$(line_field "$line" ExitCode)"
    note "c. job $JOB ended: $final, ExitCode=$rc, Restarts=$(line_field "$line" Restarts)"
    starts="$(grep -c 'start [0-9]* (SLURM_RESTART_COUNT=' "$WORK/c.out")"
    if [ "$requeued" = 1 ] && [ "$final" = COMPLETED ] && [ "$rc" = "0:0" ] \
        && grep -q "exited with code 75" "$WORK/c.out" \
        && grep -q "start 2 (SLURM_RESTART_COUNT=1)" "$WORK/c.out" \
        && grep -q "resume: yes" "$WORK/c.out" && [ "$starts" -eq 2 ] \
        && [ "$(model_step "$WORK/c/model.safetensors")" = "$STEPS" ] \
        && same_model "$WORK/ref/model.safetensors" "$WORK/c/model.safetensors"; then
        stopped="$(sed -n 's/.*resume: yes, from .*(\(.*\))$/\1/p' "$WORK/c.out" | head -n 1)"
        pass "c. USR1 -> checkpoint ($stopped) -> requeue -> resume: same parameters as an uninterrupted run, bitwise; both starts in $(basename "$WORK/c.out")"
    else
        show_log "$WORK/c.out" 60
        fail "c. requeue: requeued=$requeued, final state ${final:-gone}, exit $rc, $starts starts logged, or a different model"
    fi
fi

# ---- c2. plain scancel (SIGTERM): checkpoint, no requeue --------------------------------------
# A SIGTERM is scancel, the end of the wall time or a preemption: the run must still checkpoint,
# and the job must stay cancelled (the script must not requeue what the user cancelled).
note "c2. sbatch scripts/slurm/rnn-dp.sbatch, then a plain scancel once it has checkpointed"
JOB="$(RNN_DP_OUTPUT="$WORK/c2" sbatch --parsable --ntasks=2 --time=10 --job-name=test-cancel \
    --output="$WORK/c2.out" "$REPO/scripts/slurm/rnn-dp.sbatch" "$CONFIG" "data.path=$DATA")"
JOB="${JOB%%;*}"
for _ in $(seq 600); do
    [ -f "$WORK/c2/checkpoints/latest" ] && break
    st="$(job_field "$JOB" JobState)"; [ "$st" = RUNNING ] || [ "$st" = PENDING ] || break
    sleep 0.1
done
scancel "$JOB"
line="$(wait_job_line "$JOB" 120)"
final="$(line_field "$line" JobState)"; restarts="$(line_field "$line" Restarts)"
sleep 1
last="$(cat "$WORK/c2/checkpoints/latest" 2>/dev/null)"
if [ "$final" = CANCELLED ] && [ "$restarts" = 0 ] && [ ! -f "$WORK/c2/model.safetensors" ] \
    && grep -q "SIGTERM received: checkpoint written" "$WORK/c2.out" && [ -n "$last" ]; then
    pass "c2. scancel (SIGTERM): checkpoint written ($last), job stays cancelled, not requeued"
else
    show_log "$WORK/c2.out"
    fail "c2. scancel: state ${final:-gone}, Restarts=$restarts, latest checkpoint '$last'"
fi

# ---- d. job array ---------------------------------------------------------------------------
# Three entries; the second is the reference run, and that task alone gets the warning signal:
# it must requeue by itself and still end with the reference parameters. Ranks by mpirun here
# (RNN_DP_LAUNCHER), so its signal and requeue path is covered too.
note "d. sbatch --array=1-3 scripts/slurm/rnn-dp-array.sbatch (mpirun), USR1 to task 2"
cat >"$WORK/sweep.txt" <<EOF
# a sweep of three runs (entries count from 1; this comment and blank lines do not count)
$CONFIG data.path=$DATA training.steps=30 model.hidden_size=16

data.path=$DATA
$CONFIG data.path=$DATA training.steps=30 model.cell=gru
EOF
JOB="$(RNN_DP_LAUNCHER=mpirun RNN_DP_OUTPUT="$WORK/sweep" sbatch --parsable --array=1-3 --ntasks=2 --time=10 \
    --job-name=test-array --output="$WORK/d-%A_%a.out" \
    "$REPO/scripts/slurm/rnn-dp-array.sbatch" "$WORK/sweep.txt" "$CONFIG")"
JOB="${JOB%%;*}"
for _ in $(seq 900); do
    [ -f "$WORK/sweep/task-2/checkpoints/latest" ] && break
    [ -z "$(squeue -h -j "$JOB" -o %i 2>/dev/null)" ] && break
    sleep 0.1
done
scancel -b -s USR1 "${JOB}_2" || fail "d. scancel -b -s USR1 ${JOB}_2 failed"
dok=1
states=""
# Wait until no task of the array is queued, running or completing any more. (Records of an
# array's finished tasks can vanish from `scontrol show job`, so the tasks' own logs, one per
# task and appended across starts, tell what happened.)
deadline=$(($(date +%s) + 240))
while [ -n "$(squeue -h -j "$JOB" -o %i 2>/dev/null)" ] && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.3; done
declare -A STARTS=() EXITS=()
for i in 1 2 3; do
    log="$(ls "$WORK"/d-*_"$i".out 2>/dev/null | head -n 1)"
    STARTS[$i]="$(cat "$log" 2>/dev/null | grep -c 'start [0-9]* (SLURM_RESTART_COUNT=')"
    EXITS[$i]="$(sed -n 's/.*rnn-dp exited with code \([0-9]*\)$/\1/p' "$log" 2>/dev/null | tr '\n' ' ')"
    states="$states task $i: ${STARTS[$i]} start(s), exit codes ${EXITS[$i]:-none};"
done
[ "${EXITS[1]}" = "0 " ] && [ "${EXITS[2]}" = "75 0 " ] && [ "${EXITS[3]}" = "0 " ] || dok=0
for i in 1 2 3; do
    m="$WORK/sweep/task-$i/model.safetensors"
    want=30; [ "$i" = 2 ] && want="$STEPS"
    if [ ! -f "$m" ] || [ "$(model_step "$m")" != "$want" ]; then
        dok=0; for f in "$WORK"/d-*_"$i".out; do [ -f "$f" ] && show_log "$f"; done
    fi
done
why=""
[ "$dok" = 1 ] || why="$why; a task did not end as expected or its model is missing or has the wrong step"
inspect_has "$WORK/sweep/task-1/model.safetensors" "model.hidden_size: 16" || why="$why; task 1 is not entry 1"
inspect_has "$WORK/sweep/task-3/model.safetensors" "model.cell: gru" || why="$why; task 3 is not entry 3"
[ "${STARTS[1]}" = 1 ] && [ "${STARTS[3]}" = 1 ] || why="$why; task 1 or 3 was restarted"
[ "${STARTS[2]}" = 2 ] && grep -c "start 2 (SLURM_RESTART_COUNT=1)" "$WORK"/d-*_2.out >/dev/null || why="$why; task 2 was not requeued once"
grep -c "resume: yes" "$WORK"/d-*_2.out >/dev/null || why="$why; task 2 did not resume"
same_model "$WORK/ref/model.safetensors" "$WORK/sweep/task-2/model.safetensors" || why="$why; task 2's model differs from the reference"
if [ -z "$why" ]; then
    pass "d. job array: 3 tasks, 3 models from their own sweep entries; task 2 alone requeued on USR1 and matches the reference, bitwise"
else
    for f in "$WORK"/d-*_2.out; do [ -f "$f" ] && show_log "$f"; done
    fail "d. job array ($states): ${why#; }"
fi

# ---- e. PBS script --------------------------------------------------------------------------
if bash -n "$REPO/scripts/pbs/rnn-dp.pbs"; then
    pass "e. scripts/pbs/rnn-dp.pbs parses (bash -n)"
else
    fail "e. scripts/pbs/rnn-dp.pbs has a syntax error"
fi
# There is no PBS server here; run the script as a PBS job would (PBS_* variables, a node file),
# stop it with SIGUSR1 as its wall-time timer would, then rerun it: it must resume and end with
# the reference parameters.
note "e2. scripts/pbs/rnn-dp.pbs in a simulated PBS job: SIGUSR1 after the first checkpoint, then a rerun"
printf '%s\n%s\n' "$(hostname)" "$(hostname)" >"$WORK/pbs_nodefile"
PBS_ENV=(env PBS_O_WORKDIR="$WORK" PBS_NODEFILE="$WORK/pbs_nodefile" PBS_JOBID=42.pbs-sim NCPUS=2
    OMP_NUM_THREADS=1 RNN_DP_REPO="$REPO" RNN_DP_CONFIG="$CONFIG" RNN_DP_OUTPUT="$WORK/pbs"
    RNN_DP_SETS="data.path=$DATA" RNN_DP_WALLTIME=01:00:00)
"${PBS_ENV[@]}" bash "$REPO/scripts/pbs/rnn-dp.pbs" >"$WORK/pbs-1.out" 2>&1 &
PBS_PID=$!
for _ in $(seq 600); do
    [ -f "$WORK/pbs/checkpoints/latest" ] && break
    kill -0 "$PBS_PID" 2>/dev/null || break
    sleep 0.1
done
kill -USR1 "$PBS_PID" 2>/dev/null
wait "$PBS_PID"
rc1=$?
"${PBS_ENV[@]}" bash "$REPO/scripts/pbs/rnn-dp.pbs" >"$WORK/pbs-2.out" 2>&1
rc2=$?
if [ "$rc1" -eq 75 ] && [ "$rc2" -eq 0 ] && grep -q "2 ranks (2 on this node), 1 threads per rank" "$WORK/pbs-1.out" \
    && grep -q "wall time 3600 s" "$WORK/pbs-1.out" && grep -q "resume: yes" "$WORK/pbs-2.out" \
    && same_model "$WORK/ref/model.safetensors" "$WORK/pbs/model.safetensors"; then
    pass "e2. PBS script: SIGUSR1 -> checkpoint (exit 75) -> rerun resumes -> same parameters, bitwise"
else
    show_log "$WORK/pbs-1.out"; show_log "$WORK/pbs-2.out"
    fail "e2. PBS script: first run exit $rc1 (want 75), rerun exit $rc2 (want 0), or a different model"
fi
for f in "$REPO"/scripts/slurm/*.sbatch "$REPO"/scripts/slurm/common.sh; do
    bash -n "$f" || fail "bash -n $f"
done

note "done"
[ "$NFAIL" -eq 0 ]
