#!/usr/bin/env bash
# The GPU measurements of bench/RESULTS.md, as one script for a lent accelerator (a few minutes).
#
#   OUT=/tmp/gpu bash bench/gpu.sh [trainer|sweep|buckets|all|curves]    # default: all
#
# ``curves`` (not in ``all``; ~70 s): a random sweep on MNIST-shaped data (a generated Keras
# .npz: 9,000 validation images) with curve points on all of the split against the default 1024.
#
# Runs from the checkout without installing (PYTHONPATH=$PWD); every command has its own time
# limit so one hang cannot eat the machine's time (520 s in all at worst: under the device
# tool's 600 s per call, so the archive at the end is always written); JSON lines go to
# $OUT/*.jsonl, the log of each command to $OUT/*.log, a profiler trace to $OUT/trace/.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/jaxae-gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD TF_CPP_MIN_LOG_LEVEL=2 JAXAE_COMPILATION_CACHE=$OUT/xla-cache
PY=${PYTHON:-python3}
PHASE=${1:-all}

run() {  # run NAME SECONDS CMD...: JSON lines to $OUT/NAME.jsonl, the log to NAME.log
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.jsonl" 2> "$OUT/$name.log"
  echo "== $name: exit $? in $((SECONDS - t0)) s"
  # At once, so that a lease that ends early still shows what was measured.
  $PY bench/summarise.py < "$OUT/$name.jsonl"
}

nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
$PY -c "import jax; print(jax.__version__, jax.devices())" >> "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"

MNIST="--data mnist-shape --hidden 512 --latent 32 --batch 128"
# Issue 13's case: a VAE / ASHA sweep of the default space on digits, population 64.
SWEEP="--model vae --searchers asha --population 64 --trials 256 --steps 2000 --hidden 128 --latent 32"
# In order of what matters most, each with a time limit, so that a short lease still measures the
# first ones: the sweep against the trainer with a cold then a warm compilation cache (issue 13),
# the warm one again with its chunks pipelined, the same with XLA's GEMM autotuning off (compile
# time against speed), and the trainer against a plain optax loop and against one member at a
# time (issue 14).
if [[ $PHASE == sweep || $PHASE == all ]]; then
  rm -rf "$JAXAE_COMPILATION_CACHE"
  run sweep-cold 90 $PY bench/sweep.py $SWEEP
  run sweep-warm 60 $PY bench/sweep.py $SWEEP --searchers asha,asha,random
  # The same with chunks pipelined (each dispatched before the previous one's results are
  # read and told; off by default until this measures it).
  run sweep-pipelined 60 env JAXAE_PIPELINE=on $PY bench/sweep.py $SWEEP --searchers asha,asha,random
  rm -rf "$JAXAE_COMPILATION_CACHE"
  run sweep-noautotune 75 env XLA_FLAGS=--xla_gpu_autotune_level=0 $PY bench/sweep.py $SWEEP
fi
if [[ $PHASE == trainer || $PHASE == all ]]; then
  run tput-tf32 90 $PY bench/throughput.py $MNIST --steps 200 --population 64 \
      --precision tf32 --cases vmap,reference,sequential
  run tput-bf16 45 $PY bench/throughput.py $MNIST --steps 200 --population 64 \
      --precision bfloat16 --cases vmap,reference
fi
if [[ $PHASE == buckets || $PHASE == all ]]; then
  # A space of two programs (batch size 64 or 128), TPE concentrating on one: each bucket holding
  # the whole population (accelerators' rule since 2026-12-07) against the even share (CPUs',
  # and everywhere before); occupancy and wall time side by side (this model's step is
  # launch-bound: a bucket computes all its slots at once, grouping.ACCELERATOR_GROUP_FLOPS).
  BUCKETS="--searchers tpe --population 64 --trials 128 --steps 1000 --hidden 128 --latent 32 --vary batch_size=64,128 --no-warm"
  run sweep-buckets 50 $PY bench/sweep.py $BUCKETS --capacity population
  run sweep-buckets-share 50 $PY bench/sweep.py $BUCKETS --capacity share
fi
if [[ $PHASE == curves ]]; then
  $PY -c "import numpy as np; r = np.random.default_rng(0); b = r.integers(0, 255, (50, 28, 28)).astype(np.uint8); np.savez('$OUT/mnistlike.npz', x_train=b[r.integers(0, 50, 60000)], x_test=b[r.integers(0, 50, 10000)])"
  CURVES="--data $OUT/mnistlike.npz --searchers random --population 64 --trials 128 --steps 800 --hidden 512 --latent 32 --batch 128"
  run sweep-curves-all 35 $PY bench/sweep.py $CURVES --curve-examples 0
  run sweep-curves-1024 35 $PY bench/sweep.py $CURVES
  rm -f "$OUT/mnistlike.npz"
fi
# The device tool brings back at most 8 files: everything goes home as one archive, and a short
# summary of every JSON line goes to stdout as well.
rm -rf "$OUT/xla-cache"
find "$OUT" -name '*.xplane.pb' -delete
(cd "$OUT" && tar czf ../gpu-results.tgz . && rm -rf ./* && mv ../gpu-results.tgz .)
