#!/usr/bin/env bash
# A throwaway cluster of K test hosts on this machine (network + UTS namespaces, a bridge, veth
# pairs; see lib.sh for the layout), and the commands to use it. Run as root.
#
#   cluster.sh up K [--slots S] [--id ID]   make hosts ID-h1..ID-hK (default ID rnndp-<pid>, S 2);
#                                            prints the ID; export RNNDP_CLUSTER_ID=ID for the rest
#   cluster.sh down [ID]                    end their processes, remove everything named ID-*
#   cluster.sh list                         clusters whose state is in $RNNDP_CLUSTER_STATE
#   cluster.sh hosts                        the host names, one a line
#   cluster.sh exec I|HOST CMD...           run CMD on host I (1..K) or HOST
#   cluster.sh mpirun [--head I] ARGS...    mpirun ARGS on the head host (default 1) with the
#                                            options that put ranks on the test hosts over TCP
#   cluster.sh mpirun-args                  just those options
#   cluster.sh shape I|HOST|all SPEC...     tc on that link, both directions: rate=1gbit
#                                            delay=25us jitter=5ms loss=2% | clear
#   cluster.sh link I|HOST up|down          cut or restore a host's link
#   cluster.sh with K [--slots S] -- CMD... up, run CMD with RNNDP_CLUSTER_ID set, down (trap)
#   cluster.sh slurm DIR                    start munged + slurmctld on host 1 and a slurmd on
#                                            every host (files in DIR; slurm.sh); prints the
#                                            SLURM_CONF to export; `down` stops them too
#
# The ID for everything after `up` comes from --id ID (first argument), else RNNDP_CLUSTER_ID,
# else the only cluster there is.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
# shellcheck source=lib.sh
source "$HERE/lib.sh"

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
die() { echo "cluster.sh: $*" >&2; exit 2; }

[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces, veth, tc)"
[ $# -ge 1 ] || { usage; exit 2; }
cmd="$1"; shift

pick_id() {
    if [ -n "${ID:-}" ]; then return; fi
    if [ -n "${RNNDP_CLUSTER_ID:-}" ]; then ID="$RNNDP_CLUSTER_ID"; return; fi
    local ids
    ids="$(ls "$RNNDP_CLUSTER_STATE" 2>/dev/null)"
    [ "$(echo "$ids" | grep -c .)" = 1 ] || die "which cluster? pass --id ID or set RNNDP_CLUSTER_ID (clusters: ${ids:-none})"
    ID="$ids"
}
ID=""
if [ "${1:-}" = --id ]; then [ $# -ge 2 ] || die "--id needs a value"; ID="$2"; shift 2; fi

host_of() { # 3 -> ID-h3; a full name is checked against the cluster
    if [[ "$1" =~ ^[0-9]+$ ]]; then
        [ "$1" -ge 1 ] && [ "$1" -le "$CL_K" ] || die "no host $1 (1..$CL_K)"
        cl_host "$1"
    else
        [[ "$1" =~ ^$CL_ID-h([0-9]+)$ ]] && [ "${BASH_REMATCH[1]}" -le "$CL_K" ] || die "no host '$1' in cluster $CL_ID"
        echo "$1"
    fi
}

case "$cmd" in
    up)
        [ $# -ge 1 ] || die "up K"
        k="$1"; shift; slots=2
        while [ $# -gt 0 ]; do
            case "$1" in
                --slots) slots="$2"; shift 2 ;;
                --id) ID="$2"; shift 2 ;;
                *) die "up: unknown option $1" ;;
            esac
        done
        [ -n "$ID" ] || ID="rnndp-$$"
        # A failure half way removes what was made (cl_up does); so do signals.
        trap 'cl_down "$ID"; exit 130' INT TERM
        cl_up "$ID" "$k" "$slots" || exit 1
        trap - INT TERM
        echo "$ID"
        echo "cluster.sh: $k hosts up: ${CL_HOSTS[*]} ($CL_NET.1-$CL_NET.$k on $RNNDP_CLUSTER_IF); hostfile $CL_HOSTFILE" >&2
        ;;
    down)
        [ $# -ge 1 ] && ID="$1"
        pick_id
        cl_down "$ID"
        ;;
    list) ls "$RNNDP_CLUSTER_STATE" 2>/dev/null ;;
    hosts) pick_id; cl_load "$ID" || exit 2; printf '%s\n' "${CL_HOSTS[@]}" ;;
    exec)
        pick_id; cl_load "$ID" || exit 2
        [ $# -ge 2 ] || die "exec HOST CMD..."
        h="$(host_of "$1")" || exit 2; shift
        cl_exec "$h" "$@"
        ;;
    mpirun-args) pick_id; cl_load "$ID" || exit 2; cl_mpirun_args ;;
    mpirun)
        pick_id; cl_load "$ID" || exit 2
        head=1
        if [ "${1:-}" = --head ]; then head="$2"; shift 2; fi
        h="$(host_of "$head")" || exit 2
        # shellcheck disable=SC2046
        cl_exec "$h" mpirun $(cl_mpirun_args) "$@"
        ;;
    shape)
        pick_id; cl_load "$ID" || exit 2
        [ $# -ge 2 ] || die "shape HOST|all SPEC..."
        if [ "$1" = all ]; then shift; for h in "${CL_HOSTS[@]}"; do cl_shape "$h" "$@" || exit 1; done
        else h="$(host_of "$1")" || exit 2; shift; cl_shape "$h" "$@"; fi
        ;;
    link)
        pick_id; cl_load "$ID" || exit 2
        [ $# -eq 2 ] && { [ "$2" = up ] || [ "$2" = down ]; } || die "link HOST up|down"
        h="$(host_of "$1")" || exit 2
        cl_link "$h" "$2"
        ;;
    with)
        [ $# -ge 1 ] || die "with K [--slots S] -- CMD..."
        k="$1"; shift; slots=2
        while [ $# -gt 0 ] && [ "$1" != -- ]; do
            case "$1" in
                --slots) slots="$2"; shift 2 ;;
                *) die "with: unknown option $1" ;;
            esac
        done
        [ "${1:-}" = -- ] && shift
        [ $# -ge 1 ] || die "with K -- CMD..."
        [ -n "$ID" ] || ID="rnndp-$$"
        trap 'cl_down "$ID"' EXIT
        trap 'exit 130' INT TERM
        cl_up "$ID" "$k" "$slots" || exit 1
        echo "cluster.sh: $k hosts up: ${CL_HOSTS[*]}" >&2
        RNNDP_CLUSTER_ID="$ID" "$@"
        ;;
    slurm)
        pick_id; cl_load "$ID" || exit 2
        [ $# -eq 1 ] || die "slurm DIR"
        case "$1" in /*) dir="$1" ;; *) dir="$PWD/$1" ;; esac
        # shellcheck source=slurm.sh
        source "$HERE/slurm.sh"
        cl_slurm_up "$dir" || { cl_slurm_down; exit 1; }
        echo "export SLURM_CONF=$SLURM_CONF"
        echo "cluster.sh: Slurm up on ${CL_HOSTS[*]}; run clients on a test host, e.g." \
             "SLURM_CONF=$SLURM_CONF scripts/cluster/cluster.sh exec 1 sinfo" >&2
        ;;
    -h|--help|help) usage ;;
    *) die "unknown command '$cmd' (see --help)" ;;
esac
