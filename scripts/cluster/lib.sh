# Sourced by the scripts in scripts/cluster/: a throwaway cluster of K "hosts" on this machine.
#
# A host is a network namespace (its own interfaces, addresses, routes, sockets) plus, for every
# process started on it, a UTS namespace whose host name is the namespace's name. The hosts hang
# off one bridge that lives in a namespace of its own (the "switch"), each through a veth pair:
#
#     ID-h1 [tn0 10.213.0.1/24] ==veth== [p1]                       ID-sw: br0 (p1 ... pK)
#     ID-h2 [tn0 10.213.0.2/24] ==veth== [p2]
#     ...
#
# Nothing is added to the root namespace: no interface, no address, no route. The hosts have no
# default route and no DNS server, so no packet can leave for the real network; names resolve
# from /etc/netns/ID-hN/hosts (ip netns exec mounts it over /etc/hosts). Every name starts with
# the cluster's ID (rnndp-<pid> by default), so teardown removes exactly what this created.
#
# Needs root (or CAP_SYS_ADMIN + CAP_NET_ADMIN) and iproute2 (ip, tc) and util-linux (unshare).

RNNDP_CLUSTER_NET="${RNNDP_CLUSTER_NET:-10.213.0}"   # the hosts' /24, first three octets
RNNDP_CLUSTER_STATE="${RNNDP_CLUSTER_STATE:-/tmp/rnndp-clusters}"
RNNDP_CLUSTER_IF=tn0                                 # the test interface inside every host

_cl_err() { echo "cluster: $*" >&2; }

# cl_valid_id ID: IDs are short, start with a letter, and hold only [A-Za-z0-9-], so that
# ID-hN fits a host name and every derived interface name stays within 15 characters.
cl_valid_id() { [[ "$1" =~ ^[A-Za-z][A-Za-z0-9-]{0,39}$ ]]; }

# cl_load ID: the cluster's variables (CL_ID, CL_K, CL_NET, CL_SLOTS, CL_DIR, CL_HOSTFILE, CL_HOSTS).
cl_load() {
    local id="$1"
    cl_valid_id "$id" || { _cl_err "bad cluster id '$id'"; return 1; }
    local env="$RNNDP_CLUSTER_STATE/$id/env"
    [ -f "$env" ] || { _cl_err "no cluster '$id' (no $env; bring one up with scripts/cluster/up.sh)"; return 1; }
    # shellcheck disable=SC1090
    source "$env"
    CL_HOSTS=()
    local i
    for ((i = 1; i <= CL_K; i++)); do CL_HOSTS+=("$CL_ID-h$i"); done
}

cl_host() { echo "$CL_ID-h$1"; }          # cl_host I: the name (namespace and host name) of host I
cl_addr() { echo "$CL_NET.$1"; }          # cl_addr I: its address on the test network
cl_switch() { echo "$CL_ID-sw"; }

# cl_up ID K [SLOTS]: create the cluster. On any failure removes what it made and returns 1.
cl_up() {
    local id="$1" k="$2" slots="${3:-2}" i h
    cl_valid_id "$id" || { _cl_err "bad cluster id '$id' (letters, digits, '-'; at most 40)"; return 1; }
    [[ "$k" =~ ^[0-9]+$ ]] && [ "$k" -ge 1 ] && [ "$k" -le 200 ] || { _cl_err "K must be 1..200, not '$k'"; return 1; }
    [[ "$slots" =~ ^[0-9]+$ ]] && [ "$slots" -ge 1 ] || { _cl_err "slots must be >= 1, not '$slots'"; return 1; }
    command -v ip >/dev/null 2>&1 || { _cl_err "no 'ip' command (apt-get install iproute2)"; return 1; }
    command -v unshare >/dev/null 2>&1 || { _cl_err "no 'unshare' command (apt-get install util-linux)"; return 1; }
    if ip netns list 2>/dev/null | grep -qE "^$id-(sw|h[0-9]+)( |$)"; then
        _cl_err "namespaces named $id-* already exist: bring that cluster down first (scripts/cluster/down.sh $id)"; return 1
    fi
    CL_ID="$id"; CL_K="$k"; CL_NET="$RNNDP_CLUSTER_NET"; CL_SLOTS="$slots"
    CL_DIR="$RNNDP_CLUSTER_STATE/$id"; CL_HOSTFILE="$CL_DIR/hostfile"
    mkdir -p "$CL_DIR" || return 1
    # Written first, so that cl_down can find and remove a half-built cluster.
    cat >"$CL_DIR/env" <<EOF
CL_ID=$CL_ID
CL_K=$CL_K
CL_NET=$CL_NET
CL_SLOTS=$CL_SLOTS
CL_DIR=$CL_DIR
CL_HOSTFILE=$CL_HOSTFILE
EOF
    if ! _cl_build; then
        _cl_err "could not build cluster $id; removing what was made"
        cl_down "$id"
        return 1
    fi
    CL_HOSTS=()
    for ((i = 1; i <= k; i++)); do CL_HOSTS+=("$(cl_host "$i")"); done
    return 0
}

