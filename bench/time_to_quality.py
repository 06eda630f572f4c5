"""Time to quality: one search budget spent by jaxae's population sweep and by a per-trial loop.

The problem is the same for every case: a plain autoencoder (``ae``, mse summed over features) on
the embedded digits data (``jaxae.data.load("digits", seed=SEED)``), batch size 64, Adam, one
hidden layer of 128 ``relu`` units, and the search space

    learning_rate  log-uniform [1e-4, 3e-2]
    weight_decay   log-uniform [1e-6, 1e-2]
    latent_dim     int, log-uniform [4, 32]

``hidden`` and ``activation`` are fixed so that both sides train one compiled program (code size
is masked inside the padded maximum of 32, so it never recompiles). Every case gets ``--trials N``
configurations and at most ``--steps S`` training steps per configuration, and ranks them by the
same metric: ``population.evaluate``'s ``val_loss`` on the validation split after training.

Cases (``--cases``):

* ``jaxae-random`` / ``jaxae-tpe`` / ``jaxae-asha`` / ``jaxae-cmaes``: the library's sweep loop
  (``config.build``, ``driver.Driver``, ``driver.run`` with a ``TrialStore`` in a temporary
  directory, no checkpoints) with ``--population P`` slots trained by one vmapped program;
  ``asha`` uses the library's defaults (``eta = 3``, lowest budget ``S // 27``);
  ``jaxae-asha-tpe`` is ASHA with ``--sampler tpe`` (TPE learning from rung results, as BOHB).
* ``optuna-tpe``: ``optuna.create_study(sampler=TPESampler(seed))`` and
  ``study.optimize(objective, n_trials=N)``. The objective trains ONE model with a Python ``for``
  loop over steps around ``jax.jit(population.member_step)`` -- the library's own training step,
  so model, loss, optimizer, initialisation and data order are those jaxae gives trial ``t`` --
  reads the loss every step (``float(loss)``) as such loops do, stops a trial whose loss is not
  finite (its value is then ``inf``), and evaluates once at the end.
* ``optuna-tpe-median-pruner``: the same with ``MedianPruner()`` (Optuna's defaults): every
  ``--report-every K`` steps (default 50, jaxae's chunk) the trial evaluates ``val_loss``,
  ``trial.report``s it and stops if ``trial.should_prune()``. The multi-fidelity counterpart of
  ASHA.

Timing: the data are loaded before the clock starts; everything else -- compilation included -- is
inside ``wall_s``. ``jax.clear_caches()`` runs before every case, so each pays its own
compilation; ``compile_s`` is the time JAX spent tracing, lowering and compiling during the case
(from ``jax.monitoring``'s compile events). ``--cache warm`` times a user's next sweep instead:
JAX's persistent compilation cache (which ``python -m jaxae.sweep`` keeps by default) in a fresh
directory, filled by an untimed run of the same case (the Optuna loop's: 2 trials), so
``compile_s`` is then mostly the time to load programs from it. The best-so-far curve
``best_so_far`` holds ``[elapsed_s, best val_loss]`` each time a trial that trained all ``S``
steps improved on the best (a jaxae trial counts when its chunk ends and its ``completed`` event
is seen; an Optuna trial when it returns). Pruned and diverged trials never count, on either side.

Targets: ``time_to_target_s`` is the first elapsed time at which the best completed loss was at or
below ``--target`` (null if never). The default target, 0.5, is the loss of a good configuration
trained 600 steps on digits: in a pilot (``jaxae-random``, 64 trials, 600 steps, seed 0) the
completed losses (mse summed over 64 features of [0, 1] pixels) ranged 0.29-3.0, with the 10th
percentile at 0.41 and the median at 1.03; 11 of the 64 were below 0.5. The median is a poor target
(a random first trial reaches it half the time, so it times mostly compilation), and a target
chosen for ``S = 600`` means less at other ``--steps``: pass ``--target`` then. After all cases
ran, ``common_target`` = 1.05 x the worst of the cases' best losses -- a target every
case reaches -- and ``time_to_common_target_s`` is reported for it too.

Output: one JSON line per case, printed after all cases ran: ``case``, ``trials``, ``steps``,
``population`` (1 for Optuna), ``wall_s``, ``compile_s``, ``best_val_loss``, ``target``,
``time_to_target_s``, ``common_target``, ``time_to_common_target_s``, ``device``,
``member_steps`` (training steps spent), the number of trials completed / pruned / diverged,
``best_params`` and ``best_so_far``; for the jaxae cases also ``sampler_told`` (losses the
sampler's model holds at the end) and ``sampler_pending_max`` (the longest constant-liar list of a
TPE sampler after any chunk; null for other samplers). Progress goes to stderr.

Example:
    python bench/time_to_quality.py --trials 64 --steps 600 --population 32
    python bench/time_to_quality.py --cases jaxae-asha,optuna-tpe-median-pruner --target 3.0

Optuna is an optional, bench-only dependency (``pip install optuna``); the ``jaxae-*`` cases run
without it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from jaxae import buckets as buckets_lib
from jaxae import config as config_lib
from jaxae import data as data_lib
from jaxae import driver as driver_lib
from jaxae import hparams, jobs, placement, programs, runner, runtime
from jaxae import population as P
from jaxae.store import TrialStore

CASES = ("jaxae-random", "jaxae-tpe", "jaxae-asha", "jaxae-asha-tpe", "jaxae-cmaes", "optuna-tpe",
         "optuna-tpe-median-pruner")
DEFAULT_TARGET = 0.5

LOW_LR, HIGH_LR = 1e-4, 3e-2
LOW_WD, HIGH_WD = 1e-6, 1e-2
LOW_LATENT, HIGH_LATENT = 4, 32
SPACE = {
    "learning_rate": {"dist": "float", "low": LOW_LR, "high": HIGH_LR, "log": True},
    "weight_decay": {"dist": "float", "low": LOW_WD, "high": HIGH_WD, "log": True},
    "latent_dim": {"dist": "int", "low": LOW_LATENT, "high": HIGH_LATENT, "log": True},
    "hidden": 128,
    "activation": "relu",
}

_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_compile_seconds = [0.0]


def _on_duration(event: str, duration: float, **_: Any) -> None:
    if event in _COMPILE_EVENTS:
        _compile_seconds[0] += duration


jax.monitoring.register_event_duration_secs_listener(_on_duration)


def sweep_config(searcher: str, args: argparse.Namespace, sampler: str = "random"
                 ) -> config_lib.SweepConfig:
    """The sweep every case describes (the Optuna cases take their program and keys from it)."""
    return config_lib.build({"model": "ae", "searcher": searcher, "population": args.population,
                             "trials": args.trials, "steps": args.steps, "seed": args.seed,
                             "chunk": args.report_every, "sampler": sampler, "space": SPACE})


class BestSoFar:
    """The best completed loss over time, from a start instant."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.best = math.inf
        self.best_params: dict[str, Any] | None = None
        self.curve: list[list[float]] = []

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def offer(self, loss: float, params: dict[str, Any]) -> None:
        if math.isfinite(loss) and loss < self.best:
            self.best, self.best_params = loss, params
            self.curve.append([round(self.elapsed(), 3), loss])


