"""Where a training chunk's time goes on the device: a ``jax.profiler`` trace of
``population.train_chunk`` summarised per kernel.

Trains ``--population`` members for ``--steps`` steps once to compile, then once under
``jax.profiler.trace`` (with a Perfetto trace), and prints one JSON line per kernel name (the
``--top`` longest in total): calls, total and mean microseconds, share of the device time, and
per member-step. A last line gives the totals: kernels launched per training step and device
microseconds per member-step. Use it on an accelerator; on a CPU the trace has host threads only.

Example:
    python bench/profile_step.py --data mnist-shape --hidden 512 --latent 32 --population 64 \
        --out /tmp/trace
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib
from collections.abc import Sequence

import jax
import numpy as np
from throughput import load_data, make_members  # the sibling bench script

from jaxae import placement, runtime
from jaxae import population as P
from jaxae.models import PRECISION_NAMES, ModelSpec


def kernel_times(trace_dir: pathlib.Path) -> dict[str, list[float]]:
    """Kernel name -> durations (us) of the device events of the Perfetto trace in trace_dir."""
    path = next(trace_dir.rglob("*.trace.json.gz"))
    with gzip.open(path, "rt") as f:
        doc = json.load(f)
    events = doc["traceEvents"] if isinstance(doc, dict) else doc
    # Device streams are processes whose name mentions the GPU / TPU (not the host threads).
    names = {e["pid"]: e["args"].get("name", "") for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name"}
    device = {pid for pid, n in names.items() if "/device:" in n or "GPU" in n or "TPU" in n}
    out: dict[str, list[float]] = collections.defaultdict(list)
    for e in events:
        if e.get("ph") == "X" and e.get("pid") in device and "dur" in e:
            out[e["name"]].append(float(e["dur"]))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", choices=("digits", "mnist-shape"), default="mnist-shape")
    p.add_argument("--population", type=int, default=64)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--latent", type=int, default=32)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--precision", choices=PRECISION_NAMES, default="auto")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--out", default="/tmp/jaxae-trace")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    runtime.use_cpu_cores()
    x = jax.device_put(load_data(args.data, args.seed))
    model = ModelSpec("ae", int(x.shape[1]), args.hidden, args.latent, 1, "relu", "mse",
                      args.precision)
    spec = P.TrainSpec(model, "adam", args.batch, clip_gradients=False)  # no member clips
    ns = argparse.Namespace(model="ae", latent=args.latent, steps=args.steps, seed=args.seed)
    members = make_members(ns, args.hidden, args.population)
    pop = placement.assign(spec, placement.create(spec, args.population),
                           list(range(args.population)), members)
    host = jax.device_get(pop)
    chunk = P.train_chunk.lower(spec, jax.device_put(host), x, args.steps).compile()
    jax.block_until_ready(chunk(jax.device_put(host), x))
    out = pathlib.Path(args.out)
    state = jax.block_until_ready(jax.device_put(host))
    with jax.profiler.trace(str(out), create_perfetto_trace=True):
        jax.block_until_ready(chunk(state, x))
    times = kernel_times(out)
    total = sum(sum(v) for v in times.values())
    member_steps = args.population * args.steps
    ranked = sorted(times.items(), key=lambda kv: -sum(kv[1]))
    for name, durations in ranked[: args.top]:
        print(json.dumps({"kernel": name[:120], "calls": len(durations),
                          "total_us": sum(durations), "mean_us": float(np.mean(durations)),
                          "share": sum(durations) / total if total else None,
                          "us_per_member_step": sum(durations) / member_steps}), flush=True)
    calls = sum(len(v) for v in times.values())
    print(json.dumps({"bench": "profile_step", "device": runtime.device_name(),
                      "population": args.population, "steps": args.steps, "hidden": args.hidden,
                      "latent": args.latent, "batch": args.batch, "precision": args.precision,
                      "kernels_per_step": calls / args.steps, "device_us_total": total,
                      "device_us_per_member_step": total / member_steps,
                      "distinct_kernels": len(times)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
