"""``python -m jaxae.report``: it builds from a small sweep, every figure is a PNG the page shows,
and its numbers are what they claim (unit cube, retraining, downstream scores)."""

import math
import shutil
import sqlite3

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from jaxae import data as data_lib
from jaxae import driver as driver_lib
from jaxae import population as pop_lib
from jaxae import report
from jaxae.importance import tree_variance
from jaxae.sweep import main as sweep_main
from searchers import Choice, Float, Int

PNG = b"\x89PNG\r\n\x1a\n"

# One bucket and tiny shapes; ASHA with replicates so that the rung and noise figures appear.
SMALL = """
[sweep]
model = "ae"
searcher = "asha"
population = 4
trials = 12
steps = 60
min_steps = 10
chunk = 10
repeats = 2
[space]
learning_rate = {dist = "float", low = 1e-3, high = 3e-2, log = true}
latent_dim = {dist = "int", low = 2, high = 8}
weight_decay = {dist = "float", low = 1e-6, high = 1e-2, log = true}
hidden = 16
activation = "tanh"
batch_size = 32
"""


@pytest.fixture(scope="session")
def sweep_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    config = root / "sweep.toml"
    config.write_text(SMALL)
    out = root / "sweep"
    assert sweep_main(["--config", str(config), "--out", str(out), "--no-report",
                       "--no-progress"]) == 0
    return out


