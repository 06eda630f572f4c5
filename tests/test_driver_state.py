"""A driver's state as bytes: saved mid-sweep (paused members included) and loaded into a fresh
driver, the sweep ends exactly as it would have."""

import json

import numpy as np
from flax import serialization

from jaxae import config as config_lib
from jaxae import data as data_lib
from jaxae import driver as driver_lib
from jaxae import driver_state


def _driver():
    config = config_lib.build({
        "searcher": "asha", "population": 4, "trials": 8, "steps": 30, "chunk": 10,
        "space": {"hidden": 16, "latent_dim": 4, "batch_size": 16,
                  "learning_rate": {"dist": "float", "low": 1e-3, "high": 1e-2, "log": True}}})
    return driver_lib.Driver(config, data_lib.load("digits"))


def _finish(driver):
    events = []
    while not driver.done:
        events += driver.step()[0]
    return [(e.trial, e.status, e.val_loss, e.steps) for e in events if e.status != "running"]


def test_saved_mid_sweep_a_loaded_driver_ends_as_the_straight_one():
    straight = _driver()
    while not straight.paused:
        straight.step()
    data = driver_state.save(straight)
    meta = json.loads(serialization.msgpack_restore(data)["meta"])
    assert meta["paused"] and meta["chunk"] == straight.chunk  # paused members are in it
    rest = _finish(straight)
    loaded = _driver()
    driver_state.load(loaded, data)
    assert loaded.chunk == meta["chunk"] and set(loaded.paused) == {p["trial"] for p in
                                                                      meta["paused"]}
    again = _finish(loaded)
    assert [r[:2] + (r[3],) for r in again] == [r[:2] + (r[3],) for r in rest]
    np.testing.assert_array_equal([r[2] for r in again], [r[2] for r in rest])
