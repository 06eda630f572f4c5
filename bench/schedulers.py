"""Host time of the multi-fidelity schedulers alone as a sweep grows to many thousands of trials.

A driver's loop without any training: ``population`` slots, each finished job told at once with a
loss from its config and budget, the next asked for. One JSON line per scheduler and trial count:
``tells``, ``seconds``, ``us_per_tell`` (flat when the scheduler's work per tell does not grow
with the sweep).

Example:
    python bench/schedulers.py --trials 1000,4000,16000
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

from searchers import Float, make_scheduler


def drive(name: str, trials: int, population: int, eta: int) -> dict:
    scheduler = make_scheduler(name, {"x": Float(0.0, 1.0)}, max_trials=trials, max_budget=81,
                               eta=eta, population=population, seed=0)
    running, tells = [], 0
    t0 = time.perf_counter()
    while True:
        running += scheduler.ask(population - len(running))
        if not running:
            break
        job = running.pop(0)  # the oldest job ends first
        scheduler.tell(job.trial_id, job.budget, (job.config["x"] - 0.3) ** 2 + 1 / job.budget)
        tells += 1
    seconds = time.perf_counter() - t0
    return {"bench": "schedulers", "searcher": name, "trials": trials, "population": population,
            "eta": eta, "tells": tells, "seconds": seconds, "us_per_tell": 1e6 * seconds / tells}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Scheduler host time per tell as sweeps grow.")
    p.add_argument("--searchers", default="sha,hyperband,asha")
    p.add_argument("--trials", default="1000,4000,16000", help="comma-separated trial counts")
    p.add_argument("--population", type=int, default=64)
    p.add_argument("--eta", type=int, default=3)
    args = p.parse_args(argv)
    for name in args.searchers.split(","):
        for trials in (int(n) for n in args.trials.split(",")):
            print(json.dumps(drive(name, trials, args.population, args.eta)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
