"""``python -m jaxae.export DIR --optuna-storage URL``: a jaxae sweep as an Optuna study.

Every trial of the sweep in ``DIR`` becomes one Optuna trial: its varying hyperparameters with
their distributions (from the space in ``DIR/sweep.json``), its state, its value and its
intermediate values (the learning curve, step -> validation loss), so ``optuna.load_study``,
Optuna's importance evaluators and ``optuna-dashboard URL`` work on the sweep.

States: ``completed`` -> COMPLETE, ``pruned`` -> PRUNED (its value is the loss at the budget it
stopped at, as Optuna records the last intermediate value of a pruned trial), ``diverged`` and
``failed`` -> FAIL, ``running`` -> RUNNING. Hyperparameters that do not vary are study user
attributes, not trial parameters (Optuna's importance evaluators would otherwise see constant
dimensions).

Times: a trial's ``datetime_start`` / ``datetime_complete`` are the store's ``started_at``
(when its first row was written, at the end of its first chunk) and ``finished_at`` (when it
stopped), as naive local times like those Optuna records itself. A store written before jaxae
kept per-trial times gives every trial the sweep's start and end from ``sweep.json`` instead, and
Optuna's views by time then say nothing.

Optuna is an optional dependency (``pip install 'jaxae[optuna]'``), imported only here.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import math
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from jaxae.errors import UserError, one_line
from jaxae.results import Sweep, load_sweep
from searchers import Choice, Float, Int
from searchers.space import Dimension

STATES = {"completed": "COMPLETE", "pruned": "PRUNED", "diverged": "FAIL", "failed": "FAIL",
          "running": "RUNNING"}


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise UserError("optuna is not installed: pip install 'jaxae[optuna]'") from None
    return optuna


def distribution(dim: Dimension) -> Any:
    """The Optuna distribution of a ``searchers`` dimension (same bounds, same log scale)."""
    optuna = _optuna()
    if isinstance(dim, Float):
        return optuna.distributions.FloatDistribution(dim.low, dim.high, log=dim.log)
    if isinstance(dim, Int):
        return optuna.distributions.IntDistribution(dim.low, dim.high, log=dim.log)
    if isinstance(dim, Choice):
        return optuna.distributions.CategoricalDistribution(list(dim.options))
    raise TypeError(f"no Optuna distribution for {dim!r}")


def frozen_trials(sweep: Sweep) -> list[Any]:
    """The sweep's trials as ``optuna.trial.FrozenTrial`` objects, in trial-id order.

    Raises:
        UserError: a trial's stored value lies outside its distribution.
    """
    optuna = _optuna()
    dists = {name: distribution(dim) for name, dim in sweep.space.items()}
    sweep_start, sweep_end = _sweep_times(sweep)
    out = []
    for t in sweep.trials:
        state = optuna.trial.TrialState[STATES[t["status"]]]
        params = {name: t["params"][name] for name in sweep.space if name in t["params"]}
        for name, value in params.items():
            if not _inside(sweep.space[name], value):
                raise UserError(f"trial {t['trial_id']}: {name}={value!r} lies outside the "
                                f"sweep's space")
        value = t["val_loss"]
        if state in (optuna.trial.TrialState.FAIL, optuna.trial.TrialState.RUNNING) or (
                value is not None and not math.isfinite(value)):
            value = None
        if state == optuna.trial.TrialState.COMPLETE and value is None:
            # A completed trial without a finite loss (it cannot normally happen: the sweep marks
            # such a trial diverged) would break Optuna's invariant that COMPLETE has a value.
            state = optuna.trial.TrialState.FAIL
        steps, losses = sweep.curves.get(t["trial_id"], ((), ()))
        finished = state != optuna.trial.TrialState.RUNNING
        out.append(optuna.trial.create_trial(
            state=state,
            value=value,
            params=params,
            distributions={name: dists[name] for name in params},
            intermediate_values={int(s): float(v) for s, v in zip(steps, losses, strict=True)},
            user_attrs={"jaxae_trial_id": t["trial_id"], "jaxae_status": t["status"],
                        "steps": t["steps"], "budget": t.get("budget"), "seed": t["seed"]},
            system_attrs={},
        ))
        start = _local(t.get("started_at")) or sweep_start
        end = _local(t.get("finished_at")) or sweep_end
        out[-1].datetime_start = start
        out[-1].datetime_complete = max(start, end) if finished else None
    return out


def _inside(dim: Dimension, value: Any) -> bool:
    if isinstance(dim, Choice):
        return value in dim.options
    if isinstance(dim, Int) and (isinstance(value, bool) or value != int(value)):
        return False
    return isinstance(value, int | float) and dim.low <= value <= dim.high


def _local(epoch: float | None) -> datetime.datetime | None:
    """UTC epoch seconds as a naive local time, the kind Optuna stores (``datetime.now()``)."""
    return None if epoch is None else datetime.datetime.fromtimestamp(epoch)


def _sweep_times(sweep: Sweep) -> tuple[datetime.datetime, datetime.datetime]:
    """The sweep's start and end (``sweep.json``; now, when absent), as ``_local`` gives them."""
    start = _local(sweep.start_epoch) or datetime.datetime.now()
    end = _local(sweep.end_epoch) or start
    return start, max(start, end)


