"""The analysis of a sweep: the unit cube, the trials fitted, the surrogate fANOVA decomposes."""

import math
import sqlite3

import numpy as np

from jaxae import analysis as analysis_lib
from jaxae.importance import tree_variance
from jaxae.results import load_sweep
from searchers import Choice, Float, Int


def test_unit_cube_maps_each_kind_of_dimension() -> None:
    space = {"lr": Float(1e-4, 1e-1, log=True), "beta": Float(0.0, 4.0),
             "latent": Int(2, 64, log=True), "depth": Int(1, 4), "act": Choice(["relu", "tanh",
                                                                               "gelu"])}
    configs = [{"lr": 1e-3, "beta": 1.0, "latent": 8, "depth": 3, "act": "gelu", "other": 5},
               {"lr": 1e-1, "beta": 0.0, "latent": 2, "depth": 1, "act": "relu"}]
    got = analysis_lib.unit_cube(space, configs)
    log_int = lambda k: (math.log(k) - math.log(1.5)) / (math.log(64.5) - math.log(1.5))  # noqa: E731
    want = [[1 / 3, 0.25, log_int(8), (3 - 1 + 0.5) / 4, (2 + 0.5) / 3],
            [1.0, 0.0, log_int(2), 0.5 / 4, 0.5 / 3]]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert got.shape == (2, 5) and got.min() >= 0 and got.max() <= 1


def test_fit_set_is_the_largest_budget_with_enough_trials(sweep_dir) -> None:
    sweep = load_sweep(sweep_dir)
    for need in (1, 4, 10**6):  # 10**6: no budget qualifies, the fullest one is used
        fit = analysis_lib.fit_set(sweep, min_trials=need)
        eligible = [b for b, n in fit.available.items() if n >= need]
        fullest = max(fit.available, key=lambda b: (fit.available[b], b))
        assert fit.budget == (max(eligible) if eligible else fullest)
    fit = analysis_lib.fit_set(sweep)
    db = sqlite3.connect(sweep_dir / "trials.db")
    rows = db.execute("SELECT trial_id, val_loss FROM rungs WHERE budget = ? AND val_loss IS NOT"
                      " NULL ORDER BY trial_id", (fit.budget,)).fetchall()
    assert fit.trial_ids == [t for t, _ in rows]
    np.testing.assert_allclose(fit.y, np.log([v for _, v in rows]))
    params = {t["trial_id"]: t["params"] for t in sweep.trials}
    np.testing.assert_allclose(fit.X, analysis_lib.unit_cube(sweep.space,
                                                       [params[t] for t in fit.trial_ids]))


def test_surrogate_is_the_forest_fanova_decomposes(sweep_dir) -> None:
    analysis = analysis_lib.analyse(load_sweep(sweep_dir))
    d = len(analysis.importance.names)
    fracs = []
    for tree in analysis.forest.estimators_:
        var = tree_variance(tree.tree_, d, pairs=False)
        if var.total > 0:
            fracs.append(var.main / var.total)
    np.testing.assert_allclose(np.mean(fracs, axis=0), analysis.importance.main, atol=1e-12)
