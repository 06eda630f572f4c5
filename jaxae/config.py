"""A sweep's resolved configuration: defaults, the TOML file, CLI overrides, and the search space.

Everything a user can get wrong is checked here and refused with a one-line ``UserError`` that
names the setting, before any output is written.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from jaxae import hparams
from jaxae.errors import UserError, one_line
from jaxae.models import PRECISION_NAMES
from searchers import SAMPLERS, SCHEDULERS, Choice, Float, Int
from searchers import space_from_dict as _space_from_dict
from searchers import space_to_dict as _space_to_dict

# What --searcher accepts: every scheduler of searchers.registry, and pbt, which trains its own
# loop (jaxae/pbt.py) rather than handing out jobs.
SEARCHER_NAMES = (*SCHEDULERS, "pbt")
AGGREGATES = ("mean", "median")

# Upper bounds, checked before anything is written. JAX folds the seed into a uint32 key; step
# counters, budgets and scan lengths are int32 on the device, and a budget plus a chunk must
# still fit (margin: 2**30). Population and trials bounds are far beyond any machine's memory
# (the memory check refuses much less) but keep ids and sizes inside int32 arithmetic.
LIMITS = {
    "seed": 2**32 - 1,
    "steps": 2**30,
    "min_steps": 2**30,
    "chunk": 2**30,
    "population": 2**24,
    "trials": 2**30,
    "repeats": 2**10,
    "eta": 2**10,
    "pbt_ready": 2**30,
    "curve_examples": 2**30,
}


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """Every setting of a sweep. ``space`` maps a hyperparameter name to either a dimension in
    JSON form (``{"dist": "float", "low": ..., "high": ..., "log": ...}``) or a fixed value."""

    model: str = "ae"
    searcher: str = "asha"
    population: int = 32
    trials: int = 96
    steps: int = 1200
    seed: int = 0
    data: str = "digits"
    repeats: int = 1
    aggregate: str = "mean"
    crn: bool = False
    chunk: int = 50
    # Validation examples of each learning-curve point (the split's first ones; 0: all of it);
    # None: population.CURVE_EXAMPLES. A job's result always uses the whole split.
    curve_examples: int | None = None
    eta: int = 3
    min_steps: int | None = None
    sampler: str = "random"
    precision: str = "auto"  # tf32 on accelerators, float32 on CPUs (models.resolve_precision)
    space: dict[str, Any] | None = None
    # Population-based training (searcher "pbt", jaxae/pbt.py); None: the default there.
    pbt_ready: int | None = None  # steps between exploits (default: about steps / 10)
    pbt_fraction: float | None = None  # bottom / top share of the population (default 0.25)
    pbt_resample: float | None = None  # chance an explored value is redrawn (default 0.25)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        # Left out while unset, so a sweep stored before they existed keeps its fingerprint
        # (and resumes).
        for name in (*PBT_SETTINGS, "curve_examples"):
            if d[name] is None:
                del d[name]
        return d


PBT_SETTINGS = ("pbt_ready", "pbt_fraction", "pbt_resample")


# What the sweep searches when [space] is absent: the settings that matter most for each kind
# (learning rate first), plus code size and activation, which every autoencoder study varies, and
# the learning-rate schedule, which costs nothing measurable (bench/HPARAMS.md). Opt-in: dropout,
# whose masks' random bits made a member-step 2.2x slower on the CPU, and norm and further
# activations, each of which multiplies the compiled programs.
_COMMON_SPACE = {
    "learning_rate": {"dist": "float", "low": 1e-4, "high": 3e-2, "log": True},
    "weight_decay": {"dist": "float", "low": 1e-6, "high": 1e-2, "log": True},
    "latent_dim": {"dist": "int", "low": 4, "high": 32, "log": True},
    "hidden": {"dist": "int", "low": 32, "high": 128, "log": True},
    "activation": {"dist": "choice", "options": ["relu", "tanh"]},
    "schedule": {"dist": "choice", "options": ["constant", "cosine", "exponential"]},
}
_MODEL_SPACE = {
    "ae": {},
    "sparse": {
        "l1": {"dist": "float", "low": 1e-5, "high": 1e-1, "log": True},
        "sparsity_weight": {"dist": "float", "low": 1e-3, "high": 1.0, "log": True},
        "rho": {"dist": "float", "low": 0.01, "high": 0.3, "log": True},
    },
    "denoising": {
        "noise": {"dist": "float", "low": 0.05, "high": 0.8},
        "noise_kind": {"dist": "choice", "options": ["gaussian", "mask"]},
    },
    "contractive": {"contractive": {"dist": "float", "low": 1e-4, "high": 1.0, "log": True}},
    "vae": {"beta": {"dist": "float", "low": 0.1, "high": 4.0, "log": True}},
}


def default_space(model: str) -> dict[str, Any]:
    """The search space a sweep of ``model`` uses when the config has no ``[space]``."""
    return {**_COMMON_SPACE, **_MODEL_SPACE[model]}


def suggest(name: Any, known: Iterable[Any]) -> str:
    """``"; did you mean 'x'?"`` when ``name`` is a likely misspelling of one of ``known``."""
    words = [str(k) for k in known]
    close = difflib.get_close_matches(str(name), words, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def read_toml(path: str | Path) -> dict[str, Any]:
    """The ``[sweep]`` settings and ``[space]`` of a config file, as one flat dict."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"config file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"config file {str(path)!r} cannot be read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"config file {str(path)!r} is not valid TOML: {e}") from None
    unknown = sorted(set(doc) - {"sweep", "space"})
    if unknown:
        hint = suggest(unknown[0], ("sweep", "space")) if len(unknown) == 1 else ""
        raise UserError(f"config file {str(path)!r}: unknown table(s) {', '.join(unknown)}"
                        f"{hint} (expected [sweep] and [space])")
    for table in ("sweep", "space"):
        if table in doc and not isinstance(doc[table], dict):
            raise UserError(f"config file {str(path)!r}: {table} must be a table")
    # `space` is the [space] table, never a [sweep] key.
    if "space" in doc.get("sweep", {}):
        raise UserError(f"config file {str(path)!r} [sweep]: unknown setting 'space' (the search "
                        "space is the [space] table)")
    settings = dict(doc.get("sweep", {}))
    if "space" in doc:
        settings["space"] = doc["space"]
    return settings


