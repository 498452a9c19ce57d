#!/usr/bin/env bash
# Sets up what is missing, builds rnn-dp (release), and trains a character-level RNN on the
# fortune-cookie corpus of Debian's `fortunes` package with 2 MPI ranks, then prints a sample.
#   scripts/demo.sh [extra --set overrides, e.g. training.steps=500]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
rnn_dp_setup fortunes

echo "== build (release)"
swift build -c release --product rnn-dp
BIN="$(swift build -c release --show-bin-path)/rnn-dp"

OUT=runs/demo
mkdir -p "$OUT"
# The corpus: every plain-text fortune file (not the .dat indexes or .u8 links).
find /usr/share/games/fortunes -maxdepth 1 -type f ! -name '*.dat' ! -name '*.u8' | sort | xargs cat > "$OUT/fortunes.txt"
echo "== corpus: $OUT/fortunes.txt ($(wc -c < "$OUT/fortunes.txt") bytes)"

SETS=()
for kv in "$@"; do SETS+=(--set "$kv"); done
echo "== mpirun -np 2 rnn-dp train --config configs/demo-fortunes.yaml ${SETS[*]:-}"
mpirun -np 2 --oversubscribe --bind-to none "$BIN" train --config configs/demo-fortunes.yaml --overwrite "${SETS[@]}"
