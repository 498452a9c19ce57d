#!/usr/bin/env bash
# Sets up what is missing, builds, and runs every test (unit, gradient checks, multi-rank under
# mpirun). Exits nonzero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
rnn_dp_setup

echo "== build"
swift build --build-tests
echo "== tests"
# Every test is XCTest; Swift 6 toolchains also run an (empty) Swift Testing pass, which we skip.
if swift test --help 2>/dev/null | grep -q -- --disable-swift-testing; then
    swift test --skip-build --disable-swift-testing
else
    swift test --skip-build
fi
