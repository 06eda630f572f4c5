"""Hyperparameter importance by functional ANOVA over a random forest.

Follows Hutter, Hoos & Leyton-Brown (2014), "An Efficient Approach for Assessing Hyperparameter
Importance" (ICML), as Optuna's ``FanovaImportanceEvaluator`` does: fit a random forest to
(configuration, loss) pairs, decompose the variance of every tree's prediction over the unit cube
exactly, and average the per-tree fractions.

A regression tree is constant on each leaf, and each leaf is an axis-aligned box. The split points
of one dimension cut [0, 1] into intervals, and every leaf's extent along that dimension is a union
of those intervals. The marginal prediction over a subset S of dimensions (averaging out the others
under the uniform measure) is therefore constant on the grid of S's intervals, and at a grid cell it
is the volume-weighted mean of the leaves whose S-projection contains the cell:

    f_S(cell) = sum_l v_l * vol(l) / vol_S(l) * [cell in l's S-box]

where ``vol_S(l)`` is the product of the leaf's widths along S. Variances of these step functions
are finite sums, so the decomposition is exact (no sampling, no grid resolution error).

Categorical hyperparameters arrive as ordinal codes scaled into [0, 1] and the trees split them
like any number. Under the uniform measure a category then weighs as much as the width of the
cell the thresholds leave it, and because sklearn puts thresholds midway between neighbouring
observed values, encoding category k of K as ``(k + 0.5) / K`` gives every category the same
weight 1 / K when every category was observed (``k / (K - 1)`` would give the two end categories
half the weight of the others). Splitting ordinally restricts only which partitions a tree can
find, not the decomposition.
"""

from __future__ import annotations

import dataclasses
import itertools
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from sklearn.ensemble import RandomForestRegressor

if TYPE_CHECKING:  # a private sklearn module: name it for the type checker only
    from sklearn.tree._tree import Tree

_LEAF = -1  # sklearn's marker for "no child"


@dataclasses.dataclass(frozen=True)
class Importance:
    """Variance fractions of a fitted surrogate, averaged over the forest's trees.

    Attributes:
        names: the d dimension names, in the column order of ``X``.
        main: [d] fraction of the prediction's variance explained by each dimension alone.
        main_std: [d] standard deviation of those fractions over the trees.
        pairs: fraction explained by each pair's interaction beyond the two main effects, keyed by
            ``(names[i], names[j])`` with i < j; empty when pairs were not asked for.
    """

    names: tuple[str, ...]
    main: np.ndarray
    main_std: np.ndarray
    pairs: dict[tuple[str, str], float]


@dataclasses.dataclass(frozen=True)
class TreeVariance:
    """The exact functional ANOVA of one tree under the uniform measure on [0, 1]^d.

    Attributes:
        total: scalar variance of the tree's prediction.
        main: [d] variance of each single-dimension marginal.
        pair: [d, d] variance of each pair's pure interaction (symmetric, zero diagonal); all zeros
            when pairs were not asked for.
    """

    total: float
    main: np.ndarray
    pair: np.ndarray


def fit_forest(X: np.ndarray, y: np.ndarray, *, n_trees: int = 64, seed: int = 0,
               oob_score: bool = False) -> RandomForestRegressor:
    """The surrogate ``fanova`` decomposes, for callers that also want its predictions.

    Same settings as Optuna's fANOVA: fully grown trees on bootstrap samples, so the surrogate
    interpolates the observations and the forest averages out the partition noise. ``oob_score``
    only adds the out-of-bag predictions; the trees are the same.
    """
    forest = RandomForestRegressor(n_estimators=n_trees, max_depth=64, min_samples_split=2,
                                   min_samples_leaf=1, random_state=seed, oob_score=oob_score)
    with warnings.catch_warnings():
        # Tiny fits leave some point in every bootstrap; callers skip those OOB predictions.
        warnings.simplefilter("ignore", UserWarning)
        forest.fit(X, y)
    return forest


