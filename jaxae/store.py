"""The durable trial store (``DIR/trials.db``, SQLite) and atomic file writes.

Every write is idempotent (``INSERT OR REPLACE`` keyed by the trial, replicate and step), so a
sweep resumed from its last checkpoint can replay the chunks after it and end with exactly the
rows an uninterrupted run would have written; the one exception is a trial's wall-clock times
(``started_at``, ``finished_at``), which say when things happened and so differ between any two
runs. SQL is always parameterised.

The trial row is decoded here (``decode_trial``, ``read_trials``) and "best first" is defined
here (``best_first``, ``ranked``): ``TrialStore.best``, ``best.json`` and the report's ranking
are one ordering.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxae.errors import UserError

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
    bucket TEXT,                   -- its compiled program (the shape-changing hyperparameters)
    started_at REAL,               -- UTC epoch seconds when its first row was written
    finished_at REAL               -- ... when it became completed, pruned, diverged or failed
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
CREATE TABLE IF NOT EXISTS lineage (
    trial_id INTEGER NOT NULL,     -- population-based training: the member that exploited
    step INTEGER NOT NULL,         -- when (0: the member's first configuration)
    parent INTEGER,                -- whose weights it took (NULL at step 0)
    params_before TEXT,            -- JSON: its hyperparameters until then (NULL at step 0)
    params_after TEXT NOT NULL,    -- JSON: its hyperparameters from then on
    parent_loss REAL,              -- the validation losses that ranked them
    val_loss REAL,
    PRIMARY KEY (trial_id, step)
);
"""


# Each table's column definitions, in order (a database with other columns is someone else's
# file), parsed from SCHEMA so that a new table or column is written down once.
_DEFINITIONS = {
    table: tuple(line.strip().split("--")[0].strip().rstrip(",")
                 for line in body.strip().splitlines()
                 if not line.strip().startswith("PRIMARY KEY"))
    for table, body in re.findall(r"CREATE TABLE IF NOT EXISTS (\w+) \((.*?)\n\);", SCHEMA,
                                  re.DOTALL)
}
_COLUMNS = {table: tuple(d.split()[0] for d in defs) for table, defs in _DEFINITIONS.items()}
# Columns added after stores were first written, by table: a store without them (they can only
# be missing from the end) gains them as NULL when opened for writing, and reads as NULL when
# opened read-only. A new column goes at the end of its table in SCHEMA and here; a new table
# needs nothing (CREATE TABLE IF NOT EXISTS adds it).
ADDED_COLUMNS = {"trials": ("started_at", "finished_at")}
# Statuses a trial never leaves once it has them.
_FINAL = ("completed", "diverged", "failed")
# Statuses at which a trial stops training (for now: a pruned trial may be promoted again).
_STOPPED = ("completed", "pruned", "diverged", "failed")


