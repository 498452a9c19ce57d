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
if swift test --help 2>/dev/null | grep -q -- --disable-swift-testing; then
    swift test "${BUILD[@]}" --skip-build --disable-swift-testing
else
    swift test "${BUILD[@]}" --skip-build
fi
echo "== cluster scripts (throwaway one-node Slurm cluster)"
scripts/test-slurm.sh
echo "== scaling tools (tiny sweep, projection, figures)"
scripts/test-scaling.sh