_cl_build() {
    local sw i h port
    sw="$(cl_switch)"
    ip netns add "$sw" || return 1
    ip -n "$sw" link set lo up || return 1
    ip -n "$sw" link add br0 type bridge stp_state 0 forward_delay 0 || return 1
    ip -n "$sw" link set br0 up || return 1
    : >"$CL_HOSTFILE"
    local hosts="127.0.0.1 localhost"$'\n'
    for ((i = 1; i <= CL_K; i++)); do hosts+="$(cl_addr "$i") $(cl_host "$i")"$'\n'; done
    for ((i = 1; i <= CL_K; i++)); do
        h="$(cl_host "$i")"; port="p$i"
        ip netns add "$h" || return 1
        # Name resolution inside the host: ip netns exec bind-mounts these over /etc/hosts and
        # /etc/resolv.conf. No nameserver line: glibc then tries 127.0.0.1, the host's own lo.
        mkdir -p "/etc/netns/$h" || return 1
        printf '%s' "$hosts" >"/etc/netns/$h/hosts" || return 1
        printf '# test cluster %s: no DNS server\n' "$CL_ID" >"/etc/netns/$h/resolv.conf" || return 1
        echo "$h" >"/etc/netns/$h/hostname"
        # The pair is made inside the switch namespace and one end moved into the host: nothing
        # ever appears in the root namespace.
        ip -n "$sw" link add "$port" type veth peer name "$RNNDP_CLUSTER_IF" netns "$h" || return 1
        ip -n "$sw" link set "$port" master br0 up || return 1
        ip -n "$h" link set lo up || return 1
        ip -n "$h" addr add "$(cl_addr "$i")/24" dev "$RNNDP_CLUSTER_IF" || return 1
        ip -n "$h" link set "$RNNDP_CLUSTER_IF" up || return 1
        echo "$h slots=$CL_SLOTS" >>"$CL_HOSTFILE"
    done
    # Every host reaches every other one before we call it up (ARP through the bridge can take a
    # moment after the links come up).
    local j ok
    for ((i = 1; i <= CL_K; i++)); do
        for ((j = 1; j <= CL_K; j++)); do
            [ "$i" = "$j" ] && continue
            ok=0
            for _ in 1 2 3 4 5 6 7 8 9 10; do
                if cl_reaches "$(cl_host "$i")" "$(cl_addr "$j")"; then ok=1; break; fi
                sleep 0.2
            done
            [ "$ok" = 1 ] || { _cl_err "$(cl_host "$i") cannot reach $(cl_addr "$j")"; return 1; }
            [ "$CL_K" -gt 8 ] && break   # large clusters: each host checks one neighbour only
        done
    done
    return 0
}

# cl_reaches HOST ADDR: a TCP connection attempt from HOST to ADDR (port 9, where nothing
# listens) is answered, by a reset or an accept, within a second. (No ping needed.)
cl_reaches() {
    local out
    out="$(ip netns exec "$1" timeout 1 bash -c "exec 3<>/dev/tcp/$2/9" 2>&1)" && return 0
    [[ "$out" == *refused* ]]
}

# cl_down ID: end every process inside the cluster's namespaces (by PID, as listed by
# `ip netns pids`), delete the namespaces, /etc/netns/ID-* and the state directory.
# Works from the names alone, so it also cleans up after a crash.
cl_down() {
    local id="$1" ns pids round
    cl_valid_id "$id" || { _cl_err "bad cluster id '$id'"; return 1; }
    local names
    names="$(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$id-(sw|h[0-9]+)$")"
    for round in TERM KILL; do
        pids=""
        for ns in $names; do pids="$pids $(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')"; done
        [ -z "${pids// /}" ] && break
        # shellcheck disable=SC2086
        kill -"$round" $pids 2>/dev/null
        for _ in $(seq 30); do
            local left=""
            for ns in $names; do left="$left$(ip netns pids "$ns" 2>/dev/null)"; done
            [ -z "$left" ] && break
            sleep 0.1
        done
    done
    for ns in $names; do ip netns del "$ns" 2>/dev/null || _cl_err "could not delete namespace $ns"; done
    local d
    for d in /etc/netns/"$id"-h*; do
        [ -d "$d" ] || continue
        [[ "$(basename "$d")" =~ ^$id-h[0-9]+$ ]] && rm -rf "$d"
    done
    rmdir /etc/netns 2>/dev/null || true   # only when empty (we may have created it)
    [ -n "$id" ] && rm -rf "${RNNDP_CLUSTER_STATE:?}/$id"
    return 0
}

# cl_exec HOST CMD...: run CMD on HOST: in its network namespace, in a new UTS namespace whose
# host name is HOST.
cl_exec() {
    local h="$1"; shift
    ip netns exec "$h" unshare --uts sh -c 'hostname "$0" && exec "$@"' "$h" "$@"
}

