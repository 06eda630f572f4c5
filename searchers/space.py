"""The search space: named dimensions with a prior, and their mapping to the unit cube.

A space is a plain ``dict[str, Dimension]``; its insertion order fixes the order of the unit-cube
coordinates. Every dimension maps ``[0, 1]`` onto its values so that a uniform ``u`` gives a draw
from the dimension's prior (log scales log-uniformly, integers and choices in equal intervals):
continuous searchers work in the cube and sampling from the prior is ``from_unit(uniform)``.

Example:
    >>> space = {"learning_rate": Float(1e-5, 1e-1, log=True), "depth": Int(1, 4),
    ...          "activation": Choice(["relu", "tanh"])}
    >>> config = space_sample(space, np.random.default_rng(0))
    >>> space_from_dict(space_to_dict(space)) == space
    True

Values handed to users are plain Python ``float`` / ``int`` / option values, never numpy scalars,
so configs are JSON-serialisable as they are. Every validation problem raises ``ValueError`` with a
one-line message naming it (the sweep's config loader reports it and exits with status 2).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

import numpy as np

__all__ = [
    "Choice",
    "Dimension",
    "Float",
    "Int",
    "Space",
    "check_space",
    "dimension_from_dict",
    "space_from_dict",
    "space_from_unit",
    "space_sample",
    "space_to_dict",
    "space_to_unit",
]


def _real(value: Any, what: str) -> float:
    # bool is an Integral in Python; `Float(True, 2)` is a mistake, not 1.0.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {value}")
    return value


def _integer(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    if isinstance(value, numbers.Integral):
        return int(value)
    # TOML / JSON may spell an integer bound as 4.0; accept it, refuse 4.5.
    if math.isfinite(value) and float(value).is_integer():
        return int(value)
    raise ValueError(f"{what} must be an integer, got {value!r}")


def _num(value: Any, kind: str) -> int | None:
    # Only grid search reads it; None (unset) keeps the JSON form of older spaces unchanged.
    if value is None:
        return None
    num = _integer(value, f"{kind} num")
    if num < 1:
        raise ValueError(f"{kind} num must be a positive integer, got {value!r}")
    return num


def _clip01(u: float) -> float:
    # NaN would silently become a bound value below; searchers never produce it, so refuse it.
    if not math.isfinite(u):
        raise ValueError(f"unit-cube coordinate must be finite, got {u}")
    return min(max(float(u), 0.0), 1.0)


@dataclasses.dataclass(frozen=True)
class Float:
    """A real hyperparameter in ``[low, high]``, uniform or log-uniform (``log=True``).

    ``num`` is the number of points grid search takes along the range (evenly spaced, on the log
    scale if ``log``; ``None``: ``searchers.grid``'s default of 5); other searchers ignore it.

    Example:
        >>> Float(0.0, 10.0).from_unit(0.25)
        2.5
        >>> round(Float(1.0, 100.0, log=True).from_unit(0.5), 9)  # the geometric midpoint
        10.0
    """

    low: float
    high: float
    log: bool = False
    num: int | None = None

    def __post_init__(self) -> None:
        low, high = _real(self.low, "Float low"), _real(self.high, "Float high")
        if not isinstance(self.log, bool):
            raise ValueError(f"Float log must be true or false, got {self.log!r}")
        object.__setattr__(self, "num", _num(self.num, "Float"))
        if not low < high:
            raise ValueError(f"Float needs low < high, got low={low:g}, high={high:g}")
        if self.log and low <= 0:
            raise ValueError(f"Float with log=True needs low > 0, got low={low:g}")
        # Normalise Float(1, 2) to floats so that equality and to_dict do not depend on spelling.
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    def from_unit(self, u: float) -> float:
        """Maps ``u`` in ``[0, 1]`` (clipped) to a value; uniform ``u`` gives the prior."""
        u = _clip01(u)
        if self.log:
            lo, hi = math.log(self.low), math.log(self.high)
            x = math.exp(lo + u * (hi - lo))
        else:
            x = self.low + u * (self.high - self.low)
        # exp / affine rounding may step a hair outside the bounds.
        return min(max(x, self.low), self.high)

    def to_unit(self, value: Any) -> float:
        """The unit-cube coordinate of ``value`` (inverse of ``from_unit``)."""
        x = _real(value, "Float value")
        if self.log:
            if x <= 0:
                raise ValueError(f"value {x:g} is not in the log-scaled Float [{self.low:g}, "
                                 f"{self.high:g}]")
            lo, hi = math.log(self.low), math.log(self.high)
            return _clip01((math.log(x) - lo) / (hi - lo))
        return _clip01((x - self.low) / (self.high - self.low))

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a number within the bounds."""
        return (not isinstance(value, bool) and isinstance(value, numbers.Real)
                and self.low <= value <= self.high)

    def sample(self, rng: np.random.Generator) -> float:
        """One draw from the prior."""
        return self.from_unit(rng.random())

    def to_dict(self) -> dict[str, Any]:
        """The JSON / TOML form ``{"dist": "float", "low": .., "high": .., "log": ..}`` (and
        ``"num"`` when set)."""
        d = {"dist": "float", "low": self.low, "high": self.high, "log": self.log}
        return d if self.num is None else {**d, "num": self.num}


@dataclasses.dataclass(frozen=True)
class Int:
    """An integer hyperparameter in ``[low, high]`` (both inclusive), optionally log-scaled.

    The unit interval is cut into one interval per integer: equal widths on the linear scale;
    on the log scale the integer ``k`` owns ``[k - 1/2, k + 1/2]`` measured in log space, so the
    prior is the discretised log-uniform.

    ``num`` is the number of points grid search takes along the range (evenly spaced, on the log
    scale if ``log``, rounded, duplicates dropped; ``None``: ``min(5, high - low + 1)``); other
    searchers ignore it.

    Example:
        >>> [Int(1, 3).from_unit(u) for u in (0.0, 0.5, 1.0)]
        [1, 2, 3]
    """

    low: int
    high: int
    log: bool = False
    num: int | None = None

    def __post_init__(self) -> None:
        low, high = _integer(self.low, "Int low"), _integer(self.high, "Int high")
        if not isinstance(self.log, bool):
            raise ValueError(f"Int log must be true or false, got {self.log!r}")
        object.__setattr__(self, "num", _num(self.num, "Int"))
        if not low < high:
            raise ValueError(f"Int needs low < high, got low={low}, high={high}")
        if self.log and low <= 0:
            raise ValueError(f"Int with log=True needs low > 0, got low={low}")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    def _log_edges(self) -> tuple[float, float]:
        return math.log(self.low - 0.5), math.log(self.high + 0.5)

    def from_unit(self, u: float) -> int:
        """Maps ``u`` in ``[0, 1]`` (clipped) to an integer; uniform ``u`` gives the prior."""
        u = _clip01(u)
        if self.log:
            lo, hi = self._log_edges()
            k = round(math.exp(lo + u * (hi - lo)))
        else:
            k = self.low + math.floor(u * (self.high - self.low + 1))
        return int(min(max(k, self.low), self.high))

    def to_unit(self, value: Any) -> float:
        """The unit-cube coordinate of ``value`` (its interval's middle on the linear scale)."""
        k = _integer(value, "Int value")
        if self.log:
            lo, hi = self._log_edges()
            return _clip01((math.log(max(k, self.low)) - lo) / (hi - lo))
        return _clip01((k - self.low + 0.5) / (self.high - self.low + 1))

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is an integer within the bounds."""
        return (not isinstance(value, bool) and isinstance(value, numbers.Integral)
                and self.low <= value <= self.high)

    def sample(self, rng: np.random.Generator) -> int:
        """One draw from the prior."""
        return self.from_unit(rng.random())

    def to_dict(self) -> dict[str, Any]:
        """The JSON / TOML form ``{"dist": "int", "low": .., "high": .., "log": ..}`` (and
        ``"num"`` when set)."""
        d = {"dist": "int", "low": self.low, "high": self.high, "log": self.log}
        return d if self.num is None else {**d, "num": self.num}


_OPTION_TYPES = (str, int, float, bool, type(None))


@dataclasses.dataclass(frozen=True)
class Choice:
    """A categorical hyperparameter: one of ``options`` (JSON scalars), uniform prior.

    In the unit cube a choice is one coordinate cut into ``len(options)`` equal intervals.

    Example:
        >>> Choice(["relu", "tanh"]).from_unit(0.7)
        'tanh'
    """

    options: tuple[Any, ...]

    def __post_init__(self) -> None:
        # A bare string is a sequence too; Choice("relu") is a mistake, not four letters.
        if isinstance(self.options, str | bytes) or not isinstance(self.options, Sequence):
            raise ValueError(f"Choice options must be a list, got {self.options!r}")
        options = tuple(self.options)
        if not options:
            raise ValueError("Choice needs at least one option, got an empty list")
        for option in options:
            # Scalars only: they survive a JSON round trip unchanged (a tuple would come back as
            # a list and no longer compare equal).
            if not isinstance(option, _OPTION_TYPES) or (
                    isinstance(option, float) and not math.isfinite(option)):
                raise ValueError(f"Choice options must be strings, numbers, booleans or null, "
                                 f"got {option!r}")
        for i, option in enumerate(options):
            if any(_same_option(option, other) for other in options[:i]):
                raise ValueError(f"Choice options must be distinct, {option!r} appears twice")
        object.__setattr__(self, "options", options)

    def index(self, value: Any) -> int:
        """The position of ``value`` among the options (``ValueError`` if absent)."""
        for i, option in enumerate(self.options):
            if _same_option(value, option):
                return i
        raise ValueError(f"{value!r} is not one of the options {list(self.options)!r}")

    def from_unit(self, u: float) -> Any:
        """Maps ``u`` in ``[0, 1]`` (clipped) to an option; uniform ``u`` gives the prior."""
        k = len(self.options)
        return self.options[min(math.floor(_clip01(u) * k), k - 1)]

    def to_unit(self, value: Any) -> float:
        """The middle of ``value``'s interval."""
        return (self.index(value) + 0.5) / len(self.options)

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one of the options."""
        return any(_same_option(value, option) for option in self.options)

    def sample(self, rng: np.random.Generator) -> Any:
        """One draw from the prior."""
        return self.from_unit(rng.random())

    def to_dict(self) -> dict[str, Any]:
        """The JSON / TOML form ``{"dist": "choice", "options": [...]}``."""
        return {"dist": "choice", "options": list(self.options)}


def _same_option(a: Any, b: Any) -> bool:
    # True == 1 in Python; as options they are different values.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


Dimension: TypeAlias = Float | Int | Choice
Space: TypeAlias = Mapping[str, Dimension]

_FIELDS = {"float": ("low", "high", "log", "num"), "int": ("low", "high", "log", "num"),
           "choice": ("options",)}
_OPTIONAL = ("log", "num")


def dimension_from_dict(d: Mapping[str, Any]) -> Dimension:
    """Builds a dimension from its ``to_dict`` form (as written in the sweep's TOML config).

    Raises:
        ValueError: unknown ``dist``, missing or unexpected keys, or invalid values.
    """
    if not isinstance(d, Mapping):
        raise ValueError(f"a dimension must be a table with a 'dist' key, got {d!r}")
    dist = d.get("dist")
    if dist not in _FIELDS:
        raise ValueError(f"dist must be one of {sorted(_FIELDS)}, got {dist!r}")
    allowed = {"dist", *_FIELDS[dist]}
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ValueError(f"unexpected key {unknown[0]!r} for dist {dist!r} "
                         f"(allowed: {sorted(allowed)})")
    required = [key for key in _FIELDS[dist] if key not in _OPTIONAL]
    missing = [key for key in required if key not in d]
    if missing:
        raise ValueError(f"dist {dist!r} needs the key {missing[0]!r}")
    if dist == "choice":
        return Choice(d["options"])
    cls = Float if dist == "float" else Int
    return cls(d["low"], d["high"], log=d.get("log", False), num=d.get("num"))


def check_space(space: Any) -> None:
    """Raises ``ValueError`` unless ``space`` is a mapping of names to dimensions."""
    if not isinstance(space, Mapping):
        raise ValueError(f"a search space must be a dict of dimensions, got {type(space).__name__}")
    for name, dim in space.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"search space names must be non-empty strings, got {name!r}")
        if not isinstance(dim, Float | Int | Choice):
            raise ValueError(f"{name}: expected Float, Int or Choice, got {dim!r}")


def space_to_dict(space: Space) -> dict[str, dict[str, Any]]:
    """The JSON form of a space: ``{name: dimension.to_dict()}`` in the space's order."""
    check_space(space)
    return {name: dim.to_dict() for name, dim in space.items()}


def space_from_dict(d: Mapping[str, Any]) -> dict[str, Dimension]:
    """Inverse of ``space_to_dict``; error messages are prefixed with the dimension's name."""
    if not isinstance(d, Mapping):
        raise ValueError(f"a search space must be a table of dimensions, got {d!r}")
    space: dict[str, Dimension] = {}
    for name, dim in d.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"search space names must be non-empty strings, got {name!r}")
        try:
            space[name] = dimension_from_dict(dim)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    return space


def space_from_unit(space: Space, u: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """Maps a point of the unit cube (shape ``[len(space)]``, clipped) to a config."""
    u = np.asarray(u, dtype=float)
    if u.shape != (len(space),):
        raise ValueError(f"expected a unit-cube point of shape ({len(space)},), got {u.shape}")
    return {name: dim.from_unit(float(x)) for (name, dim), x in zip(space.items(), u, strict=True)}


def space_to_unit(space: Space, config: Mapping[str, Any]) -> np.ndarray:
    """The unit-cube point ``[len(space)]`` of a config (keys must match the space)."""
    missing = [name for name in space if name not in config]
    if missing:
        raise ValueError(f"config lacks the hyperparameter {missing[0]!r}")
    return np.array([dim.to_unit(config[name]) for name, dim in space.items()], dtype=float)


def space_sample(space: Space, rng: np.random.Generator) -> dict[str, Any]:
    """One config drawn from the prior (one uniform number per dimension, in the space's order)."""
    return space_from_unit(space, rng.random(len(space)))
