# Sourced after lib.sh (and cl_up/cl_load): a Slurm cluster on the test hosts. munged and
# slurmctld run on host 1, one slurmd on every host (`slurmd -N <host>`, each in its own network
# and UTS namespace), every file (config, munge key, state, spool, logs) under DIR. Client
# commands must run on a test host (the controller listens on host 1's test address only):
# cl_slurm CMD... runs one on host 1 with SLURM_CONF set.
#
#   cl_slurm_up DIR        write the config, start the daemons, wait until every node is idle
#   cl_slurmd_start I      (re)start host I's slurmd
#   cl_slurmd_kill I       SIGKILL host I's slurmd only (its job steps keep running)
#   cl_slurm_down          stop every daemon (cl_down also ends them: they live in the hosts)
#
# Slurm settings that matter here: proctrack/linuxproc and task/none (no cgroups in the hosts);
# SlurmdTimeout=6 so that a dead slurmd marks its node DOWN within seconds (default 300);
# ReturnToService=2 so that a node whose slurmd comes back is usable at once; cred_expire=5 and
# sched_interval=2 so that a requeued job starts again within seconds; JobRequeue=1.
# Needs slurm-wlm and munge (Debian packages).

CL_SLURM_PIDS=()

# cl_slurm CMD...: a Slurm client command on host 1's network, given up after CL_SLURM_TIMEOUT s.
cl_slurm() { timeout "${CL_SLURM_TIMEOUT:-300}" ip netns exec "$(cl_host 1)" env SLURM_CONF="$SLURM_CONF" "$@"; }

cl_slurm_up() {
    local dir="$1" i h ncpu
    ncpu="$(nproc)"
    CL_SLURM_DIR="$dir"
    mkdir -p "$dir"/{munge,state,spool,run,etc,log,jobtmp} || return 1
    chmod 755 "$dir" "$dir/munge" "$dir/etc"
    chmod 1777 "$dir/jobtmp"
    chmod 700 "$dir/state" "$dir/spool"
    dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none && chmod 400 "$dir/munge/munge.key" || return 1
    local sock="$dir/munge/munge.socket"
    local nodes="" names=""
    for ((i = 1; i <= CL_K; i++)); do
        h="$(cl_host "$i")"
        nodes+="NodeName=$h NodeAddr=$(cl_addr "$i") CPUs=$ncpu State=UNKNOWN"$'\n'
        names+="${names:+,}$h"
    done
    cat >"$dir/etc/slurm.conf" <<EOF
# Test cluster $CL_ID: slurmctld on $(cl_host 1), one slurmd per test host (scripts/cluster/slurm.sh)
ClusterName=$(echo "$CL_ID" | tr -cd 'a-z0-9' | cut -c1-30)
SlurmctldHost=$(cl_host 1)($(cl_addr 1))
SlurmctldPort=6817
SlurmdPort=6818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$sock,cred_expire=5
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
TmpFS=$dir/jobtmp
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
SlurmdTimeout=6
MessageTimeout=5
KillWait=5
JobRequeue=1
MinJobAge=0
InactiveLimit=0
$nodes
PartitionName=test Nodes=$names Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
    printf 'CgroupAutomount=no\n' >"$dir/etc/cgroup.conf"
    chmod 644 "$dir/etc/slurm.conf" "$dir/etc/cgroup.conf"
    export SLURM_CONF="$dir/etc/slurm.conf"
    local h1; h1="$(cl_host 1)"
    cl_exec_bg "$dir/log/munged.out" "$h1" "$(command -v munged)" --foreground --force --key-file="$dir/munge/munge.key" \
        --socket="$sock" --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed"
    CL_SLURM_PIDS+=("$CL_BG_PID")
    for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
    [ -S "$sock" ] || { _cl_err "munged did not start: $(tail -n 3 "$dir/log/munged.out")"; return 1; }
    cl_exec_bg "$dir/log/slurmctld.out" "$h1" env SLURM_CONF="$SLURM_CONF" slurmctld -D -i -f "$SLURM_CONF"
    CL_SLURM_PIDS+=("$CL_BG_PID")
    for _ in $(seq 100); do [[ "$(cl_slurm scontrol ping 2>/dev/null)" == *UP* ]] && break; sleep 0.1; done
    [[ "$(cl_slurm scontrol ping 2>/dev/null)" == *UP* ]] || { _cl_err "slurmctld did not answer: $(tail -n 3 "$dir/log/slurmctld.out")"; return 1; }
    for ((i = 1; i <= CL_K; i++)); do cl_slurmd_start "$i" || return 1; done
    cl_slurm_wait_idle 30 || { _cl_err "nodes not idle: $(cl_slurm sinfo -h -N -o '%N %T' 2>&1 | tr '\n' ' ')"; return 1; }
}

