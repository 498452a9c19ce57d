# Sourced by demo.sh and test.sh: installs what is missing and prepares the environment.
# Installs system packages with apt when they are missing (as root, or through sudo).

_rnn_dp_apt() {
    local SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
            echo "setup: missing packages ($*) and not root; install them with apt-get" >&2; return 1; fi
    fi
    echo "setup: installing $* with apt-get" >&2
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

rnn_dp_setup() {
    local need=()
    command -v mpirun >/dev/null 2>&1 || need+=(openmpi-bin)
    command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
    if ! pkg-config --exists ompi-c 2>/dev/null; then need+=(libopenmpi-dev); fi
    if ! pkg-config --exists openblas 2>/dev/null; then need+=(libopenblas-dev); fi
    for extra in "$@"; do
        case "$extra" in
            fortunes) [ -e /usr/share/games/fortunes/fortunes ] || need+=(fortunes) ;;
            python3) command -v python3 >/dev/null 2>&1 || need+=(python3 python3-pip) ;;
        esac
    done
    if [ ${#need[@]} -gt 0 ]; then _rnn_dp_apt "${need[@]}" || return 1; fi
    # Rebuild pkg-config's view after an install (libopenmpi-dev also needs build-essential bits).
    if ! pkg-config --exists ompi-c openblas; then
        echo "setup: pkg-config cannot find ompi-c and openblas even after installing" >&2; return 1
    fi

    if ! command -v swift >/dev/null 2>&1; then
        if [ -x /opt/swift/usr/bin/swift ]; then export PATH="/opt/swift/usr/bin:$PATH"
        else _rnn_dp_apt swiftlang || { echo "setup: no Swift toolchain; install Swift 5.9 or newer (swift.org)" >&2; return 1; }
        fi
    fi

    # Open MPI refuses to run as root without these (see docs/ARCHITECTURE.md, "MPI").
    if [ "$(id -u)" -eq 0 ]; then
        export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    fi
    # Quiet Open MPI's help banners about missing network devices in containers.
    export OMPI_MCA_btl_base_warn_component_unused=0
    return 0
}