def fanova(
    X: np.ndarray,
    y: np.ndarray,
    names: Sequence[str],
    *,
    n_trees: int = 64,
    seed: int = 0,
    pairs: bool = True,
) -> Importance:
    """Fits a random forest to (X, y) and returns the fANOVA importance of each dimension.

    Args:
        X: [n, d] configurations mapped into the unit cube.
        y: [n] finite targets (the caller passes log losses or ranks and drops failed trials).
        names: d names for the columns of ``X``.
        n_trees: trees in the forest.
        seed: seeds the forest's bootstrap and feature sampling.
        pairs: also compute pairwise interaction fractions (d (d - 1) / 2 of them).

    Returns:
        The fractions averaged over the trees whose prediction varies. When no tree varies (e.g.
        constant ``y``) nothing explains anything and every fraction is zero.

    Raises:
        ValueError: on wrong shapes, non-finite values, points outside the unit cube, or fewer than
            two points.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    names = tuple(str(name) for name in names)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"fanova wants X [n, d] and y [n], got {X.shape} and {y.shape}")
    n, d = X.shape
    if len(names) != d:
        raise ValueError(f"fanova got {len(names)} names for {d} columns")
    if n < 2:
        raise ValueError(f"fanova needs at least 2 points, got {n}")
    if not (np.isfinite(X).all() and np.isfinite(y).all()):
        raise ValueError("fanova needs finite X and y; drop failed trials first")
    if X.min() < 0.0 or X.max() > 1.0:
        raise ValueError("fanova wants X inside the unit cube [0, 1]^d")

    forest = fit_forest(X, y, n_trees=n_trees, seed=seed)

    main_fracs, pair_fracs = [], []
    for estimator in forest.estimators_:
        var = tree_variance(estimator.tree_, d, pairs=pairs)
        if not var.total > 0.0:
            continue  # a constant tree has no variance to share out
        main_fracs.append(var.main / var.total)
        pair_fracs.append(var.pair / var.total)

    if not main_fracs:
        main, main_std, pair = np.zeros(d), np.zeros(d), np.zeros((d, d))
    else:
        main = np.mean(main_fracs, axis=0)
        main_std = np.std(main_fracs, axis=0)
        pair = np.mean(pair_fracs, axis=0)
    pair_dict = (
        {(names[i], names[j]): float(pair[i, j]) for i, j in itertools.combinations(range(d), 2)}
        if pairs
        else {}
    )
    return Importance(names=names, main=main, main_std=main_std, pairs=pair_dict)


def tree_variance(tree: Tree, d: int, *, pairs: bool = True) -> TreeVariance:
    """Decomposes one fitted regression tree's variance exactly over the unit cube.

    Args:
        tree: the low-level ``tree_`` of a fitted ``DecisionTreeRegressor`` (single output).
        d: number of input dimensions.
        pairs: also compute the pairwise interaction variances.

    Returns:
        The total, main-effect and pairwise-interaction variances.
    """
    lower, upper, value = _leaf_boxes(tree, d)
    width = upper - lower  # [leaves, d]
    vol = np.prod(width, axis=1)
    # Leaves whose box lies outside the cube (a threshold beyond the data) carry no measure.
    keep = vol > 0.0
    lower, upper, value, width, vol = lower[keep], upper[keep], value[keep], width[keep], vol[keep]

    mean = float(np.sum(vol * value))
    total = float(np.sum(vol * (value - mean) ** 2))
    centred = value - mean  # centring first keeps the differences of large numbers out of the sums

    # Per dimension: the intervals between its split points. A leaf's extent is a run of them,
    # [start, stop), because its bounds are split points themselves.
    cell, start, stop = [], [], []
    for j in range(d):
        points = np.unique(np.concatenate([lower[:, j], upper[:, j], [0.0, 1.0]]))
        cell.append(np.diff(points))  # [I_j]
        start.append(np.searchsorted(points, lower[:, j]))  # [leaves]
        stop.append(np.searchsorted(points, upper[:, j]))

    main = np.zeros(d)
    for j in range(d):
        # The leaves over an interval tile the slab above it; vol / width is each one's share.
        f_j = _paint(centred * vol / width[:, j], [start[j]], [stop[j]], (len(cell[j]),))
        main[j] = np.sum(cell[j] * f_j**2)

    pair = np.zeros((d, d))
    if pairs:
        for j, k in itertools.combinations(range(d), 2):
            if len(cell[j]) == 1 or len(cell[k]) == 1:
                continue  # a dimension the tree never splits cannot interact
            weight = centred * vol / (width[:, j] * width[:, k])
            shape = (len(cell[j]), len(cell[k]))
            f_jk = _paint(weight, [start[j], start[k]], [stop[j], stop[k]], shape)
            var_jk = np.sum(np.outer(cell[j], cell[k]) * f_jk**2)
            # The fANOVA components are orthogonal, so Var(f_jk) = V_j + V_k + V_jk.
            pair[j, k] = pair[k, j] = max(var_jk - main[j] - main[k], 0.0)
    return TreeVariance(total=total, main=main, pair=pair)


def _paint(
    weight: np.ndarray, start: list[np.ndarray], stop: list[np.ndarray], shape: tuple[int, ...]
) -> np.ndarray:
    """Sums ``weight[l]`` over the grid cells inside each leaf's index box, for 1 or 2 axes.

    Leaf boxes are contiguous index ranges, so a difference array (a signed weight at each box
    corner, then a cumulative sum per axis) does it in O(leaves + cells) rather than
    O(leaves * cells).

    Args:
        weight: [leaves] value to add over each leaf's box.
        start: per axis, [leaves] first cell index of each box.
        stop: per axis, [leaves] one past the last cell index.
        shape: the grid's shape, one entry per axis.

    Returns:
        The painted grid, of ``shape``.
    """
    padded = tuple(size + 1 for size in shape)
    total = np.zeros(int(np.prod(padded)))
    for corner in itertools.product((0, 1), repeat=len(shape)):
        index = [stop[a] if c else start[a] for a, c in enumerate(corner)]
        sign = (-1) ** sum(corner)
        total += np.bincount(
            np.ravel_multi_index(index, padded), weights=sign * weight, minlength=total.size
        )
    grid = total.reshape(padded)
    for axis in range(len(shape)):
        grid = np.cumsum(grid, axis=axis)
    return grid[tuple(slice(size) for size in shape)]


def _leaf_boxes(tree: Tree, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Walks the tree from the root and returns each leaf's box clipped to the unit cube.

    Returns:
        lower [leaves, d], upper [leaves, d] and the leaf predictions [leaves].
    """
    left, right = tree.children_left, tree.children_right
    feature, threshold = tree.feature, tree.threshold
    value = tree.value.reshape(tree.node_count, -1)
    if value.shape[1] != 1:
        raise ValueError("fanova decomposes single-output regression trees only")

    lowers, uppers, values = [], [], []
    stack = [(0, np.zeros(d), np.ones(d))]
    while stack:
        node, lo, hi = stack.pop()
        if left[node] == _LEAF:
            lowers.append(lo)
            uppers.append(hi)
            values.append(value[node, 0])
            continue
        j, t = feature[node], threshold[node]
        # sklearn sends x_j <= t left; the boundary has measure zero, so open vs closed is moot.
        lo_right, hi_left = lo.copy(), hi.copy()
        hi_left[j] = np.clip(t, lo[j], hi[j])
        lo_right[j] = np.clip(t, lo[j], hi[j])
        stack.append((left[node], lo, hi_left))
        stack.append((right[node], lo_right, hi))
    return np.array(lowers), np.array(uppers), np.array(values)
