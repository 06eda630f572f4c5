"""Optimizer families whose numeric settings are per-slot arrays, as fused per-parameter updates.

Every family reads the same four hyperparameters, so one population state layout serves all:
``learning_rate``, ``weight_decay``, ``b1`` (Adam's beta1, or momentum) and ``b2`` (Adam's beta2,
or RMSProp's decay). Gradient clipping (``grad_clip``) happens before the optimizer, in the
population's training step, which shares the global norm with its divergence check.

The rules are optax's, written out (``tests/test_optimizers.py`` checks each one against the optax
chain it mirrors), for one reason: a slot that must not train at a step (paused,
finished, or its gradient not finite) keeps its state, and that choice has to be fused into the
update itself. Selecting between the optax chain's output and the old state (``jnp.where``) makes
XLA copy every parameter and moment buffer of the scan's carry at every step (24 copies per step
for a one-layer Adam model, bench/RESULTS.md); blending with a 0/1 factor inside the same
elementwise expression does not, and it is exact both ways: ``1 * new + 0 * old == new`` and
``0 * new + 1 * old == old`` whenever both are finite, which the caller guarantees by zeroing the
gradient of a slot that does not train.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxae.hparams import OptHParams

EPS = 1e-8  # optax's default for Adam (outside the square root) and RMSProp (inside)

# Whether the new moments are stored behind an ``optimization_barrier`` before the parameters read
# them, by backend. On a CPU the barrier removed every per-step copy of the scan carry (24 for a
# one-layer Adam model; see ``update``). On a GPU it splits the update into two kernels, one more
# pass over the moments, where multi-output fusion writes parameters and moments in one
# (bench/RESULTS.md, "GPU trainer"). ``JAXAE_SETTLE_MOMENTS=on|off`` overrides, for benchmarks.
SETTLE_MOMENTS = {"cpu": True}


def settles_moments() -> bool:
    """Whether ``update`` puts the barrier in, on the default backend (read at trace time)."""
    setting = os.environ.get("JAXAE_SETTLE_MOMENTS", "auto").strip().lower()
    if setting in ("on", "1", "true"):
        return True
    if setting in ("off", "0", "false"):
        return False
    return SETTLE_MOMENTS.get(jax.default_backend(), False)


# Which moment trees each family keeps: mu (first moment / momentum), nu (second moment).
_MOMENTS = {"adam": ("mu", "nu"), "adamw": ("mu", "nu"), "sgd": ("mu",), "rmsprop": ("mu", "nu")}


class OptState(NamedTuple):
    """One slot's optimizer state. ``count`` counts the updates applied (Adam's bias correction);
    a family without a moment keeps ``None`` there (an empty subtree)."""

    count: jax.Array  # int32 scalar
    mu: Any
    nu: Any


def init(family: str, params: Any) -> OptState:
    """Zero moments for ``params``, as optax initialises them."""
    moments = _check(family)
    zeros = lambda: jax.tree.map(jnp.zeros_like, params)  # noqa: E731
    return OptState(
        count=jnp.zeros([], jnp.int32),
        mu=zeros() if "mu" in moments else None,
        nu=zeros() if "nu" in moments else None,
    )


def update(
    family: str, grads: Any, state: OptState, params: Any, hp: OptHParams, train: jax.Array,
    *, settle_moments: bool | None = None,
) -> tuple[Any, OptState]:
    """New ``(params, state)`` after one step, or the old ones where ``train`` is false.

    Args:
        family: one of ``hparams.OPTIMIZERS``.
        grads: the (clipped) gradient; it must be finite where ``train`` is false (zero it).
        state: the slot's ``OptState``.
        params: the slot's parameters.
        hp: the slot's optimizer settings (scalars; ``grad_clip`` is not read: the caller
            clips), with the scheduled learning rate of this step.
        train: bool scalar.
        settle_moments: store the new moments behind a barrier before the parameters read them
            (default: ``settles_moments()``, by backend). The results are the same either way.
    """
    _check(family)
    if settle_moments is None:
        settle_moments = settles_moments()
    lr, wd, b1, b2 = hp.learning_rate, hp.weight_decay, hp.b1, hp.b2
    on = train.astype(jnp.float32)
    keep = lambda new, old: on * new + (1.0 - on) * old  # noqa: E731
    count = state.count + 1  # the update's count, as optax's (used only when the update is kept)
    # The new moments are computed once and stored before the parameters read them: left to
    # itself XLA recomputes them inside the parameters' update, which then reads the old moments
    # after they were overwritten in place, and it copies every buffer to allow that.
    if settle_moments:
        settle = lambda *moments: jax.lax.optimization_barrier(moments)  # noqa: E731
    else:
        settle = lambda *moments: moments  # noqa: E731

    def adam(p, g, mu, nu):
        if family == "adam":  # L2 regularisation: the decay joins the gradient
            g = g + wd * p
        mu, nu = settle(keep((1 - b1) * g + b1 * mu, mu), keep((1 - b2) * (g * g) + b2 * nu, nu))
        u = (mu / (1 - b1**count)) / (jnp.sqrt(nu / (1 - b2**count)) + EPS)
        if family == "adamw":  # decoupled decay (Loshchilov & Hutter 2019)
            u = u + wd * p
        return p + on * (u * -lr), mu, nu

    def sgd(p, g, mu):  # heavy-ball momentum b1
        (mu,) = settle(keep((g + wd * p) + b1 * mu, mu))
        return p + on * (mu * -lr), mu

    def rmsprop(p, g, mu, nu):  # running second moment with decay b2, then momentum b1
        g = g + wd * p
        (nu,) = settle(keep((1 - b2) * (g * g) + b2 * nu, nu))
        (mu,) = settle(keep(jax.lax.rsqrt(nu + EPS) * g + b1 * mu, mu))
        return p + on * (mu * -lr), mu, nu

    rule = {"adam": adam, "adamw": adam, "sgd": sgd, "rmsprop": rmsprop}[family]
    trees = [params, grads] + [getattr(state, name) for name in _MOMENTS[family]]
    out = jax.tree.map(rule, *trees)
    structure = jax.tree.structure(params)
    parts = jax.tree.transpose(structure, jax.tree.structure((0,) * (len(trees) - 1)), out)
    new = dict(zip(("params",) + _MOMENTS[family], parts, strict=True))
    return new["params"], OptState(
        count=jnp.where(train, count, state.count), mu=new.get("mu"), nu=new.get("nu")
    )


def _check(family: str) -> tuple[str, ...]:
    if family not in _MOMENTS:
        raise ValueError(f"unknown optimizer {family!r}")
    return _MOMENTS[family]