# cl_slurm_wait_idle SECONDS: until every node is idle
cl_slurm_wait_idle() {
    local deadline=$(($(date +%s) + $1)) st
    while :; do
        st="$(cl_slurm sinfo -h -N -o %T 2>/dev/null | sort -u | tr '\n' ' ')"
        [ "$st" = "idle " ] && return 0
        [ "$(date +%s)" -ge "$deadline" ] && return 1
        sleep 0.2
    done
}

# slurmd insists on a cgroup file system under /sys/fs/cgroup even with proctrack/linuxproc and
# task/none, but `ip netns exec` mounts a fresh /sys (for the namespace's /sys/class/net) in a
# mount namespace of its own, with nothing under /sys/fs/cgroup. This writes a script that
# mounts there what the root namespace has there (tmpfs, cgroup v1 hierarchies, cgroup2) and
# gives the node its own TmpFS, to be run as `mount-node.sh HOST CMD...` inside that private
# mount namespace before slurmd starts: the root namespace's mounts are not touched.
_cl_cgroup_script() {
    local f="$CL_SLURM_DIR/etc/mount-node.sh"
    {
        echo '#!/bin/sh'
        echo '# Generated by scripts/cluster/slurm.sh from the root namespace'"'"'s /proc/mounts.'
        echo 'set -e'
        awk '$2 ~ "^/sys/fs/cgroup(/|$)" {
            o = ""; n = split($4, w, ",")
            for (k = 1; k <= n; k++) if (w[k] != "rw" && w[k] != "relatime" && w[k] !~ /^(nosuid|nodev|noexec|seclabel)$/) o = o (o == "" ? "" : ",") w[k]
            printf "mkdir -p %s\n", $2
            if ($3 == "tmpfs") printf "mount -t tmpfs -o mode=755 cgroup_root %s\n", $2
            else if ($3 == "cgroup") printf "mount -t cgroup -o %s cgroup %s\n", o, $2
            else if ($3 == "cgroup2") printf "mount -t cgroup2 cgroup2 %s\n", $2
        }' /proc/mounts
        # Node-local temporary space: slurmstepd's PMIx plugin makes its directories in TmpFS,
        # and two nodes sharing one directory collide (spmix_appdir_<uid>_<job>.<step>: File exists).
        echo "mkdir -p \"$CL_SLURM_DIR/jobtmp-\$1\" && mount --bind \"$CL_SLURM_DIR/jobtmp-\$1\" \"$CL_SLURM_DIR/jobtmp\""
        echo 'shift'
        echo 'exec "$@"'
    } >"$f"
    chmod 755 "$f"
    echo "$f"
}

cl_slurmd_start() {
    local i="$1" h; h="$(cl_host "$i")"
    mkdir -p "$CL_SLURM_DIR/spool/$h"
    local mnt; mnt="$(_cl_cgroup_script)"
    mkdir -p "$CL_SLURM_DIR/jobtmp-$h" && chmod 1777 "$CL_SLURM_DIR/jobtmp-$h"
    cl_exec_bg "$CL_SLURM_DIR/log/slurmd-$h.out" "$h" "$mnt" "$h" env SLURM_CONF="$SLURM_CONF" slurmd -D -N "$h" -f "$SLURM_CONF"
    CL_SLURM_PIDS+=("$CL_BG_PID")
    for _ in $(seq 100); do [ -s "$CL_SLURM_DIR/run/slurmd-$h.pid" ] && return 0; sleep 0.1; done
    _cl_err "slurmd on $h did not start: $(tail -n 3 "$CL_SLURM_DIR/log/slurmd-$h.out")"
    return 1
}

# cl_slurmd_kill I: SIGKILL host I's slurmd (by the PID in its pid file, checked to be a slurmd
# inside host I's namespace).
cl_slurmd_kill() {
    local h pid; h="$(cl_host "$1")"
    pid="$(cat "$CL_SLURM_DIR/run/slurmd-$h.pid" 2>/dev/null)"
    [[ "$pid" =~ ^[0-9]+$ ]] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = slurmd ] \
        && ip netns pids "$h" | grep -qx "$pid" || { _cl_err "no slurmd of $h to kill"; return 1; }
    kill -KILL "$pid"
    wait "$pid" 2>/dev/null   # (our own child: no "Killed" notice from the shell)
    rm -f "$CL_SLURM_DIR/run/slurmd-$h.pid"
}

cl_slurm_down() {
    local p jobs
    if [ -n "${SLURM_CONF:-}" ] && [ ${#CL_SLURM_PIDS[@]} -ge 2 ]; then
        jobs="$(cl_slurm squeue -h -o %i 2>/dev/null | tr '\n' ' ')"
        # shellcheck disable=SC2086
        [ -n "${jobs// /}" ] && cl_slurm scancel $jobs 2>/dev/null
    fi
    for ((p = ${#CL_SLURM_PIDS[@]} - 1; p >= 0; p--)); do kill -TERM "${CL_SLURM_PIDS[$p]}" 2>/dev/null; done
    for p in "${CL_SLURM_PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    CL_SLURM_PIDS=()
}