def finite_or_none(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def missing_columns(table: str, have: Sequence[str]) -> tuple[str, ...]:
    """The columns of ``table`` that a store holding columns ``have`` lacks and may lack (those
    ``ADDED_COLUMNS`` names, at the end).

    Raises:
        ValueError: ``have`` is not this schema's columns, nor a prefix of them that ends where
            added columns begin (a foreign database).
    """
    want = _COLUMNS[table]
    lacking = want[len(have):]
    if tuple(have) != want[:len(have)] or not set(lacking) <= set(ADDED_COLUMNS.get(table, ())):
        raise ValueError(f"table {table!r} has columns {', '.join(have)}; expected "
                         f"{', '.join(want)}")
    return lacking


def decode_trial(names: Sequence[str], row: Sequence[Any]) -> dict[str, Any]:
    """One ``trials`` row as a dict, ``params`` decoded from its JSON.

    Raises:
        ValueError: ``params`` is not a JSON object.
    """
    trial = dict(zip(names, row, strict=True))
    trial["params"] = json.loads(trial["params"])
    if not isinstance(trial["params"], dict):
        raise ValueError(f"trial {trial['trial_id']} has params that are not an object")
    return trial


def read_trials(db: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every trial row of the store open in ``db`` (read-write or read-only) as a dict with
    every column of ``SCHEMA`` (``None`` for columns an older store lacks), ordered by trial id.

    Raises:
        ValueError: a foreign ``trials`` table, or a row whose ``params`` is not a JSON object.
        sqlite3.Error: the file is not a readable SQLite database.
    """
    have = [r[1] for r in db.execute("PRAGMA table_info(trials)")]
    lacking = missing_columns("trials", have)
    names = _COLUMNS["trials"]
    # Column names come from SCHEMA, never from the file, so this is not injectable.
    columns = ", ".join(f"NULL AS {c}" if c in lacking else c for c in names)
    cur = db.execute(f"SELECT {columns} FROM trials ORDER BY trial_id")
    return [decode_trial(names, row) for row in cur.fetchall()]


def read_lineage(db: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every ``lineage`` row of the store open in ``db`` as a dict (``params_before`` /
    ``params_after`` decoded), ordered by step, then trial; none from a store written before the
    table existed (opened read-only, nothing added it)."""
    if not db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'lineage'"
                      ).fetchone():
        return []
    names = _COLUMNS["lineage"]
    cur = db.execute(f"SELECT {', '.join(names)} FROM lineage ORDER BY step, trial_id")
    rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    for row in rows:
        for key in ("params_before", "params_after"):
            row[key] = None if row[key] is None else json.loads(row[key])
    return rows


def best_first(trial: Mapping[str, Any]) -> tuple[bool, int, float, int]:
    """Sort key of a trial with a finite loss: completed before stopped, then longer-trained,
    then lower loss, then lower id, so a loss at a low budget never outranks a finished trial."""
    return (trial["status"] != "completed", -trial["steps"], trial["val_loss"],
            trial["trial_id"])


def ranked(trials: Iterable[Mapping[str, Any]]) -> list[Any]:
    """The trials with a finite loss, best first (``best_first``): the first is the sweep's best,
    the one ``best.json`` names."""
    return sorted((t for t in trials if t["val_loss"] is not None), key=best_first)


class TrialStore:
    """``DIR/trials.db``: one row per trial, per replicate, per learning-curve point and per rung.

    Writes happen inside ``with store.transaction():`` blocks, one per training chunk, so a crash
    leaves the database as it was after some whole chunk.

    Args:
        path: the database file, or ``":memory:"``.
        clock: the wall clock of ``started_at`` / ``finished_at`` (UTC epoch seconds).
    """

    def __init__(self, path: str | os.PathLike[str],
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        memory = str(path) == ":memory:"
        if not memory and self.path.exists() and not self.path.is_file():
            raise UserError(f"trial store {str(self.path)!r} is not a regular file")
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error as e:
            raise UserError(f"trial store {str(self.path)!r} cannot be opened ({e})") from None
        try:
            if not memory:
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            self._check_schema()
        except (sqlite3.Error, UserError) as e:
            self._db.close()
            if isinstance(e, UserError):
                raise
            raise UserError(f"trial store {str(self.path)!r} is not a usable SQLite database "
                            f"({e})") from None

    def _check_schema(self) -> None:
        """Refuses a database whose tables were not written by this schema (a foreign file), and
        adds to an older store the columns it lacks (NULL in its existing rows)."""
        for table in _COLUMNS:
            have = tuple(r[1] for r in self._db.execute(f"PRAGMA table_info({table})"))
            try:
                lacking = missing_columns(table, have)
            except ValueError as e:
                raise UserError(f"trial store {str(self.path)!r}: {e}") from None
            if lacking:
                definitions = dict(zip(_COLUMNS[table], _DEFINITIONS[table], strict=True))
                with self.transaction():
                    for column in lacking:
                        self._db.execute(f"ALTER TABLE {table} ADD COLUMN {definitions[column]}")

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

    _PUT_TRIAL = (
        "INSERT INTO trials VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (trial_id) DO UPDATE SET status = excluded.status, "
        "params = excluded.params, val_loss = excluded.val_loss, steps = excluded.steps, "
        "seed = excluded.seed, budget = excluded.budget, bucket = excluded.bucket, "
        "started_at = coalesce(trials.started_at, excluded.started_at), "
        "finished_at = CASE WHEN excluded.finished_at IS NULL THEN NULL "
        "WHEN trials.status = excluded.status AND trials.finished_at IS NOT NULL "
        "THEN trials.finished_at ELSE excluded.finished_at END")

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
        """Writes trial ``trial_id``'s row; the store stamps the times itself.

        ``started_at`` is the time of the trial's first row and never changes; ``finished_at``
        is the time it reached a stopping status (completed, pruned, diverged, failed), kept
        while it is rewritten with that same status (a resumed sweep's replay), and cleared
        while it is ``running`` again (a pruned trial promoted).
        """
        self.put_trials([dict(trial_id=trial_id, status=status, params=params,
                              val_loss=val_loss, steps=steps, seed=seed, budget=budget,
                              bucket=bucket)])

    def put_trials(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """``put_trial`` for each of ``rows`` (its keyword arguments), in one statement."""
        now = self._clock()
        values = []
        for row in rows:
            if row["status"] not in STATUSES:
                raise ValueError(f"unknown status {row['status']!r}")
            values.append((row["trial_id"], row["status"],
                           json.dumps(dict(row["params"]), sort_keys=True),
                           finite_or_none(row["val_loss"]), row["steps"], row["seed"],
                           row.get("budget"), row.get("bucket"), now,
                           now if row["status"] in _STOPPED else None))
        self._db.executemany(self._PUT_TRIAL, values)

    def put_replicate(
        self, trial_id: int, replicate: int, *, status: str, val_loss: float | None, steps: int,
        init_key: str | None = None, data_key: str | None = None,
    ) -> None:
        self.put_replicates([(trial_id, replicate, status, val_loss, steps, init_key, data_key)])

    def put_replicates(self, rows: Sequence[tuple]) -> None:
        """Replicate rows ``(trial_id, replicate, status, val_loss, steps, init_key,
        data_key)``, in one statement."""
        self._db.executemany(
            "INSERT OR REPLACE INTO replicates VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(t, r, status, finite_or_none(v), steps, init, data)
             for t, r, status, v, steps, init, data in rows])

    def put_curve(self, rows: Sequence[tuple[int, int, int, float | None, float | None]]) -> None:
        """Learning-curve points ``(trial_id, replicate, step, train_loss, val_loss)``."""
        self._db.executemany(
            "INSERT OR REPLACE INTO curves VALUES (?, ?, ?, ?, ?)",
            [(t, r, s, finite_or_none(a), finite_or_none(b)) for t, r, s, a, b in rows],
        )

    def put_rung(self, trial_id: int, budget: int, val_loss: float | None) -> None:
        self.put_rungs([(trial_id, budget, val_loss)])

    def put_rungs(self, rows: Sequence[tuple[int, int, float | None]]) -> None:
        """Rung rows ``(trial_id, budget, val_loss)``, in one statement."""
        self._db.executemany("INSERT OR REPLACE INTO rungs VALUES (?, ?, ?)",
                             [(t, b, finite_or_none(v)) for t, b, v in rows])

    def put_lineage(self, trial_id: int, step: int, *, parent: int | None,
                    params_before: Mapping[str, Any] | None, params_after: Mapping[str, Any],
                    parent_loss: float | None = None, val_loss: float | None = None) -> None:
        """One population-based-training decision (or, with ``parent`` None at step 0, a
        member's first configuration)."""
        before = None if params_before is None else json.dumps(dict(params_before),
                                                                sort_keys=True)
        self._db.execute(
            "INSERT OR REPLACE INTO lineage VALUES (?, ?, ?, ?, ?, ?, ?)",
            (trial_id, step, parent, before, json.dumps(dict(params_after), sort_keys=True),
             finite_or_none(parent_loss), finite_or_none(val_loss)),
        )

    def lineage(self) -> list[dict[str, Any]]:
        """Every lineage row as a dict (params decoded), ordered by step, then trial
        (``read_lineage``)."""
        return read_lineage(self._db)

    def trials(self) -> list[dict[str, Any]]:
        """Every trial row as a dict (``params`` decoded), ordered by trial id (``read_trials``).

        Raises:
            UserError: the file is damaged, or a row's ``params`` is not a JSON object.
        """
        try:
            return read_trials(self._db)
        except (sqlite3.Error, ValueError) as e:
            raise UserError(f"trial store {str(self.path)!r} cannot be read ({e})") from None

    def best(self) -> dict[str, Any] | None:
        """The first of ``ranked``: the completed trial with the lowest validation loss (ties:
        lowest id); when no trial completed (a multi-fidelity sweep too small to reach its top
        rung), the best of those that trained longest; None when no trial has a finite loss."""
        return (ranked(self.trials()) or [None])[0]

    def summary(self) -> dict[str, Any]:
        """What the store holds, for a checkpoint to record: ``{"trials": {id: status},
        "rows": {table: count}}`` (ids as strings, as JSON keys are)."""
        trials = {str(t): s for t, s in self._db.execute("SELECT trial_id, status FROM trials")}
        rows = {table: self._db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in _COLUMNS}
        return {"trials": trials, "rows": rows}

    def missing(self, recorded: Mapping[str, Any]) -> list[str]:
        """What the store lacks of a ``summary()`` taken earlier, one phrase per problem.

        The store may hold more (chunks after the checkpoint are written before the next one and
        are replayed idempotently), and a trial may advance from ``running``; a trial that was
        recorded is never allowed to vanish, nor a finished one to change its status, nor a table
        to shrink.
        """
        now = self.summary()
        problems = []
        gone = sorted(int(t) for t in recorded.get("trials", {}) if t not in now["trials"])
        if gone:
            shown = ", ".join(map(str, gone[:5])) + (", ..." if len(gone) > 5 else "")
            problems.append(f"{len(gone)} trial(s) missing ({shown})")
        changed = sorted(int(t) for t, s in recorded.get("trials", {}).items()
                         if s in _FINAL and t in now["trials"] and now["trials"][t] != s)
        if changed:
            problems.append(f"{len(changed)} finished trial(s) changed status "
                            f"({', '.join(map(str, changed[:5]))})")
        for table, count in recorded.get("rows", {}).items():
            if now["rows"].get(table, 0) < count:
                problems.append(f"table {table} has {now['rows'].get(table, 0)} rows, "
                                f"the checkpoint recorded {count}")
        return problems

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple]:
        """A read-only query (for reports and tests)."""
        return self._db.execute(sql, tuple(args)).fetchall()


def _umask() -> int:
    # The only portable way to read the umask is to set it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | Sequence[bytes]) -> None:
    """Writes ``data`` (bytes, or a list of pieces written one after the other, never joined in
    memory) to ``path`` so that a crash leaves either the old file or the new one.

    The temporary file (``.NAME.*.tmp`` beside ``path``) is made readable as the umask allows,
    as ``open()`` would have made it (``mkstemp`` creates it 0600). A crash may leave it behind;
    ``remove_temporaries`` clears such strays.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            for piece in [data] if isinstance(data, bytes | bytearray | memoryview) else data:
                f.write(piece)
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


TMP_SUFFIX = ".tmp"


def is_temporary(name: str) -> bool:
    """Whether ``name`` is an interrupted ``atomic_write_bytes``'s temporary file."""
    return name.startswith(".") and name.endswith(TMP_SUFFIX) and name.count(".") >= 3


def remove_temporaries(directory: str | os.PathLike[str]) -> list[str]:
    """Deletes the temporaries interrupted atomic writes left in ``directory`` (call it only while
    owning the directory, so no live write loses its file); returns their names."""
    removed = []
    for entry in os.scandir(directory):
        if is_temporary(entry.name) and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
            removed.append(entry.name)
    return sorted(removed)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())
