# Shared logic of the rnn-dp batch scripts (sourced by rnn-dp.sbatch, rnn-dp-mpirun.sbatch and
# rnn-dp-array.sbatch; see docs/CLUSTER.md). It launches one training run inside a Slurm
# allocation and handles preemption and wall time:
#
#   * threads per rank come from --cpus-per-task (SLURM_CPUS_PER_TASK, 1 when not given), or
#     RNN_DP_THREADS; they are passed to rnn-dp (training.threads) and to OpenBLAS/OpenMP;
#   * if the checkpoint directory already has a `latest` pointer (a requeued or resubmitted job),
#     the run continues from it with --resume;
#   * the launcher (srun or mpirun) runs in the background while the batch shell waits, so that
#     the shell can take Slurm's warning signal (--signal=B:USR1@...) and pass it on as SIGUSR1;
#     every rank then stops at the end of the step, rank 0 writes a checkpoint and rnn-dp exits
#     with code 75;
#   * on exit code 75 the job requeues itself (scontrol requeue) and starts again from the top,
#     resuming from the checkpoint; with --open-mode=append the log of every start is kept.
#
# Environment read here (all optional):
#   RNN_DP_SITE          a shell file sourced first: `module load ...`, site variables
#   RNN_DP               the rnn-dp binary (default <repo>/.build/release/rnn-dp)
#   RNN_DP_THREADS       BLAS threads per rank (default SLURM_CPUS_PER_TASK, else 1)
#   RNN_DP_CHECKPOINTS   checkpoint directory (default <output dir>/checkpoints)
#   RNN_DP_SRUN_MPI      srun --mpi plugin (default pmix)
#   RNN_DP_SRUN_ARGS     extra srun options (word-split)
#   RNN_DP_MPIRUN        the mpirun command (default mpirun)
#   RNN_DP_MPIRUN_ARGS   extra mpirun options (word-split; default binding: see below)
#   RNN_DP_REQUEUE       1 (default): requeue after a signalled stop; 0: just exit 75
#   RNN_DP_REQUEUE_ON_TERM  1: also requeue when the stop came from SIGTERM (default 0: a SIGTERM
#                        is scancel, the end of the wall time without a warning signal, or
#                        preemption, where Slurm itself decides whether the job is requeued)

rnn_dp_log() { printf '[rnn-dp-slurm %s] %s\n' "$(date '+%F %T')" "$*"; }

