"""``python -m jaxae.report DIR``: which hyperparameters matter for this autoencoder, and how much.

Reads a finished (or still running) sweep's ``DIR/sweep.json`` and ``DIR/trials.db`` (opened
read-only) and writes ``DIR/report/``: PNG figures and one self-contained ``index.html`` that shows
them under a summary table, then prints a plain-text summary. The analysis:

* every varying hyperparameter against the final validation loss (diverged trials shown, pruned
  trials lighter, the best marked);
* functional ANOVA importances (Hutter et al. 2014) on a random-forest surrogate of the log loss,
  with its out-of-bag R^2, a cross-check on a synthetic objective of known importances at the same
  configurations, and heat maps of the surrogate over the most important pairs;
* learning curves of the top trials and, for multi-fidelity searchers, the rungs;
* seed noise against the spread across configurations when the sweep has replicates;
* downstream quality of the top-k configurations, retrained exactly as the sweep trained them:
  anomaly-detection ROC AUC with one class held out, and linear-probe accuracy of the codes.

The sweep runs this automatically at its end unless ``--no-report``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import html
import json
import math
import os
import sqlite3
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.ensemble import RandomForestRegressor

from jaxae import config as config_lib
from jaxae import hparams, importance
from jaxae.errors import UserError
from jaxae.importance import Importance, fanova
from searchers import Choice, space_to_unit
from searchers.space import Dimension, Space

REPORT_DIR = "report"
# A surrogate fitted on fewer points than this (or than twice the dimensions) mostly reads noise;
# multi-fidelity sweeps use the largest budget that still has this many finite losses.
MIN_FIT_TRIALS = 16  # fewer and the surrogate describes noise (out-of-bag R^2 near 0)
N_TREES = 64  # forest size for fANOVA and the heat-map surrogate (as Optuna's evaluator)
MULTI_FIDELITY = ("sha", "hyperband", "asha")
# Every figure name the report may write; a figure not produced this time is removed so the
# directory never shows a stale picture next to a new index.html.
FIGURES = ("hyperparameters.png", "importance.png", "interactions.png", "curves.png",
           "rungs.png", "noise.png", "downstream.png")


# -- reading a sweep ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sweep:
    """One sweep's results, read from its directory.

    Attributes:
        dir: the sweep directory.
        info: ``sweep.json`` as stored (config, data sizes, versions, times).
        config: the resolved configuration.
        space: the hyperparameters that vary, as ``searchers`` dimensions, in the space's order.
        trials: one dict per trial row (``params`` decoded), ordered by trial id.
        replicates: trial -> ``[(replicate, status, val_loss or None, steps)]``.
        curves: trial -> ``(steps [m], val_loss [m])``, the mean over replicates at each step
            where every replicate has a finite loss.
        rungs: trial -> ``[(budget, val_loss or None)]`` by budget: what a scheduler was told.
    """

    dir: Path
    info: dict[str, Any]
    config: config_lib.SweepConfig
    space: dict[str, Dimension]
    trials: list[dict[str, Any]]
    replicates: dict[int, list[tuple[int, str, float | None, int]]]
    curves: dict[int, tuple[np.ndarray, np.ndarray]]
    rungs: dict[int, list[tuple[int, float | None]]]

    @property
    def multi_fidelity(self) -> bool:
        return self.config.searcher in MULTI_FIDELITY

    @property
    def title(self) -> str:
        """What the figures' titles say about the sweep, e.g. ``ae / asha, 48 trials, digits``."""
        data = self.info.get("data", {}).get("name", self.config.data)
        return f"{self.config.model} / {self.config.searcher}, {len(self.trials)} trials, {data}"

    def status_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self.trials:
            counts[t["status"]] = counts.get(t["status"], 0) + 1
        return counts


