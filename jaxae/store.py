"""The durable trial store (``DIR/trials.db``, SQLite) and atomic file writes.

Every write is idempotent (``INSERT OR REPLACE`` keyed by the trial, replicate and step), so a
sweep resumed from its last checkpoint can replay the chunks after it and end with exactly the
rows an uninterrupted run would have written. SQL is always parameterised.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

STATUSES = ("running", "completed", "pruned", "diverged", "failed")

SCHEMA = """
CREATE TABLE IF NOT EXISTS trials (
    trial_id INTEGER PRIMARY KEY,
    status TEXT NOT NULL,
    params TEXT NOT NULL,          -- JSON object of the trial's hyperparameters
    val_loss REAL,                 -- NULL unless finite; the mean (or median) over replicates
    steps INTEGER NOT NULL,        -- steps trained (per replicate)
    seed INTEGER NOT NULL,         -- the sweep seed: keys derive from (seed, trial_id, replicate)
    budget INTEGER,                -- the budget of the trial's current or last job
    bucket TEXT                    -- its compiled program (the shape-changing hyperparameters)
);
CREATE TABLE IF NOT EXISTS replicates (
    trial_id INTEGER NOT NULL,
    replicate INTEGER NOT NULL,
    status TEXT NOT NULL,
    val_loss REAL,
    steps INTEGER NOT NULL,
    init_key TEXT,                 -- the member's PRNG keys (hex): distinct per replicate;
    data_key TEXT,                 -- data_key is shared across trials with common random numbers
    PRIMARY KEY (trial_id, replicate)
);
CREATE TABLE IF NOT EXISTS curves (
    trial_id INTEGER NOT NULL,
    replicate INTEGER NOT NULL,
    step INTEGER NOT NULL,
    train_loss REAL,               -- mean training loss over the chunk that ended at `step`
    val_loss REAL,                 -- validation loss at `step`
    PRIMARY KEY (trial_id, replicate, step)
);
CREATE TABLE IF NOT EXISTS rungs (
    trial_id INTEGER NOT NULL,
    budget INTEGER NOT NULL,       -- what a multi-fidelity scheduler was told at this budget
    val_loss REAL,
    PRIMARY KEY (trial_id, budget)
);
"""


def finite_or_none(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


class TrialStore:
    """``DIR/trials.db``: one row per trial, per replicate, per learning-curve point and per rung.

    Writes happen inside ``with store.transaction():`` blocks, one per training chunk, so a crash
    leaves the database as it was after some whole chunk.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        if str(path) != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def put_trial(
        self,
        trial_id: int,
        *,
        status: str,
        params: Mapping[str, Any],
        val_loss: float | None,
        steps: int,
        seed: int,
        budget: int | None = None,
        bucket: str | None = None,
    ) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        self._db.execute(
            "INSERT OR REPLACE INTO trials VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (trial_id, status, json.dumps(dict(params), sort_keys=True),
             finite_or_none(val_loss), steps, seed, budget, bucket),
        )

    def put_replicate(
        self, trial_id: int, replicate: int, *, status: str, val_loss: float | None, steps: int,
        init_key: str | None = None, data_key: str | None = None,
    ) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO replicates VALUES (?, ?, ?, ?, ?, ?, ?)",
            (trial_id, replicate, status, finite_or_none(val_loss), steps, init_key, data_key),
        )

    def put_curve(self, rows: Sequence[tuple[int, int, int, float | None, float | None]]) -> None:
        """Learning-curve points ``(trial_id, replicate, step, train_loss, val_loss)``."""
        self._db.executemany(
            "INSERT OR REPLACE INTO curves VALUES (?, ?, ?, ?, ?)",
            [(t, r, s, finite_or_none(a), finite_or_none(b)) for t, r, s, a, b in rows],
        )

    def put_rung(self, trial_id: int, budget: int, val_loss: float | None) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO rungs VALUES (?, ?, ?)",
            (trial_id, budget, finite_or_none(val_loss)),
        )

    def trials(self) -> list[dict[str, Any]]:
        """Every trial row as a dict (``params`` decoded), ordered by trial id."""
        cur = self._db.execute("SELECT * FROM trials ORDER BY trial_id")
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        for row in rows:
            row["params"] = json.loads(row["params"])
        return rows

    def best(self) -> dict[str, Any] | None:
        """The completed trial with the lowest validation loss (ties: lowest id); when no trial
        completed (a multi-fidelity sweep too small to reach its top rung), the best of those that
        trained longest; None when no trial has a finite loss."""
        cur = self._db.execute(
            "SELECT trial_id FROM trials WHERE val_loss IS NOT NULL "
            "ORDER BY status = 'completed' DESC, steps DESC, val_loss, trial_id LIMIT 1"
        )
        row = cur.fetchone()
        if row is None:
            return None
        return next(t for t in self.trials() if t["trial_id"] == row[0])

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple]:
        """A read-only query (for reports and tests)."""
        return self._db.execute(sql, tuple(args)).fetchall()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Writes ``data`` to ``path`` so that a crash leaves either the old file or the new one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())