def run_jaxae(searcher: str, args: argparse.Namespace, dataset: data_lib.Dataset,
              sampler: str = "random") -> dict[str, Any]:
    """One sweep through the library; returns the case's measurements."""
    config = sweep_config(searcher, args, sampler)
    counts = {"completed": 0, "pruned": 0, "diverged": 0}
    pending_max = [None]  # longest constant-liar list seen after a chunk (TPE samplers only)
    with tempfile.TemporaryDirectory() as tmp:
        store = TrialStore(Path(tmp) / "trials.db")
        try:
            tracker = BestSoFar()
            driver = driver_lib.Driver(config, dataset)

            def on_chunk(d: driver_lib.Driver, events: list[jobs.Event]) -> None:
                for e in events:
                    if e.status in counts:
                        counts[e.status] += 1
                    if e.status == "completed":
                        tracker.offer(e.val_loss, _searched(e.config))
                pending = getattr(d.scheduler.sampler, "pending", None)
                if pending is not None:
                    pending_max[0] = max(pending_max[0] or 0, len(pending))

            runner.run(driver, store, None, on_chunk=on_chunk)
            wall = tracker.elapsed()
        finally:
            store.close()
    return {"wall_s": wall, "member_steps": driver.member_steps, "population": args.population,
            "tracker": tracker, "counts": counts, "sampler_pending_max": pending_max[0],
            "sampler_told": driver.scheduler.sampler.num_told}


