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
RNNDP_CLUSTER_TCP_RETRIES2="${RNNDP_CLUSTER_TCP_RETRIES2:-5}"

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
        # A host whose peer vanished (cut link) gives up on a connection with unacknowledged data
        # after tcp_retries2 retransmissions: 5 is about 13 s instead of Linux's 15 minutes, so
        # that Open MPI's daemons notice a lost host. (A per-namespace setting.)
        ip netns exec "$h" sysctl -qw "net.ipv4.tcp_retries2=$RNNDP_CLUSTER_TCP_RETRIES2" || return 1
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

# cl_exec_bg LOG HOST CMD...: cl_exec in the background, stdin from /dev/null, output appended to
# LOG; CL_BG_PID is then the PID of CMD itself (ip netns exec, unshare and sh all exec).
cl_exec_bg() {
    local log="$1" h="$2"; shift 2
    ip netns exec "$h" unshare --uts sh -c 'hostname "$0" && exec "$@"' "$h" "$@" </dev/null >>"$log" 2>&1 &
    CL_BG_PID=$!
}

# cl_host_pids HOST: the PIDs of every process on HOST.
cl_host_pids() { ip netns pids "$1" 2>/dev/null; }

# cl_shape HOST SPEC...: shape HOST's link in both directions (towards the switch and from it).
# SPEC words:
#   rate=1gbit      token bucket (tbf) at this rate, on HOST's tn0 and on the switch's port
#   delay=25us      added latency per direction of this link
#   jitter=5ms      delay variation (normal distribution; frames may be reordered, as with netem)
#   loss=2%         random loss per direction
#   clear           remove all shaping from this link
# Delay, jitter and loss use tc's netem where the kernel has it; where it does not (this
# project's test machine: tbf and htb but no netem), linkem (linkem.c, built with cc on first use)
# forwards the link's frames between the host's switch port and a second veth pair into the
# bridge, adding them in user space. RNNDP_CLUSTER_EMULATOR=netem|linkem forces one.
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
    _cl_linkem_stop "$i"
    local pair dev ns
    for pair in "$h:$RNNDP_CLUSTER_IF" "$sw:p$i"; do
        ns="${pair%%:*}"; dev="${pair#*:}"
        tc -n "$ns" qdisc del dev "$dev" root 2>/dev/null || true
    done
    local emu=""
    if [ -n "$delay$jitter$loss" ]; then
        emu="${RNNDP_CLUSTER_EMULATOR:-auto}"
        if [ "$emu" = auto ]; then
            if tc -n "$sw" qdisc add dev lo root netem delay 0us 2>/dev/null; then
                tc -n "$sw" qdisc del dev lo root; emu=netem
            else emu=linkem; fi
        fi
    fi
    if [ "$emu" = linkem ]; then
        local us_d us_j ppm
        us_d="$(_cl_time_us "${delay:-0us}")" || { _cl_err "shape: cannot read delay '$delay'"; return 1; }
        us_j="$(_cl_time_us "${jitter:-0us}")" || { _cl_err "shape: cannot read jitter '$jitter'"; return 1; }
        ppm="$(awk -v l="${loss:-0%}" 'BEGIN { sub(/%$/, "", l); if (l !~ /^[0-9.]+$/) exit 1; printf "%d", l * 10000 }')" \
            || { _cl_err "shape: cannot read loss '$loss' (a percentage)"; return 1; }
        _cl_linkem_start "$i" "$us_d" "$us_j" "$ppm" || return 1
    fi
    for pair in "$h:$RNNDP_CLUSTER_IF" "$sw:p$i"; do
        ns="${pair%%:*}"; dev="${pair#*:}"
        local parent="root"
        if [ "$emu" = netem ]; then
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

