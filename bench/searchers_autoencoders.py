"""Sample efficiency of the model-based searchers on autoencoders: best loss at a fixed budget.

Issue 17 item 4's protocol: for each autoencoder kind of ``--kinds`` and each seed of ``--seeds``,
one sweep per searcher of ``--searchers`` (default ``random``, ``cmaes``, ``tpe``, ``gp`` and the
Optuna samplers below; ``grid`` with ``--grid-num`` points per range on request) through the
library's driver (``config.build`` -> ``driver.Driver`` -> ``driver.run``, a temporary
store), ``--trials`` configurations (default 48) at ``--steps`` steps each (400), ``--population``
slots (16), on the digits split of the seed, over a 3-parameter space per kind: ``learning_rate``
log [1e-4, 3e-2] and ``weight_decay`` log [1e-6, 1e-2] (the sweep's defaults), plus the kind's
penalty: ``l1`` (sparse), ``noise`` (denoising), ``contractive`` (contractive), ``beta`` (vae),
and for the plain ``ae``, which has none, ``latent_dim`` int log [4, 32]. Everything else is the
library's default (hidden 64 and relu here, to keep the sweep small).

Optuna (``--searchers`` ``optuna-tpe``, ``optuna-cmaes``, ``optuna-gp``) runs through the same
driver: its ``TPESampler`` / ``CmaEsSampler`` (``popsize`` = the population) / ``GPSampler``,
seeded with the sweep's seed and otherwise at their defaults, is driven by its ask / tell
interface behind the ``Searcher`` protocol (``OptunaSearcher``: one generation of
``--population`` trials per ask, told before the next; ``GPSampler`` sees the generation's
earlier trials as running and picks each by q-batch log EI), and the driver's scheduler is a
``FullBudget`` over it. ``CmaEsSampler`` needs the ``cmaes`` package and ``GPSampler`` PyTorch,
neither of which the project's extras install: a searcher named in ``--searchers`` that cannot
be imported stops the bench (one line, exit 2); the default list skips it with a ``skipped``
JSON line. Run ``optuna-gp`` with ``OMP_NUM_THREADS=1`` (Optuna's advice: torch's threads
oversubscribe a small CPU).

Output: one JSON line per (kind, seed, searcher) with ``best_val_loss`` (the best completed
trial's validation loss; NaN / diverged trials never count), ``best_trial``, ``best_params``,
``completed``, ``wall_s``, ``space`` (the ``--space`` override, if any) and, with ``--trace``,
``trace`` (every completed trial's ``trial``, ``val_loss`` and params, in completion order);
then one ``"summary": true`` line per (kind, searcher) with the median best loss over seeds and
``improvement_vs_random``: ``1 - median(best) / median(best of random)`` (positive: better than
random; item 4 asks for >= 0.02 on every kind).

Example:
    python bench/searchers_autoencoders.py --kinds ae,sparse --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from jaxae import config as config_lib  # noqa: E402
from jaxae import data as data_lib  # noqa: E402
from jaxae import driver as driver_lib  # noqa: E402
from jaxae import (
    jobs,  # noqa: E402
    runner,  # noqa: E402
    runtime,  # noqa: E402
)
from jaxae.store import TrialStore  # noqa: E402
from searchers import Choice, Float, FullBudget, Searcher  # noqa: E402

COMMON = {
    "learning_rate": {"dist": "float", "low": 1e-4, "high": 3e-2, "log": True},
    "weight_decay": {"dist": "float", "low": 1e-6, "high": 1e-2, "log": True},
    "hidden": 64,
    "activation": "relu",
}
PENALTY = {
    "ae": {"latent_dim": {"dist": "int", "low": 4, "high": 32, "log": True}},
    "sparse": {"l1": {"dist": "float", "low": 1e-5, "high": 1e-1, "log": True}},
    "denoising": {"noise": {"dist": "float", "low": 0.05, "high": 0.8}},
    "contractive": {"contractive": {"dist": "float", "low": 1e-4, "high": 1.0, "log": True}},
    "vae": {"beta": {"dist": "float", "low": 0.1, "high": 4.0, "log": True}},
}


OPTUNA = ("optuna-tpe", "optuna-cmaes", "optuna-gp")
SEARCHERS = ("random", "cmaes", "tpe", "gp", *OPTUNA)  # the default list
EXTRA = ("grid",)  # also accepted: the floor scans of SEARCHERS.md


class OptunaSearcher(Searcher):
    """An Optuna sampler behind the ``Searcher`` protocol, through Optuna's ask / tell interface.

    Synchronous: ``ask`` creates one generation of ``population`` trials (the same generation
    until it is told); ``tell`` completes them (NaN / inf: ``FAIL``). Unregistered (no ``name``)
    and never checkpointed: the bench runs without an output directory.
    """

    synchronous = True

    def __init__(self, space: dict[str, Any], sampler: Any, population: int, seed: int) -> None:
        import optuna

        super().__init__(space, seed)
        self._optuna = optuna
        self.study = optuna.create_study(sampler=sampler, direction="minimize")
        self.distributions = {name: _optuna_distribution(optuna, dim)
                              for name, dim in space.items()}
        self.population = population
        self.running: list[tuple[dict[str, Any], Any]] = []  # (config, optuna trial)

    def _ask(self) -> list[dict[str, Any]]:
        if not self.running:
            for _ in range(self.population):
                trial = self.study.ask(self.distributions)
                self.running.append((dict(trial.params), trial))
        return [config for config, _ in self.running]

    def _tell(self, configs: list[dict[str, Any]], losses: np.ndarray) -> None:
        for config, loss in zip(configs, losses, strict=True):
            i = next(i for i, (c, _) in enumerate(self.running) if c == config)
            _, trial = self.running.pop(i)
            if math.isfinite(loss):
                self.study.tell(trial, float(loss))
            else:
                self.study.tell(trial, state=self._optuna.trial.TrialState.FAIL)


def _optuna_distribution(optuna: Any, dim: Any) -> Any:
    if isinstance(dim, Float):
        return optuna.distributions.FloatDistribution(dim.low, dim.high, log=dim.log)
    if isinstance(dim, Choice):
        return optuna.distributions.CategoricalDistribution(list(dim.options))
    return optuna.distributions.IntDistribution(dim.low, dim.high, log=dim.log)


def optuna_sampler(name: str, population: int, seed: int) -> Any:
    """Optuna's sampler for ``name`` (``ImportError`` if it or its dependency is missing)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if name == "optuna-tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "optuna-gp":
        import torch  # noqa: F401  (GPSampler imports it lazily, at its first sample)

        return optuna.samplers.GPSampler(seed=seed)
    import cmaes  # noqa: F401  (CmaEsSampler imports it only when it first samples)

    return optuna.samplers.CmaEsSampler(seed=seed, popsize=population)


