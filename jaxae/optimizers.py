"""Optimizer families whose numeric settings are per-slot arrays (``optax.inject_hyperparams``).

Every family reads the same four hyperparameters, so one population state layout serves all:
``learning_rate``, ``weight_decay``, ``b1`` (Adam's beta1, or momentum) and ``b2`` (Adam's beta2,
or RMSProp's decay). Gradient clipping (``grad_clip``) happens before the optimizer, in the
population's training step, which shares the global norm with its divergence check.
"""

from __future__ import annotations

import optax

OPTIMIZER_HPARAMS = ("learning_rate", "weight_decay", "b1", "b2")


def _chain(family: str, learning_rate, weight_decay, b1, b2):
    if family == "adam":  # L2 regularisation: the decay joins the gradient before Adam's scaling.
        core = [optax.add_decayed_weights(weight_decay), optax.scale_by_adam(b1, b2)]
    elif family == "adamw":  # Decoupled decay (Loshchilov & Hutter 2019).
        core = [optax.scale_by_adam(b1, b2), optax.add_decayed_weights(weight_decay)]
    elif family == "sgd":  # Heavy-ball momentum b1.
        core = [optax.add_decayed_weights(weight_decay), optax.trace(decay=b1)]
    elif family == "rmsprop":  # Running second moment with decay b2, then momentum b1.
        core = [
            optax.add_decayed_weights(weight_decay),
            optax.scale_by_rms(decay=b2),
            optax.trace(decay=b1),
        ]
    else:
        raise ValueError(f"unknown optimizer {family!r}")
    return optax.chain(*core, optax.scale_by_learning_rate(learning_rate))


def make_optimizer(family: str) -> optax.GradientTransformation:
    """The optimizer ``family`` with its five hyperparameters injected into its state.

    The placeholders are floats on purpose: an int placeholder would stay int32 in the state.
    """

    def factory(learning_rate, weight_decay, b1, b2):
        return _chain(family, learning_rate, weight_decay, b1, b2)

    return optax.inject_hyperparams(factory)(learning_rate=1e-3, weight_decay=0.0, b1=0.9, b2=0.999)