# linkem on host I's link: port pI leaves the bridge; linkem forwards between pI and rI, whose
# veth peer qI is the bridge port instead. Its log (with the counts, written when it stops) is
# $CL_DIR/linkem-hI.log.
_cl_linkem_start() {
    local i="$1" sw; sw="$(cl_switch)"
    local src; src="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/linkem.c"
    if [ ! -x "$CL_DIR/linkem" ] || [ "$src" -nt "$CL_DIR/linkem" ]; then
        cc -O2 -Wall -o "$CL_DIR/linkem" "$src" -lm || { _cl_err "cannot build linkem (needs a C compiler)"; return 1; }
    fi
    ip -n "$sw" link add "q$i" type veth peer name "r$i" || return 1
    ip -n "$sw" link set "p$i" nomaster || return 1
    ip -n "$sw" link set "q$i" master br0 up || return 1
    ip -n "$sw" link set "r$i" up || return 1
    ip netns exec "$sw" "$CL_DIR/linkem" "p$i" "r$i" "$2" "$3" "$4" "$i" </dev/null >>"$CL_DIR/linkem-h$i.log" 2>&1 &
    echo $! >"$CL_DIR/linkem-h$i.pid"
    local _
    for _ in $(seq 50); do   # until it has bound its sockets (or died)
        kill -0 "$(cat "$CL_DIR/linkem-h$i.pid")" 2>/dev/null || { _cl_err "linkem on link $i died: $(tail -n 2 "$CL_DIR/linkem-h$i.log")"; return 1; }
        [ -n "$(ip netns exec "$sw" cat /proc/net/packet 2>/dev/null | awk 'NR > 1' | head -n 2)" ] && break
        sleep 0.05
    done
}

_cl_linkem_stop() {
    local i="$1" sw pid; sw="$(cl_switch)"
    pid="$(cat "$CL_DIR/linkem-h$i.pid" 2>/dev/null)"
    if [[ "$pid" =~ ^[0-9]+$ ]]; then
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
        rm -f "$CL_DIR/linkem-h$i.pid"
    fi
    if ip -n "$sw" link show "q$i" >/dev/null 2>&1; then
        ip -n "$sw" link del "q$i"
        ip -n "$sw" link set "p$i" master br0 up
    fi
    return 0
}

# cl_linkem_counts I: "dropped forwarded" summed over both directions, from the last line linkem
# wrote to its log when it stopped.
cl_linkem_counts() {
    tail -n 1 "$CL_DIR/linkem-h$1.log" 2>/dev/null \
        | awk '{ n = split($0, w, " "); f = 0; d = 0; for (k = 1; k <= n; k++) { if (w[k] ~ /^forwarded/) f += w[k-1]; if (w[k] ~ /^dropped/) d += w[k-1] } print d, f }'
}

_cl_time_us() { # 25us / 5ms / 1s / 100 (us) -> microseconds
    awk -v t="$1" 'BEGIN {
        if (match(t, /^[0-9.]+/) == 0) exit 1
        v = substr(t, 1, RLENGTH); u = substr(t, RLENGTH + 1)
        if (u == "us" || u == "") f = 1; else if (u == "ms") f = 1000; else if (u == "s") f = 1000000; else exit 1
        printf "%d", v * f }'
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
#   out-of-band channel, and no binding (K hosts share this machine's cores); ranks yield the CPU
#   while they wait (the hosts share 2 cores: a spinning rank slows a computing one ~10x);
#   TCP keepalive on the out-of-band channel (idle 10 s, 3 probes 2 s apart) so that mpirun and
#   the daemons notice a host that vanished without closing its connections.
cl_mpirun_args() {
    local agent
    agent="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/agent.sh"
    echo "--hostfile $CL_HOSTFILE --mca plm_rsh_agent $agent --mca plm_rsh_no_tree_spawn 1" \
         "--mca pml ob1 --mca btl tcp,self --mca btl_tcp_if_include $CL_NET.0/24" \
         "--mca oob_tcp_if_include $CL_NET.0/24 --bind-to none --mca mpi_yield_when_idle 1" \
         "--mca oob_tcp_keepalive_time 10 --mca oob_tcp_keepalive_intvl 2 --mca oob_tcp_keepalive_probes 3"
}
