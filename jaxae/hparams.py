"""The hyperparameter names of DESIGN.md: defaults, which model kinds they apply to, and how each
reaches the trainer.

A hyperparameter reaches the trainer in one of three ways:

* ``array``  -- a per-slot float32 array (learning rate, penalties, ...): changing it never
  recompiles.
* ``masked`` -- a per-slot size inside a padded maximum shape (``latent_dim``, ``hidden``): exact
  masking, no recompile as long as the value fits the padded maximum.
* ``bucket`` -- it changes the program (``depth``, ``optimizer``, ``batch_size``, ``loss``,
  ``norm``): slots are grouped by the distinct values, one compiled program per group.

A categorical ``array`` hyperparameter (``noise_kind``, ``schedule``, ``activation``) rides as the
float index of its option.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from jaxae.errors import UserError

MODELS = ("ae", "sparse", "denoising", "contractive", "vae")
ACTIVATIONS = ("relu", "tanh", "gelu", "elu", "sigmoid", "leaky_relu")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
LOSSES = ("mse", "bce")
NOISE_KINDS = ("gaussian", "mask")
SCHEDULES = ("constant", "cosine", "exponential")
NORMS = ("none", "batch", "layer")


@dataclasses.dataclass(frozen=True)
class HParam:
    """One searchable hyperparameter.

    Attributes:
        default: the value a trial gets when the name is neither searched nor fixed.
        kind: ``"array"``, ``"masked"`` or ``"bucket"`` (see the module docstring).
        models: the model kinds it applies to (all when empty).
        options: the allowed values of a categorical hyperparameter.
        low: the smallest allowed value of a numeric one (inclusive).
        high: the largest allowed value of a numeric one (inclusive).
        integer: whether a numeric value must be an integer.
    """

    default: Any
    kind: str
    models: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    low: float = -math.inf
    high: float = math.inf
    integer: bool = False

    def applies_to(self, model: str) -> bool:
        return not self.models or model in self.models


HPARAMS: dict[str, HParam] = {
    "learning_rate": HParam(1e-3, "array", low=0.0, high=10.0),
    "weight_decay": HParam(0.0, "array", low=0.0, high=1.0),
    # 0 means "no clipping"; the trainer turns it into an infinite threshold.
    "grad_clip": HParam(0.0, "array", low=0.0),
    "b1": HParam(0.9, "array", low=0.0, high=0.9999),
    "b2": HParam(0.999, "array", low=0.0, high=0.99999),
    "optimizer": HParam("adam", "bucket", options=OPTIMIZERS),
    "batch_size": HParam(64, "bucket", low=1, high=65536, integer=True),
    "latent_dim": HParam(16, "masked", low=1, high=4096, integer=True),
    "hidden": HParam(128, "masked", low=1, high=16384, integer=True),
    "depth": HParam(1, "bucket", low=1, high=8, integer=True),
    # A per-slot choice: a program computes each of the sweep's activations and every slot keeps
    # its own (models.activate), so the default space's relu / tanh is one program, not two.
    "activation": HParam("relu", "array", options=ACTIVATIONS),
    "loss": HParam("mse", "bucket", options=LOSSES),
    "l1": HParam(1e-3, "array", ("sparse",), low=0.0),
    "rho": HParam(0.05, "array", ("sparse",), low=1e-6, high=1 - 1e-6),
    "sparsity_weight": HParam(0.0, "array", ("sparse",), low=0.0),
    "noise": HParam(0.3, "array", ("denoising",), low=0.0, high=10.0),
    "noise_kind": HParam("gaussian", "array", ("denoising",), options=NOISE_KINDS),
    "contractive": HParam(1e-2, "array", ("contractive",), low=0.0),
    "beta": HParam(1.0, "array", ("vae",), low=0.0),
    # The learning-rate schedule (jaxae/schedules.py): its shape is relative to the sweep's
    # maximum budget, so it never depends on the rung a trial is at.
    "schedule": HParam("constant", "array", options=SCHEDULES),
    "warmup": HParam(0, "array", low=0, high=10**9, integer=True),
    "final_lr_ratio": HParam(0.1, "array", low=0.0, high=1.0),
    # Inverted dropout on every hidden layer while training; the high bound keeps 1/(1-p) sane.
    "dropout": HParam(0.0, "array", low=0.0, high=0.9),
    "norm": HParam("none", "bucket", options=NORMS),
}

# The per-slot float32 arrays every population carries, in a fixed order. Sizes ride along as
# floats: the masks compare them with an iota.
ARRAY_NAMES: tuple[str, ...] = tuple(
    name for name, hp in HPARAMS.items() if hp.kind in ("array", "masked")
)
BUCKET_NAMES: tuple[str, ...] = tuple(name for name, hp in HPARAMS.items() if hp.kind == "bucket")

# The bce loss is the natural likelihood for a VAE on [0, 1] data.
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {"vae": {"loss": "bce"}}


def names_for(model: str) -> tuple[str, ...]:
    """The hyperparameter names that apply to ``model``."""
    return tuple(name for name, hp in HPARAMS.items() if hp.applies_to(model))


def defaults(model: str) -> dict[str, Any]:
    """Every applicable hyperparameter of ``model`` at its default value."""
    values = {name: HPARAMS[name].default for name in names_for(model)}
    values.update(MODEL_DEFAULTS.get(model, {}))
    return values


def check_combination(model: str, norm: Any) -> None:
    """Refuses batch norm for the contractive autoencoder: its penalty is the Jacobian of each
    example's code by that example alone, which batch statistics (shared by the batch) break."""
    if model == "contractive" and norm == "batch":
        raise UserError("norm = 'batch' does not apply to model 'contractive' (its penalty needs "
                        "per-example codes; use norm = 'layer')")


def check_name(name: str, model: str) -> None:
    """Refuses a name that is unknown or does not apply to ``model``."""
    if name not in HPARAMS:
        raise UserError(f"unknown hyperparameter {name!r}; known: {', '.join(HPARAMS)}")
    if not HPARAMS[name].applies_to(model):
        raise UserError(
            f"hyperparameter {name!r} does not apply to model {model!r} "
            f"(it applies to {', '.join(HPARAMS[name].models)})"
        )


def check_value(name: str, value: Any) -> Any:
    """Returns ``value`` as the type of ``name``, or refuses it with a message naming both."""
    hp = HPARAMS[name]
    if hp.options:
        if value not in hp.options:
            raise UserError(f"{name} = {value!r} is not one of {', '.join(hp.options)}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UserError(f"{name} = {value!r} must be a number")
    if not math.isfinite(value):
        raise UserError(f"{name} = {value!r} must be finite")
    if hp.integer:
        if value != int(value):
            raise UserError(f"{name} = {value!r} must be an integer")
        value = int(value)
    if not hp.low <= value <= hp.high:
        raise UserError(f"{name} = {value!r} is outside [{hp.low:g}, {hp.high:g}]")
    return value if hp.integer else float(value)


def resolve(model: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's full configuration: the defaults of ``model`` overridden by ``values``.

    Raises:
        UserError: for an unknown or inapplicable name, or a value of the wrong type or range.
    """
    if model not in MODELS:
        raise UserError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    config = defaults(model)
    for name, value in values.items():
        check_name(name, model)
        config[name] = check_value(name, value)
    check_combination(model, config["norm"])
    return config


def array_value(name: str, value: Any) -> float:
    """The float32-able number a per-slot array holds for ``name``."""
    if HPARAMS[name].options:
        return float(HPARAMS[name].options.index(value))
    if name == "grad_clip" and value == 0:
        return math.inf
    return float(value)