def _searched(config: dict[str, Any]) -> dict[str, Any]:
    return {k: config[k] for k in ("learning_rate", "weight_decay", "latent_dim")}


def run_optuna(pruned: bool, args: argparse.Namespace, dataset: data_lib.Dataset
               ) -> dict[str, Any]:
    """A study of ``args.trials`` trials, each a per-step loop over one model."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = sweep_config("random", args)
    tracker = BestSoFar()
    train_x = jnp.asarray(dataset.train.x)
    val_x = jnp.asarray(dataset.val.x)
    # The very program jaxae's sweep trains: code size padded to 32 and masked.
    base = hparams.resolve(config.model, config_lib.fixed(config))
    spec = buckets_lib.train_spec(config, dataset.features,
                                 tuple(base[n] for n in hparams.BUCKET_NAMES))
    step_fn = jax.jit(P.member_step, static_argnums=(0,), donate_argnums=(2,))
    # Built once: ``create`` traces (eval_shape) on every call, and ``assign`` donates its input.
    empty = jax.device_get(placement.create(spec, 1))
    counts = {"completed": 0, "pruned": 0, "diverged": 0}
    member_steps = [0]

    def val_loss(member: P.Population) -> float:
        pop = jax.tree.map(lambda a: a[None], member)
        return float(P.evaluate(spec, pop, val_x)["val_loss"][0])

    def objective(trial: optuna.Trial) -> float:
        params = {
            "learning_rate": trial.suggest_float("learning_rate", LOW_LR, HIGH_LR, log=True),
            "weight_decay": trial.suggest_float("weight_decay", LOW_WD, HIGH_WD, log=True),
            "latent_dim": trial.suggest_int("latent_dim", LOW_LATENT, HIGH_LATENT, log=True),
        }
        resolved = hparams.resolve(config.model, {**config_lib.fixed(config), **params})
        member = placement.Member(trial.number, resolved, args.steps,
                                  buckets_lib.member_keys(config, trial.number, 0))
        pop = placement.assign(spec, jax.device_put(empty), [0], [member])
        m = jax.tree.map(lambda a: a[0], pop)
        for step in range(1, args.steps + 1):
            m, loss = step_fn(spec, train_x, m)
            member_steps[0] += 1
            if not math.isfinite(float(loss)):
                counts["diverged"] += 1
                return math.inf
            if pruned and step % args.report_every == 0 and step < args.steps:
                trial.report(val_loss(m), step)
                if trial.should_prune():
                    counts["pruned"] += 1
                    raise optuna.TrialPruned()
        loss = val_loss(m)
        if not math.isfinite(loss):
            counts["diverged"] += 1
            return math.inf
        counts["completed"] += 1
        return loss

    def on_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == optuna.trial.TrialState.COMPLETE:
            tracker.offer(trial.value, dict(trial.params))

    pruner = optuna.pruners.MedianPruner() if pruned else optuna.pruners.NopPruner()
    study = optuna.create_study(direction="minimize", pruner=pruner,
                                sampler=optuna.samplers.TPESampler(seed=args.seed))
    study.optimize(objective, n_trials=args.trials, callbacks=[on_trial])
    return {"wall_s": tracker.elapsed(), "member_steps": member_steps[0], "population": 1,
            "tracker": tracker, "counts": counts}


RUNNERS: dict[str, Callable[[argparse.Namespace, data_lib.Dataset], dict[str, Any]]] = {
    "jaxae-random": lambda a, d: run_jaxae("random", a, d),
    "jaxae-tpe": lambda a, d: run_jaxae("tpe", a, d),
    "jaxae-asha-tpe": lambda a, d: run_jaxae("asha", a, d, sampler="tpe"),
    "jaxae-asha": lambda a, d: run_jaxae("asha", a, d),
    "jaxae-cmaes": lambda a, d: run_jaxae("cmaes", a, d),
    "optuna-tpe": lambda a, d: run_optuna(False, a, d),
    "optuna-tpe-median-pruner": lambda a, d: run_optuna(True, a, d),
}


def time_to(curve: list[list[float]], target: float) -> float | None:
    """The first elapsed time at which the best loss was at or below ``target``."""
    return next((t for t, loss in curve if loss <= target), None)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--trials", type=int, default=64, help="configurations per case (N)")
    p.add_argument("--steps", type=int, default=600, help="training steps of a full trial (S)")
    p.add_argument("--population", type=int, default=32, help="jaxae slots trained at once")
    p.add_argument("--seed", type=int, default=0,
                   help="sweep / sampler seed; also the data split's seed")
    p.add_argument("--cases", default=",".join(CASES),
                   help=f"comma-separated, from {', '.join(CASES)}")
    p.add_argument("--target", type=float, default=DEFAULT_TARGET,
                   help="val_loss whose first reaching is timed (time_to_target_s)")
    p.add_argument("--cache", choices=("cold", "warm"), default="cold",
                   help="cold: every case compiles its programs (in-memory caches cleared, no "
                   "persistent cache); warm: a fresh persistent compilation cache (as "
                   "`python -m jaxae.sweep` keeps by default) is filled by an untimed run of the "
                   "case first (the Optuna loop: 2 trials), so the timed run loads its programs "
                   "as a user's next sweep does")
    p.add_argument("--report-every", type=int, default=50, metavar="K",
                   help="steps between val_loss reports of the pruned Optuna case; also jaxae's "
                   "chunk (steps per jitted call between evaluations)")
    args = p.parse_args(argv)
    args.cases = [c for c in args.cases.split(",") if c]
    unknown = set(args.cases) - set(CASES)
    if unknown:
        p.error(f"unknown case(s) {', '.join(sorted(unknown))}; choose from {', '.join(CASES)}")
    for name in ("trials", "steps", "population", "report_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    runtime.use_cpu_cores()  # JAXAE_CPU_DEVICES: the sweep's slots over the cores (the loop: one)
    dataset = data_lib.load("digits", seed=args.seed)
    device = jax.devices()[0].device_kind
    rows = []
    if args.cache == "warm":
        cache_dir = tempfile.mkdtemp(prefix="jaxae-ttq-cache-")
        jax.config.update("jax_compilation_cache_dir", cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    for case in args.cases:
        if args.cache == "warm":
            print(f"warming the cache for {case} ...", file=sys.stderr, flush=True)
            jax.clear_caches()
            programs.forget()
            warm = args if case.startswith("jaxae") else argparse.Namespace(
                **{**vars(args), "trials": 2})
            RUNNERS[case](warm, dataset)
        jax.clear_caches()
        programs.forget()
        compiled_before = _compile_seconds[0]
        print(f"running {case} ...", file=sys.stderr, flush=True)
        result = RUNNERS[case](args, dataset)
        tracker: BestSoFar = result["tracker"]
        row = {
            "case": case, "trials": args.trials, "steps": args.steps,
            "population": result["population"], "wall_s": round(result["wall_s"], 3),
            "compile_s": round(_compile_seconds[0] - compiled_before, 3),
            "best_val_loss": tracker.best if math.isfinite(tracker.best) else None,
            "target": args.target,
            "time_to_target_s": time_to(tracker.curve, args.target),
            "device": device, "cache": args.cache, "member_steps": result["member_steps"],
            **{f"trials_{k}": v for k, v in result["counts"].items()},
            "sampler_pending_max": result.get("sampler_pending_max"),
            "sampler_told": result.get("sampler_told"),
            "best_params": tracker.best_params, "best_so_far": tracker.curve,
        }
        print(f"  {case}: {row['wall_s']:.1f} s, best {row['best_val_loss']}", file=sys.stderr,
              flush=True)
        rows.append(row)
    bests = [r["best_val_loss"] for r in rows if r["best_val_loss"] is not None]
    common = round(max(bests) * 1.05, 6) if bests else None
    for r in rows:
        r["common_target"] = common
        r["time_to_common_target_s"] = (None if common is None
                                        else time_to(r["best_so_far"], common))
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    raise SystemExit(main())
