#!/usr/bin/env bash
# The GPU measurements of bench/RESULTS.md, as one script for a lent accelerator (a few minutes).
#
#   OUT=/tmp/gpu bash bench/gpu.sh [trainer|sweep|all]    # default: all
#
# Runs from the checkout without installing (PYTHONPATH=$PWD); every command has its own time
# limit so one hang cannot eat the machine's time; JSON lines go to $OUT/*.jsonl, the log of each
# command to $OUT/*.log, a profiler trace to $OUT/trace/.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/jaxae-gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD TF_CPP_MIN_LOG_LEVEL=2 JAXAE_COMPILATION_CACHE=$OUT/xla-cache
PY=${PYTHON:-python3}
PHASE=${1:-all}

run() {  # run NAME SECONDS CMD...: JSON lines to $OUT/NAME.jsonl, everything else to NAME.log
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.jsonl" 2> "$OUT/$name.log"
  echo "$name: exit $? in $((SECONDS - t0)) s, $(wc -l < "$OUT/$name.jsonl") lines"
}

nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
$PY -c "import jax; print(jax.__version__, jax.devices())" >> "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"

MNIST="--data mnist-shape --hidden 512 --latent 32 --batch 128"
if [[ $PHASE == trainer || $PHASE == all ]]; then
  # Issue 14: the trainer against a plain optax loop, per precision, with and without the moment
  # barrier; sequential and per-step loop at P = 64.
  run tput-tf32-p64 150 $PY bench/throughput.py $MNIST --steps 200 --population 64 \
      --precision tf32 --cases vmap,reference,sequential,loop
  run tput-tf32-settle 90 env JAXAE_SETTLE_MOMENTS=on $PY bench/throughput.py $MNIST --steps 200 \
      --population 64 --precision tf32 --cases vmap
  run tput-tf32-p256 90 $PY bench/throughput.py $MNIST --steps 100 --population 256 \
      --precision tf32 --cases vmap,reference
  run tput-f32 90 $PY bench/throughput.py $MNIST --steps 200 --population 64 \
      --precision float32 --cases vmap,reference
  run tput-bf16 90 $PY bench/throughput.py $MNIST --steps 200 --population 64 \
      --precision bfloat16 --cases vmap,reference
  run tput-digits 90 $PY bench/throughput.py --data digits --hidden 64 --latent 16 --batch 128 \
      --steps 300 --population 64 --cases vmap,reference,sequential
  run profile-tf32 90 $PY bench/profile_step.py $MNIST --population 64 --steps 50 \
      --precision tf32 --out "$OUT/trace"
  run profile-tf32-settle 90 env JAXAE_SETTLE_MOMENTS=on $PY bench/profile_step.py $MNIST \
      --population 64 --steps 50 --precision tf32 --out "$OUT/trace-settle"
  run precision-mnist 120 $PY bench/precision.py $MNIST --population 16 --steps 2000
  run precision-digits-vae 90 $PY bench/precision.py --data digits --model vae --hidden 128 \
      --latent 16 --population 16 --steps 2000
fi
if [[ $PHASE == sweep || $PHASE == all ]]; then
  # Issue 13: the sweep path against the trainer at the same shape, cold then warm cache.
  if [[ -f bench/sweep.py ]]; then
    run sweep-cold 240 $PY bench/sweep.py --gpu-case
    run sweep-warm 240 $PY bench/sweep.py --gpu-case
  fi
fi
# The device tool brings back at most 8 files: everything goes home as one archive, and a short
# summary of every JSON line goes to stdout as well.
rm -rf "$OUT/xla-cache"
find "$OUT" -name '*.xplane.pb' -delete
(cd "$OUT" && tar czf ../gpu-results.tgz . && rm -rf ./* && mv ../gpu-results.tgz .)
tar xzf "$OUT/gpu-results.tgz" -O --wildcards '*.jsonl' | $PY bench/summarise.py
