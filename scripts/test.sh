#!/usr/bin/env bash
# Sets up what is missing, builds, and runs every test (unit, gradient checks, multi-rank under
# mpirun). Exits nonzero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
rnn_dp_setup python3
# The interop test reads rnn-dp's files with the real safetensors package.
if ! python3 -c "import safetensors, numpy" 2>/dev/null; then
    echo "setup: installing safetensors and numpy with pip" >&2
    python3 -m pip install --quiet safetensors numpy 2>/dev/null || python3 -m pip install --quiet --break-system-packages safetensors numpy
fi

# Tests run optimized (the learning tests train real models; -O keeps Swift's safety checks),
# with -enable-testing for @testable imports. The mpirun tests launch the rnn-dp built beside them.
BUILD=(-c release -Xswiftc -enable-testing)
echo "== build"
swift build "${BUILD[@]}" --build-tests
echo "== tests"
# Every test is XCTest; Swift 6 toolchains also run an (empty) Swift Testing pass, which we skip.
SWIFT_TESTING_FLAG=""
if swift test --help 2>/dev/null | grep -q -- --disable-swift-testing; then SWIFT_TESTING_FLAG=--disable-swift-testing; fi
MARGIN_LOG=$(mktemp /tmp/rnn-dp-margins.XXXXXX)
swift test "${BUILD[@]}" --skip-build $SWIFT_TESTING_FLAG 2>&1 | tee "$MARGIN_LOG"
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "tests failed" >&2; exit 1; }

# The tests whose outcome depends on floating-point summation order (learning tests, tolerance
# tests, PyTorch parity, bitwise-across-ranks on one kernel) run again under a second OpenBLAS
# kernel, so CI on any machine covers two (docs/REPRODUCIBILITY.md, "Across BLAS kernels").
# Haswell's (AVX2+FMA) runs on every x86-64-v3 machine; where it is already the default (or Zen's,
# which sums the same way), the second is Sandybridge's (AVX without FMA).
DEFAULT_CORE=$(python3 -c 'import ctypes; l = ctypes.CDLL("libopenblas.so.0"); l.openblas_get_corename.restype = ctypes.c_char_p; print(l.openblas_get_corename().decode())' 2>/dev/null || echo unknown)
case "$DEFAULT_CORE" in
    Haswell|Zen) SECOND_CORE=Sandybridge ;;
    *) SECOND_CORE=Haswell ;;
esac
# The same pass also runs the other recurrent-product path (RNN_DP_PRODUCTS, docs/ARCHITECTURE.md):
# OpenBLAS where the default is our packed kernel (a CPU with AVX2+FMA), else the packed kernel, so
# CI covers both paths a fresh machine can get.
if grep -qw avx2 /proc/cpuinfo 2>/dev/null && grep -qw fma /proc/cpuinfo; then SECOND_PRODUCTS=openblas; else SECOND_PRODUCTS=packed; fi
ORDER_SENSITIVE='PipelineTests|RecurrentProduct|DropoutTests|TrainerTests|TrainingTests|DiagnosticsTests|PyTorchParityTests|GradientCheckTests|DataParallelTests|ReproducibilityTests|DurabilityTests.testResumeIsExact'
if [ "$(uname -m)" = x86_64 ]; then
    echo "== order-sensitive tests again under OPENBLAS_CORETYPE=$SECOND_CORE (default kernel: $DEFAULT_CORE) and RNN_DP_PRODUCTS=$SECOND_PRODUCTS"
    OPENBLAS_CORETYPE=$SECOND_CORE RNN_DP_PRODUCTS=$SECOND_PRODUCTS swift test "${BUILD[@]}" --skip-build $SWIFT_TESTING_FLAG --filter "$ORDER_SENSITIVE" 2>&1 | tee "$MARGIN_LOG.second"
    [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "order-sensitive tests failed under OPENBLAS_CORETYPE=$SECOND_CORE RNN_DP_PRODUCTS=$SECOND_PRODUCTS" >&2; exit 1; }
else
    echo "== order-sensitive tests again under RNN_DP_PRODUCTS=packed"
    RNN_DP_PRODUCTS=packed swift test "${BUILD[@]}" --skip-build $SWIFT_TESTING_FLAG --filter "$ORDER_SENSITIVE" 2>&1 | tee "$MARGIN_LOG.second"
    [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "order-sensitive tests failed under RNN_DP_PRODUCTS=packed" >&2; exit 1; }
fi
echo "== smallest margins of the learning and tolerance tests (both kernels)"
grep -h '^margin:' "$MARGIN_LOG" "$MARGIN_LOG.second" 2>/dev/null | sed -E 's/.*margin=(-?[0-9.]+)%.*/\1 &/' | sort -n | awk 'NR <= 5' | cut -d' ' -f2-
rm -f "$MARGIN_LOG" "$MARGIN_LOG.second"

echo "== cluster scripts (throwaway one-node Slurm cluster)"
scripts/test-slurm.sh
echo "== several test hosts over TCP (network namespaces; docs/CLUSTER.md)"
scripts/test-multihost.sh
echo "== scaling tools (tiny sweep, projection, figures)"
scripts/test-scaling.sh