def export(sweep_dir: str | os.PathLike[str], storage: str, study_name: str | None = None
           ) -> tuple[str, int]:
    """Writes the sweep in ``sweep_dir`` into the Optuna storage ``storage`` as a new study.

    Every trial is built and checked before the study is created, and a study left half-written
    by a failure is deleted, so the storage ends with the whole sweep or without the study.

    Returns:
        The study's name and the number of trials written.

    Raises:
        UserError: no readable sweep in ``sweep_dir``, optuna missing, a storage that cannot be
            opened, or a study of that name already there.
    """
    optuna = _optuna()
    sweep = load_sweep(sweep_dir)
    name = study_name or f"jaxae-{sweep.dir.resolve().name}"
    trials = frozen_trials(sweep)
    logging.getLogger("optuna").setLevel(logging.WARNING)
    try:
        backend = optuna.storages.get_storage(storage)
    except Exception as e:  # SQLAlchemy and Optuna raise many kinds for a bad URL
        raise UserError(f"cannot open Optuna storage {shown(storage)!r}: "
                        f"{one_line(e).replace(storage, shown(storage))}") from None
    try:
        study = optuna.create_study(storage=backend, study_name=name, direction="minimize")
    except optuna.exceptions.DuplicatedStudyError:
        raise UserError(f"study {name!r} already exists in {shown(storage)!r}; choose another "
                        "--study-name") from None
    try:
        c = sweep.config
        study.set_user_attr("jaxae_dir", str(sweep.dir.resolve()))
        study.set_user_attr("jaxae_config", sweep.info.get("config", {}))
        study.set_user_attr("fixed_params", _fixed(sweep))
        study.set_user_attr("objective", f"validation loss ({c.model}, {c.data})")
        study.add_trials(trials)
    except BaseException:
        optuna.delete_study(study_name=name, storage=backend)
        raise
    return name, len(trials)


def shown(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages and logs."""
    return re.sub(r"(//[^:/@]+:)[^@/]*@", r"\1***@", url)


def _fixed(sweep: Sweep) -> dict[str, Any]:
    """Hyperparameters every trial shares (the sweep's fixed values)."""
    if not sweep.trials:
        return {}
    first = sweep.trials[0]["params"]
    return {k: v for k, v in sorted(first.items())
            if k not in sweep.space and all(t["params"].get(k) == v for t in sweep.trials)}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jaxae.export",
        description="Write every trial of the jaxae sweep in DIR (parameters with their "
        "distributions, state, value, learning curve) into an Optuna storage as a new study, "
        "for optuna.load_study, Optuna's importance evaluators and optuna-dashboard.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("dir", metavar="DIR", help="a sweep's output directory (--out of the sweep)")
    p.add_argument("--optuna-storage", required=True, metavar="URL",
                   help="an Optuna storage URL, e.g. sqlite:///sweep.db")
    p.add_argument("--study-name", metavar="NAME", default=None,
                   help="name of the new study [default: jaxae-<name of DIR>]")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        name, n = export(args.dir, args.optuna_storage, args.study_name)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {n} trials to {shown(args.optuna_storage)} as study {name!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