def load_sweep(path: str | os.PathLike[str]) -> Sweep:
    """Reads a sweep directory.

    Raises:
        UserError: ``path`` is not a directory holding a readable ``sweep.json`` and
            ``trials.db`` with at least one trial.
    """
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"{str(root)!r} is not a directory")
    info_path, db_path = root / "sweep.json", root / "trials.db"
    if not info_path.is_file():
        raise UserError(f"{str(root)!r} is not a sweep directory (no sweep.json)")
    if not db_path.is_file():
        raise UserError(f"{str(root)!r} is not a sweep directory (no trials.db)")
    try:
        info = json.loads(info_path.read_text())
        raw = info["config"]
        if not isinstance(raw, dict):
            raise TypeError("config is not an object")
        config = config_lib.build(raw)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{str(info_path)!r} is not a sweep's sweep.json "
                        f"({type(e).__name__}: {_one_line(e)})") from None
    except UserError as e:
        raise UserError(f"{str(info_path)!r} holds an invalid sweep config: {e}") from None
    space = config_lib.searched(config)
    try:
        tables = _read_db(db_path)
    except (sqlite3.Error, ValueError, TypeError) as e:
        raise UserError(f"{str(db_path)!r} is not a sweep's trial store: {_one_line(e)}") from None
    trials, replicates, curve_rows, rung_rows = tables
    if not trials:
        raise UserError(f"{str(db_path)!r} holds no trials yet")

    curves: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    by_step: dict[int, dict[int, list[float | None]]] = {}
    for trial, _, step, val in curve_rows:
        by_step.setdefault(trial, {}).setdefault(step, []).append(val)
    for trial, points in by_step.items():
        n_rep = max(len(v) for v in points.values())
        steps = [s for s in sorted(points) if len(points[s]) == n_rep
                 and all(v is not None for v in points[s])]
        curves[trial] = (np.array(steps, dtype=np.int64),
                         np.array([np.mean(points[s]) for s in steps], dtype=np.float64))
    rungs: dict[int, list[tuple[int, float | None]]] = {}
    for trial, budget, val in rung_rows:
        rungs.setdefault(trial, []).append((budget, val))
    reps: dict[int, list[tuple[int, str, float | None, int]]] = {}
    for trial, replicate, status, val, steps in replicates:
        reps.setdefault(trial, []).append((replicate, status, val, steps))
    return Sweep(root, info, config, space, trials, reps, curves, rungs)


def _read_db(path: Path) -> tuple[list[dict], list[tuple], list[tuple], list[tuple]]:
    # Read-only by URI, so a report can never modify (or create) a sweep's store.
    db = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        cur = db.execute("SELECT trial_id, status, params, val_loss, steps, seed, budget, bucket "
                         "FROM trials ORDER BY trial_id")
        names = [d[0] for d in cur.description]
        trials = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        for t in trials:
            t["params"] = json.loads(t["params"])
            if not isinstance(t["params"], dict):
                raise ValueError(f"trial {t['trial_id']} has params that are not an object")
        replicates = db.execute("SELECT trial_id, replicate, status, val_loss, steps "
                                "FROM replicates ORDER BY trial_id, replicate").fetchall()
        curves = db.execute("SELECT trial_id, replicate, step, val_loss FROM curves "
                            "ORDER BY trial_id, step, replicate").fetchall()
        rungs = db.execute("SELECT trial_id, budget, val_loss FROM rungs "
                           "ORDER BY trial_id, budget").fetchall()
    finally:
        db.close()
    return trials, replicates, curves, rungs


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


# -- analysis -------------------------------------------------------------------------------------


def ranked(sweep: Sweep) -> list[dict[str, Any]]:
    """Trials with a finite loss, best first: completed before stopped, then longer-trained, then
    lower loss (the order of ``TrialStore.best``), so a loss at a low budget never outranks a
    finished trial."""
    done = [t for t in sweep.trials if t["val_loss"] is not None]
    return sorted(done, key=lambda t: (t["status"] != "completed", -t["steps"], t["val_loss"],
                                       t["trial_id"]))


