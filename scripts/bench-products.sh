#!/usr/bin/env bash
# Micro-benchmark of the per-step recurrent products (issue 17, phase 1): OpenBLAS sgemm, MKL sgemm
# and packed sgemm, oneDNN matmul with reordered weights, libxsmm with packed panels; forward
# (B,H)x(H,G*H) and backward (B,G*H)x(G*H,H), T steps with the same weights, pack cost included.
#
#   scripts/bench-products.sh [ROUNDS] [T]      # defaults 5 and 50; prints markdown tables
#
# Installs what is missing (Debian: libopenblas-dev libdnnl-dev libxsmm-dev; PyPI: mkl-devel into a
# venv at $MKL_PREFIX, default /opt/rnn-dp-mkl; and onednn-devel-cpu-gomp, a oneDNN 3.x built for
# the CPU with GNU OpenMP, into $ONEDNN3_PREFIX, default /opt/rnn-dp-onednn3), unless SKIP_INSTALL=1.
# oneDNN 3.x cannot be linked beside Debian's 2.x (same symbols), so it gets a second binary that
# runs OpenBLAS and oneDNN 3.x interleaved in its own rounds. Builds with cc only what
# it finds. Runs twice: the CPU's own ISA (AVX-512 here), then the AVX2 code paths forced through
# each library's environment variable (OPENBLAS_CORETYPE=Haswell, DNNL_MAX_CPU_ISA=AVX2,
# MKL_ENABLE_INSTRUCTIONS=AVX2, LIBXSMM_TARGET=hsw). ISAS="avx512" or ISAS="avx2" runs one level.
# BENCH_CASES=quick runs two cases only. Raw results go to $OUT_DIR (default
# /tmp/rnn-dp-bench-products); the markdown tables go to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
T=${2:-50}
OUT_DIR=${OUT_DIR:-/tmp/rnn-dp-bench-products}
MKL_PREFIX=${MKL_PREFIX:-/opt/rnn-dp-mkl}
ONEDNN3_PREFIX=${ONEDNN3_PREFIX:-/opt/rnn-dp-onednn3}
ISAS=${ISAS:-"avx512 avx2"}
mkdir -p "$OUT_DIR"
log() { echo "bench-products: $*" >&2; }

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    missing=()
    for pkg in libopenblas-dev libdnnl-dev libxsmm-dev pkg-config; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        $SUDO apt-get update -qq >&2 || true
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2 \
            || log "apt-get install failed; building with what is there"
    fi
    if ! ls "$MKL_PREFIX"/lib/libmkl_rt.so* >/dev/null 2>&1; then
        log "installing mkl-devel from PyPI into $MKL_PREFIX"
        { python3 -m venv "$MKL_PREFIX" && "$MKL_PREFIX/bin/pip" install -q mkl-devel; } >&2 \
            || log "pip install mkl-devel failed; building without MKL"
    fi
    # PyPI's newest "onednn-devel" is a SYCL build whose CPU engine needs a SYCL CPU device (none
    # here); the -cpu-gomp package is the plain CPU build.
    if ! ls "$ONEDNN3_PREFIX"/lib/libdnnl.so.3* >/dev/null 2>&1; then
        log "installing onednn-devel-cpu-gomp from PyPI into $ONEDNN3_PREFIX"
        { python3 -m venv "$ONEDNN3_PREFIX" && "$ONEDNN3_PREFIX/bin/pip" install -q onednn-devel-cpu-gomp; } >&2 \
            || log "pip install onednn-devel-cpu-gomp failed; no oneDNN 3.x column"
    fi
fi

# ---- detect
CFLAGS=(-O2 -std=c11 -Wall -Wextra)
LIBS=()
have=()
if [ -f /usr/include/x86_64-linux-gnu/openblas-pthread/cblas.h ] || pkg-config --exists openblas 2>/dev/null || [ -f /usr/include/cblas.h ]; then
    have+=(openblas)
else
    log "OpenBLAS (libopenblas-dev) not found: it is the reference and is required"; exit 1