def space_of(kind: str, searcher: str, grid_num: int,
             override: dict[str, Any] | None = None) -> dict[str, Any]:
    """The bench's ``[space]`` for ``kind``, updated by ``override`` (``--space``), with
    ``grid_num`` points per searched range for ``grid``."""
    space = {**COMMON, **PENALTY[kind], **(override or {})}
    if searcher == "grid":
        space = {k: {**v, "num": grid_num} if isinstance(v, dict) else v for k, v in space.items()}
    return space


def sweep_trace(kind: str, searcher: str, seed: int, args: argparse.Namespace,
                dataset: data_lib.Dataset) -> tuple[list[dict[str, Any]], float]:
    """Every completed trial of one sweep (``trial``, ``val_loss``, the searched params; NaN /
    diverged trials left out), in the order they completed, and the sweep's wall time."""
    optuna_name = searcher if searcher in OPTUNA else None
    config = config_lib.build({"model": kind, "searcher": "random" if optuna_name else searcher,
                               "population": args.population, "trials": args.trials,
                               "steps": args.steps, "seed": seed, "chunk": args.chunk,
                               "space": space_of(kind, searcher, args.grid_num, args.space)})
    searched = config_lib.searched(config)
    trace: list[dict[str, Any]] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        store = TrialStore(Path(tmp) / "trials.db")
        try:
            driver = driver_lib.Driver(config, dataset)
            if optuna_name:
                sampler = optuna_sampler(optuna_name, args.population, seed)
                source = OptunaSearcher(searched, sampler, args.population, seed)
                driver.scheduler = FullBudget(source, max_budget=args.steps,
                                              max_trials=args.trials)

            def on_chunk(_: driver_lib.Driver, events: list[jobs.Event]) -> None:
                for e in events:
                    if e.status == "completed" and math.isfinite(e.val_loss):
                        trace.append({"trial": e.trial, "val_loss": e.val_loss,
                                      **{k: e.config[k] for k in searched}})

            runner.run(driver, store, None, on_chunk=on_chunk)
        finally:
            store.close()
    return trace, time.perf_counter() - start


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default="ae,sparse,denoising,contractive,vae")
    parser.add_argument("--searchers", default=None,
                        help=f"comma-separated, of {', '.join((*SEARCHERS, *EXTRA))} [default: "
                        "all but grid; an Optuna sampler whose dependency is missing is skipped]")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--trials", type=int, default=48)
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--chunk", type=int, default=50)
    parser.add_argument("--grid-num", type=int, default=5,
                        help="grid: points per searched range (the grid has num**3 points)")
    parser.add_argument("--space", type=json.loads, default=None,
                        help="JSON object merged over every kind's [space] (a bare value fixes "
                        "a hyperparameter, a table varies it), e.g. for a scan of a smaller box")
    parser.add_argument("--trace", action="store_true",
                        help="add every completed trial (val_loss and params) to each line")
    args = parser.parse_args(argv)
    kinds = args.kinds.split(",")
    searchers = list(SEARCHERS) if args.searchers is None else args.searchers.split(",")
    for kind in kinds:
        if kind not in PENALTY:
            parser.error(f"unknown kind {kind!r} (known: {', '.join(PENALTY)})")
    for name in searchers:
        if name not in (*SEARCHERS, *EXTRA):
            parser.error(f"unknown searcher {name!r} "
                         f"(known: {', '.join((*SEARCHERS, *EXTRA))})")
    seeds = [int(s) for s in args.seeds.split(",")]
    for name in [s for s in searchers if s in OPTUNA]:
        try:
            optuna_sampler(name, args.population, 0)
        except ImportError as e:
            if args.searchers is not None:  # asked for by name: a run without it is not one
                print(f"{name} cannot run: {type(e).__name__}: {e}", file=sys.stderr)
                return 2
            print(json.dumps({"searcher": name, "skipped": f"{type(e).__name__}: {e}"}),
                  flush=True)
            searchers.remove(name)
    runtime.use_cpu_cores()
    for kind in kinds:
        results: dict[str, list[float]] = {}
        for seed in seeds:
            dataset = data_lib.load("digits", seed=seed)
            for searcher in searchers:
                trace, wall = sweep_trace(kind, searcher, seed, args, dataset)
                top = min(trace, key=lambda t: t["val_loss"], default=None)
                best = math.inf if top is None else top["val_loss"]
                results.setdefault(searcher, []).append(best)
                line = {"kind": kind, "seed": seed, "searcher": searcher,
                        "trials": args.trials, "population": args.population,
                        "steps": args.steps, "best_val_loss": best,
                        "best_trial": None if top is None else top["trial"],
                        "best_params": None if top is None else {
                            k: v for k, v in top.items() if k not in ("trial", "val_loss")},
                        "completed": len(trace), "wall_s": round(wall, 1)}
                if args.space:
                    line["space"] = args.space
                if args.trace:
                    line["trace"] = trace
                print(json.dumps(line), flush=True)
        for searcher, bests in results.items():
            line: dict[str, Any] = {"summary": True, "kind": kind, "searcher": searcher,
                                    "seeds": len(seeds), "median_best": median(bests)}
            if "random" in results:
                line["improvement_vs_random"] = 1 - median(bests) / median(results["random"])
                line["seeds_better_than_random"] = sum(
                    b < r for b, r in zip(bests, results["random"], strict=True))
            print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    raise SystemExit(main())