# cl_host_pids HOST: the PIDs of every process on HOST.
cl_host_pids() { ip netns pids "$1" 2>/dev/null; }

# cl_shape HOST SPEC...: shape HOST's link in both directions (HOST's tn0 egress towards the
# switch, the switch port's egress towards HOST). SPEC words:
#   rate=1gbit      token bucket (tbf) at this rate
#   delay=25us      added latency per direction of this link (netem)
#   jitter=5ms      netem delay variation (needs delay; normal distribution)
#   loss=2%         netem random loss
#   clear           remove all shaping from this link
# A packet between two shaped hosts crosses two links, so its one-way latency gains the delays of
# both; give each link half the host-to-host latency you want.
cl_shape() {
    local h="$1"; shift
    local rate="" delay="" jitter="" loss="" w
    local i="${h##*-h}"
    [[ "$i" =~ ^[0-9]+$ ]] || { _cl_err "shape: '$h' is not a host of this cluster"; return 1; }
    for w in "$@"; do
        case "$w" in
            rate=*) rate="${w#rate=}" ;;
            delay=*) delay="${w#delay=}" ;;
            jitter=*) jitter="${w#jitter=}" ;;
            loss=*) loss="${w#loss=}" ;;
            clear) ;;
            *) _cl_err "shape: unknown setting '$w' (rate= delay= jitter= loss= clear)"; return 1 ;;
        esac
    done
    local sw; sw="$(cl_switch)"
    local dev ns
    for pair in "$h:$RNNDP_CLUSTER_IF" "$sw:p$i"; do
        ns="${pair%%:*}"; dev="${pair#*:}"
        tc -n "$ns" qdisc del dev "$dev" root 2>/dev/null || true
        local parent="root"
        if [ -n "$delay$jitter$loss" ]; then
            local args=()
            if [ -n "$delay" ] || [ -n "$jitter" ]; then
                args+=(delay "${delay:-0us}")
                [ -n "$jitter" ] && args+=("$jitter" distribution normal)
            fi
            [ -n "$loss" ] && args+=(loss "$loss")
            # limit: packets netem may hold (the default 1000 drops at high rate x delay).
            tc -n "$ns" qdisc add dev "$dev" root handle 1: netem limit 100000 "${args[@]}" || return 1
            parent="parent 1:1"
        fi
        if [ -n "$rate" ]; then
            local bps burst limit
            bps="$(_cl_rate_bps "$rate")" || { _cl_err "shape: cannot read rate '$rate'"; return 1; }
            # burst: 200 us at the rate, at least 64 KiB (veth hands tbf GSO packets up to 64 KiB);
            # limit: 20 ms of queue at the rate, at least 1 MiB.
            burst=$((bps / 8 / 5000)); [ "$burst" -lt 65536 ] && burst=65536
            limit=$((bps / 8 / 50)); [ "$limit" -lt 1048576 ] && limit=1048576
            # shellcheck disable=SC2086
            tc -n "$ns" qdisc add dev "$dev" $parent handle 2: tbf rate "$rate" burst "$burst" limit "$limit" || return 1
        fi
    done
}

_cl_rate_bps() { # 1gbit / 10gbit / 500mbit / 100kbit -> bits per second
    local r="${1,,}" n unit
    [[ "$r" =~ ^([0-9]+)(bit|kbit|mbit|gbit)$ ]] || return 1
    n="${BASH_REMATCH[1]}"; unit="${BASH_REMATCH[2]}"
    case "$unit" in bit) echo "$n" ;; kbit) echo $((n * 1000)) ;; mbit) echo $((n * 1000000)) ;; gbit) echo $((n * 1000000000)) ;; esac
}

# cl_link HOST up|down: bring HOST's link up or down (down on both ends: a cut cable).
cl_link() {
    local h="$1" state="$2" i="${1##*-h}"
    ip -n "$(cl_switch)" link set "p$i" "$state" && ip -n "$h" link set "$RNNDP_CLUSTER_IF" "$state"
}

# cl_mpirun_args: the mpirun options that put ranks on the test hosts over TCP.
#   the hostfile and the launch agent (instead of ssh; no tree spawn, so every daemon is a child
#   of mpirun), TCP and self only, the test network for both MPI traffic and Open MPI's own
#   out-of-band channel, and no binding (K hosts share this machine's cores).
cl_mpirun_args() {
    local agent
    agent="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/agent.sh"
    echo "--hostfile $CL_HOSTFILE --mca plm_rsh_agent $agent --mca plm_rsh_no_tree_spawn 1" \
         "--mca pml ob1 --mca btl tcp,self --mca btl_tcp_if_include $CL_NET.0/24" \
         "--mca oob_tcp_if_include $CL_NET.0/24 --bind-to none"
}
