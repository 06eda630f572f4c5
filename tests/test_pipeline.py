"""A pipelined sweep (``JAXAE_PIPELINE=on``: each chunk dispatched before the previous one's
results are read and told): the same trials as without where the searcher's decisions depend on
the losses alone, and checkpoints, taken with a chunk in flight, that resume exactly."""

import json

import numpy as np
import pytest
from flax import serialization
from test_sweep import rows, sweep

from jaxae import config as config_lib
from jaxae import data as data_lib
from jaxae import driver as driver_lib
from jaxae import driver_state


@pytest.fixture
def pipelined(monkeypatch):
    monkeypatch.setenv("JAXAE_PIPELINE", "on")


def _driver(searcher="asha", trials=8, learning_rate=None, model="ae", steps=30, curve=None):
    config = config_lib.build({
        "model": model, "searcher": searcher, "population": 4, "trials": trials, "steps": steps,
        "chunk": 10, **({} if curve is None else {"curve_examples": curve}),
        "space": {"hidden": 16, "latent_dim": 4, "batch_size": 16, "learning_rate": (
            learning_rate or {"dist": "float", "low": 1e-3, "high": 1e-2, "log": True})}})
    return driver_lib.Driver(config, data_lib.load("digits"))


def _events(driver, until=None):
    out = []
    while not driver.done and (until is None or driver.chunk < until):
        out += driver.step()[0]
    return out


def _told(events):
    return [(e.trial, e.status, e.steps, e.val_loss) for e in events if e.status != "running"]


@pytest.mark.parametrize("searcher", ["random", "sha"])
def test_a_pipelined_sweep_ends_with_the_same_trials(tmp_path, monkeypatch, searcher):
    """Random search and successive halving decide from the losses alone, not from when they
    arrive: pipelining moves jobs to other chunks, never their numbers."""
    kw = {"searcher": searcher, "population": 4, "trials": 9, "steps": 60}
    monkeypatch.setenv("JAXAE_PIPELINE", "off")
    code, plain = sweep(tmp_path, "plain", **kw)
    assert code == 0
    monkeypatch.setenv("JAXAE_PIPELINE", "on")
    code, piped = sweep(tmp_path, "piped", **kw)
    assert code == 0
    assert rows(piped) == rows(plain)
    assert rows(piped, "SELECT * FROM rungs ORDER BY 1, 2") == rows(
        plain, "SELECT * FROM rungs ORDER BY 1, 2")
    # Each trial's last curve point is its final loss, whatever the chunks were.
    last = "SELECT trial_id, max(step), val_loss FROM curves GROUP BY trial_id ORDER BY 1"
    assert rows(piped, last) == rows(plain, last)
    if searcher == "random":
        # Where no trial pauses, a job's slots are freed as its last chunk starts: the next
        # jobs take them at once, so the chunks, and with them every curve point, are the same.
        every = "SELECT * FROM curves ORDER BY 1, 2, 3"
        assert rows(piped, every) == rows(plain, every)


def test_the_pipeline_keeps_a_chunk_in_flight_between_steps(pipelined):
    driver = _driver()
    assert driver.lagged
    driver.step()
    assert driver._inflight is not None and driver.chunk == 1
    # Its jobs are not told yet: nothing has ended.
    assert not driver.scheduler.trials[0].losses
    events = _events(driver)
    assert driver._inflight is None and driver.done
    assert {e.trial for e in events if e.status in ("completed", "pruned")} == set(range(8))


@pytest.mark.parametrize(("searcher", "learning_rate", "model", "steps", "curve"), [
    # Members paused and continued; curve points on 100 of the 270 validation examples (a
    # chunk's results then carry each ended job's loss on all of them).
    ("asha", None, "ae", 30, 100),
    # Members that diverge, in jobs longer than a chunk (so some diverge in a chunk that is in
    # flight at a checkpoint) and jobs freed as their last chunk starts.
    ("random", {"dist": "choice", "options": [1e-3, 10.0]}, "vae", 60, None),
])
def test_saved_at_any_step_a_pipelined_sweep_resumes_exactly(pipelined, searcher,
                                                            learning_rate, model, steps, curve):
    """With a chunk in flight at every checkpoint: a driver loaded from any step's bytes ends
    as the uninterrupted one, and so does the schedule (the steps and the number of chunks)."""
    make = lambda: _driver(searcher, 9, learning_rate, model, steps, curve)  # noqa: E731
    straight = make()
    rest = _told(_events(straight))
    chunks = straight.chunk
    if searcher == "random":
        assert any(status == "diverged" for _, status, _, _ in rest)
    seen_in_flight = released_in_flight = False
    for k in range(1, chunks):
        before = make()
        head = _told(_events(before, until=k))
        data = driver_state.save(before)
        meta = json.loads(serialization.msgpack_restore(data)["meta"])
        assert meta["lagged"] and ("inflight" in meta) == (before._inflight is not None)
        host = {key: (b.step.copy(), b.diverged.copy(), [o is not None for o in b.owner])
                for key, b in before.buckets.items()}
        tail = _told(_events(before))  # saving changed nothing for the saver
        assert [r[:3] for r in head + tail] == [r[:3] for r in rest], k
        loaded = make()
        loaded.lagged = False  # the checkpoint's setting wins over this process's
        driver_state.load(loaded, data)
        assert loaded.lagged
        # The host's view is the saver's, a member that diverged in the chunk in flight
        # included (the devices know it already; the saver's host did not yet).
        for key, (step, diverged, held) in host.items():  # (empty slots load empty)
            np.testing.assert_array_equal(loaded.buckets[key].step[held], step[held])
            np.testing.assert_array_equal(loaded.buckets[key].diverged[held], diverged[held])
        diverged_in_flight = any(
            (np.asarray(loaded.buckets[e.bucket].pop.diverged) & e.before.active).any()
            for e in (loaded._inflight.entries if loaded._inflight else []))
        seen_in_flight = seen_in_flight or diverged_in_flight
        released_in_flight = released_in_flight or bool(meta["released"])
        again = _told(_events(loaded))
        assert [r[:3] for r in head + again] == [r[:3] for r in rest], k
        np.testing.assert_array_equal([r[3] for r in head + again], [r[3] for r in rest])
        assert loaded.chunk == chunks
    assert seen_in_flight == (searcher == "random")  # a checkpoint held a member diverging
    if searcher == "random":
        assert released_in_flight  # and one whose job's slots were freed already
