"""GP Bayesian optimisation against other searchers on standard test functions, equal budgets.

Problems (minimised; known minima): ``branin`` (2-D, x1 in [-5, 10], x2 in [0, 15], minimum
0.397887) and ``hartmann6`` (6-D unit cube, minimum -3.32237), the functions of the GP-BO
literature (e.g. Snoek et al. 2012). Every method gets ``--evaluations`` evaluations, asked in
batches of ``--batch`` (each batch told before the next is asked), once per seed of ``--seeds``.

Methods:

* ``gp``: ``searchers.GP`` (this package).
* ``random``, ``tpe``: ``searchers.RandomSearch``, ``searchers.TPE``.
* ``optuna-gp``: Optuna's ``GPSampler`` (the seed, otherwise its defaults: 10 random startup
  trials, then log EI, or q-batch log EI over the running trials of a batch). It needs PyTorch,
  which no extra of the project installs: named in ``--methods`` without it, the bench stops
  (one line, exit 2); in the default list one line ``{"method": "optuna-gp", "skipped": "..."}``
  says so and the method is left out. Run it with ``OMP_NUM_THREADS=1`` (Optuna's advice: torch's
  threads oversubscribe a small CPU).
* ``optuna-tpe``: Optuna's ``TPESampler`` (``multivariate=True``, the seed).
* ``sklearn-gp``: a reference GP-BO loop written here on scikit-learn: ``GaussianProcessRegressor``
  with ``Constant * Matern(nu=2.5, ARD) + White`` fitted by sklearn's L-BFGS-B with 2 restarts and
  ``normalize_y``, expected improvement maximised over 2000 uniform candidates (scikit-optimize's
  default "sampling" optimiser), after the same 10 random points as Optuna's default startup.

Output: one JSON line per (problem, method, seed) with ``best`` (best loss found), ``gap`` (best
minus the known minimum) and ``seconds`` (the method's own time, the function's excluded), then one
``"summary": true`` line per (problem, method) with the median and quartiles of ``gap`` over the
seeds, the median ``seconds``, and ``beats_random`` (seeds where the method's gap is below random
search's at the same seed).

Example:
    python bench/searchers_gp.py --problems branin,hartmann6 --evaluations 50 --seeds 0-9
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from searchers import GP, TPE, Float, RandomSearch, Searcher  # noqa: E402
from searchers.gaussian_process import one_blas_thread  # noqa: E402

_A = np.array([[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14],
               [3, 3.5, 1.7, 10, 17, 8], [17, 8, 0.05, 10, 0.1, 14]])
_P = 1e-4 * np.array([[1312, 1696, 5569, 124, 8283, 5886], [2329, 4135, 8307, 3736, 1004, 9991],
                      [2348, 1451, 3522, 2883, 3047, 6650], [4047, 8828, 8732, 5743, 1091, 381]])
_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])


def branin(c: dict) -> float:
    x1, x2 = c["x1"], c["x2"]
    b, k = 5.1 / (4 * math.pi**2), 5 / math.pi
    return (x2 - b * x1**2 + k * x1 - 6) ** 2 + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x1) + 10


def hartmann6(c: dict) -> float:
    x = np.array([c[f"x{i}"] for i in range(6)])
    return float(-(_ALPHA * np.exp(-(_A * (x - _P) ** 2).sum(axis=1))).sum())


PROBLEMS: dict[str, tuple[Callable[[dict], float], dict, float]] = {
    "branin": (branin, {"x1": Float(-5.0, 10.0), "x2": Float(0.0, 15.0)}, 0.397887),
    "hartmann6": (hartmann6, {f"x{i}": Float(0.0, 1.0) for i in range(6)}, -3.32237),
}
METHODS = ("gp", "random", "tpe", "optuna-gp", "optuna-tpe", "sklearn-gp")


def run_searcher(searcher: Searcher, loss: Callable[[dict], float],
                 evaluations: int) -> tuple[float, float]:
    """Best loss and the searcher's own seconds over ``evaluations`` evaluations."""
    spent, best, done = 0.0, math.inf, 0
    while done < evaluations:
        start = time.perf_counter()
        configs = searcher.ask()[:evaluations - done]
        spent += time.perf_counter() - start
        losses = [loss(c) for c in configs]
        start = time.perf_counter()
        searcher.tell(configs, losses)
        spent += time.perf_counter() - start
        best, done = min([best, *losses]), done + len(configs)
    return best, spent


def run_optuna(sampler_name: str, space: dict, loss: Callable[[dict], float], evaluations: int,
               batch: int, seed: int) -> tuple[float, float]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if sampler_name == "optuna-gp":
        sampler = optuna.samplers.GPSampler(seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True)
    study = optuna.create_study(sampler=sampler)
    dists = {name: optuna.distributions.FloatDistribution(dim.low, dim.high, log=dim.log)
             for name, dim in space.items()}
    spent, done = 0.0, 0
    while done < evaluations:
        start = time.perf_counter()
        trials = [study.ask(dists) for _ in range(min(batch, evaluations - done))]
        spent += time.perf_counter() - start
        values = [loss(t.params) for t in trials]
        start = time.perf_counter()
        for trial, value in zip(trials, values, strict=True):
            study.tell(trial, value)
        spent += time.perf_counter() - start
        done += len(trials)
    return study.best_value, spent