_FIELDS = {f.name: f for f in dataclasses.fields(SweepConfig)}


_SETTINGS = tuple(name for name in _FIELDS if name != "space")  # the [sweep] keys
_CHOICES = {"model": hparams.MODELS, "searcher": SEARCHER_NAMES, "aggregate": AGGREGATES,
            "sampler": tuple(SAMPLERS), "precision": PRECISION_NAMES}
_LOWS = {"population": 1, "trials": 1, "steps": 1, "seed": 0, "repeats": 1, "chunk": 1, "eta": 2,
         "min_steps": 1, "pbt_ready": 1, "curve_examples": 0}
# Real-valued settings: (low, high, whether low itself is allowed).
_REALS = {"pbt_fraction": (0.0, 0.5, False), "pbt_resample": (0.0, 1.0, True)}


def build(settings: Mapping[str, Any], origins: Mapping[str, str] | None = None
          ) -> SweepConfig:
    """A validated ``SweepConfig`` from ``settings`` (file values overridden by CLI flags).

    Args:
        settings: setting name -> value; ``space`` the ``[space]`` table.
        origins: where each setting came from (``"config file 'x.toml' [sweep]"``, ``"--trials"``),
            to say so in messages; a setting absent here is named alone.
    """
    origins = origins or {}
    values = dict(settings)
    try:
        for name in values:
            if name not in _FIELDS:
                raise _at(origins, name, f"unknown setting {name!r}{suggest(name, _SETTINGS)} "
                                         f"(known: {', '.join(_SETTINGS)})")
        for name, value in values.items():
            try:
                _check_setting(name, value)
            except UserError as e:
                raise _at(origins, name, str(e)) from None
        config = SweepConfig(**values)
        if config.repeats > config.population:
            raise _at(origins, "repeats", f"repeats = {config.repeats} exceeds population = "
                                          f"{config.population}")
        if config.min_steps is not None and config.min_steps > config.steps:
            raise _at(origins, "min_steps", f"min_steps = {config.min_steps} exceeds steps = "
                                            f"{config.steps}")
        _check_pbt(config, origins)
        raw_space = default_space(config.model) if config.space is None else config.space
        try:
            space = check_space(config.model, raw_space)
        except UserError as e:
            raise _at(origins, "space", str(e)) from None
        config = dataclasses.replace(config, space=space)
        for norm in value_range(config, "norm"):
            try:
                hparams.check_combination(config.model, norm)
            except UserError as e:
                raise _at(origins, "space", str(e)) from None
    except _LocatedError as e:
        raise UserError(str(e)) from None
    return config


