"""Downstream metrics checked against scikit-learn, alone and under vmap."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from jaxae.downstream import linear_probe_accuracy, roc_auc


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("n", [2, 7, 500])
def test_roc_auc_matches_sklearn(ties: bool, n: int) -> None:
    rng = np.random.default_rng(n + ties)
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]  # both classes present
    scores = rng.integers(0, 4, n) if ties else rng.normal(size=n)
    scores = scores.astype(np.float32)
    got = roc_auc(jnp.asarray(scores), jnp.asarray(labels))
    assert got.shape == ()
    np.testing.assert_allclose(float(got), roc_auc_score(labels, scores), atol=1e-6)


def test_roc_auc_bool_labels_extremes_and_undefined() -> None:
    labels = jnp.array([False, False, True, True])
    assert float(roc_auc(jnp.array([0.0, 1.0, 2.0, 3.0]), labels)) == 1.0
    assert float(roc_auc(jnp.array([3.0, 2.0, 1.0, 0.0]), labels)) == 0.0
    assert float(roc_auc(jnp.array([1.0, 1.0, 1.0, 1.0]), labels)) == 0.5
    assert float(roc_auc(jnp.array([-jnp.inf, 0.0, jnp.inf, jnp.inf]), labels)) == 1.0
    assert np.isnan(float(roc_auc(jnp.arange(4.0), jnp.ones(4, bool))))


def test_roc_auc_vmaps_over_score_vectors() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.normal(size=(5, 200)), 1).astype(np.float32)  # rounding makes ties
    got = jax.vmap(roc_auc, in_axes=(0, None))(jnp.asarray(scores), jnp.asarray(labels))
    want = [roc_auc_score(labels, s) for s in scores]
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-6)


@pytest.fixture(scope="module")
def digit_codes() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits projected to 16 random dimensions, three 'members' with different projections."""
    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    codes = np.einsum("nf,mfc->mnc", X, rng.normal(size=(3, 64, 16))).astype(np.float32)
    return codes[:, :600], y[:600], codes[:, 600:900], y[600:900]


@pytest.mark.parametrize("l2", [1e-3, 1e-2])
def test_linear_probe_matches_sklearn(digit_codes, l2: float) -> None:
    train, train_y, test, test_y = digit_codes
    got = linear_probe_accuracy(train[0], train_y, test[0], test_y, num_classes=10, l2=l2)
    # Same standardisation; sklearn weighs the summed loss by C against ||W||^2 / 2, we the mean
    # loss by 1 against l2 ||W||^2 / 2, so C = 1 / (l2 n).
    mean, std = train[0].mean(0), train[0].std(0)
    n = train.shape[1]
    reference = LogisticRegression(C=1.0 / (l2 * n), max_iter=5000, tol=1e-8)
    reference.fit((train[0] - mean) / std, train_y)
    want = reference.score((test[0] - mean) / std, test_y)
    assert want > 0.7  # the problem is learnable, so agreement means something
    assert abs(float(got) - want) <= 0.01


def test_linear_probe_vmap_equals_separate_calls(digit_codes) -> None:
    train, train_y, test, test_y = digit_codes
    probe = functools.partial(linear_probe_accuracy, num_classes=10)
    batched = jax.vmap(probe, in_axes=(0, None, 0, None))(train, train_y, test, test_y)
    separate = [probe(train[m], train_y, test[m], test_y) for m in range(3)]
    assert batched.shape == (3,)
    np.testing.assert_allclose(np.asarray(batched), np.asarray(separate), atol=1.5 / len(test_y))


def test_linear_probe_dead_units_and_diverged_member(digit_codes) -> None:
    train, train_y, test, test_y = digit_codes
    dead = np.concatenate([train[0], np.zeros((train.shape[1], 4), np.float32)], axis=1)
    dead_test = np.concatenate([test[0], np.ones((test.shape[1], 4), np.float32)], axis=1)
    accuracy = linear_probe_accuracy(dead, train_y, dead_test, test_y, num_classes=10)
    assert 0.7 < float(accuracy) <= 1.0  # constant units neither help nor break the fit

    broken = train[0].copy()
    broken[3, 2] = np.nan
    assert np.isnan(float(linear_probe_accuracy(broken, train_y, test[0], test_y, num_classes=10)))