def run_sklearn_gp(space: dict, loss: Callable[[dict], float], evaluations: int, batch: int,
                   seed: int) -> tuple[float, float]:
    """The reference loop of the module docstring (batches: the top ``batch`` EI candidates)."""
    from scipy import stats
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    rng = np.random.default_rng(seed)
    names, dims = list(space), list(space.values())
    X: list[np.ndarray] = []
    y: list[float] = []
    spent = 0.0
    while len(y) < evaluations:
        start = time.perf_counter()
        n = min(batch, evaluations - len(y))
        if len(y) < 10:
            U = rng.random((n, len(dims)))
        else:
            kernel = (ConstantKernel(1.0, (1e-3, 1e3))
                      * Matern(np.full(len(dims), 0.5), (1e-2, 1e2), nu=2.5)
                      + WhiteKernel(1e-4, (1e-8, 1e-1)))
            model = GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=2,
                                             random_state=int(rng.integers(2**31)))
            # One BLAS thread, as searchers.GP uses: sklearn's L-BFGS-B suffers from it too.
            with warnings.catch_warnings(), one_blas_thread():
                warnings.simplefilter("ignore")  # sklearn's convergence warnings at the bounds
                model.fit(np.array(X), np.array(y))
            candidates = rng.random((2000, len(dims)))
            mean, std = model.predict(candidates, return_std=True)
            std = np.maximum(std, 1e-12)
            z = (min(y) - mean) / std
            ei = (min(y) - mean) * stats.norm.cdf(z) + std * stats.norm.pdf(z)
            U = candidates[np.argsort(-ei)[:n]]
        spent += time.perf_counter() - start
        for u in U:
            config = {name: dim.from_unit(x) for name, dim, x in zip(names, dims, u, strict=True)}
            X.append(np.array([dim.to_unit(config[name]) for name, dim in zip(names, dims,
                                                                                 strict=True)]))
            y.append(loss(config))
    return min(y), spent


def run(method: str, problem: str, evaluations: int, batch: int, seed: int) -> tuple[float, float]:
    loss, space, _ = PROBLEMS[problem]
    if method == "gp":
        return run_searcher(GP(space, batch_size=batch, seed=seed), loss, evaluations)
    if method == "random":
        return run_searcher(RandomSearch(space, batch_size=batch, seed=seed), loss, evaluations)
    if method == "tpe":
        return run_searcher(TPE(space, batch_size=batch, seed=seed), loss, evaluations)
    if method == "sklearn-gp":
        return run_sklearn_gp(space, loss, evaluations, batch, seed)
    return run_optuna(method, space, loss, evaluations, batch, seed)


def optuna_gp_unavailable() -> str | None:
    try:
        import optuna  # noqa: F401
        import torch  # noqa: F401
    except ImportError as e:
        return f"optuna's GPSampler needs PyTorch: {e}"
    return None


def parse_seeds(text: str) -> list[int]:
    if "-" in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default="branin,hartmann6")
    parser.add_argument("--methods", default=None,
                        help=f"comma-separated, of {', '.join(METHODS)} [default: all; "
                        "optuna-gp is skipped where PyTorch is missing]")
    parser.add_argument("--evaluations", type=int, default=50)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seeds", default="0-4", help="'0-9' or '0,3,7'")
    args = parser.parse_args(argv)
    problems = args.problems.split(",")
    methods = list(METHODS) if args.methods is None else args.methods.split(",")
    for name in problems:
        if name not in PROBLEMS:
            parser.error(f"unknown problem {name!r} (known: {', '.join(PROBLEMS)})")
    for name in methods:
        if name not in METHODS:
            parser.error(f"unknown method {name!r} (known: {', '.join(METHODS)})")
    if "optuna-gp" in methods and (why := optuna_gp_unavailable()):
        if args.methods is not None:  # asked for by name: a run without it is not one
            print(f"optuna-gp cannot run: {why}", file=sys.stderr)
            return 2
        print(json.dumps({"method": "optuna-gp", "skipped": why}), flush=True)
        methods.remove("optuna-gp")
    seeds = parse_seeds(args.seeds)
    for problem in problems:
        optimum = PROBLEMS[problem][2]
        gaps: dict[str, list[float]] = {}
        seconds: dict[str, list[float]] = {}
        for method in methods:
            for seed in seeds:
                best, spent = run(method, problem, args.evaluations, args.batch, seed)
                gaps.setdefault(method, []).append(best - optimum)
                seconds.setdefault(method, []).append(spent)
                print(json.dumps({"problem": problem, "method": method, "seed": seed,
                                  "evaluations": args.evaluations, "batch": args.batch,
                                  "best": best, "gap": best - optimum,
                                  "seconds": round(spent, 4)}), flush=True)
        for method in methods:
            q25, q50, q75 = np.percentile(gaps[method], [25, 50, 75])
            line = {"summary": True, "problem": problem, "method": method,
                    "evaluations": args.evaluations, "batch": args.batch, "seeds": len(seeds),
                    "median_gap": float(q50), "gap_q25": float(q25), "gap_q75": float(q75),
                    "median_seconds": float(np.median(seconds[method]))}
            if "random" in gaps:
                line["beats_random"] = int(sum(a < b for a, b in zip(gaps[method], gaps["random"],
                                                                      strict=True)))
            print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
