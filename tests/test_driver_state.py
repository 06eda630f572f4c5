"""A driver's state as bytes: saved mid-sweep (paused members included) and loaded into a fresh
driver, the sweep ends exactly as it would have."""

import json

import numpy as np
from flax import serialization

from jaxae import config as config_lib
from jaxae import data as data_lib
from jaxae import driver as driver_lib
from jaxae import driver_state


def _driver(searcher="asha", steps=30, trials=8):
    config = config_lib.build({
        "searcher": searcher, "population": 4, "trials": trials, "steps": steps, "chunk": 10,
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


def test_only_slots_holding_a_member_are_saved_and_every_slot_state_still_loads():
    # Chunks of 4 rounds of 10 steps: trials 0-3 end at 100 steps in the third chunk, and
    # after the fourth trials 4 and 5 are 40 steps in, in two of the four slots.
    new = lambda: _driver("random", steps=100, trials=6)  # noqa: E731
    straight = new()
    for _ in range(4):
        straight.step()
    state = serialization.msgpack_restore(driver_state.save(straight))
    meta = json.loads(state["meta"])
    (bucket,) = straight.buckets.values()
    held = [s for s, o in enumerate(bucket.owner) if o is not None]
    assert meta["buckets"][0]["slots"] == held and 0 < len(held) < len(bucket.owner)
    assert state["arrays"]["buckets"]["0"]["step"].shape == (len(held),)
    # A state written before only held slots were saved: every slot, no "slots".
    old_meta = {**meta, "buckets": [{k: v for k, v in b.items() if k != "slots"}
                                    for b in meta["buckets"]]}
    old = {"meta": json.dumps(old_meta), "arrays": {**state["arrays"], "buckets": {
        "0": serialization.to_state_dict(driver_lib.sharding_lib.to_host(bucket.pop))}}}
    rest = _finish(straight)
    for data in (serialization.msgpack_serialize(state), serialization.msgpack_serialize(old)):
        loaded = new()
        driver_state.load(loaded, data)
        np.testing.assert_array_equal([r[2] for r in _finish(loaded)], [r[2] for r in rest])
    final = serialization.msgpack_restore(driver_state.save(straight))  # nothing held at the end
    assert final["arrays"]["buckets"]["0"]["step"].shape == (0,)


def test_a_sweep_continues_with_the_slots_per_bucket_it_ran_with(monkeypatch):
    # Saved on a CPU (each bucket: an even share of the population; a state without
    # "capacity" names it through its owners), loaded where the rule gives each bucket the whole
    # population: the loaded driver keeps the saver's layout, and ends as the saver does.
    space = {"hidden": 16, "latent_dim": 4, "depth": {"dist": "choice", "options": [1, 2]}}
    config = config_lib.build({"searcher": "asha", "population": 8, "trials": 10, "steps": 30,
                               "chunk": 10, "space": space})
    dataset = data_lib.load("digits")
    straight = driver_lib.Driver(config, dataset)
    monkeypatch.setattr(driver_lib.buckets_lib, "SHARED_BUCKETS", frozenset())
    assert straight.capacity < driver_lib.Driver(config, dataset).capacity
    while not straight.paused:
        straight.step()
    state = serialization.msgpack_restore(driver_state.save(straight))
    meta = json.loads(state["meta"])
    assert meta["capacity"] == straight.capacity
    old = {**state, "meta": json.dumps({k: v for k, v in meta.items() if k != "capacity"})}
    rest = _finish(straight)
    for data in (serialization.msgpack_serialize(state), serialization.msgpack_serialize(old)):
        loaded = driver_lib.Driver(config, dataset)
        driver_state.load(loaded, data)
        assert loaded.capacity == straight.capacity
        again = _finish(loaded)
        assert [r[:2] + (r[3],) for r in again] == [r[:2] + (r[3],) for r in rest]
        np.testing.assert_array_equal([r[2] for r in again], [r[2] for r in rest])
