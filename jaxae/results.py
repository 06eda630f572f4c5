"""Reading a sweep's results: ``DIR/sweep.json`` and ``DIR/trials.db`` (opened read-only).

``load_sweep`` gives a ``Sweep``: the resolved configuration, the searched space, every trial
row, the replicates, the learning curves and the rungs. ``ranked`` orders the trials best first,
the one ordering the report, its figures and the export share (``store.ranked``: the store's
``best`` and ``best.json`` take the same first trial). Trial rows are decoded by the store's
``read_trials``, so an older store without the timestamp columns reads as ``None`` there.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxae import config as config_lib
from jaxae import store as store_lib
from jaxae.errors import UserError, one_line
from searchers.space import Dimension

MULTI_FIDELITY = ("sha", "hyperband", "asha")


@dataclasses.dataclass(frozen=True)
class Sweep:
    """One sweep's results, read from its directory.

    Attributes:
        dir: the sweep directory.
        info: ``sweep.json`` as stored (config, data sizes, versions, times).
        config: the resolved configuration.
        space: the hyperparameters that vary, as ``searchers`` dimensions, in the space's order.
        trials: one dict per trial row (``store.read_trials``: ``params`` decoded, every column
            of the current schema), ordered by trial id.
        replicates: trial -> ``[(replicate, status, val_loss or None, steps)]``.
        curves: trial -> ``(steps [m], val_loss [m])``, the mean over replicates at each step
            where every replicate has a finite loss.
        train_curves: trial -> ``(steps [m], train_loss [m])`` likewise, the mean training loss
            of the chunk that ended at each step.
        rungs: trial -> ``[(budget, val_loss or None)]`` by budget: what a scheduler was told.
        lineage: population-based training's lineage rows (``store.read_lineage``), by
            step then trial; empty for other searchers.
    """

    dir: Path
    info: dict[str, Any]
    config: config_lib.SweepConfig
    space: dict[str, Dimension]
    trials: list[dict[str, Any]]
    replicates: dict[int, list[tuple[int, str, float | None, int]]]
    curves: dict[int, tuple[np.ndarray, np.ndarray]]
    train_curves: dict[int, tuple[np.ndarray, np.ndarray]]
    rungs: dict[int, list[tuple[int, float | None]]]
    lineage: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def multi_fidelity(self) -> bool:
        return self.config.searcher in MULTI_FIDELITY

    @property
    def loss_name(self) -> str:
        """What ``val_loss`` measures: a VAE's negative ELBO, else the reconstruction error."""
        return "negative ELBO" if self.config.model == "vae" else "reconstruction error"

    @property
    def title(self) -> str:
        """What the figures' titles say about the sweep, e.g. ``ae / asha, 48 trials, digits``."""
        data = self.info.get("data", {}).get("name", self.config.data)
        return f"{self.config.model} / {self.config.searcher}, {len(self.trials)} trials, {data}"

    @property
    def start_epoch(self) -> float | None:
        """When the sweep started (``sweep.json``'s ``start_time``) in UTC epoch seconds, the
        clock of the store's ``started_at`` / ``finished_at``; None if it is not recorded."""
        return _epoch(self.info.get("start_time"))

    @property
    def end_epoch(self) -> float | None:
        """When the sweep ended (``end_time``), as ``start_epoch``; None while it runs."""
        return _epoch(self.info.get("end_time"))

    @property
    def resume_epochs(self) -> list[float]:
        """When the sweep was resumed (``resumed``), as ``start_epoch``."""
        resumed = self.info.get("resumed", [])
        times = [_epoch(at) for at in resumed] if isinstance(resumed, list) else []
        return [at for at in times if at is not None]

    def status_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self.trials:
            counts[t["status"]] = counts.get(t["status"], 0) + 1
        return counts


def _epoch(stamp: Any) -> float | None:
    """An ISO 8601 time of ``sweep.json`` in UTC epoch seconds (jaxae writes UTC with its offset;
    a bare time is read as UTC); None when absent or malformed."""
    try:
        at = datetime.datetime.fromisoformat(str(stamp)) if stamp is not None else None
    except ValueError:
        return None
    if at is None:
        return None
    if at.tzinfo is None:
        at = at.replace(tzinfo=datetime.UTC)
    return at.timestamp()


