"""Tests for jaxae.store: file modes, stray temporaries, foreign databases, summaries,
transactions, per-trial times, the migration of an older schema, row decoding and best first."""

import json
import os
import sqlite3

import pytest

from jaxae import store as store_lib
from jaxae.errors import UserError
from jaxae.store import TrialStore


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def test_atomic_write_honours_the_umask(tmp_path, umask_027):
    path = tmp_path / "f.json"
    store_lib.atomic_write_bytes(path, b"{}")
    assert path.stat().st_mode & 0o777 == 0o640  # as open() would make it, not mkstemp's 0600
    os.umask(0o002)
    store_lib.atomic_write_bytes(path, b"[]")  # a rewrite takes the umask of its moment
    assert path.stat().st_mode & 0o777 == 0o664 and path.read_bytes() == b"[]"


def test_temporaries_are_recognised_and_removed(tmp_path):
    stray = [".sweep.json.abc123.tmp", ".checkpoint.msgpack.x_9.tmp"]
    keep = ["sweep.json", ".lock", "x.tmp", ".tmp", "trials.db-wal"]
    for name in stray + keep:
        (tmp_path / name).write_bytes(b"")
    assert [n for n in stray + keep if store_lib.is_temporary(n)] == stray
    assert store_lib.remove_temporaries(tmp_path) == sorted(stray)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "directory", "foreign"])
