"""What a sweep says about its hyperparameters: fANOVA importances, pair surfaces, seed noise.

* functional ANOVA importances (Hutter et al. 2014) on a random-forest surrogate of the log loss,
  with its out-of-bag R^2 and a cross-check on a synthetic objective of known importances at the
  same configurations;
* the surrogate's prediction over a pair of hyperparameters (the heat maps);
* seed noise against the spread across configurations when the sweep has replicates.

Numpy and scikit-learn only: nothing here imports JAX.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.ensemble import RandomForestRegressor

from jaxae import importance
from jaxae.importance import Importance, fanova
from jaxae.results import Sweep
from searchers import Choice, space_to_unit
from searchers.space import Dimension, Space

# A surrogate fitted on fewer points than this (or than twice the dimensions) mostly reads noise;
# multi-fidelity sweeps use the largest budget that still has this many finite losses.
MIN_FIT_TRIALS = 16  # fewer and the surrogate describes noise (out-of-bag R^2 near 0)
N_TREES = 64  # forest size for fANOVA and the heat-map surrogate (as Optuna's evaluator)


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
    by_budget = losses_by_budget(sweep)
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


def losses_by_budget(sweep: Sweep) -> dict[int, list[tuple[int, float]]]:
    """budget -> ``[(trial, finite loss)]`` measured there: what the schedulers were told, or
    (a store without rungs) each trial's final loss at the steps it trained."""
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

    def other_budgets(self) -> list[int]:
        """The budgets besides ``fit.budget`` with importances, ascending."""
        return sorted(b for b in self.by_budget if b != self.fit.budget)

    def shares_text(self, name: str) -> str:
        """``name``'s main effect at every budget with importances, e.g. ``92% at 7 steps, 2% at
        66 steps``: what a figure may say about it without contradicting the tables."""
        i = list(self.importance.names).index(name)
        budgets = sorted({self.fit.budget, *self.by_budget})
        shares = {b: self.by_budget[b][1][i] for b in self.by_budget}
        shares[self.fit.budget] = self.importance.main[i]
        return ", ".join(f"{100 * shares[b]:.0f}% at {b} steps" for b in budgets)

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
