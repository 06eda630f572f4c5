"""Reading a sweep: the rows as the store holds them, and one best-first order with the store's."""

import sqlite3

from jaxae import results
from jaxae.store import TrialStore


def test_load_sweep_reads_every_row_of_the_store(sweep_dir) -> None:
    sweep = results.load_sweep(sweep_dir)
    store = TrialStore(sweep_dir / "trials.db")
    try:
        assert sweep.trials == store.trials()
        n_rungs = store.query("SELECT COUNT(*) FROM rungs")[0][0]
    finally:
        store.close()
    assert sum(len(r) for r in sweep.rungs.values()) == n_rungs
    assert set(sweep.space) == {"learning_rate", "latent_dim", "weight_decay"}
    assert all(len(r) == sweep.config.repeats for r in sweep.replicates.values())


def test_ranked_agrees_with_the_stores_best(sweep_dir, tmp_path) -> None:
    sweep = results.load_sweep(sweep_dir)
    store = TrialStore(sweep_dir / "trials.db")
    try:
        assert results.ranked(sweep)[0] == store.best()
    finally:
        store.close()
    order = results.ranked(sweep)
    # Completed trials first, each group by loss, and only finite losses.
    statuses = [t["status"] == "completed" for t in order]
    assert statuses == sorted(statuses, reverse=True)
    done = [t["val_loss"] for t in order if t["status"] == "completed"]
    assert done == sorted(done)
    assert len(order) == sum(t["val_loss"] is not None for t in sweep.trials)


def test_decode_trial_refuses_params_that_are_not_an_object(sweep_dir) -> None:
    with sqlite3.connect(sweep_dir / "trials.db") as db:
        cur = db.execute("SELECT * FROM trials LIMIT 1")
        names, row = [d[0] for d in cur.description], list(cur.fetchone())
    trial = results.decode_trial(names, row)
    assert isinstance(trial["params"], dict) and trial["trial_id"] == row[0]
    row[names.index("params")] = "[1, 2]"
    try:
        results.decode_trial(names, row)
    except ValueError as e:
        assert "not an object" in str(e)
    else:
        raise AssertionError("params [1, 2] accepted")