def _check_pbt(config: SweepConfig, origins: Mapping[str, str]) -> None:
    """PBT trains every member at once, one replicate each, and exploits at chunk ends."""
    if config.searcher != "pbt":
        for name in PBT_SETTINGS:
            if getattr(config, name) is not None:
                raise _at(origins, name, f"{name} applies only to searcher = 'pbt' (searcher is "
                                         f"{config.searcher!r})")
        return
    if config.trials > config.population:
        raise _at(origins, "trials", f"searcher 'pbt' trains all its trials at once as one "
                                     f"population: trials = {config.trials} exceeds population = "
                                     f"{config.population}")
    if config.repeats != 1:
        raise _at(origins, "repeats", f"repeats = {config.repeats} does not apply to searcher "
                                      "'pbt' (its members copy each other's weights)")
    ready = config.pbt_ready
    if ready is not None and ready % config.chunk:
        raise _at(origins, "pbt_ready", f"pbt_ready = {ready} must be a multiple of chunk = "
                                        f"{config.chunk} (members are evaluated between chunks)")
    if ready is not None and ready >= config.steps:
        raise _at(origins, "pbt_ready", f"pbt_ready = {ready} must be less than steps = "
                                        f"{config.steps} (no member would ever exploit)")


class _LocatedError(UserError):
    """A message already prefixed with where its setting came from."""


def _at(origins: Mapping[str, str], name: str, message: str) -> _LocatedError:
    where = origins.get(name)
    if where is None:
        return _LocatedError(message)
    # [space] messages start with "[space] ..." already; name the file once.
    if message.startswith("[space]") and where.endswith("[space]"):
        return _LocatedError(f"{where.removesuffix(' [space]')} {message}")
    return _LocatedError(f"{where}: {message}")


def _check_setting(name: str, value: Any) -> None:
    if name in _CHOICES:
        options = _CHOICES[name]
        if value not in options:
            raise UserError(f"{name} = {value!r} is not one of {', '.join(options)}"
                            f"{suggest(value, options)}")
    elif name in _LOWS and value is not None:
        low, high = _LOWS[name], LIMITS[name]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise UserError(f"{name} = {value!r} must be an integer in [{low}, {high}]")
    elif name in _REALS and value is not None:
        low, high, closed = _REALS[name]
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not math.isfinite(value) or not (low <= value if closed else low < value)
                or value > high):
            raise UserError(f"{name} = {value!r} must be a number in {'[' if closed else '('}"
                            f"{low:g}, {high:g}]")
    elif name == "crn" and not isinstance(value, bool):
        raise UserError(f"crn = {value!r} must be true or false")
    elif name == "data" and not isinstance(value, str):
        raise UserError(f"data = {value!r} must be 'digits' or a path")


