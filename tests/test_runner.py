"""Running a sweep to its end: every chunk's rows in the store, checkpoints on the clock and at
the end, and a stop between chunks."""

import json
import sqlite3

from jaxae import config as config_lib
from jaxae import data as data_lib
from jaxae import driver as driver_lib
from jaxae import runner
from jaxae.store import TrialStore


def _config():
    return config_lib.build({
        "searcher": "random", "population": 4, "trials": 6, "steps": 30, "chunk": 10,
        "space": {"hidden": 16, "latent_dim": 4, "batch_size": 16,
                  "learning_rate": {"dist": "float", "low": 1e-3, "high": 1e-2, "log": True}}})


def _rows(path, sql):
    with sqlite3.connect(path) as db:
        return db.execute(sql).fetchall()


def test_run_records_every_chunk_and_checkpoints_at_the_end(tmp_path):
    dataset = data_lib.load("digits")
    driver = driver_lib.Driver(_config(), dataset)
    store = TrialStore(tmp_path / "trials.db")
    chunks = []
    runner.run(driver, store, tmp_path, checkpoint_every=3600,
               on_chunk=lambda d, events: chunks.append(d.chunk))
    store.close()
    assert driver.done and chunks == list(range(1, driver.chunk + 1))
    statuses = dict(_rows(tmp_path / "trials.db", "SELECT trial_id, status FROM trials"))
    assert sorted(statuses) == list(range(6))
    assert set(statuses.values()) == {"completed"}
    curves = _rows(tmp_path / "trials.db", "SELECT trial_id, step FROM curves")
    steps = dict(_rows(tmp_path / "trials.db", "SELECT trial_id, steps FROM trials"))
    for trial, last in steps.items():  # a point every 10 steps up to where each trial stopped
        assert sorted(s for t, s in curves if t == trial) == list(range(10, last + 1, 10))
    # The checkpoint at the end restores a finished driver.
    again = driver_lib.Driver(_config(), dataset)
    again.restore((tmp_path / runner.CHECKPOINT).read_bytes())
    assert again.done and again.chunk == driver.chunk


def test_a_stop_between_chunks_ends_the_loop_with_a_checkpoint(tmp_path):
    dataset = data_lib.load("digits")
    driver = driver_lib.Driver(_config(), dataset)
    store = TrialStore(tmp_path / "trials.db")
    saved = []
    runner.run(driver, store, tmp_path, save=saved.append, should_stop=lambda: True)
    store.close()
    assert not driver.done and driver.chunk == 1 and len(saved) == 1
    assert not (tmp_path / runner.CHECKPOINT).exists()  # ``save`` writes it in its place
    state = json.loads(__import__("flax").serialization.msgpack_restore(saved[0])["meta"])
    assert state["chunk"] == 1
    # What the first chunk recorded is in the store before the checkpoint that follows it.
    assert _rows(tmp_path / "trials.db", "SELECT count(*) FROM curves")[0][0] > 0