def load_sweep(path: str | os.PathLike[str]) -> Sweep:
    """Reads a sweep directory.

    Raises:
        UserError: ``path`` is not a directory holding a readable ``sweep.json`` and
            ``trials.db`` with at least one trial.
    """
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"{str(root)!r} is not a directory")
    info_path, db_path = root / "sweep.json", root / "trials.db"
    if not info_path.is_file():
        raise UserError(f"{str(root)!r} is not a sweep directory (no sweep.json)")
    if not db_path.is_file():
        raise UserError(f"{str(root)!r} is not a sweep directory (no trials.db)")
    try:
        info = json.loads(info_path.read_text())
        raw = info["config"]
        if not isinstance(raw, dict):
            raise TypeError("config is not an object")
        config = config_lib.build(raw)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{str(info_path)!r} is not a sweep's sweep.json "
                        f"({type(e).__name__}: {one_line(e)})") from None
    except UserError as e:
        raise UserError(f"{str(info_path)!r} holds an invalid sweep config: {e}") from None
    space = config_lib.searched(config)
    try:
        tables = _read_db(db_path)
    except (sqlite3.Error, ValueError, TypeError) as e:
        raise UserError(f"{str(db_path)!r} is not a sweep's trial store: {one_line(e)}") from None
    trials, replicates, curve_rows, rung_rows, lineage = tables
    if not trials:
        raise UserError(f"{str(db_path)!r} holds no trials yet")

    curves = _mean_curves([(t, s, v) for t, _, s, _, v in curve_rows])
    train_curves = _mean_curves([(t, s, a) for t, _, s, a, _ in curve_rows])
    rungs: dict[int, list[tuple[int, float | None]]] = {}
    for trial, budget, val in rung_rows:
        rungs.setdefault(trial, []).append((budget, val))
    reps: dict[int, list[tuple[int, str, float | None, int]]] = {}
    for trial, replicate, status, val, steps in replicates:
        reps.setdefault(trial, []).append((replicate, status, val, steps))
    return Sweep(root, info, config, space, trials, reps, curves, train_curves, rungs, lineage)


def _mean_curves(rows: Sequence[tuple[int, int, float | None]]
                 ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """``(trial, step, value)`` rows, one per replicate, to trial -> (steps, mean value): only
    the steps where every replicate has a finite value."""
    by_step: dict[int, dict[int, list[float | None]]] = {}
    for trial, step, val in rows:
        by_step.setdefault(trial, {}).setdefault(step, []).append(val)
    curves = {}
    for trial, points in by_step.items():
        n_rep = max(len(v) for v in points.values())
        steps = [s for s in sorted(points) if len(points[s]) == n_rep
                 and all(v is not None for v in points[s])]
        curves[trial] = (np.array(steps, dtype=np.int64),
                         np.array([np.mean(points[s]) for s in steps], dtype=np.float64))
    return curves


def _read_db(path: Path) -> tuple[list[dict], list[tuple], list[tuple], list[tuple], list[dict]]:
    # Read-only by URI, so a report can never modify (or create) a sweep's store.
    db = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        trials = store_lib.read_trials(db)
        replicates = db.execute("SELECT trial_id, replicate, status, val_loss, steps "
                                "FROM replicates ORDER BY trial_id, replicate").fetchall()
        curves = db.execute("SELECT trial_id, replicate, step, train_loss, val_loss FROM curves "
                            "ORDER BY trial_id, step, replicate").fetchall()
        rungs = db.execute("SELECT trial_id, budget, val_loss FROM rungs "
                           "ORDER BY trial_id, budget").fetchall()
        lineage = store_lib.read_lineage(db)
    finally:
        db.close()
    return trials, replicates, curves, rungs, lineage


def ranked(sweep: Sweep) -> list[dict[str, Any]]:
    """The sweep's trials with a finite loss, best first (``store.ranked``)."""
    return store_lib.ranked(sweep.trials)