def check_space(model: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    """Validates a ``[space]`` table for ``model``; returns it in canonical JSON form."""
    if not isinstance(raw, Mapping):
        raise UserError("[space] must be a table")
    out: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in hparams.HPARAMS:
            raise UserError(f"[space]: unknown hyperparameter {name!r}"
                            f"{suggest(name, hparams.HPARAMS)} (known: "
                            f"{', '.join(hparams.HPARAMS)})")
        hparams.check_name(name, model)
        if isinstance(value, Mapping):
            out[name] = _check_dimension(name, value)
        else:
            _check_option(name, value)
            out[name] = hparams.check_value(name, value)
    return out


def _check_option(name: str, value: Any) -> None:
    options = hparams.HPARAMS[name].options
    if options and value not in options:
        raise UserError(f"[space] {name} = {value!r} is not one of "
                        f"{', '.join(map(str, options))}{suggest(value, options)}")


def _check_dimension(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    hp = hparams.HPARAMS[name]
    dist = spec.get("dist")
    if dist not in ("float", "int", "choice"):
        raise UserError(f"[space] {name}: dist must be 'float', 'int' or 'choice', got {dist!r}")
    allowed = {"float": {"low", "high", "log", "num"}, "int": {"low", "high", "log", "num"},
               "choice": {"options"}}[dist] | {"dist"}
    extra = set(spec) - allowed
    if extra:
        raise UserError(f"[space] {name}: unknown key(s) {', '.join(sorted(extra))} for {dist}")
    if hp.options and dist != "choice":
        raise UserError(f"[space] {name} is categorical: use dist = 'choice' with options "
                        f"from {', '.join(hp.options)}")
    if dist == "float" and hp.integer:
        raise UserError(f"[space] {name} is an integer: use dist = 'int' or 'choice'")
    try:
        (dim,) = _space_from_dict({name: dict(spec)}).values()
    except (ValueError, TypeError, KeyError) as e:
        # The searchers' messages name the dimension too: say it once.
        raise UserError(f"[space] {name}: {one_line(e).removeprefix(f'{name}: ')}") from None
    values = dim.options if isinstance(dim, Choice) else (dim.low, dim.high)
    for v in values:
        _check_option(name, v)
        hparams.check_value(name, v)
    (canonical,) = _space_to_dict({name: dim}).values()
    return canonical


def searched(config: SweepConfig) -> dict[str, Any]:
    """The dimensions of the space that vary, as ``searchers`` objects."""
    varying = {k: v for k, v in config.space.items() if isinstance(v, Mapping)}
    return _space_from_dict(varying)


def fixed(config: SweepConfig) -> dict[str, Any]:
    """The hyperparameters the space fixes for every trial."""
    return {k: v for k, v in config.space.items() if not isinstance(v, Mapping)}


def value_range(config: SweepConfig, name: str) -> list[Any]:
    """Every value ``name`` can take in this sweep (its options, its int range, or its fixed /
    default value); used to size padded shapes and count buckets."""
    spec = config.space.get(name)
    if isinstance(spec, Mapping):
        (dim,) = _space_from_dict({name: spec}).values()
        if isinstance(dim, Choice):
            return list(dim.options)
        if isinstance(dim, Int):
            return list(range(dim.low, dim.high + 1))
        if isinstance(dim, Float):
            return [dim.low, dim.high]
    if spec is not None:
        return [spec]
    return [hparams.defaults(config.model)[name]]


def count_buckets(config: SweepConfig) -> int:
    """How many distinct compiled programs the space can ask for."""
    return math.prod(len(set(value_range(config, name))) for name in hparams.BUCKET_NAMES)


def curve_examples(config: SweepConfig) -> int | None:
    """Validation examples of a sweep's learning-curve points (``population.run_chunk``'s
    ``curve``): None for all of the split."""
    from jaxae.population import CURVE_EXAMPLES

    if config.curve_examples is None:
        return CURVE_EXAMPLES
    return config.curve_examples or None
