"""Tests for jaxae.store: file modes, stray temporaries, foreign databases, summaries."""

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