fi
if [ -f /usr/include/oneapi/dnnl/dnnl.h ] && ls /usr/lib/x86_64-linux-gnu/libdnnl.so >/dev/null 2>&1; then
    CFLAGS+=(-DHAVE_DNNL); LIBS+=(-ldnnl); have+=(oneDNN)
fi
if pkg-config --exists libxsmm 2>/dev/null; then
    CFLAGS+=(-DHAVE_XSMM $(pkg-config --cflags libxsmm)); LIBS+=($(pkg-config --libs libxsmm)); have+=(libxsmm)
fi
MKL_RT=$(ls "$MKL_PREFIX"/lib/libmkl_rt.so* 2>/dev/null | sort | tail -1 || true)
if [ -n "$MKL_RT" ] && [ -f "$MKL_PREFIX/include/mkl_cblas.h" ]; then
    CFLAGS+=(-DHAVE_MKL "-DMKL_RT_DEFAULT=\"$MKL_RT\""); have+=(MKL)
fi
log "building with: ${have[*]}"
BIN="$OUT_DIR/bench_products"
# MKL is loaded with dlopen (its cblas_* would clash with OpenBLAS's), so it is not linked.
# Option (e) is rnn-dp's own kernel, compiled from the package's source.
OWN=(-ISources/CRecurrent/include Sources/CRecurrent/crecurrent.c)
cc "${CFLAGS[@]}" bench/products/bench_products.c "${OWN[@]}" -o "$BIN" "${LIBS[@]}" -lopenblas -lpthread -lrt -ldl -lm
BIN3=""
if [ -f "$ONEDNN3_PREFIX/include/oneapi/dnnl/dnnl.h" ] && ls "$ONEDNN3_PREFIX"/lib/libdnnl.so >/dev/null 2>&1; then
    BIN3="$OUT_DIR/bench_products_onednn3"
    log "building the oneDNN 3.x binary from $ONEDNN3_PREFIX"
    cc -O2 -std=c11 -Wall -Wextra -DHAVE_DNNL '-DDNNL_OPTION_NAME="dnnl-3"' -I"$ONEDNN3_PREFIX/include" \
        bench/products/bench_products.c "${OWN[@]}" -o "$BIN3" -L"$ONEDNN3_PREFIX/lib" \
        -Wl,--disable-new-dtags,-rpath,"$ONEDNN3_PREFIX/lib" -ldnnl -lopenblas -lpthread -lrt -ldl -lm
fi

# ---- run: one thread everywhere
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_THREADING_LAYER=SEQUENTIAL
files=()
run_level() { # ISA BINARY OUTPUT [VAR=VALUE...]
    local isa=$1 bin=$2 out=$3; shift 3
    case $isa in
        avx512) env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE -u DNNL_MAX_CPU_ISA -u MKL_ENABLE_INSTRUCTIONS -u LIBXSMM_TARGET -u BENCH_OWN_ISA \
                    ISA_LABEL=avx512 "$@" "$bin" --rounds "$ROUNDS" --T "$T" > "$out" ;;
        avx2)   env OPENBLAS_CORETYPE=Haswell DNNL_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 LIBXSMM_TARGET=hsw BENCH_OWN_ISA=avx2 \
                    ISA_LABEL=avx2 "$@" "$bin" --rounds "$ROUNDS" --T "$T" > "$out" ;;
        *) log "unknown ISA level $isa"; exit 2 ;;
    esac
}
for isa in $ISAS; do
    log "running $isa level ($ROUNDS rounds, T=$T)"
    run_level "$isa" "$BIN" "$OUT_DIR/results-$isa.tsv"
    files+=("$OUT_DIR/results-$isa.tsv")
done
if [ -n "$BIN3" ]; then
    for isa in $ISAS; do
        log "running $isa level with oneDNN 3.x ($ROUNDS rounds, T=$T)"
        run_level "$isa" "$BIN3" "$OUT_DIR/results-$isa-onednn3.tsv" BENCH_OPTIONS=dnnl-3
        files+=("$OUT_DIR/results-$isa-onednn3.tsv")
    done
fi
python3 bench/products/report.py "${files[@]}"
