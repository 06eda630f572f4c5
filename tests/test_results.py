"""Reading a sweep: the rows as the store holds them, and one best-first order with the store's."""

import json
import shutil
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
    assert json.loads((sweep_dir / "best.json").read_text())["trial_id"] == (
        results.ranked(sweep)[0]["trial_id"])
    order = results.ranked(sweep)
    # Completed trials first, each group by loss, and only finite losses.
    statuses = [t["status"] == "completed" for t in order]
    assert statuses == sorted(statuses, reverse=True)
    done = [t["val_loss"] for t in order if t["status"] == "completed"]
    assert done == sorted(done)
    assert len(order) == sum(t["val_loss"] is not None for t in sweep.trials)


def test_the_stores_best_and_the_reports_ranking_agree_with_every_status(sweep_dir, tmp_path
                                                                          ) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(sweep_dir, copy, ignore=shutil.ignore_patterns("report"))
    with sqlite3.connect(copy / "trials.db") as db:
        completed = [t for (t,) in db.execute(
            "SELECT trial_id FROM trials WHERE status = 'completed' ORDER BY val_loss")]
        pruned = db.execute("SELECT COUNT(*) FROM trials WHERE status = 'pruned'").fetchone()[0]
        assert len(completed) >= 2 and pruned >= 2  # the small ASHA sweep has both
        # The best completed trial diverges, a pruned one reaches a loss below every other.
        db.execute("UPDATE trials SET status = 'diverged', val_loss = NULL WHERE trial_id = ?",
                   (completed[0],))
        db.execute("UPDATE trials SET val_loss = 1e-9 WHERE trial_id = (SELECT trial_id FROM "
                   "trials WHERE status = 'pruned' ORDER BY trial_id LIMIT 1)")
    db.close()
    sweep = results.load_sweep(copy)
    assert {t["status"] for t in sweep.trials} == {"completed", "pruned", "diverged"}
    store = TrialStore(copy / "trials.db")
    try:
        best = store.best()
        order = results.ranked(sweep)
    finally:
        store.close()
    assert order[0] == best and best["trial_id"] == completed[1]
    assert [t["trial_id"] for t in order][:len(completed) - 1] == completed[1:]
    assert all(t["status"] != "diverged" for t in order)
