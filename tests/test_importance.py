"""fANOVA importances: known synthetic answers, and one tree against a brute-force grid."""

import numpy as np
import pytest
from sklearn.tree import DecisionTreeRegressor

from jaxae.importance import Importance, fanova, tree_variance

NAMES = ("x1", "x2", "x3")


def test_linear_function_recovers_analytic_fractions() -> None:
    # Var(10 x1) = 100/12 and Var(x2) = 1/12, so x1 explains 100/101 and x2 1/101.
    rng = np.random.default_rng(0)
    X = rng.uniform(size=(400, 3))
    result = fanova(X, 10 * X[:, 0] + X[:, 1], NAMES, n_trees=32)
    assert isinstance(result, Importance)
    assert result.names == NAMES
    assert result.main.shape == result.main_std.shape == (3,)
    assert result.main[0] > result.main[1] > result.main[2]
    assert result.main[0] == pytest.approx(100 / 101, abs=0.01)
    # Trees split mostly on x1, so a finite forest sees some of x2's share as x1-x2 interaction.
    assert 0.002 < result.main[1] < 0.02
    assert result.main[2] < 1e-3
    assert set(result.pairs) == {("x1", "x2"), ("x1", "x3"), ("x2", "x3")}
    assert all(0.0 <= v < 0.01 for v in result.pairs.values())
    assert result.main.sum() + sum(result.pairs.values()) <= 1.0 + 1e-9


def test_pure_interaction_goes_to_the_pair() -> None:
    rng = np.random.default_rng(1)
    X = rng.uniform(size=(300, 3))
    result = fanova(X, (X[:, 0] - 0.5) * (X[:, 1] - 0.5), NAMES, n_trees=32)
    assert result.pairs[("x1", "x2")] > 0.6
    assert result.main.max() < 0.2
    assert result.pairs[("x1", "x3")] < 0.1 and result.pairs[("x2", "x3")] < 0.1


def test_one_tree_matches_brute_force_grid() -> None:
    # Inputs on multiples of 1/16 put every threshold at an odd multiple of 1/32, so the tree is
    # constant on each cell of a 64-point midpoint grid and averaging the grid is exact.
    rng = np.random.default_rng(2)
    X = rng.integers(0, 17, size=(120, 3)) / 16
    y = np.sin(6 * X[:, 0]) + X[:, 1] * X[:, 2] + 0.3 * X[:, 2] ** 2 + 0.1 * rng.normal(size=120)
    tree = DecisionTreeRegressor(max_depth=8, random_state=0).fit(X, y)
    exact = tree_variance(tree.tree_, 3)

    g = (np.arange(64) + 0.5) / 64
    grid = np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1).reshape(-1, 3)
    f = tree.predict(grid).reshape(64, 64, 64)
    f = f - f.mean()
    main = [np.mean(f.mean(axis=tuple(a for a in range(3) if a != j)) ** 2) for j in range(3)]
    np.testing.assert_allclose(exact.total, np.mean(f**2), rtol=1e-9)
    np.testing.assert_allclose(exact.main, main, rtol=1e-9, atol=1e-12)
    for j, k in [(0, 1), (0, 2), (1, 2)]:
        other = 3 - j - k
        pair = np.mean(f.mean(axis=other) ** 2) - main[j] - main[k]
        np.testing.assert_allclose(exact.pair[j, k], pair, rtol=1e-9, atol=1e-12)
        assert exact.pair[k, j] == exact.pair[j, k]
    assert exact.pair[1, 2] > 0.0  # the x2 * x3 term shows up


def test_constant_target_skips_every_tree() -> None:
    X = np.random.default_rng(3).uniform(size=(20, 2))
    result = fanova(X, np.ones(20), ("a", "b"), n_trees=4, pairs=False)
    np.testing.assert_array_equal(result.main, [0.0, 0.0])
    assert result.pairs == {}


def test_seeded_and_deterministic() -> None:
    rng = np.random.default_rng(4)
    X = rng.uniform(size=(50, 3))
    y = X[:, 0] + X[:, 1] ** 2
    a, b = fanova(X, y, NAMES, n_trees=8, seed=5), fanova(X, y, NAMES, n_trees=8, seed=5)
    np.testing.assert_array_equal(a.main, b.main)
    assert a.pairs == b.pairs


@pytest.mark.parametrize(
    ("X", "y", "names"),
    [
        (np.zeros((5, 2)), np.zeros(4), ("a", "b")),  # length mismatch
        (np.zeros((5, 2)), np.zeros(5), ("a",)),  # too few names
        (np.full((5, 2), 2.0), np.zeros(5), ("a", "b")),  # outside the cube
        (np.zeros((5, 2)), np.array([0, 1, np.nan, 0, 1]), ("a", "b")),  # failed trial left in
        (np.zeros((1, 2)), np.zeros(1), ("a", "b")),  # one point
    ],
)
def test_bad_input_is_refused(X: np.ndarray, y: np.ndarray, names: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        fanova(X, y, names)
