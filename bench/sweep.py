"""The sweep against the trainer: how much of the population trainer's speed a real sweep keeps.

For each searcher, runs the real sweep path (``driver.Driver`` + ``driver.run`` with a real
``TrialStore`` in a temporary directory, checkpoints included) and, in the same process, the
trainer alone at the same shape and population: ``population.train_chunk`` on ``P`` members for
``--ref-steps`` steps per call, as ``bench/throughput.py``'s ``vmap`` case does. The trainer is
timed in rounds interleaved with the sweeps (before the first and after every sweep) and its best
round is the reference, so load from other processes hits both alike.

One JSON line per searcher, printed as soon as it ends:

* ``member_steps``: slot-steps that trained a trial; ``wall_s``: the whole ``driver.run``.
* ``compile_s`` / ``compiles``: time in JAX tracing, lowering and XLA compilation (or persistent
  cache retrieval) during the sweep, and the number of backend compilations (``jax.monitoring``).
* ``member_steps_per_s``: member-steps / (wall - compile); ``trainer_member_steps_per_s``: the
  reference; ``sweep_efficiency``: their ratio (1 = the sweep runs at the trainer's speed).
* ``occupancy``: member-steps / (the chunks' steps x the population): the share of the
  population that trained (jobs waiting for a slot of their bucket lower it).
* ``busy_slot_fraction``: member-steps / slot-steps computed (slots that trained nothing, empty
  or finished, still cost their share of a chunk).
* ``packing_bound``: member-steps / the slot-steps computed had every device run as many groups
  as the busiest one each chunk (its groups set the chunk's time): the highest efficiency any
  driver could reach with this sweep's jobs in groups of this size, before any host cost (a
  thinning multi-fidelity tail of 3 members in one group of 4 leaves the other device idle);
  ``efficiency_of_bound``: ``sweep_efficiency / packing_bound``, the driver's own share.
* ``host_ms_per_chunk`` / ``host_ms_per_trial``: the wall time beyond compilation and beyond
  what the trainer needs for the computed slot-steps, per chunk (per bucket program call) and
  per finished trial: the driver's own cost.
* ``first_trial_s``: from the start of ``driver.run`` to the first finished (completed, pruned or
  diverged) trial, compilation included.
* ``slots_per_bucket``: each bucket's slots (``--capacity``: the platform's rule, or forced: the
  whole population, accelerators' rule, or the even share among the space's buckets, CPUs').
* ``pipelined``: whether the sweep dispatched each chunk before reading the previous one's
  results (``JAXAE_PIPELINE=on``; ``driver.pipelined``).
* Each sweep runs twice in the process; the second (warm: compiled, first calls made) is the
  measured one, unless ``--no-warm``. ``cold_wall_s``, ``cold_compile_s``, ``cold_compiles`` and
  ``cold_first_trial_s`` describe the first run (the persistent compilation cache still applies:
  ``JAXAE_COMPILATION_CACHE=off`` for a truly cold one).

``--tiny`` mimics an accelerator on a CPU: a 64-8-2 autoencoder with batch 8, whose chunk of
training takes well under a millisecond, so the driver's host work is what remains.

Examples:
    PYTHONPATH=$PWD python3 bench/sweep.py --searchers random,asha --trials 192 --steps 400
    PYTHONPATH=$PWD python3 bench/sweep.py --tiny
    PYTHONPATH=$PWD python3 bench/sweep.py --searchers tpe --vary batch_size=32,64 \
        --vary depth=1,2 --capacity population    # four programs, each with slots for all 64
    PYTHONPATH=$PWD python3 bench/sweep.py --model vae --searchers asha,random --trials 256 \
        --steps 2000 --hidden 64 --latent 16
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

SEARCHERS = ("random", "tpe", "cmaes", "sha", "hyperband", "asha")


class CompileMeter:
    """Counts backend compilations and sums JAX's compile-related durations (jax.monitoring)."""

    EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
              "/jax/core/compile/jaxpr_to_mlir_module_duration",
              "/jax/core/compile/backend_compile_duration",
              "/jax/compilation_cache/cache_retrieval_time_sec")

    def __init__(self) -> None:
        import jax

        self.seconds = 0.0
        self.compiles = 0
        jax.monitoring.register_event_duration_secs_listener(self._on)

    def _on(self, event: str, duration: float, **_) -> None:
        if event in self.EVENTS:
            self.seconds += duration
        if event == "/jax/core/compile/backend_compile_duration":
            self.compiles += 1


