"""The fused optimizer rules against the optax chains they mirror, and the keep-or-train blend."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxae import hparams, optimizers
from jaxae.hparams import OptHParams, PenaltyHParams

FAMILIES = hparams.OPTIMIZERS
HP = {"learning_rate": 3e-2, "weight_decay": 0.05, "b1": 0.8, "b2": 0.95}


def opt_hp(**values):
    """The optimizer's settings as the trainer passes them (grad_clip is the trainer's, before)."""
    return OptHParams(grad_clip=jnp.float32(jnp.inf),
                      **{k: jnp.float32(v) for k, v in values.items()})


def optax_chain(family, learning_rate, weight_decay, b1, b2):
    """The optax chain that ``optimizers.update`` writes out for ``family`` (the reference)."""
    core = {
        "adam": [optax.add_decayed_weights(weight_decay), optax.scale_by_adam(b1, b2)],
        "adamw": [optax.scale_by_adam(b1, b2), optax.add_decayed_weights(weight_decay)],
        "sgd": [optax.add_decayed_weights(weight_decay), optax.trace(decay=b1)],
        "rmsprop": [optax.add_decayed_weights(weight_decay), optax.scale_by_rms(decay=b2),
                    optax.trace(decay=b1)],
    }[family]
    return optax.chain(*core, optax.scale_by_learning_rate(learning_rate))


def tree(key):
    k1, k2 = jax.random.split(key)
    return {"a": {"kernel": jax.random.normal(k1, (5, 3)), "bias": jnp.zeros(3)},
            "b": jax.random.normal(k2, (4,))}


def grads_of(params, step):
    """A gradient that changes every step and depends on the parameters."""
    return jax.tree.map(lambda p: jnp.sin(p * (step + 1.0)) + 0.1 * step, params)


@pytest.mark.parametrize("family", FAMILIES)
def test_update_matches_the_optax_chain(family):
    params = ours = tree(jax.random.PRNGKey(0))
    chain = optax_chain(family, **HP)
    ref_state = chain.init(params)
    state = optimizers.init(family, ours)
    hp = opt_hp(**HP)
    update = jax.jit(lambda g, s, p: optimizers.update(family, g, s, p, hp, jnp.bool_(True)))
    for step in range(12):
        updates, ref_state = chain.update(grads_of(params, step), ref_state, params)
        params = optax.apply_updates(params, updates)
        ours, state = update(grads_of(ours, step), state, ours)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7),
                 ours, params)
    assert int(state.count) == 12
    assert not np.allclose(ours["b"], tree(jax.random.PRNGKey(0))["b"])  # it really moved


@pytest.mark.parametrize("family", FAMILIES)
def test_a_step_that_does_not_train_leaves_everything_bit_equal(family):
    params = tree(jax.random.PRNGKey(1))
    hp = opt_hp(**HP)
    state = optimizers.init(family, params)
    for step in range(3):  # non-zero moments
        params, state = optimizers.update(family, grads_of(params, step), state, params, hp,
                                          jnp.bool_(True))
    zero = jax.tree.map(jnp.zeros_like, params)  # the caller zeroes a frozen slot's gradient
    new_params, new_state = optimizers.update(family, zero, state, params, hp, jnp.bool_(False))
    jax.tree.map(np.testing.assert_array_equal, (new_params, new_state), (params, state))


def test_unknown_family_is_refused():
    with pytest.raises(ValueError, match="unknown optimizer"):
        optimizers.init("lion", tree(jax.random.PRNGKey(0)))


@pytest.mark.parametrize("family", FAMILIES)
def test_the_moment_barrier_changes_no_number(family):
    """The barrier is a per-backend performance choice: with or without it, every step gives the
    same parameters and moments, bit for bit, training or frozen."""
    params = tree(jax.random.PRNGKey(2))
    hp = opt_hp(**HP)
    runs = []
    for settle in (True, False):
        update = jax.jit(lambda g, s, p, t, settle=settle: optimizers.update(
            family, g, s, p, hp, t, settle_moments=settle))
        p, s = params, optimizers.init(family, params)
        for step in range(6):
            train = jnp.bool_(step != 3)
            g = grads_of(p, step) if step != 3 else jax.tree.map(jnp.zeros_like, p)
            p, s = update(g, s, p, train)
        runs.append((p, s))
    jax.tree.map(np.testing.assert_array_equal, runs[0], runs[1])


def test_the_barrier_is_chosen_by_backend(monkeypatch):
    monkeypatch.delenv("JAXAE_SETTLE_MOMENTS", raising=False)
    assert optimizers.settles_moments() == (jax.default_backend() == "cpu")
    monkeypatch.setenv("JAXAE_SETTLE_MOMENTS", "off")
    assert not optimizers.settles_moments()
    monkeypatch.setenv("JAXAE_SETTLE_MOMENTS", "on")
    assert optimizers.settles_moments()


def test_the_update_sees_the_optimizers_settings_and_no_penalty():
    """The optimizer is given its own group of the per-slot structure, never beta or the other
    objective weights."""
    import inspect

    annotation = inspect.signature(optimizers.update).parameters["hp"].annotation
    assert annotation in ("OptHParams", OptHParams)
    assert not set(OptHParams._fields) & set(PenaltyHParams._fields)
    assert not {"beta", "l1", "rho", "noise", "contractive"} & set(OptHParams._fields)
    assert {hparams.HPARAMS[n].group for n in OptHParams._fields} == {"opt"}
