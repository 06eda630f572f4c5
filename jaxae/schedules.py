"""Learning-rate schedules whose kind and constants are per-slot arrays.

A slot's rate at step ``t`` is optax's schedule of the same name, joined after a linear warmup
(``optax.join_schedules``), written as one arithmetic expression so that the kind can differ
between the slots of one program (``schedule`` is the float index of ``hparams.SCHEDULES``):

* warmup: ``optax.linear_schedule(0, learning_rate, warmup)`` for ``t < warmup``;
* then, at ``s = t - warmup`` over ``decay = max_budget - warmup`` steps,
  ``constant``    -- ``learning_rate``;
  ``cosine``      -- ``optax.cosine_decay_schedule(learning_rate, decay, alpha=final_lr_ratio)``;
  ``exponential`` -- ``optax.exponential_decay(learning_rate, decay, final_lr_ratio,
  end_value=learning_rate * final_lr_ratio)``.

``max_budget`` is the sweep's maximum training budget (``--steps``), never the budget of the job
a trial is running: a trial promoted from one rung to the next continues the same curve.
``tests/test_schedules.py`` checks every kind against optax step by step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxae.hparams import SCHEDULES, ScheduleHParams

_COSINE, _EXPONENTIAL = SCHEDULES.index("cosine"), SCHEDULES.index("exponential")


def learning_rate_at(learning_rate: jax.Array, hp: ScheduleHParams, step: jax.Array
                     ) -> jax.Array:
    """The learning rate of the update made at ``step`` (0 for the first update, as optax counts).

    Args:
        learning_rate: scalar, the slot's base rate.
        hp: the slot's schedule (scalars); ``horizon`` is the sweep's maximum budget in steps.
        step: scalar, steps trained before this update.

    Returns:
        A float32 scalar.
    """
    lr, kind = learning_rate, jnp.round(hp.schedule)
    warmup, ratio = hp.warmup, hp.final_lr_ratio
    t = jnp.asarray(step, jnp.float32)
    decay = jnp.maximum(jnp.asarray(hp.horizon, jnp.float32) - warmup, 1.0)
    # Past the maximum budget the rate stays at its final value (optax's clipping).
    done = jnp.clip(t - warmup, 0.0, decay) / decay
    cosine = ratio + (1.0 - ratio) * 0.5 * (1.0 + jnp.cos(jnp.pi * done))
    exponential = jnp.power(ratio, done)
    factor = jnp.where(kind == _COSINE, cosine, jnp.where(kind == _EXPONENTIAL, exponential, 1.0))
    warming = t < warmup
    return lr * jnp.where(warming, t / jnp.where(warming, warmup, 1.0), factor)
