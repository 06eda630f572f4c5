"""Sample efficiency of the model-based searchers on autoencoders: best loss at a fixed budget.

Issue 17 item 4's protocol: for each autoencoder kind of ``--kinds`` and each seed of ``--seeds``,
one sweep per searcher of ``--searchers`` (default ``random``, ``cmaes``, ``tpe``, ``gp``) through
the library's driver (``config.build`` -> ``driver.Driver`` -> ``driver.run``, a temporary
store), ``--trials`` configurations (default 48) at ``--steps`` steps each (400), ``--population``
slots (16), on the digits split of the seed, over a 3-parameter space per kind: ``learning_rate``
log [1e-4, 3e-2] and ``weight_decay`` log [1e-6, 1e-2] (the sweep's defaults), plus the kind's
penalty: ``l1`` (sparse), ``noise`` (denoising), ``contractive`` (contractive), ``beta`` (vae),
and for the plain ``ae``, which has none, ``latent_dim`` int log [4, 32]. Everything else is the
library's default (hidden 64 and relu here, to keep the sweep small).

Output: one JSON line per (kind, seed, searcher) with ``best_val_loss`` (the best completed
trial's validation loss; NaN / diverged trials never count) and ``wall_s``, then one ``"summary":
true`` line per (kind, searcher) with the median best loss over seeds and
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

from jaxae import config as config_lib  # noqa: E402
from jaxae import data as data_lib  # noqa: E402
from jaxae import driver as driver_lib  # noqa: E402
from jaxae import runtime  # noqa: E402
from jaxae.store import TrialStore  # noqa: E402

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


def best_loss(kind: str, searcher: str, seed: int, args: argparse.Namespace,
              dataset: data_lib.Dataset) -> tuple[float, float]:
    """The best completed val_loss of one sweep, and its wall time."""
    config = config_lib.build({"model": kind, "searcher": searcher, "population": args.population,
                               "trials": args.trials, "steps": args.steps, "seed": seed,
                               "chunk": args.chunk, "space": {**COMMON, **PENALTY[kind]}})
    best = math.inf
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        store = TrialStore(Path(tmp) / "trials.db")
        try:
            driver = driver_lib.Driver(config, dataset)

            def on_chunk(_: driver_lib.Driver, events: list[driver_lib.Event]) -> None:
                nonlocal best
                for e in events:
                    if e.status == "completed" and math.isfinite(e.val_loss):
                        best = min(best, e.val_loss)

            driver_lib.run(driver, store, None, on_chunk=on_chunk)
        finally:
            store.close()
    return best, time.perf_counter() - start


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default="ae,sparse,denoising,contractive,vae")
    parser.add_argument("--searchers", default="random,cmaes,tpe,gp")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--trials", type=int, default=48)
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--chunk", type=int, default=50)
    args = parser.parse_args(argv)
    kinds, searchers = args.kinds.split(","), args.searchers.split(",")
    for kind in kinds:
        if kind not in PENALTY:
            parser.error(f"unknown kind {kind!r} (known: {', '.join(PENALTY)})")
    seeds = [int(s) for s in args.seeds.split(",")]
    runtime.use_cpu_cores()
    for kind in kinds:
        results: dict[str, list[float]] = {}
        for seed in seeds:
            dataset = data_lib.load("digits", seed=seed)
            for searcher in searchers:
                best, wall = best_loss(kind, searcher, seed, args, dataset)
                results.setdefault(searcher, []).append(best)
                print(json.dumps({"kind": kind, "seed": seed, "searcher": searcher,
                                  "trials": args.trials, "population": args.population,
                                  "steps": args.steps, "best_val_loss": best,
                                  "wall_s": round(wall, 1)}), flush=True)
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
