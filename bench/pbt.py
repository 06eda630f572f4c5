"""Population-based training against random search and ASHA at equal member-steps.

For each autoencoder kind of ``--kinds`` (default ``ae`` and ``vae``) and each seed of
``--seeds``, three sweeps through the library's drivers (``config.build`` ->
``pbt.PBTDriver`` / ``driver.Driver`` -> ``driver.run``, a temporary store), ``--population``
slots each (default 16), on the digits split of the seed, over the space of
``bench/searchers_autoencoders.py`` (learning rate, weight decay and the kind's penalty; hidden
64, relu):

* ``pbt``: ``--population`` members for ``--steps`` steps, exploiting every ``--ready`` steps;
* ``random``: ``--population`` trials of ``--steps`` steps: the same member-steps;
* ``asha``: ``--asha-trials`` trials (default ``9 x population``: with eta 3 and four rungs
  from ``steps / 27`` an ASHA trial costs about ``steps / 9`` member-steps on average) up to
  ``--steps`` steps.

Output: one JSON line per (kind, seed, searcher) with ``best_val_loss`` (the lowest final
validation loss of a trial trained to ``--steps``; diverged trials never count),
``member_steps`` (measured: what each sweep really trained) and ``wall_s``, then one
``"summary": true`` line per (kind, searcher) with the median best loss over seeds and
``vs_random``: ``1 - median(best) / median(best of random)`` (positive: better).

Example:
    python bench/pbt.py --kinds ae,vae --seeds 0,1,2 --steps 1000
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

from bench.searchers_autoencoders import COMMON, PENALTY, median  # noqa: E402
from jaxae import config as config_lib  # noqa: E402
from jaxae import data as data_lib  # noqa: E402
from jaxae import driver as driver_lib  # noqa: E402
from jaxae import (
    jobs,  # noqa: E402
    runner,  # noqa: E402
    runtime,  # noqa: E402
)
from jaxae import pbt as pbt_lib  # noqa: E402
from jaxae.store import TrialStore  # noqa: E402

SEARCHERS = ("pbt", "random", "asha")


def sweep(kind: str, searcher: str, seed: int, args: argparse.Namespace,
          dataset: data_lib.Dataset) -> dict[str, Any]:
    """One sweep's best full-budget loss, member-steps and wall time."""
    trials = args.population
    if searcher == "asha":
        trials = args.asha_trials or 9 * args.population
    settings: dict[str, Any] = {
        "model": kind, "searcher": searcher, "population": args.population, "trials": trials,
        "steps": args.steps, "seed": seed, "chunk": args.chunk,
        "space": {**COMMON, **PENALTY[kind]}}
    if searcher == "pbt":
        settings["pbt_ready"] = args.ready
    config = config_lib.build(settings)
    best = math.inf
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        store = TrialStore(Path(tmp) / "trials.db")
        try:
            driver = (pbt_lib.PBTDriver(config, dataset) if searcher == "pbt"
                      else driver_lib.Driver(config, dataset))

            def on_chunk(_: Any, events: list[jobs.Event]) -> None:
                nonlocal best
                for e in events:
                    if (e.status == "completed" and e.steps == config.steps
                            and math.isfinite(e.val_loss)):
                        best = min(best, e.val_loss)

            runner.run(driver, store, None, on_chunk=on_chunk)
        finally:
            store.close()
    return {"kind": kind, "seed": seed, "searcher": searcher, "trials": config.trials,
            "population": config.population, "steps": config.steps,
            "member_steps": driver.member_steps, "best_val_loss": best,
            "wall_s": round(time.perf_counter() - start, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default="ae,vae")
    parser.add_argument("--searchers", default=",".join(SEARCHERS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--ready", type=int, default=100, help="pbt: steps between exploits")
    parser.add_argument("--chunk", type=int, default=50)
    parser.add_argument("--asha-trials", type=int, default=None,
                        help="asha's trials [default: 9 x population]")
    args = parser.parse_args(argv)
    kinds, searchers = args.kinds.split(","), args.searchers.split(",")
    for kind in kinds:
        if kind not in PENALTY:
            parser.error(f"unknown kind {kind!r} (known: {', '.join(PENALTY)})")
    for searcher in searchers:
        if searcher not in SEARCHERS:
            parser.error(f"unknown searcher {searcher!r} (known: {', '.join(SEARCHERS)})")
    seeds = [int(s) for s in args.seeds.split(",")]
    runtime.use_cpu_cores()
    for kind in kinds:
        results: dict[str, list[float]] = {}
        for seed in seeds:
            dataset = data_lib.load("digits", seed=seed)
            for searcher in searchers:
                line = sweep(kind, searcher, seed, args, dataset)
                results.setdefault(searcher, []).append(line["best_val_loss"])
                print(json.dumps(line), flush=True)
        for searcher, bests in results.items():
            summary: dict[str, Any] = {"summary": True, "kind": kind, "searcher": searcher,
                                       "seeds": len(seeds), "median_best": median(bests),
                                       "bests": bests}
            if "random" in results:
                summary["vs_random"] = 1 - median(bests) / median(results["random"])
                summary["seeds_better_than_random"] = sum(
                    b < r for b, r in zip(bests, results["random"], strict=True))
            print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    raise SystemExit(main())
