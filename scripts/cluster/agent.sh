#!/bin/sh
# Open MPI launch agent for the test cluster (mpirun --mca plm_rsh_agent scripts/cluster/agent.sh).
# mpirun calls it the way it would call ssh: `agent.sh HOST WORD...`, where the words form one
# shell command line (PATH=...; export ...; orted -mca ... "quoted;uri"), meant for a remote
# shell. Instead of logging in somewhere, it starts that command on the test host HOST: inside
# the network namespace named HOST (ip netns exec, which also mounts /etc/netns/HOST/hosts) and a
# new UTS namespace with host name HOST. It refuses any HOST that is not a test host, so it can
# never reach a real machine. The command replaces this process (exec all the way down), so the
# daemon is mpirun's own child: killing it is what mpirun sees as "lost a remote daemon".
# (ssh options that Open MPI might put in front of the host, like -x, are skipped.)
while [ $# -gt 0 ]; do
    case "$1" in
        -*) shift ;;
        *) break ;;
    esac
done
host="$1"
[ $# -ge 2 ] || { echo "agent.sh: usage: agent.sh HOST COMMAND..." >&2; exit 255; }
shift
case "$host" in
    *[!A-Za-z0-9-]*|'') echo "agent.sh: '$host' is not a test host name" >&2; exit 255 ;;
esac
if ! expr "$host" : '[A-Za-z][A-Za-z0-9-]*-h[0-9][0-9]*$' >/dev/null || [ ! -e "/run/netns/$host" ]; then
    echo "agent.sh: no test host '$host' (no network namespace /run/netns/$host): up.sh makes them" >&2
    exit 255
fi
exec ip netns exec "$host" unshare --uts sh -c 'hostname "$0" && exec sh -c "$1"' "$host" "$*"
