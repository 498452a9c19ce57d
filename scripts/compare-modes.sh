#!/usr/bin/env bash
# Records what training produces in every synchronization mode, so that a change to the training
# loop can be shown to leave it unchanged (issue 13's before/after comparison).
#
#   scripts/compare-modes.sh record DIR      train every case at np=1, 2, 3 and keep, per run, the
#                                            SHA-256 of model.safetensors' tensors and metrics.jsonl without
#                                            its timings (DIR/CASE-npN.{sha,metrics})
#   scripts/compare-modes.sh compare A B     exit 0 when the records in A and B are identical
#
# A case is a small config on tiny-shakespeare or the adding problem plus --set overrides; every
# case runs 8 steps with logging, evaluation and checkpoints inside the run. Takes 1-2 minutes.
# ONLY=CASE records one case; KEEP=1 keeps the model files too.
# Uses the release build in .build/release (build it first).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bin=$root/.build/release/rnn-dp
data=$(cd ../shared/data && pwd)

timing_keys='step_time|compute_time|comm_time|exposed_comm_time|tokens_per_s|samples_per_s|elapsed'

# SHA-256 of a safetensors file's tensors: the bytes after the header (whose metadata names this
# run's directory).
tensor_sha() {
  python3 -c '
import hashlib, struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", b[:8])[0]
print(hashlib.sha256(b[8 + n:]).hexdigest())
' "$1"
}

# Drops the timing fields of every metrics record (they differ from run to run).
strip_timings() {
  python3 -c '
import json, sys
drop = set(sys.argv[1].split("|"))
for line in sys.stdin:
    r = json.loads(line)
    print(json.dumps({k: v for k, v in r.items() if k not in drop}, sort_keys=True))
' "$timing_keys"
}

write_configs() {
  local dir=$1
  cat > "$dir/text.yaml" <<EOF
seed: 5
data:
  kind: text
  path: $data/tinyshakespeare.txt
  validation_fraction: 0.05
model:
  cell: lstm
  hidden_size: 24
  layers: 2
training:
  global_batch_size: 6
  sequence_length: 16
  steps: 8
  optimizer:
    name: adam
    learning_rate: 0.01
  clip_norm: 1.0
  check_every: 2
  eval_every: 4
  eval_samples: 24
  bucket_mb: 0
checkpoint:
  every: 4
  keep: 2
output:
  log_every: 2
  sample_length: 0
EOF
  cat > "$dir/adding.yaml" <<EOF
seed: 9
data:
  kind: synthetic
  task: adding
model:
  cell: gru
  hidden_size: 16
  layers: 2
  layer_norm: true
training:
  global_batch_size: 6
  sequence_length: 12
  steps: 8
  optimizer:
    name: sgd
    learning_rate: 0.05
    momentum: 0.9
  schedule:
    name: plateau
    patience: 0
  eval_every: 2
  eval_samples: 12
checkpoint:
  every: 4
output:
  log_every: 2
EOF
}

# name | base config | --set overrides (space separated) | extra environment
cases() {
  cat <<'EOF'
plain|text|
buckets|text|training.bucket_mb=0.004
bf16|text|training.compression=bf16
fp16|text|training.compression=fp16
bf16-buckets|text|training.compression=bf16 training.bucket_mb=0.004
accumulate|text|training.accumulate_steps=2
tbptt|text|training.bptt_length=5
stateful|text|training.stateful=true model.cell=gru
localsgd|text|training.local_sgd_steps=3
reproducible|text|training.reproducible=true training.micro_shards=6
batchnorm|text|model.batch_norm=true model.cell=rnn
batchnorm-repro|text|model.batch_norm=true training.reproducible=true training.micro_shards=6
nanskip|text|training.on_nonfinite=skip|RNN_DP_FAULT=nan:0:3
adding-gru|adding|
adding-buckets|adding|training.bucket_mb=0.001
EOF
}

run_case() {  # out np name base overrides env
  local out=$1 np=$2 name=$3 base=$4 overrides=$5 envs=$6
  local work; work=$(mktemp -d)
  local sets=(--set "output.directory=$work/run" --set "checkpoint.directory=$work/run/ckpt")
  for o in $overrides; do sets+=(--set "$o"); done
  local launch=(mpirun --oversubscribe -np "$np" -x RNN_DP_MPI=1)
  [ -n "$envs" ] && launch+=(-x "$envs")
  if ! "${launch[@]}" "$bin" train --config "$out/configs/$base.yaml" "${sets[@]}" < /dev/null > "$work/log" 2>&1; then
    echo "FAIL $name np=$np"; tail -5 "$work/log"; rm -rf "$work"; return 1
  fi
  tensor_sha "$work/run/model.safetensors" > "$out/$name-np$np.sha"
  [ -n "${KEEP:-}" ] && cp "$work/run/model.safetensors" "$out/$name-np$np.safetensors"
  strip_timings < "$work/run/metrics.jsonl" > "$out/$name-np$np.metrics"
  # Resume: 4 steps, then continue to 8 from the checkpoint.
  if [ "$name" = plain ] || [ "$name" = stateful ] || [ "$name" = adding-gru ] || [ "$name" = reproducible ]; then
    rm -rf "$work/run"
    "${launch[@]}" "$bin" train --config "$out/configs/$base.yaml" "${sets[@]}" --set training.steps=4 < /dev/null > "$work/log" 2>&1
    if ! "${launch[@]}" "$bin" train --config "$out/configs/$base.yaml" "${sets[@]}" --resume "$work/run/ckpt" < /dev/null > "$work/log" 2>&1; then
      echo "FAIL $name-resume np=$np"; tail -5 "$work/log"; rm -rf "$work"; return 1
    fi
    tensor_sha "$work/run/model.safetensors" > "$out/$name-resume-np$np.sha"
    strip_timings < "$work/run/metrics.jsonl" > "$out/$name-resume-np$np.metrics"
  fi
  rm -rf "$work"
}

case "${1:-}" in
  record)
    out=${2:?usage: compare-modes.sh record DIR}
    mkdir -p "$out/configs"
    out=$(cd "$out" && pwd)
    write_configs "$out/configs"
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
    failed=0
    while IFS='|' read -r name base overrides envs; do
      [ -n "${ONLY:-}" ] && [ "$name" != "$ONLY" ] && continue
      for np in 1 2 3; do run_case "$out" "$np" "$name" "$base" "$overrides" "$envs" || failed=1; done
      echo "recorded $name"
    done < <(cases)
    exit $failed
    ;;
  compare)
    a=${2:?usage: compare-modes.sh compare A B}; b=${3:?usage: compare-modes.sh compare A B}
    status=0
    for f in "$a"/*.sha "$a"/*.metrics; do
      g="$b/$(basename "$f")"
      if [ ! -f "$g" ]; then echo "missing in $b: $(basename "$f")"; status=1
      elif ! cmp -s "$f" "$g"; then echo "differs: $(basename "$f")"; status=1; fi
    done
    [ $status = 0 ] && echo "identical: $(ls "$a"/*.sha | wc -l) models and their metrics"
    exit $status
    ;;
  *) echo "usage: compare-modes.sh record DIR | compare A B" >&2; exit 2 ;;
esac