def unit_cube(space: Space, configs: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """The configurations as points of the unit cube, the coordinates fANOVA decomposes over.

    The searchers' own map (``searchers.space_to_unit``), so the cube's uniform measure is the
    search prior: log dimensions in log space, integers in equal (or log-equal) cells, and
    option k of K at ``(k + 0.5) / K`` as ``jaxae.importance`` requires.

    Args:
        space: the varying dimensions, in column order.
        configs: n configurations holding at least the space's names.

    Returns:
        [n, len(space)] float64 in [0, 1].
    """
    if not configs:
        return np.zeros((0, len(space)))
    return np.stack([space_to_unit(space, {k: c[k] for k in space}) for c in configs])


def log_target(losses: np.ndarray) -> tuple[np.ndarray, bool]:
    """``log(loss)`` when every loss is positive (losses span decades, and fANOVA's variance
    shares should not be dominated by the worst trials); the losses themselves otherwise."""
    losses = np.asarray(losses, dtype=np.float64)
    if np.all(losses > 0):
        return np.log(losses), True
    return losses, False


@dataclasses.dataclass(frozen=True)
class FitSet:
    """The trials the surrogate is fitted on: finite losses at one budget.

    Attributes:
        budget: the training steps every loss was measured at.
        trial_ids: [n] the trials.
        X: [n, d] their configurations in the unit cube (``unit_cube``).
        y: [n] log validation loss (or the loss when some loss is not positive).
        logged: whether ``y`` is a log.
        available: budget -> how many finite losses the sweep holds there.
    """

    budget: int
    trial_ids: list[int]
    X: np.ndarray
    y: np.ndarray
    logged: bool
    available: dict[int, int]


def fit_set(sweep: Sweep, min_trials: int | None = None, budget: int | None = None
            ) -> FitSet | None:
    """The trials to fit at ``budget``, by default the largest budget with at least
    ``min_trials`` finite losses (default ``min_fit_trials(d)``), or else the budget with the
    most; None when fewer than three finite losses share that budget or nothing varies."""
    if not sweep.space:
        return None
    by_budget = _losses_by_budget(sweep)
    if not by_budget:
        return None
    if budget is None:
        need = min_fit_trials(len(sweep.space)) if min_trials is None else min_trials
        eligible = [b for b, rows in by_budget.items() if len(rows) >= need]
        budget = (max(eligible) if eligible
                  else max(by_budget, key=lambda b: (len(by_budget[b]), b)))
    rows = sorted(by_budget.get(budget, []))
    if len(rows) < 3:
        return None
    ids = [trial for trial, _ in rows]
    y, logged = log_target(np.array([loss for _, loss in rows]))
    params = {t["trial_id"]: t["params"] for t in sweep.trials}
    X = unit_cube(sweep.space, [params[i] for i in ids])
    return FitSet(budget, ids, X, y, logged, {b: len(v) for b, v in sorted(by_budget.items())})


def min_fit_trials(d: int) -> int:
    """Finite losses a budget needs before a surrogate of ``d`` dimensions is fitted there."""
    return max(MIN_FIT_TRIALS, 4 * d)


def _losses_by_budget(sweep: Sweep) -> dict[int, list[tuple[int, float]]]:
    known = {t["trial_id"] for t in sweep.trials}
    by_budget: dict[int, list[tuple[int, float]]] = {}
    for trial, rows in sweep.rungs.items():
        for budget, loss in rows:
            if loss is not None and math.isfinite(loss) and trial in known:
                by_budget.setdefault(budget, []).append((trial, loss))
    if not by_budget:
        # No scheduler tells recorded (an older store): the trials' own final losses by steps.
        for t in sweep.trials:
            if t["val_loss"] is not None:
                by_budget.setdefault(t["steps"], []).append((t["trial_id"], t["val_loss"]))
    return by_budget


def surrogate(X: np.ndarray, y: np.ndarray, *, seed: int = 0,
              n_trees: int = N_TREES) -> RandomForestRegressor:
    """The random forest ``importance.fanova`` fits (same settings and seed, hence the same
    trees), kept for predictions and its out-of-bag fit quality."""
    return importance.fit_forest(X, y, n_trees=n_trees, seed=seed, oob_score=True)


def oob_r2(forest: RandomForestRegressor, y: np.ndarray) -> float:
    """Out-of-bag R^2: how much of the loss's variance the surrogate predicts for trials it did not
    see. Near 0 (or below) means the importances describe noise."""
    pred = np.asarray(forest.oob_prediction_)
    ok = np.isfinite(pred)
    if ok.sum() < 2 or np.var(y[ok]) == 0:
        return math.nan
    return float(1.0 - np.mean((y[ok] - pred[ok]) ** 2) / np.var(y[ok]))


def synthetic_weights(d: int) -> np.ndarray:
    """Coefficients of the synthetic cross-check ``f(u) = sum_j w_j u_j``: halving with each
    dimension, in reverse column order so that a method that favours the first columns fails."""
    return 2.0 ** -np.arange(d)[::-1].astype(np.float64)


def synthetic_check(X: np.ndarray, names: Sequence[str], seed: int = 0
                    ) -> tuple[np.ndarray, np.ndarray]:
    """fANOVA on a linear objective of known importances, at the sweep's own configurations.

    The true share of dimension j under the uniform measure is ``w_j^2 / sum w^2`` (each
    ``Var(u_j) = 1/12``). Recovering their order at these very points says the sample is large
    and spread enough for the real importances to be read.

    Returns:
        true [d] and estimated [d] main-effect fractions.
    """
    w = synthetic_weights(X.shape[1])
    est = fanova(X, X @ w, names, n_trees=N_TREES, seed=seed, pairs=False)
    return w**2 / np.sum(w**2), est.main


@dataclasses.dataclass(frozen=True)
class Analysis:
    """Importances and the surrogate behind them.

    Attributes:
        fit: the trials fitted.
        importance: fANOVA main effects (with std over trees) and pair interactions.
        forest: the surrogate (the same forest fANOVA decomposed).
        r2: the surrogate's out-of-bag R^2.
        synthetic_true: [d] known importances of the synthetic cross-check.
        synthetic_est: [d] what fANOVA estimated for it at the same configurations.
        top_pairs: up to three pairs ranked by ``main_i + main_j + pair_ij``.
        by_budget: multi-fidelity: budget -> (trials, [d] main effects) at every budget with
            enough finite losses, to show how importance shifts from low to high budgets.
    """

    fit: FitSet
    importance: Importance
    forest: RandomForestRegressor
    r2: float
    synthetic_true: np.ndarray
    synthetic_est: np.ndarray
    top_pairs: list[tuple[str, str]]
    by_budget: dict[int, tuple[int, np.ndarray]]

    def order(self) -> list[int]:
        """Dimension indices by decreasing main effect."""
        return [int(i) for i in np.argsort(-self.importance.main, kind="stable")]


def analyse(sweep: Sweep) -> Analysis | None:
    """fANOVA importances of the varying hyperparameters; None when too few trials finished."""
    fit = fit_set(sweep)
    if fit is None:
        return None
    names = list(sweep.space)
    seed = sweep.config.seed
    imp = fanova(fit.X, fit.y, names, n_trees=N_TREES, seed=seed, pairs=len(names) > 1)
    forest = surrogate(fit.X, fit.y, seed=seed)
    true, est = synthetic_check(fit.X, names, seed=seed)
    main = dict(zip(names, imp.main, strict=True))
    pairs = sorted(imp.pairs, key=lambda p: -(main[p[0]] + main[p[1]] + imp.pairs[p]))[:3]
    by_budget = {}
    if sweep.multi_fidelity:
        need = min_fit_trials(len(names))
        for budget, n in fit.available.items():
            if n < need:
                continue
            if budget == fit.budget:
                by_budget[budget] = (n, imp.main)
                continue
            other = fit_set(sweep, budget=budget)
            if other is not None:
                by_budget[budget] = (n, fanova(other.X, other.y, names, n_trees=N_TREES,
                                               seed=seed, pairs=False).main)
    return Analysis(fit, imp, forest, oob_r2(forest, fit.y), true, est, pairs, by_budget)


def pair_surface(forest: RandomForestRegressor, space: Space, pair: tuple[str, str], *,
                 grid: int = 32, samples: int = 64, seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The surrogate's prediction over two dimensions, the others averaged out.

    The others are drawn uniformly from the unit cube (the search prior), which is the marginal
    fANOVA decomposes, estimated with ``samples`` draws.

    Returns:
        u_a [ga] and u_b [gb] cell centres in the unit cube (a choice: one cell per option),
        and the mean prediction [ga, gb].
    """
    names = list(space)
    a, b = names.index(pair[0]), names.index(pair[1])
    centres = [_centres(space[pair[0]], grid), _centres(space[pair[1]], grid)]
    rest = np.random.default_rng(seed).uniform(size=(samples, len(names)))
    ua, ub = np.meshgrid(*centres, indexing="ij")
    points = np.repeat(rest[None], ua.size, axis=0)  # [cells, samples, d]
    points[:, :, a] = ua.reshape(-1, 1)
    points[:, :, b] = ub.reshape(-1, 1)
    pred = forest.predict(points.reshape(-1, len(names))).reshape(ua.size, samples).mean(axis=1)
    return centres[0], centres[1], pred.reshape(ua.shape)


def _centres(dim: Dimension, grid: int) -> np.ndarray:
    if isinstance(dim, Choice):
        k = len(dim.options)
        return (np.arange(k) + 0.5) / k
    return (np.arange(grid) + 0.5) / grid


@dataclasses.dataclass(frozen=True)
class Noise:
    """Replicate losses of configurations trained to the same budget.

    Attributes:
        trial_ids: [c] the configurations, by increasing mean log loss.
        losses: [c, r] their replicates' validation losses.
        steps: the steps they were trained for.
        seed_std: pooled standard deviation of log10 loss across seeds within a configuration.
        config_std: standard deviation of the configurations' mean log10 loss.
    """

    trial_ids: list[int]
    losses: np.ndarray
    steps: int
    seed_std: float
    config_std: float


def noise(sweep: Sweep) -> Noise | None:
    """Seed noise against configuration spread; None without replicates or with too few trials."""
    if sweep.config.repeats < 2:
        return None
    by_steps: dict[int, list[tuple[int, list[float]]]] = {}
    for trial, rows in sweep.replicates.items():
        vals = [v for _, _, v, _ in rows]
        if (len(vals) == sweep.config.repeats and all(v is not None and v > 0 for v in vals)
                and len({s for *_, s in rows}) == 1):
            by_steps.setdefault(rows[0][3], []).append((trial, vals))
    if not by_steps:
        return None
    eligible = [s for s, v in by_steps.items() if len(v) >= 3]
    steps = max(eligible) if eligible else max(by_steps, key=lambda s: len(by_steps[s]))
    rows = by_steps[steps]
    if len(rows) < 2:
        return None
    losses = np.array([v for _, v in rows])
    logs = np.log10(losses)
    order = np.argsort(logs.mean(axis=1), kind="stable")
    seed_std = float(np.sqrt(np.mean(np.var(logs, axis=1, ddof=1))))
    config_std = float(np.std(logs.mean(axis=1), ddof=1))
    return Noise([rows[i][0] for i in order], losses[order], steps, seed_std, config_std)


# -- downstream: retrain the top configurations ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Downstream:
    """Downstream quality of the top-k configurations, retrained from their trial keys.

    Attributes:
        trial_ids: [k] the trials, best first.
        steps: [k] steps each was trained (as in the sweep).
        stored_val_loss: [k] replicate 0's validation loss in the store.
        val_loss: [k] the retrained member's validation loss: equals ``stored_val_loss`` when the
            retraining reproduced the trial.
        test_loss: [k] its reconstruction error (``recon`` metric) on the test split.
        probe_accuracy: [k] linear-probe test accuracy of its codes (VAE: the mean), or None.
        auc: [k] anomaly-detection ROC AUC of members retrained without ``anomaly_class``, or None.
        scores: [k, n_test] their anomaly scores (per-example reconstruction error), or None.
        is_anomaly: [n_test] bool, test examples of ``anomaly_class``, or None.
        anomaly_class: the class held out.
        num_classes: classes the probe separates (0 without labels).
        notes: why a part was skipped, if one was.
    """

    trial_ids: list[int]
    steps: list[int]
    stored_val_loss: np.ndarray
    val_loss: np.ndarray
    test_loss: np.ndarray
    probe_accuracy: np.ndarray | None
    auc: np.ndarray | None
    scores: np.ndarray | None
    is_anomaly: np.ndarray | None
    anomaly_class: int
    num_classes: int
    notes: list[str]


def downstream(sweep: Sweep, *, top_k: int = 3, anomaly_class: int = 0,
               dataset: Any = None) -> Downstream | None:
    """Retrains the ``top_k`` best configurations and scores their codes.

    Each trial is retrained in one population per compiled program (bucket), from its own keys
    ``population.trial_keys(seed, trial, 0)`` (replicate 0) to the steps it trained in the sweep,
    on the same padded shapes, so the member reproduces the stored trial. Its codes of the train
    split fit a linear probe scored on the test split. For anomaly detection the same
    configurations are retrained on the train split without ``anomaly_class`` (a model must not
    have seen the anomalies) and score each test example by its reconstruction error.

    Args:
        sweep: the sweep.
        top_k: how many configurations (from ``ranked``).
        anomaly_class: the label held out as the anomaly.
        dataset: the sweep's data (``jaxae.data.Dataset``); loaded from the config when None.

    Returns:
        The scores, or None when no trial has a finite loss.

    Raises:
        UserError: the sweep's data cannot be loaded.
    """
    import jax
    import jax.numpy as jnp

    from jaxae import data as data_lib
    from jaxae import downstream as metrics_lib
    from jaxae import driver as driver_lib
    from jaxae import population as pop_lib

    top = ranked(sweep)[:top_k]
    if not top:
        return None
    if dataset is None:
        dataset = data_lib.load(sweep.config.data, seed=sweep.config.seed)
    notes = []
    labelled = all(s.y is not None for s in (dataset.train, dataset.test))
    num_classes = int(max(dataset.train.y.max(), dataset.test.y.max())) + 1 if labelled else 0
    anomaly = labelled and bool(np.any(dataset.test.y == anomaly_class)) and bool(
        np.any(dataset.train.y != anomaly_class))
    if not labelled:
        notes.append(f"data set {dataset.name!r} has no labels: no anomaly detection or probe")
    elif not anomaly:
        notes.append(f"class {anomaly_class} does not occur in the test split: no anomaly "
                     "detection")
    normal_x = jnp.asarray(dataset.train.x[dataset.train.y != anomaly_class]) if anomaly else None
    train_x, val_x, test_x = (jnp.asarray(s.x) for s in (dataset.train, dataset.val,
                                                          dataset.test))
    probe = jax.vmap(lambda a, b, c, d: metrics_lib.linear_probe_accuracy(
        a, b, c, d, num_classes=max(num_classes, 2)), in_axes=(0, None, 0, None))
    auc_fn = jax.vmap(metrics_lib.roc_auc, in_axes=(0, None))
    is_anomaly = (dataset.test.y == anomaly_class) if anomaly else None

    results: dict[int, dict[str, Any]] = {}
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for t in top:
        groups.setdefault(tuple(t["params"][n] for n in hparams.BUCKET_NAMES), []).append(t)
    for key, trials in groups.items():
        spec = driver_lib.train_spec(sweep.config, dataset.features, key)
        members = [pop_lib.Member(t["trial_id"], t["params"], t["steps"],
                                  driver_lib.member_keys(sweep.config, t["trial_id"], 0))
                   for t in trials]
        # As few slots as members: an empty slot costs as much compute as a full one.
        pop = retrain(spec, members, train_x, sweep.config.chunk)
        val = np.asarray(pop_lib.evaluate(spec, pop, val_x)["val_loss"])
        test = np.asarray(recon_errors(spec, pop, test_x)).mean(axis=1)
        acc = None
        if labelled:
            acc = np.asarray(probe(codes(spec, pop, train_x), jnp.asarray(dataset.train.y),
                                   codes(spec, pop, test_x), jnp.asarray(dataset.test.y)))
        scores = auc = None
        if anomaly:
            normal_pop = retrain(spec, members, normal_x, sweep.config.chunk)
            scores = recon_errors(spec, normal_pop, test_x)
            auc = np.asarray(auc_fn(scores, jnp.asarray(is_anomaly)))
            scores = np.asarray(scores)
        for i, t in enumerate(trials):
            results[t["trial_id"]] = {
                "val": val[i], "test": test[i],
                "acc": None if acc is None else acc[i],
                "auc": None if auc is None else auc[i],
                "scores": None if scores is None else scores[i],
            }

    ids = [t["trial_id"] for t in top]
    stored = []
    for t in top:
        rep0 = [v for r, _, v, _ in sweep.replicates.get(t["trial_id"], []) if r == 0]
        stored.append(rep0[0] if rep0 and rep0[0] is not None else t["val_loss"])
    return Downstream(
        trial_ids=ids,
        steps=[t["steps"] for t in top],
        stored_val_loss=np.array(stored, dtype=np.float64),
        val_loss=np.array([results[i]["val"] for i in ids], dtype=np.float64),
        test_loss=np.array([results[i]["test"] for i in ids], dtype=np.float64),
        probe_accuracy=(np.array([results[i]["acc"] for i in ids], dtype=np.float64)
                        if labelled else None),
        auc=np.array([results[i]["auc"] for i in ids], dtype=np.float64) if anomaly else None,
        scores=np.stack([results[i]["scores"] for i in ids]) if anomaly else None,
        is_anomaly=is_anomaly,
        anomaly_class=anomaly_class,
        num_classes=num_classes,
        notes=notes,
    )


def retrain(spec: Any, members: Sequence[Any], train_x: Any, chunk: int,
            slots: int | None = None) -> Any:
    """Trains ``members`` (``population.Member``) from scratch in one population of their own,
    in chunks of the sweep's ``chunk`` steps, until each reaches its target.

    Args:
        spec: the bucket's ``population.TrainSpec``.
        members: the trials to train.
        train_x: [n, features] training data on device.
        chunk: steps per jitted call.
        slots: population size (at least ``len(members)``; the rest stay empty).

    Returns:
        The trained ``population.Population`` (slot i holds members[i]).
    """
    from jaxae import population as pop_lib

    pop = pop_lib.create(spec, max(len(members), slots or 0))
    pop = pop_lib.assign(spec, pop, list(range(len(members))), members)
    for _ in range(math.ceil(max(m.target for m in members) / chunk)):
        pop, _ = pop_lib.train_chunk(spec, pop, train_x, chunk)
    return pop


def codes(spec: Any, pop: Any, x: Any) -> Any:
    """Codes [slots, n, latent_dim] of ``x`` [n, features] (VAE: the posterior mean; units a
    slot masks out are exact zeros)."""
    return _programs()[0](spec, pop, x)


def recon_errors(spec: Any, pop: Any, x: Any) -> Any:
    """Per-example reconstruction error [slots, n] of ``x`` (the ``recon`` validation metric:
    through the mean code for a VAE), the anomaly score."""
    return _programs()[1](spec, pop, x)


@functools.cache
def _programs() -> tuple[Any, Any]:
    # Built on first use so that reading a sweep and drawing figures never imports JAX.
    import jax

    from jaxae.models import apply_fn, make_masks
    from jaxae.objectives import make_metrics

    @functools.partial(jax.jit, static_argnums=(0,))
    def codes_fn(spec, pop, x):
        encode = apply_fn(spec.model, "encode")

        def member(m):
            z = encode(m.params, x, make_masks(spec.model, m.hparams["hidden"],
                                               m.hparams["latent_dim"]))
            return z[0] if spec.model.variational else z

        return jax.vmap(member)(pop)

    @functools.partial(jax.jit, static_argnums=(0,))
    def recon_fn(spec, pop, x):
        metrics = make_metrics(spec.model)
        return jax.vmap(lambda m: metrics(m.params, x, m.eval_key, m.hparams)["recon"])(pop)

    return codes_fn, recon_fn


# -- the report -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Report:
    """What ``build`` made.

    Attributes:
        dir: ``DIR/report``.
        index: the HTML page.
        figures: file name -> caption, in page order.
        analysis: importances (None when too few trials finished).
        noise: seed noise (None without replicates).
        downstream: downstream scores (None when skipped).
        summary: the plain-text summary.
    """

    dir: Path
    index: Path
    figures: dict[str, str]
    analysis: Analysis | None
    noise: Noise | None
    downstream: Downstream | None
    summary: str


def build(sweep_dir: str | os.PathLike[str], *, top_k: int = 3, anomaly_class: int = 0,
          with_downstream: bool = True) -> Report:
    """Reads the sweep in ``sweep_dir`` and writes ``sweep_dir/report/``.

    Raises:
        UserError: ``sweep_dir`` is not a readable sweep, or the report directory is not writable.
    """
    from jaxae import figures
    from jaxae.store import atomic_write_bytes

    sweep = load_sweep(sweep_dir)
    analysis = analyse(sweep)
    noise_ = noise(sweep)
    notes: list[str] = []
    down = None
    if with_downstream and top_k > 0:
        try:
            down = downstream(sweep, top_k=top_k, anomaly_class=anomaly_class)
        except UserError as e:
            notes.append(f"downstream skipped: {e}")
        if down is not None:
            notes.extend(down.notes)
    out = sweep.dir / REPORT_DIR
    try:
        out.mkdir(exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {str(out)!r}: {e.strerror or e}") from None

    made: dict[str, str] = {}
    for name, draw in (
        ("hyperparameters.png", lambda: figures.hyperparameters(sweep, analysis)),
        ("importance.png", lambda: figures.importance(sweep, analysis)),
        ("interactions.png", lambda: figures.interactions(sweep, analysis)),
        ("curves.png", lambda: figures.curves(sweep)),
        ("rungs.png", lambda: figures.rungs(sweep)),
        ("noise.png", lambda: figures.noise(sweep, noise_)),
        ("downstream.png", lambda: figures.downstream(sweep, down)),
    ):
        drawn = draw()
        if drawn is None:
            with_stale = out / name
            if with_stale.exists():
                with_stale.unlink()
            continue
        png, caption = drawn
        atomic_write_bytes(out / name, png)
        made[name] = caption
    summary = text_summary(sweep, analysis, noise_, down, out / "index.html", notes)
    page = index_html(sweep, analysis, noise_, down, made, notes)
    atomic_write_bytes(out / "index.html", page.encode())
    return Report(out, out / "index.html", made, analysis, noise_, down, summary)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _config_text(sweep: Sweep, params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt(params[k])}" for k in sweep.space if k in params)


def _status_text(sweep: Sweep) -> str:
    return ", ".join(f"{n} {s}" for s, n in sorted(sweep.status_counts().items()))


def text_summary(sweep: Sweep, analysis: Analysis | None, noise_: Noise | None,
                 down: Downstream | None, index: Path, notes: Sequence[str] = ()) -> str:
    """The terminal summary: best configuration, importances, downstream scores, where to look."""
    lines = [f"sweep {sweep.dir}: {sweep.title} ({_status_text(sweep)})"]
    best = ranked(sweep)
    if best:
        b = best[0]
        lines.append(f"best: trial {b['trial_id']}, val_loss {b['val_loss']:.5g} after "
                     f"{b['steps']} steps ({b['status']})")
        lines.append(f"  {_config_text(sweep, b['params']) or '(nothing varies)'}")
    else:
        lines.append("best: no trial has a finite validation loss")
    if analysis is not None:
        imp, fit = analysis.importance, analysis.fit
        lines.append(f"importance (fANOVA of {'log ' if fit.logged else ''}val_loss, "
                     f"{len(fit.trial_ids)} trials at {fit.budget} steps, surrogate OOB R^2 "
                     f"{analysis.r2:.2f}):")
        width = max(len(n) for n in imp.names)
        for i in analysis.order():
            lines.append(f"  {imp.names[i]:<{width}}  {100 * imp.main[i]:5.1f}%  "
                         f"(+/- {100 * imp.main_std[i]:.1f})")
        for a, b_ in sorted(imp.pairs, key=lambda p: -imp.pairs[p])[:3]:
            lines.append(f"  {a} x {b_} interaction  {100 * imp.pairs[(a, b_)]:.1f}%")
    elif sweep.space:
        lines.append("importance: too few trials with a finite loss at one budget")
    if noise_ is not None:
        lines.append(f"noise (log10 val_loss at {noise_.steps} steps): seed std "
                     f"{noise_.seed_std:.3g} vs std across configurations {noise_.config_std:.3g}")
    if down is not None:
        for i, t in enumerate(down.trial_ids):
            parts = [f"trial {t}: test loss {down.test_loss[i]:.4g}"]
            if down.auc is not None:
                parts.append(f"anomaly AUC (class {down.anomaly_class}) {down.auc[i]:.3f}")
            if down.probe_accuracy is not None:
                parts.append(f"probe accuracy {down.probe_accuracy[i]:.3f}")
            lines.append("downstream " + ", ".join(parts))
    lines.extend(f"note: {n}" for n in notes)
    lines.append(f"report: {index}")
    return "\n".join(lines)


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222;
       padding: 0 1em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 2em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #444; margin-top: 0.4em; }
.note { color: #a40; }
"""


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any, tag: str) -> str:
        cls = ' class="num"' if isinstance(v, int | float) and tag == "td" else ""
        return f"<{tag}{cls}>{html.escape(_fmt(v))}</{tag}>"

    head = "".join(cell(h, "th") for h in header)
    body = "".join("<tr>" + "".join(cell(v, "td") for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def index_html(sweep: Sweep, analysis: Analysis | None, noise_: Noise | None,
               down: Downstream | None, figures: Mapping[str, str],
               notes: Sequence[str] = ()) -> str:
    """The self-contained page (no scripts, no external resources); every string that came from
    the user's config or data is escaped."""
    e = html.escape
    c = sweep.config
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<title>jaxae report: {e(sweep.title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>Sweep report: {e(sweep.title)}</h1>",
             f"<p>{e(str(sweep.dir))}</p>"]
    parts.append("<h2>Summary</h2>")
    settings = [("model", c.model), ("searcher", c.searcher), ("data", c.data),
                ("trials", f"{len(sweep.trials)} ({_status_text(sweep)})"),
                ("steps (max budget)", c.steps), ("population", c.population),
                ("replicates per configuration", c.repeats), ("seed", c.seed),
                ("varying hyperparameters", ", ".join(sweep.space) or "none")]
    parts.append(_table(["setting", "value"], settings))
    best = ranked(sweep)
    if best:
        b = best[0]
        parts.append(f"<h3>Best configuration: trial {b['trial_id']}, val_loss "
                     f"{b['val_loss']:.5g} after {b['steps']} steps ({e(b['status'])})</h3>")
        rows = [(k, b["params"][k]) for k in sweep.space]
        rows += [(k, v) for k, v in sorted(b["params"].items()) if k not in sweep.space]
        parts.append(_table(["hyperparameter", "value"], rows))
        top = best[:5]
        parts.append("<h3>Top trials</h3>")
        parts.append(_table(["trial", "status", "steps", "val_loss", *sweep.space],
                            [(t["trial_id"], t["status"], t["steps"], t["val_loss"],
                              *[t["params"].get(k) for k in sweep.space]) for t in top]))
    if analysis is not None:
        imp, fit = analysis.importance, analysis.fit
        parts.append(f"<h3>Importance (fANOVA on a random forest of "
                     f"{'log ' if fit.logged else ''}val_loss; {len(fit.trial_ids)} trials at "
                     f"{fit.budget} steps; surrogate out-of-bag R² {analysis.r2:.2f})</h3>")
        rows = [(imp.names[i], f"{100 * imp.main[i]:.1f}%", f"{100 * imp.main_std[i]:.1f}")
                for i in analysis.order()]
        for p in sorted(imp.pairs, key=lambda p: -imp.pairs[p])[:3]:
            rows.append((f"{p[0]} × {p[1]} (interaction)", f"{100 * imp.pairs[p]:.1f}%", ""))
        explained = imp.main.sum() + sum(imp.pairs.values())
        rows.append(("all main effects + pairs", f"{100 * explained:.1f}%", ""))
        parts.append(_table(["hyperparameter", "variance explained", "std over trees (pp)"],
                            rows))
    if noise_ is not None:
        parts.append(_table(["noise (log10 val_loss)", "std"], [
            (f"across seeds, within a configuration ({noise_.losses.shape[1]} seeds)",
             noise_.seed_std),
            (f"across {len(noise_.trial_ids)} configurations (their means)", noise_.config_std)]))
    if down is not None:
        header = ["trial", "steps", "stored val_loss", "retrained val_loss", "test loss"]
        if down.auc is not None:
            header.append(f"anomaly ROC AUC (class {down.anomaly_class} held out)")
        if down.probe_accuracy is not None:
            header.append(f"linear-probe accuracy ({down.num_classes} classes)")
        rows = []
        for i, t in enumerate(down.trial_ids):
            row = [t, down.steps[i], float(down.stored_val_loss[i]), float(down.val_loss[i]),
                   float(down.test_loss[i])]
            if down.auc is not None:
                row.append(float(down.auc[i]))
            if down.probe_accuracy is not None:
                row.append(float(down.probe_accuracy[i]))
            rows.append(row)
        parts.append("<h3>Downstream quality of the top configurations (retrained)</h3>")
        parts.append(_table(header, rows))
    parts.extend(f'<p class="note">{e(n)}</p>' for n in notes)
    parts.append("<h2>Figures</h2>")
    for name, caption in figures.items():
        parts.append(f'<figure><img src="{e(name)}" alt="{e(caption)}">'
                     f"<figcaption>{e(caption)}</figcaption></figure>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


# -- command line ---------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jaxae.report",
        description="Write DIR/report/ (PNG figures and index.html) for the sweep in DIR and "
        "print a summary: best configuration, hyperparameter importances, downstream quality.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("dir", metavar="DIR", help="a sweep's output directory (--out of the sweep)")
    p.add_argument("--top-k", type=int, default=3, metavar="K",
                   help="configurations to retrain for the downstream scores")
    p.add_argument("--anomaly-class", type=int, default=0, metavar="C",
                   help="the label held out as the anomaly in anomaly detection")
    p.add_argument("--no-downstream", action="store_true",
                   help="skip retraining the top configurations (anomaly AUC, linear probe)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.top_k < 0:
            raise UserError(f"--top-k {args.top_k} must be >= 0")
        from jaxae import runtime

        runtime.enable_compilation_cache()
        report = build(args.dir, top_k=args.top_k, anomaly_class=args.anomaly_class,
                       with_downstream=not args.no_downstream)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.summary)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