# Absolute form of a path relative to the job's working directory (no need for it to exist).
rnn_dp_abspath() {
    case "$1" in
        /*) printf '%s\n' "$1" ;;
        *) printf '%s/%s\n' "$PWD" "$1" ;;
    esac
}

# rnn_dp_run LAUNCHER CONFIG OUTPUT_DIR [key=value ...]
#   LAUNCHER: srun or mpirun. Returns (and the batch script should exit with) rnn-dp's exit
#   code; after a signalled stop it asks Slurm to requeue the job first.
rnn_dp_run() {
    local launcher="$1" config="$2" out="$3"
    shift 3
    if [ -n "${RNN_DP_SITE:-}" ]; then
        # shellcheck disable=SC1090
        source "$RNN_DP_SITE" || { rnn_dp_log "error: RNN_DP_SITE=$RNN_DP_SITE failed"; return 2; }
    fi
    if [ -z "$config" ]; then
        rnn_dp_log "error: no config: pass it as the first script argument or in RNN_DP_CONFIG"
        return 2
    fi
    config="$(rnn_dp_abspath "$config")"
    out="$(rnn_dp_abspath "$out")"
    local ckpt
    ckpt="$(rnn_dp_abspath "${RNN_DP_CHECKPOINTS:-$out/checkpoints}")"
    local bin="${RNN_DP:-$RNN_DP_REPO/.build/release/rnn-dp}"
    # The binary may be replaced by a rebuild while jobs start; give it a moment to reappear.
    local tries=0
    while [ ! -x "$bin" ] && [ "$tries" -lt 30 ]; do sleep 1; tries=$((tries + 1)); done
    if [ ! -x "$bin" ]; then
        rnn_dp_log "error: no rnn-dp binary at $bin (build it, or set RNN_DP)"
        return 2
    fi
    if [ ! -f "$config" ]; then
        rnn_dp_log "error: config $config does not exist"
        return 2
    fi

    local ntasks="${SLURM_NTASKS:-1}"
    local threads="${RNN_DP_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"
    export OPENBLAS_NUM_THREADS="$threads" OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads"
    # Open MPI refuses to run as root without these (containers, test clusters).
    if [ "$(id -u)" -eq 0 ]; then
        export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    fi
    export OMPI_MCA_btl_base_warn_component_unused="${OMPI_MCA_btl_base_warn_component_unused:-0}"

    local args=(train --config "$config"
        --set "output.directory=$out"
        --set "checkpoint.directory=$ckpt"
        --set "training.threads=$threads")
    local kv
    for kv in "$@"; do args+=(--set "$kv"); done
    local resumed="no"
    if [ -f "$ckpt/latest" ]; then
        args+=(--resume "$ckpt")
        resumed="yes, from $ckpt ($(cat "$ckpt/latest" 2>/dev/null))"
    elif [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then
        # A requeued attempt that died before its first checkpoint starts this job's run over.
        args+=(--overwrite)
        resumed="no (attempt $((SLURM_RESTART_COUNT + 1)) without a checkpoint: starting over)"
    fi

    local cmd=()
    case "$launcher" in
        srun)
            # Since Slurm 22.05 srun does not inherit --cpus-per-task from sbatch: pass it on.
            cmd=(srun --mpi="${RNN_DP_SRUN_MPI:-pmix}" --ntasks="$ntasks" --kill-on-bad-exit=1)
            [ -n "${SLURM_CPUS_PER_TASK:-}" ] && cmd+=(--cpus-per-task="$SLURM_CPUS_PER_TASK")
            # shellcheck disable=SC2206
            cmd+=(${RNN_DP_SRUN_ARGS:-})
            ;;
        mpirun)
            # shellcheck disable=SC2206
            cmd=(${RNN_DP_MPIRUN:-mpirun} -np "$ntasks")
            if [ -n "${RNN_DP_MPIRUN_ARGS+x}" ]; then
                # shellcheck disable=SC2206
                cmd+=(${RNN_DP_MPIRUN_ARGS})
            elif [ "$threads" -gt 1 ]; then
                # Open MPI binds each rank to one core when np <= 2, which silently limits
                # OpenBLAS to one thread. Unbound is always safe; on a dedicated node
                # RNN_DP_MPIRUN_ARGS="--map-by slot:PE=<threads> --bind-to core" pins each rank
                # to its own cores (see docs/CLUSTER.md).
                cmd+=(--bind-to none)
            fi
            ;;
        *)
            rnn_dp_log "error: unknown launcher '$launcher' (srun or mpirun)"
            return 2
            ;;
    esac
    cmd+=("$bin" "${args[@]}")

    local restarts="${SLURM_RESTART_COUNT:-0}"
    rnn_dp_log "job ${SLURM_JOB_ID:-?}${SLURM_ARRAY_TASK_ID:+ (array ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID})} start $((restarts + 1)) (SLURM_RESTART_COUNT=$restarts) on ${SLURM_JOB_NODELIST:-$(hostname)}"
    local why="default 1"
    if [ -n "${RNN_DP_THREADS:-}" ]; then why="RNN_DP_THREADS"
    elif [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then why="--cpus-per-task=$SLURM_CPUS_PER_TASK"; fi
    rnn_dp_log "ranks $ntasks, threads per rank $threads ($why), launcher $launcher"
    rnn_dp_log "output $out, checkpoints $ckpt, resume: $resumed"
    rnn_dp_log "command: ${cmd[*]}"

    # Signals: the batch shell gets Slurm's warning (B:USR1) or SIGTERM; pass each on to the
    # launcher as SIGUSR1, which both srun and Open MPI's mpirun forward to every rank (a SIGTERM
    # to mpirun would make it kill the ranks instead of letting them checkpoint).
    _rnn_dp_pid=""
    _rnn_dp_signals=0
    _rnn_dp_last_signal=""
    _rnn_dp_on_signal() {
        _rnn_dp_signals=$((_rnn_dp_signals + 1))
        _rnn_dp_last_signal="$1"
        rnn_dp_log "received SIG$1: asking rnn-dp to checkpoint and stop"
        [ -n "$_rnn_dp_pid" ] && kill -USR1 "$_rnn_dp_pid" 2>/dev/null
        return 0
    }
    trap '_rnn_dp_on_signal USR1' USR1
    trap '_rnn_dp_on_signal TERM' TERM
    trap '_rnn_dp_on_signal INT' INT

    "${cmd[@]}" &
    _rnn_dp_pid=$!
    # A signal that came before the launcher existed is passed on now. (A rank that has not yet
    # installed its handlers would die of SIGUSR1; a second later it has.)
    if [ "$_rnn_dp_signals" -gt 0 ]; then sleep 2; kill -USR1 "$_rnn_dp_pid" 2>/dev/null; fi

    # `wait` returns early (status > 128) whenever a trapped signal arrives: wait again then.
    local rc seen prev=""
    while :; do
        seen=$_rnn_dp_signals
        wait "$_rnn_dp_pid"
        rc=$?
        if [ "$rc" -eq 127 ] && [ -n "$prev" ]; then rc=$prev; break; fi
        if [ "$rc" -gt 128 ] && [ "$_rnn_dp_signals" -ne "$seen" ]; then prev=$rc; continue; fi
        break
    done
    _rnn_dp_pid=""
    rnn_dp_log "rnn-dp exited with code $rc"
    # From here on a SIGTERM is Slurm ending this run (after a requeue, say): let it.
    trap "" USR1
    trap - TERM INT

    if [ "$rc" -eq 75 ]; then
        if [ "${RNN_DP_REQUEUE:-1}" != "1" ]; then
            rnn_dp_log "stopped after a checkpoint; RNN_DP_REQUEUE=${RNN_DP_REQUEUE}: not requeueing (resubmit to continue)"
        elif [ "$_rnn_dp_last_signal" = "TERM" ] || [ "$_rnn_dp_last_signal" = "INT" ]; then
            if [ "${RNN_DP_REQUEUE_ON_TERM:-0}" = "1" ] && [ -n "${SLURM_JOB_ID:-}" ]; then
                rnn_dp_log "stopped by SIG$_rnn_dp_last_signal; RNN_DP_REQUEUE_ON_TERM=1: requeueing job $SLURM_JOB_ID"
                scontrol requeue "$SLURM_JOB_ID" || rnn_dp_log "error: scontrol requeue failed: resubmit to continue"
            else
                rnn_dp_log "stopped by SIG$_rnn_dp_last_signal (scancel, end of wall time or preemption): not requeueing; resubmit the same way to continue from the checkpoint"
            fi
        elif [ -z "${SLURM_JOB_ID:-}" ]; then
            rnn_dp_log "stopped after a checkpoint; not inside Slurm: run again to continue"
        else
            # scontrol requeue also revives finished and cancelled jobs: only requeue a job that
            # is still running (a scancel can reach the ranks before it reaches this shell).
            local state
            state="$(scontrol show job -o "$SLURM_JOB_ID" 2>/dev/null | tr ' ' '\n' | sed -n 's/^JobState=//p')"
            if [ -n "$state" ] && [ "$state" != RUNNING ]; then
                rnn_dp_log "stopped after a checkpoint, but job $SLURM_JOB_ID is $state: not requeueing; resubmit the same way to continue from the checkpoint"
            else
                rnn_dp_log "stopped after a checkpoint: requeueing job $SLURM_JOB_ID (it will resume from $ckpt)"
                scontrol requeue "$SLURM_JOB_ID" ||
                    rnn_dp_log "error: scontrol requeue failed (was the job submitted with --requeue? is requeueing allowed here?): resubmit to continue"
            fi
        fi
    fi
    return "$rc"
}