@pytest.fixture(scope="session")
def built(sweep_dir):
    """The report written by the command line, with the terminal summary it printed."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        # Four members fill a population as large as the sweep's (4 slots), so the retraining
        # reuses the programs the sweep compiled in this process.
        code = report.main([str(sweep_dir), "--top-k", "4"])
    assert code == 0
    return sweep_dir / "report", buf.getvalue()


@pytest.fixture(scope="session")
def down(sweep_dir, built):
    # After `built`, so the jitted programs are compiled and this is quick.
    return report.downstream(report.load_sweep(sweep_dir), top_k=4)


def test_report_writes_every_figure_and_the_page_shows_them(built) -> None:
    out, summary = built
    pngs = sorted(p.name for p in out.glob("*.png"))
    # ASHA with replicates and labels: every figure the report knows has something to show.
    assert pngs == sorted(report.FIGURES)
    page = (out / "index.html").read_text()
    for name in pngs:
        assert (out / name).read_bytes()[:8] == PNG
        assert f'<img src="{name}"' in page
    assert "<script" not in page and "http" not in page  # self-contained
    assert "learning_rate" in page and "variance explained" in page
    # The terminal summary: best configuration, importances as percentages, the page's path.
    assert "best: trial" in summary and "learning_rate=" in summary
    assert summary.count("%") >= 3
    assert str(out / "index.html") in summary


def test_unit_cube_maps_each_kind_of_dimension() -> None:
    space = {"lr": Float(1e-4, 1e-1, log=True), "beta": Float(0.0, 4.0),
             "latent": Int(2, 64, log=True), "depth": Int(1, 4), "act": Choice(["relu", "tanh",
                                                                               "gelu"])}
    configs = [{"lr": 1e-3, "beta": 1.0, "latent": 8, "depth": 3, "act": "gelu", "other": 5},
               {"lr": 1e-1, "beta": 0.0, "latent": 2, "depth": 1, "act": "relu"}]
    got = report.unit_cube(space, configs)
    log_int = lambda k: (math.log(k) - math.log(1.5)) / (math.log(64.5) - math.log(1.5))  # noqa: E731
    want = [[1 / 3, 0.25, log_int(8), (3 - 1 + 0.5) / 4, (2 + 0.5) / 3],
            [1.0, 0.0, log_int(2), 0.5 / 4, 0.5 / 3]]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert got.shape == (2, 5) and got.min() >= 0 and got.max() <= 1


def test_fit_set_is_the_largest_budget_with_enough_trials(sweep_dir) -> None:
    sweep = report.load_sweep(sweep_dir)
    for need in (1, 4, 10**6):  # 10**6: no budget qualifies, the fullest one is used
        fit = report.fit_set(sweep, min_trials=need)
        eligible = [b for b, n in fit.available.items() if n >= need]
        fullest = max(fit.available, key=lambda b: (fit.available[b], b))
        assert fit.budget == (max(eligible) if eligible else fullest)
    fit = report.fit_set(sweep)
    db = sqlite3.connect(sweep_dir / "trials.db")
    rows = db.execute("SELECT trial_id, val_loss FROM rungs WHERE budget = ? AND val_loss IS NOT"
                      " NULL ORDER BY trial_id", (fit.budget,)).fetchall()
    assert fit.trial_ids == [t for t, _ in rows]
    np.testing.assert_allclose(fit.y, np.log([v for _, v in rows]))
    params = {t["trial_id"]: t["params"] for t in sweep.trials}
    np.testing.assert_allclose(fit.X, report.unit_cube(sweep.space,
                                                       [params[t] for t in fit.trial_ids]))


def test_surrogate_is_the_forest_fanova_decomposes(sweep_dir) -> None:
    analysis = report.analyse(report.load_sweep(sweep_dir))
    d = len(analysis.importance.names)
    fracs = []
    for tree in analysis.forest.estimators_:
        var = tree_variance(tree.tree_, d, pairs=False)
        if var.total > 0:
            fracs.append(var.main / var.total)
    np.testing.assert_allclose(np.mean(fracs, axis=0), analysis.importance.main, atol=1e-12)


def test_retrained_members_reproduce_the_stored_trials(down) -> None:
    assert len(down.trial_ids) == 4
    np.testing.assert_allclose(down.val_loss, down.stored_val_loss, rtol=1e-5)


def test_anomaly_auc_is_sklearns_on_the_same_scores(sweep_dir, down) -> None:
    sweep = report.load_sweep(sweep_dir)
    dataset = data_lib.load(sweep.config.data, seed=sweep.config.seed)
    assert down.is_anomaly.tolist() == (dataset.test.y == 0).tolist()
    for scores, auc in zip(down.scores, down.auc, strict=True):
        assert auc == pytest.approx(roc_auc_score(down.is_anomaly, scores), abs=1e-6)
    # The scores come from members retrained without the anomaly class, as claimed.
    spec, members = _members(sweep, down.trial_ids, dataset)
    normal = jnp.asarray(dataset.train.x[dataset.train.y != 0])
    pop = report.retrain(spec, members, normal, sweep.config.chunk)
    scores = np.asarray(report.recon_errors(spec, pop, jnp.asarray(dataset.test.x)))[0]
    np.testing.assert_allclose(scores, down.scores[0], rtol=1e-5, atol=1e-7)


def test_linear_probe_agrees_with_sklearn_on_the_retrained_codes(sweep_dir, down) -> None:
    sweep = report.load_sweep(sweep_dir)
    dataset = data_lib.load(sweep.config.data, seed=sweep.config.seed)
    spec, members = _members(sweep, down.trial_ids, dataset)
    pop = report.retrain(spec, members, jnp.asarray(dataset.train.x), sweep.config.chunk)
    train = np.asarray(report.codes(spec, pop, jnp.asarray(dataset.train.x)))[0]
    test = np.asarray(report.codes(spec, pop, jnp.asarray(dataset.test.x)))[0]
    # linear_probe_accuracy's standardisation (masked code units are constant: only centred)
    # and its objective in sklearn's terms, C = 1 / (l2 n) with l2 = 1e-3.
    mean, std = train.mean(0), train.std(0)
    std = np.where(std > 1e-6 * (1 + np.abs(mean)), std, 1.0)
    probe = LogisticRegression(C=1.0 / (1e-3 * len(train)), max_iter=5000, tol=1e-8)
    probe.fit((train - mean) / std, dataset.train.y)
    want = probe.score((test - mean) / std, dataset.test.y)
    assert abs(down.probe_accuracy[0] - want) <= 0.02


def _members(sweep, trial_ids, dataset):
    """The bucket's spec and the members of ``trial_ids`` (one bucket: the activation is fixed)."""
    rows = {t["trial_id"]: t for t in sweep.trials}
    trials = [rows[t] for t in trial_ids]
    key = tuple(trials[0]["params"][n] for n in report.hparams.BUCKET_NAMES)
    spec = driver_lib.train_spec(sweep.config, dataset.features, key)
    members = [pop_lib.Member(t["trial_id"], t["params"], t["steps"],
                              pop_lib.trial_keys(sweep.config.seed, t["trial_id"], 0))
               for t in trials]
    return spec, members


def test_diverged_trials_are_drawn_not_dropped(sweep_dir, tmp_path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(sweep_dir, copy, ignore=shutil.ignore_patterns("report"))
    with sqlite3.connect(copy / "trials.db") as db:
        db.execute("UPDATE trials SET status = 'diverged', val_loss = NULL WHERE trial_id = 0")
    built = report.build(copy, with_downstream=False)
    assert "hyperparameters.png" in built.figures
    assert "downstream.png" not in built.figures
    assert not (copy / "report" / "downstream.png").exists()
    sweep = report.load_sweep(copy)
    assert sweep.status_counts()["diverged"] >= 1
    assert 0 not in [t["trial_id"] for t in report.ranked(sweep)]


def test_a_directory_that_is_not_a_sweep_exits_2(tmp_path, capsys) -> None:
    assert report.main([str(tmp_path)]) == 2
    (tmp_path / "sweep.json").write_text("{not json")
    (tmp_path / "trials.db").write_bytes(b"not a database")
    assert report.main([str(tmp_path)]) == 2
    (tmp_path / "sweep.json").write_text('{"config": {"model": "ae"}}')
    assert report.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
    assert "no sweep.json" in err[0] and "sweep.json" in err[1] and "trials.db" in err[2]
    assert not (tmp_path / "report").exists()
