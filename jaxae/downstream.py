"""Downstream quality of autoencoder codes: anomaly-detection ROC AUC and linear-probe accuracy.

Both are pure JAX with static shapes and no Python branching on values, so a population's codes
can be scored in one call with ``jax.vmap`` over the slot axis, e.g.::

    probe = jax.vmap(
        functools.partial(linear_probe_accuracy, num_classes=10), in_axes=(0, None, 0, None)
    )
    accuracy = probe(train_codes, train_y, test_codes, test_y)  # [slots]
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax


@jax.jit
def roc_auc(scores: jax.Array, labels: jax.Array) -> jax.Array:
    """Area under the ROC curve, by the Mann-Whitney U statistic with ties counted as one half.

    Equals ``sklearn.metrics.roc_auc_score(labels, scores)``. Each positive's share is computed
    separately and averaged, rather than summing ranks, so no intermediate exceeds n and float32
    keeps about 1e-7 precision at any n.

    Args:
        scores: [n] anomaly scores, higher meaning more anomalous; must not be NaN.
        labels: [n] bool or int, nonzero marking an anomaly (a positive).

    Returns:
        Scalar AUC in [0, 1]; NaN when all labels are equal (the AUC is undefined there, and
        sklearn raises).
    """
    positive = jnp.asarray(labels) != 0
    order = jnp.argsort(scores)
    sorted_scores = scores[order]
    # negatives_before[i] = number of negatives among the i smallest scores.
    negatives_before = jnp.concatenate(
        [jnp.zeros(1, jnp.int32), jnp.cumsum(~positive[order], dtype=jnp.int32)]
    )
    # A tie group occupies [first, end) in sorted order, whatever order argsort left it in.
    first = jnp.searchsorted(sorted_scores, scores, side="left")
    end = jnp.searchsorted(sorted_scores, scores, side="right")
    below = negatives_before[first]
    tied = negatives_before[end] - below

    n_pos = jnp.sum(positive)
    n_neg = positive.shape[0] - n_pos
    dtype = jnp.result_type(float)
    share = (below + 0.5 * tied).astype(dtype) / jnp.maximum(n_neg, 1)  # [n], per positive
    auc = jnp.sum(jnp.where(positive, share, 0.0)) / jnp.maximum(n_pos, 1)
    return jnp.where((n_pos > 0) & (n_neg > 0), auc, jnp.nan)


@functools.partial(jax.jit, static_argnames=("num_classes", "steps"))
def linear_probe_accuracy(
    train_codes: jax.Array,
    train_y: jax.Array,
    test_codes: jax.Array,
    test_y: jax.Array,
    *,
    num_classes: int,
    l2: float = 1e-3,
    steps: int = 200,
) -> jax.Array:
    """Test accuracy of multinomial logistic regression fitted on standardised codes.

    Minimises ``mean cross-entropy + l2 / 2 * ||W||^2`` (the bias is not penalised) by ``steps``
    iterations of L-BFGS. That is scikit-learn's ``LogisticRegression`` objective with
    ``C = 1 / (l2 * n_train)``, since sklearn weights the summed loss by C against ``||W||^2 / 2``.
    Codes are standardised with the training mean and standard deviation; a dimension that is
    constant on the training set (a dead unit) is only centred.

    Args:
        train_codes: [n_train, latent_dim] codes to fit on.
        train_y: [n_train] int class labels in [0, num_classes).
        test_codes: [n_test, latent_dim] codes to score.
        test_y: [n_test] int class labels.
        num_classes: number of classes (static).
        l2: L2 weight on the coefficients; may be traced (and vmapped).
        steps: L-BFGS iterations (static); the problem is strictly convex, so a fixed count that
            reaches the optimum makes the result independent of where it stopped.

    Returns:
        Scalar accuracy in [0, 1]; NaN when any code is non-finite (a diverged member), so that
        a broken encoder never reads as a plausible score.
    """
    dtype = jnp.result_type(float)
    train_codes = train_codes.astype(dtype)
    test_codes = test_codes.astype(dtype)
    mean = jnp.mean(train_codes, axis=0)
    std = jnp.std(train_codes, axis=0)
    std = jnp.where(std > 1e-6 * (1.0 + jnp.abs(mean)), std, 1.0)
    x_train = (train_codes - mean) / std
    x_test = (test_codes - mean) / std
    finite = jnp.all(jnp.isfinite(train_codes)) & jnp.all(jnp.isfinite(test_codes))
    # Zero diverged codes out so the fit stays finite; the NaN result is restored at the end.
    x_train = jnp.where(finite, x_train, 0.0)
    x_test = jnp.where(finite, x_test, 0.0)
    onehot = jax.nn.one_hot(train_y, num_classes, dtype=dtype)

    def objective(params: tuple[jax.Array, jax.Array]) -> jax.Array:
        w, b = params
        logits = x_train @ w + b
        nll = -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(logits), axis=-1))
        return nll + 0.5 * l2 * jnp.sum(w**2)

    latent_dim = train_codes.shape[-1]
    params = (jnp.zeros((latent_dim, num_classes), dtype), jnp.zeros(num_classes, dtype))
    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)

    def step(carry, _):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, new_state = solver.update(
            grad, state, params, value=value, grad=grad, value_fn=objective
        )
        new_params = optax.apply_updates(params, updates)
        # There is no convergence test, so surplus steps run on a flat objective where a
        # degenerate curvature pair could yield a non-finite step; never accept one.
        ok = jnp.all(jnp.array([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(new_params)]))
        params = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_params, params)
        state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, state)
        return (params, state), None

    (params, _), _ = jax.lax.scan(step, (params, solver.init(params)), length=steps)
    w, b = params
    predicted = jnp.argmax(x_test @ w + b, axis=-1)
    accuracy = jnp.mean((predicted == test_y).astype(dtype))
    return jnp.where(finite, accuracy, jnp.nan)
