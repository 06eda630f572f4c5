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
float index of its option. The array and masked ones reach the trainer as one typed pytree,
``SlotHParams``, built by ``slot_hparams`` and grouped by the code that reads them
(``HParam.group``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

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
        group: for an ``array`` or ``masked`` one, the field of ``SlotHParams`` it travels in
            (the code that reads it).
    """

    default: Any
    kind: str
    models: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    low: float = -math.inf
    high: float = math.inf
    integer: bool = False
    group: str = ""

    def applies_to(self, model: str) -> bool:
        return not self.models or model in self.models


HPARAMS: dict[str, HParam] = {
    "learning_rate": HParam(1e-3, "array", low=0.0, high=10.0, group="opt"),
    "weight_decay": HParam(0.0, "array", low=0.0, high=1.0, group="opt"),
    # 0 means "no clipping"; the trainer turns it into an infinite threshold.
    "grad_clip": HParam(0.0, "array", low=0.0, group="opt"),
    "b1": HParam(0.9, "array", low=0.0, high=0.9999, group="opt"),
    "b2": HParam(0.999, "array", low=0.0, high=0.99999, group="opt"),
    "optimizer": HParam("adam", "bucket", options=OPTIMIZERS),
    "batch_size": HParam(64, "bucket", low=1, high=65536, integer=True),
    "latent_dim": HParam(16, "masked", low=1, high=4096, integer=True, group="model"),
    "hidden": HParam(128, "masked", low=1, high=16384, integer=True, group="model"),
    "depth": HParam(1, "bucket", low=1, high=8, integer=True),
    # A per-slot choice: a program computes each of the sweep's activations and every slot keeps
    # its own (models.activate), so the default space's relu / tanh is one program, not two.
    "activation": HParam("relu", "array", options=ACTIVATIONS, group="model"),
    "loss": HParam("mse", "bucket", options=LOSSES),
    "l1": HParam(1e-3, "array", ("sparse",), low=0.0, group="penalty"),
    "rho": HParam(0.05, "array", ("sparse",), low=1e-6, high=1 - 1e-6, group="penalty"),
    "sparsity_weight": HParam(0.0, "array", ("sparse",), low=0.0, group="penalty"),
    "noise": HParam(0.3, "array", ("denoising",), low=0.0, high=10.0, group="penalty"),
    "noise_kind": HParam("gaussian", "array", ("denoising",), options=NOISE_KINDS, group="penalty"),
    "contractive": HParam(1e-2, "array", ("contractive",), low=0.0, group="penalty"),
    "beta": HParam(1.0, "array", ("vae",), low=0.0, group="penalty"),
    # The learning-rate schedule (jaxae/schedules.py): its shape is relative to the sweep's
    # maximum budget, so it never depends on the rung a trial is at.
    "schedule": HParam("constant", "array", options=SCHEDULES, group="schedule"),
    "warmup": HParam(0, "array", low=0, high=10**9, integer=True, group="schedule"),
    "final_lr_ratio": HParam(0.1, "array", low=0.0, high=1.0, group="schedule"),
    # Inverted dropout on every hidden layer while training; the high bound keeps 1/(1-p) sane.
    "dropout": HParam(0.0, "array", low=0.0, high=0.9, group="model"),
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


@functools.cache
def names_for(model: str) -> tuple[str, ...]:
    """The hyperparameter names that apply to ``model``."""
    return tuple(name for name, hp in HPARAMS.items() if hp.applies_to(model))


def defaults(model: str) -> dict[str, Any]:
    """Every applicable hyperparameter of ``model`` at its default value (a new dict)."""
    return dict(_defaults(model))


@functools.cache
def _defaults(model: str) -> dict[str, Any]:
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
    """A trial's full configuration from values that come from outside (a library caller):
    ``values`` checked, then ``complete``. A sweep checks its space once instead
    (``config.build``) and completes each trial's values without checking them again.

    Raises:
        UserError: for an unknown or inapplicable name, or a value of the wrong type or range.
    """
    if model not in MODELS:
        raise UserError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    checked = {}
    for name, value in values.items():
        check_name(name, model)
        checked[name] = check_value(name, value)
    config = complete(model, checked)
    check_combination(model, config["norm"])
    return config


def complete(model: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's full configuration: the defaults of ``model`` overridden by ``values``, each
    number as its type (an int for an integer name, else a float; options as they are).

    Nothing is checked here: ``values`` must be valid already, as a sweep's are (its space's
    fixed values and ranges were checked by ``config.build``, and searchers propose values
    inside the ranges; ``placement.check_fits`` guards what a program cannot hold).
    """
    config = defaults(model)
    for name, value in values.items():
        hp = HPARAMS[name]
        config[name] = value if hp.options else int(value) if hp.integer else float(value)
    return config


def array_value(name: str, value: Any) -> float:
    """The float32-able number a per-slot array holds for ``name``."""
    if HPARAMS[name].options:
        return float(HPARAMS[name].options.index(value))
    if name == "grad_clip" and value == 0:
        return math.inf
    return float(value)


# -- the per-slot structure ------------------------------------------------------------------------
# Every array / masked hyperparameter travels to the trainer as one leaf of ``SlotHParams``, in
# the group of the code that reads it (``HParam.group``): the optimizer sees ``OptHParams`` only,
# the schedule ``ScheduleHParams``, the model's masks and dropout ``ModelHParams``, the objective's
# penalties ``PenaltyHParams``. Each leaf is float32 [slots] in a population (a scalar per member
# under vmap); sizes ride as floats, which the masks compare with an iota.


class OptHParams(NamedTuple):
    """The optimizer's settings (``optimizers.update``; ``grad_clip`` is applied just before)."""

    learning_rate: Any
    weight_decay: Any
    b1: Any
    b2: Any
    grad_clip: Any  # inf where the config says 0 (no clipping)


class ScheduleHParams(NamedTuple):
    """The learning-rate schedule's settings (``schedules.learning_rate_at``)."""

    schedule: Any  # the float index of hparams.SCHEDULES
    warmup: Any
    final_lr_ratio: Any
    # Not a hyperparameter: the sweep's maximum budget, which the schedule is relative to.
    horizon: Any


class ModelHParams(NamedTuple):
    """What the model reads per slot: its masked sizes, activation and dropout rate."""

    hidden: Any
    latent_dim: Any
    activation: Any  # the float index of hparams.ACTIVATIONS
    dropout: Any


class PenaltyHParams(NamedTuple):
    """The objective's weights and noise (``objectives.make_objective``)."""

    l1: Any
    rho: Any
    sparsity_weight: Any
    noise: Any
    noise_kind: Any  # the float index of hparams.NOISE_KINDS
    contractive: Any
    beta: Any


class SlotHParams(NamedTuple):
    """Every per-slot hyperparameter, grouped by the code that reads it (a pytree)."""

    opt: OptHParams
    schedule: ScheduleHParams
    model: ModelHParams
    penalty: PenaltyHParams


GROUPS: dict[str, type] = {"opt": OptHParams, "schedule": ScheduleHParams,
                           "model": ModelHParams, "penalty": PenaltyHParams}
# Leaves of SlotHParams that are not in HPARAMS.
EXTRA_LEAVES = ("horizon",)


def slot_hparams(configs: Sequence[Mapping[str, Any]], horizons: Sequence[float]
                 ) -> SlotHParams:
    """The per-slot structure of ``configs`` (resolved configurations): float32 [len(configs)]
    leaves. Names a config lacks (they do not apply to its model) take their default.

    Args:
        configs: one configuration per slot.
        horizons: per slot, the schedule's horizon (the sweep's maximum budget), in steps.
    """
    def column(name: str) -> np.ndarray:
        if name == "horizon":
            return np.asarray(horizons, np.float32).reshape(len(configs))
        default = HPARAMS[name].default
        return np.asarray([array_value(name, c.get(name, default)) for c in configs], np.float32)

    return SlotHParams(**{group: cls(**{f: column(f) for f in cls._fields})
                          for group, cls in GROUPS.items()})


def by_name(hp: SlotHParams) -> dict[str, Any]:
    """``hp``'s leaves by name (``ARRAY_NAMES`` and ``horizon``): the checkpoint's form."""
    return {name: leaf for group in hp for name, leaf in group._asdict().items()}


def from_names(leaves: Mapping[str, Any]) -> SlotHParams:
    """The inverse of ``by_name``."""
    return SlotHParams(**{group: cls(**{f: leaves[f] for f in cls._fields})
                          for group, cls in GROUPS.items()})


def set_rows(into: SlotHParams, slots: Sequence[int], values: SlotHParams,
             row: int | None = None) -> None:
    """Writes ``values`` (leaves [len(slots)], or [1] for all of them; with ``row``, that row of
    its leaves for all of them) into rows ``slots`` of ``into``'s numpy leaves, in place."""
    for dst, src in zip(_leaves(into), _leaves(values), strict=True):
        dst[list(slots)] = src if row is None else src[row]


def _leaves(hp: SlotHParams) -> list[Any]:
    return [leaf for group in hp for leaf in group]
