#!/usr/bin/env bash
# Fuzzes Checkpoint.decode with libFuzzer (+ AddressSanitizer) for a bounded time.
#
#   scripts/fuzz_checkpoints.sh [SECONDS] [extra libFuzzer flags...]     (default 60 s)
#
# Builds Fuzz/CheckpointFuzz/main.swift together with Sources/RNNTrain/{SafeTensors,Checkpoint,
# Errors}.swift and Sources/RNN/Checksum.swift (plus a 5-line stand-in for RNN's Buffer, which
# Checksum.swift extends) using `swiftc -sanitize=fuzzer,address`, into .build-fuzz/ (ignored by
# git). Seeds: Tests/RNNTrainTests/Fixtures/bad-checkpoints (read only) and .build-fuzz/corpus
# (what earlier runs found; kept between runs). Needs a Swift toolchain with libFuzzer (swift.org
# Linux toolchains have it). Not part of scripts/test.sh: the corpus replay in
# Tests/RNNTrainTests/BadCheckpointTests.swift is what CI runs.
#
# Exit status: 0 if nothing crashed; nonzero on a finding (a trap, an ASan report, an error other
# than Checkpoint.Error, or a multi-line error message -- CHECKPOINT_FUZZ_CRASH_ONLY=1 ignores the
# last). The crashing input is saved as .build-fuzz/artifacts/crash-<sha1>; to reproduce it and
# write the exact bytes that were decoded (to add to the corpus via scripts/make_bad_checkpoints.py):
#
#   mkdir -p /tmp/d && CHECKPOINT_FUZZ_DUMP=/tmp/d .build-fuzz/checkpoint-fuzz .build-fuzz/artifacts/crash-<sha1>
#
# libFuzzer stops at the first finding, and the seeds include the corpus, so while a known bad file
# still crashes the decoder the run ends at once. FUZZ_KEEP_GOING=1 runs libFuzzer's fork mode
# (-fork=JOBS -ignore_crashes=1) instead: it keeps searching, saves every distinct finding, and the
# script still exits 1 if any new artifact appeared. FUZZ_JOBS sets the worker count (default 1).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TO_RUN="${1:-60}"
shift || true

if ! command -v swiftc >/dev/null 2>&1 && [ -x /opt/swift/usr/bin/swiftc ]; then export PATH="/opt/swift/usr/bin:$PATH"; fi
W=.build-fuzz
mkdir -p "$W/shim" "$W/corpus" "$W/artifacts"

# RNN's Checksum.swift (fnv1a64) extends Buffer; give it a stand-in instead of building all of RNN
# (and OpenBLAS) with the fuzzer instrumentation.
cat > "$W/shim/BufferStandIn.swift" <<'SWIFT'
public protocol RNNScalar {}
public final class Buffer<S: RNNScalar> {
    public let count: Int = 0
    public let pointer = UnsafeMutablePointer<S>.allocate(capacity: 1)
}
SWIFT

FLAGS=(-O -g -sanitize=fuzzer,address -parse-as-library)
echo "== build $W/checkpoint-fuzz" >&2
# (gold warns about every ASan assembly helper it cannot export; that noise is dropped.)
quiet() { "$@" 2>&1 | { grep -v "Cannot export local symbol '__asan" || true; }; return "${PIPESTATUS[0]}"; }
quiet swiftc "${FLAGS[@]}" -module-name RNN -emit-module -emit-module-path "$W/shim/RNN.swiftmodule" \
    -emit-library -static -o "$W/shim/libRNN.a" "$W/shim/BufferStandIn.swift" Sources/RNN/Checksum.swift
quiet swiftc "${FLAGS[@]}" -module-name CheckpointFuzz -I "$W/shim" -L "$W/shim" -lRNN -o "$W/checkpoint-fuzz" \
    Sources/RNNTrain/SafeTensors.swift Sources/RNNTrain/Checkpoint.swift Sources/RNNTrain/Errors.swift \
    Fuzz/CheckpointFuzz/main.swift

echo "== fuzz for ${SECONDS_TO_RUN} s" >&2
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:allocator_may_return_null=1}"
# The Swift runtime's own crash backtracer would fight libFuzzer's signal handlers; libFuzzer and
# ASan print the stack.
export SWIFT_BACKTRACE=enable=no
MODE=()
if [ "${FUZZ_KEEP_GOING:-0}" = 1 ]; then MODE=(-fork="${FUZZ_JOBS:-1}" -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1); fi
before=$(ls "$W/artifacts" | wc -l)
set +e
"$W/checkpoint-fuzz" -max_total_time="$SECONDS_TO_RUN" -print_final_stats=1 -max_len=8192 -timeout=10 \
    -rss_limit_mb=4096 -use_value_profile=1 -dict=Fuzz/CheckpointFuzz/safetensors.dict \
    -artifact_prefix="$W/artifacts/" "${MODE[@]}" "$@" "$W/corpus" Tests/RNNTrainTests/Fixtures/bad-checkpoints
status=$?
set -e
after=$(ls "$W/artifacts" | wc -l)
if [ $status -eq 0 ] && [ "$after" -gt "$before" ]; then status=1; fi
if [ $status -ne 0 ]; then
    echo "fuzz_checkpoints: FINDING (libFuzzer exit $status); $((after - before)) new input(s) in $W/artifacts/" >&2
else
    echo "fuzz_checkpoints: no finding in ${SECONDS_TO_RUN} s" >&2
fi
exit $status