def space(args: argparse.Namespace) -> dict:
    """The model's default search space with the padded shape of the flags: width up to
    ``--hidden``, code size up to ``--latent``, batch size fixed."""
    from jaxae import config as config_lib

    s = dict(config_lib.default_space(args.model))
    s["hidden"] = {"dist": "int", "low": max(1, args.hidden // 4), "high": args.hidden,
                   "log": True}
    s["latent_dim"] = {"dist": "int", "low": max(1, args.latent // 8), "high": args.latent,
                       "log": True}
    s["batch_size"] = args.batch
    if args.activations:
        acts = args.activations.split(",")
        s["activation"] = acts[0] if len(acts) == 1 else {"dist": "choice", "options": acts}
    for setting in args.vary:
        name, _, values = setting.partition("=")
        options = [int(v) if v.lstrip("-").isdigit() else v for v in values.split(",")]
        s[name] = {"dist": "choice", "options": options}
    return s


def sweep_config(args: argparse.Namespace, searcher: str):
    from jaxae import config as config_lib

    return config_lib.build({"model": args.model, "searcher": searcher,
                             "population": args.population, "trials": args.trials,
                             "steps": args.steps, "seed": args.seed, "chunk": args.chunk,
                             "data": args.data, "space": space(args),
                             **({} if args.curve_examples is None
                                else {"curve_examples": args.curve_examples})})


def trainer_timer(args: argparse.Namespace, dataset):
    """A timer of ``train_chunk`` on ``P`` members at the sweep's padded shape; returns
    ``(timer, member-steps per call)``."""
    import jax
    import numpy as np

    from jaxae import buckets as buckets_lib
    from jaxae import hparams, placement, sharding
    from jaxae import population as P

    config = sweep_config(args, "random")
    first_bucket = tuple(
        (v["options"][0] if isinstance(v := config.space.get(n), dict) else v)
        if n in config.space else hparams.defaults(config.model)[n]
        for n in hparams.BUCKET_NAMES)
    spec = buckets_lib.train_spec(config, dataset.features, first_bucket)
    mesh = sharding.slot_mesh() if jax.device_count() > 1 else None
    size = args.population if mesh is None else sharding.round_up(args.population, mesh)
    lrs = np.geomspace(1e-4, 1e-2, size)
    sizes = {"hidden": spec.model.hidden, "latent_dim": spec.model.latent_dim}
    bucket = dict(zip(hparams.BUCKET_NAMES, first_bucket, strict=True))
    members = [placement.Member(t, hparams.resolve(args.model, {**sizes, "learning_rate": float(lr),
                                                                "batch_size": args.batch,
                                                                **bucket}),
                                10**9, P.trial_keys(args.seed, t)) for t, lr in enumerate(lrs)]
    host = jax.device_get(placement.assign(spec, placement.create(spec, size),
                                           list(range(size)), members))
    if mesh is None:
        place, x, local = jax.device_put, jax.device_put(dataset.train.x), None
    else:
        place = functools.partial(sharding.shard, sharding=sharding.slot_sharding(mesh))
        x = jax.device_put(dataset.train.x, sharding.replicated(mesh))
        local = mesh
    compiled = P.train_chunk.lower(spec, place(host), x, args.ref_steps, mesh=local).compile()

    def timer() -> float:
        p = jax.block_until_ready(place(host))
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(p, x))
        return time.perf_counter() - t0

    return timer, args.population * args.ref_steps


def run_sweep(args: argparse.Namespace, searcher: str, dataset, meter: CompileMeter) -> dict:
    from jaxae import buckets as buckets_lib
    from jaxae import driver as driver_lib
    from jaxae import runner
    from jaxae.store import TrialStore

    config = sweep_config(args, searcher)
    compile0, compiles0 = meter.seconds, meter.compiles
    t0 = time.perf_counter()
    first: list[float] = []

    def on_chunk(driver, events) -> None:
        if not first and any(e.status in ("completed", "pruned", "diverged") for e in events):
            first.append(time.perf_counter() - t0)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        store = TrialStore(out / "trials.db")
        try:
            driver = driver_lib.Driver(config, dataset)
            if args.capacity != "auto":  # before any bucket exists
                driver.capacity = buckets_lib.capacity(config, driver.mesh, dataset.features,
                                                       whole=args.capacity == "population")
            runner.run(driver, store, out, checkpoint_every=args.checkpoint_every,
                           on_chunk=on_chunk)
            wall = time.perf_counter() - t0
            (finished,) = store.query("SELECT COUNT(*) FROM trials WHERE status IN "
                                      "('completed', 'pruned', 'diverged')")[0]
        finally:
            store.close()
    return {"searcher": searcher, "wall_s": wall, "member_steps": driver.member_steps,
            "slot_steps": getattr(driver, "slot_steps", None),
            "critical_slot_steps": getattr(driver, "critical_slot_steps", None),
            "population_steps": getattr(driver, "population_steps", None),
            "chunks": driver.chunk, "bucket_calls": driver.bucket_calls,
            "pipelined": getattr(driver, "lagged", False),
            "buckets": len(driver.buckets), "slots_per_bucket": driver.capacity,
            "compile_s": meter.seconds - compile0,
            "compiles": meter.compiles - compiles0, "finished_trials": finished,
            "first_trial_s": first[0] if first else None}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Sweep efficiency: the real sweep path against the "
                                "population trainer at the same shape. Prints JSON lines.")
    p.add_argument("--model", default="ae")
    p.add_argument("--searchers", default=",".join(SEARCHERS),
                   help=f"comma-separated subset of {','.join(SEARCHERS)}")
    p.add_argument("--population", type=int, default=64)
    p.add_argument("--trials", type=int, default=192)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--chunk", type=int, default=50)
    p.add_argument("--hidden", type=int, default=128, help="the largest width of the space")
    p.add_argument("--latent", type=int, default=32, help="the largest code size of the space")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--activations", default="relu,tanh",
                   help="activation choices of the space (one value fixes it)")
    p.add_argument("--vary", action="append", default=[], metavar="NAME=V1,V2",
                   help="a choice of the space, e.g. a bucket setting (batch_size=32,64 or "
                   "depth=1,2: each value is another program); repeatable")
    p.add_argument("--capacity", choices=("auto", "population", "share"), default="auto",
                   help="slots per bucket: the sweep's rule for the platform (auto), the whole "
                   "population (accelerators'), or the population shared evenly by the space's "
                   "buckets (CPUs'); see buckets.capacity")
    p.add_argument("--data", default="digits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ref-steps", type=int, default=200,
                   help="steps per call of the trainer reference")
    p.add_argument("--ref-repeats", type=int, default=2,
                   help="trainer timing rounds before the first and after every sweep")
    p.add_argument("--checkpoint-every", type=float, default=30.0)
    p.add_argument("--curve-examples", type=int, default=None,
                   help="validation examples of each curve point (0: all) [default: the "
                   "sweep's, population.CURVE_EXAMPLES]")
    p.add_argument("--no-warm", dest="warm", action="store_false",
                   help="measure the first (cold) run of each sweep instead of a second one")
    p.add_argument("--tiny", action="store_true",
                   help="a host-bound case: 64-8-2, batch 8 (sets --hidden 8 --latent 2 "
                   "--batch 8)")
    args = p.parse_args(argv)
    if args.tiny:
        args.hidden, args.latent, args.batch = 8, 2, 8
    unknown = set(args.searchers.split(",")) - set(SEARCHERS)
    if unknown:
        p.error(f"unknown searcher(s) {', '.join(sorted(unknown))}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from jaxae import runtime

    runtime.use_cpu_cores()
    if os.environ.get("JAXAE_COMPILATION_CACHE", "").lower() != "off":
        runtime.enable_compilation_cache()
    import jax

    from jaxae import data as data_lib

    meter = CompileMeter()
    dataset = data_lib.load(args.data, seed=args.seed)
    timer, work = trainer_timer(args, dataset)
    best = [min(timer() for _ in range(args.ref_repeats))]
    device = jax.devices()[0]
    for searcher in args.searchers.split(","):
        cold = run_sweep(args, searcher, dataset, meter)
        # The measured run repeats the sweep in the same process: its programs are compiled and
        # its first calls made, so what remains is the driver's steady state. The cold run's
        # wall, compilation and time to the first finished trial are reported beside it.
        row = run_sweep(args, searcher, dataset, meter) if args.warm else cold
        row.update(cold_wall_s=cold["wall_s"], cold_compile_s=cold["compile_s"],
                   cold_first_trial_s=cold["first_trial_s"], cold_compiles=cold["compiles"])
        best.append(min(timer() for _ in range(args.ref_repeats)))
        ref = work / min(best)
        train_s = row["wall_s"] - row["compile_s"]
        rate = row["member_steps"] / train_s
        computed = row["slot_steps"]
        overhead = train_s - computed / ref
        calls = row["bucket_calls"]
        row.update(
            member_steps_per_s=rate, trainer_member_steps_per_s=ref, sweep_efficiency=rate / ref,
            busy_slot_fraction=row["member_steps"] / computed,
            occupancy=row["member_steps"] / row["population_steps"],
            packing_bound=row["member_steps"] / row["critical_slot_steps"],
            efficiency_of_bound=rate / ref / (row["member_steps"] / row["critical_slot_steps"]),
            host_ms_per_chunk=1e3 * overhead / max(calls, 1),
            host_ms_per_trial=(1e3 * overhead / row["finished_trials"]
                               if row["finished_trials"] else None),
            model=args.model, population=args.population, trials=args.trials, steps=args.steps,
            chunk=args.chunk, hidden=args.hidden, latent=args.latent, batch=args.batch,
            activations=args.activations, vary=args.vary, capacity=args.capacity,
            curve_examples=args.curve_examples,
            data=args.data, tiny=args.tiny,
            device=f"{device.platform}:{device.device_kind}", devices=jax.device_count(),
            cores=os.cpu_count(), load_avg=os.getloadavg()[0], jax=jax.__version__)
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
