"""Learning-rate schedules: the per-slot formula against optax's schedule functions, step by step,
and the trainer against a hand-written optax loop with the same schedule."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxae import hparams, placement
from jaxae import population as P
from jaxae.models import ModelSpec
from jaxae.schedules import learning_rate_at


def optax_schedule(kind, lr, warmup, ratio, horizon):
    """The reference: optax's schedule of that kind, joined after optax's linear warmup."""
    decay_steps = horizon - warmup
    decay = {
        "constant": optax.constant_schedule(lr),
        "cosine": optax.cosine_decay_schedule(lr, decay_steps, alpha=ratio),
        "exponential": optax.exponential_decay(lr, decay_steps, ratio, end_value=lr * ratio),
    }[kind]
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def hp_of(horizon=1, **values):
    """One member's ``SlotHParams`` (scalar leaves), as the trainer passes them."""
    config = hparams.resolve("ae", values)
    return jax.tree.map(lambda a: jnp.asarray(a[0]), hparams.slot_hparams([config], [horizon]))


CASES = [
    ("constant", 0, 0.1, 50), ("constant", 10, 0.1, 50),
    ("cosine", 0, 0.0, 50), ("cosine", 7, 0.05, 50), ("cosine", 0, 0.3, 1),
    ("exponential", 0, 0.01, 50), ("exponential", 12, 0.2, 40), ("exponential", 0, 1.0, 30),
]


@pytest.mark.parametrize(("kind", "warmup", "ratio", "horizon"), CASES)
def test_learning_rate_matches_optax_at_every_step(kind, warmup, ratio, horizon):
    lr = 3e-3
    hp = hp_of(horizon, schedule=kind, warmup=warmup, final_lr_ratio=ratio, learning_rate=lr)
    steps = jnp.arange(horizon + 10)  # past the horizon too: the rate stays at its final value
    got = jax.jit(jax.vmap(lambda s: learning_rate_at(hp.opt.learning_rate, hp.schedule, s)))(
        steps)
    reference = optax_schedule(kind, lr, warmup, ratio, horizon)
    want = np.array([float(reference(int(s))) for s in steps])
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=1e-10)
    if kind != "constant":  # the rate at the maximum budget is final_lr_ratio of the peak
        assert float(got[horizon]) == pytest.approx(lr * ratio, rel=1e-5, abs=1e-12)


def test_kinds_differ_per_slot_in_one_program():
    configs = [hparams.resolve("ae", {"schedule": k, "final_lr_ratio": 0.1})
               for k in hparams.SCHEDULES]
    hp = jax.tree.map(jnp.asarray, hparams.slot_hparams(configs, [50] * len(configs)))
    rates = jax.vmap(lambda h: learning_rate_at(h.opt.learning_rate, h.schedule, 25))(hp)
    lr = 1e-3
    np.testing.assert_allclose(np.asarray(rates),
                               [lr, lr * (0.1 + 0.9 * 0.5), lr * 0.1**0.5], rtol=1e-5)


SPEC = P.TrainSpec(ModelSpec("ae", 64, hidden=32, latent_dim=8), "adam", 32)


def test_trainer_follows_the_schedule_like_an_optax_loop(digits):
    """Independent check: plain jax.grad + optax.adam(schedule), the trainer's data order."""
    from jaxae.models import init_params, make_masks
    from jaxae.objectives import make_objective

    values = {"hidden": 32, "latent_dim": 8, "learning_rate": 1e-2, "schedule": "cosine",
              "warmup": 4, "final_lr_ratio": 0.0}
    config = hparams.resolve("ae", values)
    keys = P.trial_keys(0, 3)
    pop = placement.assign(SPEC, placement.create(SPEC, 1), [0],
        [placement.Member(3, config, 12, keys, horizon=12)])
    _, losses = P.train_chunk(SPEC, pop, digits, 12)
    params = init_params(SPEC.model, keys["init_key"], make_masks(SPEC.model, 32, 8))
    opt = optax.adam(optax_schedule("cosine", 1e-2, 4, 0.0, 12))
    state = opt.init(params)
    objective = make_objective(SPEC.model)
    hp = hp_of(**values)
    expected = []
    for step in range(12):
        k_batch, k_noise = jax.random.split(jax.random.fold_in(keys["data_key"], step))
        idx = jax.random.randint(k_batch, (SPEC.batch_size,), 0, digits.shape[0])
        (loss, _), grads = jax.value_and_grad(objective, has_aux=True)(
            params, digits[idx], k_noise, hp.model, hp.penalty)
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        expected.append(float(loss))
    np.testing.assert_allclose(np.asarray(losses)[0], expected, rtol=1e-5)


def test_a_promoted_trial_continues_the_same_curve(digits):
    """A trial trained to rung 10, then promoted to 25, equals one trained to 25 in one go: its
    schedule runs over the sweep's maximum budget (the horizon), not the rung's."""
    config = hparams.resolve("ae", {"hidden": 32, "latent_dim": 8, "schedule": "exponential",
                                    "final_lr_ratio": 0.01, "learning_rate": 1e-2})
    keys = P.trial_keys(0, 5)
    rung = placement.assign(SPEC, placement.create(SPEC, 1), [0],
        [placement.Member(5, config, 10, keys, horizon=25)])
    rung, first = P.train_chunk(SPEC, rung, digits, 25)
    rung = placement.set_targets(rung, [0], [25])
    rung, second = P.train_chunk(SPEC, rung, digits, 25)
    straight = placement.assign(SPEC, placement.create(SPEC, 1), [0],
        [placement.Member(5, config, 25, keys, horizon=25)])
    straight, whole = P.train_chunk(SPEC, straight, digits, 25)
    stitched = np.concatenate([np.asarray(first)[0, :10], np.asarray(second)[0, :15]])
    np.testing.assert_allclose(stitched, np.asarray(whole)[0], rtol=1e-6)
    # Had the rung been the horizon, the curve would have decayed faster.
    early = placement.assign(SPEC, placement.create(SPEC, 1), [0],
        [placement.Member(5, config, 25, keys, horizon=10)])
    _, other = P.train_chunk(SPEC, early, digits, 25)
    assert not np.allclose(np.asarray(other)[0, 12:], np.asarray(whole)[0, 12:], rtol=1e-4)