def test_an_unusable_database_is_a_user_error(tmp_path, damage):
    path = tmp_path / "trials.db"
    if damage == "garbage":
        path.write_bytes(b"this is not sqlite" * 100)
    elif damage == "truncated":
        good = TrialStore(path)
        with good.transaction():
            for t in range(200):
                good.put_trial(t, status="completed", params={"x": "y" * 200}, val_loss=1.0,
                               steps=1, seed=0)
        good.close()
        data = path.read_bytes()
        assert len(data) > 8192
        path.write_bytes(data[: len(data) // 2])
    elif damage == "directory":
        path.mkdir()
    else:
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE trials (name TEXT)")
    with pytest.raises(UserError) as e:
        store = TrialStore(path)
        store.trials()  # a truncated file may open; reading it must fail the same way
        store.close()
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_summary_and_missing(tmp_path):
    store = TrialStore(tmp_path / "trials.db")
    with store.transaction():
        store.put_trial(0, status="completed", params={}, val_loss=1.0, steps=5, seed=0)
        store.put_trial(1, status="running", params={}, val_loss=None, steps=2, seed=0)
        store.put_curve([(0, 0, 5, 1.0, 1.0), (1, 0, 2, 2.0, 2.0)])
    recorded = store.summary()
    assert recorded == {"trials": {"0": "completed", "1": "running"},
                        "rows": {"trials": 2, "replicates": 0, "curves": 2, "rungs": 0,
                                 "lineage": 0}}
    # More than recorded (chunks after the checkpoint), and a running trial advancing: fine.
    with store.transaction():
        store.put_trial(1, status="pruned", params={}, val_loss=3.0, steps=4, seed=0)
        store.put_trial(2, status="running", params={}, val_loss=None, steps=1, seed=0)
        store.put_curve([(1, 0, 4, 2.0, 2.0)])
    assert store.missing(recorded) == []
    # Less: every loss is named.
    store.query("DELETE FROM trials WHERE trial_id = 0")
    store.query("DELETE FROM curves")
    problems = store.missing(recorded)
    assert any("1 trial(s) missing (0)" in p for p in problems)
    assert any("curves has 0 rows" in p and "recorded 2" in p for p in problems)
    store.put_trial(0, status="running", params={}, val_loss=None, steps=1, seed=0)
    assert any("changed status (0)" in p for p in store.missing(recorded))
    store.close()


def test_atomic_write_of_pieces_equals_their_concatenation(tmp_path):
    path = tmp_path / "f"
    store_lib.atomic_write_bytes(path, [b"head", b"", bytes(range(256)) * 10])
    assert path.read_bytes() == b"head" + bytes(range(256)) * 10


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _times(store):
    return {t["trial_id"]: (t["status"], t["started_at"], t["finished_at"])
            for t in store.trials()}


def test_a_transaction_that_raises_leaves_nothing_behind(tmp_path):
    store = TrialStore(tmp_path / "trials.db")
    with store.transaction():
        store.put_trial(0, status="running", params={"a": 1}, val_loss=None, steps=1, seed=0)
    with pytest.raises(RuntimeError, match="mid-chunk"), store.transaction():
        store.put_trial(0, status="completed", params={"a": 1}, val_loss=2.0, steps=9, seed=0)
        store.put_trial(1, status="running", params={}, val_loss=None, steps=1, seed=0)
        store.put_curve([(0, 0, 9, 1.0, 2.0)])
        raise RuntimeError("mid-chunk")
    store.close()
    # Read back through a fresh connection: what is on disk is the first chunk alone.
    again = TrialStore(tmp_path / "trials.db")
    assert [(t["trial_id"], t["status"], t["steps"]) for t in again.trials()] == [
        (0, "running", 1)]
    assert again.query("SELECT count(*) FROM curves") == [(0,)]
    again.close()


def test_times_are_stamped_by_the_store(tmp_path):
    clock = Clock(1_000.0)
    store = TrialStore(tmp_path / "trials.db", clock=clock)

    def put(trial, status):
        with store.transaction():
            store.put_trial(trial, status=status, params={}, val_loss=1.0, steps=1, seed=0)

    put(0, "running")
    put(1, "running")
    clock.now = 1_010.0
    put(0, "running")  # still running: started stays, nothing finished
    put(1, "pruned")
    assert _times(store) == {0: ("running", 1_000.0, None), 1: ("pruned", 1_000.0, 1_010.0)}
    clock.now = 1_020.0
    put(1, "pruned")  # the same status rewritten (a resumed sweep's replay) keeps its time
    put(0, "completed")
    put(2, "diverged")  # a trial whose first row is already final
    assert _times(store) == {0: ("completed", 1_000.0, 1_020.0), 1: ("pruned", 1_000.0, 1_010.0),
                             2: ("diverged", 1_020.0, 1_020.0)}
    clock.now = 1_030.0
    put(1, "running")  # a pruned trial promoted trains again ...
    assert _times(store)[1] == ("running", 1_000.0, None)
    clock.now = 1_040.0
    put(1, "completed")  # ... and finishes when it stops for good
    assert _times(store)[1] == ("completed", 1_000.0, 1_040.0)
    store.close()


def test_the_default_clock_is_utc_epoch_seconds(tmp_path):
    import time

    before = time.time()
    store = TrialStore(tmp_path / "trials.db")
    with store.transaction():
        store.put_trial(0, status="completed", params={}, val_loss=1.0, steps=1, seed=0)
    (trial,) = store.trials()
    assert before <= trial["started_at"] == trial["finished_at"] <= time.time()
    store.close()


# The trials table as the first stores wrote it, before the timestamp columns.
OLD_TRIALS = """CREATE TABLE trials (trial_id INTEGER PRIMARY KEY, status TEXT NOT NULL,
    params TEXT NOT NULL, val_loss REAL, steps INTEGER NOT NULL, seed INTEGER NOT NULL,
    budget INTEGER, bucket TEXT)"""


def _old_store(path):
    with sqlite3.connect(path) as db:
        db.execute(OLD_TRIALS)
        db.execute("INSERT INTO trials VALUES (0, 'completed', '{\"a\": 1}', 0.5, 9, 3, 9, '{}')")
        db.execute("INSERT INTO trials VALUES (1, 'pruned', '{\"a\": 2}', 0.7, 3, 3, 3, '{}')")
    db.close()


def test_an_old_store_reads_with_null_times_and_migrates_when_written(tmp_path):
    path = tmp_path / "trials.db"
    _old_store(path)
    expected = [{"trial_id": 0, "status": "completed", "params": {"a": 1}, "val_loss": 0.5,
                 "steps": 9, "seed": 3, "budget": 9, "bucket": "{}", "started_at": None,
                 "finished_at": None},
                {"trial_id": 1, "status": "pruned", "params": {"a": 2}, "val_loss": 0.7,
                 "steps": 3, "seed": 3, "budget": 3, "bucket": "{}", "started_at": None,
                 "finished_at": None}]
    # Read-only (as the report reads): nothing is changed, the missing columns read as None.
    ro = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    assert store_lib.read_trials(ro) == expected
    ro.close()
    with sqlite3.connect(path) as db:
        assert len(db.execute("PRAGMA table_info(trials)").fetchall()) == 8
    db.close()
    # Opened for writing: the columns are added, the old rows keep their values.
    store = TrialStore(path, clock=Clock(5.0))
    assert store.trials() == expected
    with store.transaction():
        store.put_trial(1, status="completed", params={"a": 2}, val_loss=0.6, steps=9, seed=3)
    assert _times(store) == {0: ("completed", None, None), 1: ("completed", 5.0, 5.0)}
    store.close()
    with sqlite3.connect(path) as db:
        columns = [r[1] for r in db.execute("PRAGMA table_info(trials)")]
        assert columns[-2:] == ["started_at", "finished_at"]
        assert [r[2] for r in db.execute("PRAGMA table_info(trials)")][-2:] == ["REAL", "REAL"]
    db.close()


@pytest.mark.parametrize("columns", [
    "trial_id INTEGER PRIMARY KEY, status TEXT, params TEXT, val_loss REAL",  # a column short
    "trial_id INTEGER PRIMARY KEY, status TEXT, params TEXT, val_loss REAL, steps INTEGER, "
    "seed INTEGER, budget INTEGER, bucket TEXT, started_at REAL, finished_at REAL, extra TEXT",
])
def test_a_table_that_is_not_a_prefix_of_the_schema_is_refused(tmp_path, columns):
    path = tmp_path / "trials.db"
    with sqlite3.connect(path) as db:
        db.execute(f"CREATE TABLE trials ({columns})")
    db.close()
    with pytest.raises(UserError, match="table 'trials' has columns"):
        TrialStore(path)
    ro = sqlite3.connect(path)
    with pytest.raises(ValueError, match="expected trial_id"):
        store_lib.read_trials(ro)
    ro.close()


def test_decode_trial_refuses_params_that_are_not_an_object():
    names = ["trial_id", "params"]
    assert store_lib.decode_trial(names, [3, '{"a": 1}']) == {"trial_id": 3, "params": {"a": 1}}
    with pytest.raises(ValueError, match="trial 3 has params that are not an object"):
        store_lib.decode_trial(names, [3, "[1, 2]"])


def test_best_is_the_first_of_ranked_and_the_old_sql_order(tmp_path):
    store = TrialStore(tmp_path / "trials.db")
    # (id, status, loss, steps): ties in loss, a low-budget loss lower than every finished one,
    # diverged trials without a loss, a long-trained pruned trial.
    rows = [(0, "pruned", 0.1, 10), (1, "completed", 0.5, 90), (2, "diverged", None, 30),
            (3, "completed", 0.4, 90), (4, "completed", 0.4, 90), (5, "pruned", 0.3, 30),
            (6, "running", 0.2, 30), (7, "failed", None, 0), (8, "pruned", 0.3, 30)]
    with store.transaction():
        for t, status, loss, steps in rows:
            store.put_trial(t, status=status, params={"t": t}, val_loss=loss, steps=steps, seed=0)
    order = [t["trial_id"] for t in store_lib.ranked(store.trials())]
    assert order == [3, 4, 1, 6, 5, 8, 0]
    # The ordering the store used to do in SQL, as an independent reference.
    sql = [t for (t,) in store.query(
        "SELECT trial_id FROM trials WHERE val_loss IS NOT NULL "
        "ORDER BY status = 'completed' DESC, steps DESC, val_loss, trial_id")]
    assert order == sql
    assert store.best() == next(t for t in store.trials() if t["trial_id"] == 3)
    store.close()
    empty = TrialStore(tmp_path / "empty.db")
    with empty.transaction():
        empty.put_trial(0, status="diverged", params={}, val_loss=float("nan"), steps=1, seed=0)
    assert empty.best() is None and store_lib.ranked(empty.trials()) == []
    empty.close()


def test_an_atomic_write_that_fails_midway_leaves_the_old_file(tmp_path):
    path = tmp_path / "best.json"
    store_lib.atomic_write_json(path, {"old": True})
    old = path.read_bytes()

    def pieces():
        yield b'{"new": '
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store_lib.atomic_write_bytes(path, pieces())
    assert path.read_bytes() == old and json.loads(old) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.json"]  # no temporary left
