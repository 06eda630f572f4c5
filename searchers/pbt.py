"""Population-based training (Jaderberg et al. 2017, "Population Based Training of Neural
Networks", arXiv:1711.09846): the exploit / explore policy, numpy only.

A population of ``population_size`` members trains side by side; every ``ready`` interval the
trainer evaluates them all and tells their losses. Members are ranked (lowest loss first, ties by
member index, failures last); the bottom ``fraction`` *exploit*: each copies the weights and the
configuration of a member drawn uniformly from the top ``fraction`` (the paper's "truncation
selection", section 4.1), then *explores*: every dimension of the copied configuration is, with
probability ``resample_probability``, drawn afresh from the prior, else a number is multiplied
by one of ``factors`` (0.8 or 1.2) and clipped to its range, and a choice is kept. These are Ray
Tune's ``PopulationBasedTraining`` defaults (quantile 0.25 with at most half the population in
each quantile, resample probability 0.25, factors 1.2 / 0.8), except that Ray moves a choice to a
neighbouring option where this keeps it.

The trainer owns the weights; this class owns only the decisions: ``tell`` turns losses into
``Decision(dst, src, before, after)`` rows (``decisions``), and the next ``ask`` returns every
member's configuration after them. Dimensions named in ``keep`` are never perturbed (a member
inherits its parent's value: sizes that the copied weights were trained with), and members that
differ in a ``group_by`` dimension never exploit each other (the trainer cannot move weights
between programs of different shapes); both are ordinary space dimensions to this class.

Determinism: member ``k``'s first configuration is ``RandomSearch``'s ``k``-th for the same seed
(drawn with ``np.random.default_rng([seed, k])``), so PBT starts from the population random
search would train, and round ``r``'s decisions are drawn with ``np.random.default_rng([seed, 1,
r])``: a seed and the sequence of losses fix every decision, and ``state_dict`` restores the
searcher exactly.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from searchers.base import Searcher
from searchers.space import Float, Int, Space, space_sample

__all__ = ["PBT", "Decision", "quantile_size"]


@dataclasses.dataclass(frozen=True)
class Decision:
    """One exploit / explore step: member ``dst`` takes member ``src``'s weights and the
    configuration ``after`` (``src``'s, explored) in place of ``before`` (its own)."""

    dst: int
    src: int
    before: dict[str, Any]
    after: dict[str, Any]
    src_loss: float  # inf when failed
    dst_loss: float

    def to_dict(self) -> dict[str, Any]:
        return {"dst": self.dst, "src": self.src, "before": self.before, "after": self.after,
                "src_loss": _encode(self.src_loss), "dst_loss": _encode(self.dst_loss)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Decision:
        return cls(int(d["dst"]), int(d["src"]), dict(d["before"]), dict(d["after"]),
                   _decode(d["src_loss"]), _decode(d["dst_loss"]))


def _encode(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _decode(v: float | None) -> float:
    return math.inf if v is None else float(v)


def quantile_size(members: int, fraction: float) -> int:
    """Members in the top (and in the bottom) quantile of a group of ``members``: Ray Tune's
    ``ceil(members * fraction)``, at most half the group so the two never overlap."""
    return min(math.ceil(members * fraction), members // 2)


class PBT(Searcher):
    """The PBT policy over ``population_size`` members.

    Args:
        space: the search space.
        population_size: members, one config each; member ``i`` is index ``i`` of every ask.
        seed: fixes the first configurations and every decision.
        fraction: the share of each group in the bottom (and top) quantile, in (0, 0.5].
        resample_probability: chance that an explored dimension is drawn from the prior, [0, 1].
        factors: what an explored number is multiplied by, one drawn uniformly.
        keep: dimensions copied from the parent, never perturbed.
        group_by: dimensions members must share to exploit each other (never perturbed).

    Example:
        >>> pbt = PBT({"learning_rate": Float(1e-4, 1e-1, log=True)}, population_size=4, seed=0)
        >>> configs = pbt.ask()
        >>> pbt.tell(configs, [0.1, 0.4, 0.2, 0.3])
        >>> [(d.dst, d.src) for d in pbt.decisions]    # the worst copies the best
        [(1, 0)]
    """

    name = "pbt"
    synchronous = True

    def __init__(self, space: Space, population_size: int = 8, seed: int = 0, *,
                 fraction: float = 0.25, resample_probability: float = 0.25,
                 factors: Sequence[float] = (0.8, 1.2), keep: Sequence[str] = (),
                 group_by: Sequence[str] = ()) -> None:
        super().__init__(space, seed)
        if (isinstance(population_size, bool) or not isinstance(population_size, int)
                or population_size < 1):
            raise ValueError(f"population_size must be a positive integer, got "
                             f"{population_size!r}")
        self.population_size = population_size
        self.fraction = _in_range(fraction, "fraction", 0.0, 0.5, open_low=True)
        self.resample_probability = _in_range(resample_probability, "resample_probability",
                                              0.0, 1.0)
        self.factors = [_in_range(f, "factors", 0.0, math.inf, open_low=True) for f in factors]
        if not self.factors:
            raise ValueError("factors must hold at least one number")
        for what, names in (("keep", keep), ("group_by", group_by)):
            unknown = [n for n in names if n not in self.space]
            if unknown:
                raise ValueError(f"{what} names {', '.join(map(repr, unknown))}, not in the space")
        self.keep = list(keep)
        self.group_by = list(group_by)
        self.round = 0  # tells so far
        self.configs: list[dict[str, Any]] = [
            space_sample(self.space, np.random.default_rng([self.seed, k]))
            for k in range(population_size)
        ]
        self.decisions: list[Decision] = []  # the last tell's

    def _ask(self) -> list[dict[str, Any]]:
        return self.configs

    def _tell(self, configs: list[dict[str, Any]], losses: np.ndarray) -> None:
        if configs != self.configs:
            raise ValueError("PBT must be told the losses of every member's current config, in "
                             "member order (the last ask)")
        rng = np.random.default_rng([self.seed, 1, self.round])
        decisions = []
        groups: dict[tuple, list[int]] = {}
        for i, config in enumerate(configs):
            key = tuple(repr(config[name]) for name in self.group_by)
            groups.setdefault(key, []).append(i)
        for key in sorted(groups):
            members = groups[key]
            ranked = sorted(members, key=lambda i: (losses[i], i))
            q = quantile_size(len(members), self.fraction)
            if q == 0:
                continue
            top, bottom = ranked[:q], ranked[-q:]
            for dst in sorted(bottom):
                src = top[int(rng.integers(q))]
                after = self.explore(configs[src], rng)
                decisions.append(Decision(dst, src, dict(configs[dst]), after,
                                          float(losses[src]), float(losses[dst])))
        decisions.sort(key=lambda d: d.dst)
        self.configs = [dict(c) for c in configs]
        for d in decisions:
            self.configs[d.dst] = dict(d.after)
        self.decisions = decisions
        self.round += 1

    def explore(self, config: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """``config`` perturbed: per dimension (in space order, not in ``keep`` / ``group_by``)
        one uniform draw decides a resample from the prior; otherwise a number is scaled by a
        factor drawn from ``factors`` and clipped to its range, and a choice is kept."""
        out = dict(config)
        for name, dim in self.space.items():
            if name in self.keep or name in self.group_by:
                continue
            if rng.random() < self.resample_probability:
                out[name] = dim.sample(rng)
            elif isinstance(dim, Float):
                factor = self.factors[int(rng.integers(len(self.factors)))]
                out[name] = min(max(float(config[name]) * factor, dim.low), dim.high)
            elif isinstance(dim, Int):
                factor = self.factors[int(rng.integers(len(self.factors)))]
                out[name] = int(min(max(round(config[name] * factor), dim.low), dim.high))
            # A choice not resampled is kept: options have no order to step along.
        return out

    def _state(self) -> dict[str, Any]:
        return {"population_size": self.population_size, "fraction": self.fraction,
                "resample_probability": self.resample_probability, "factors": self.factors,
                "keep": self.keep, "group_by": self.group_by, "round": self.round,
                "configs": self.configs, "decisions": [d.to_dict() for d in self.decisions]}

    @classmethod
    def _from_state(cls, space: Space, state: Mapping[str, Any]) -> PBT:
        searcher = cls(space, int(state["population_size"]), int(state["seed"]),
                       fraction=float(state["fraction"]),
                       resample_probability=float(state["resample_probability"]),
                       factors=[float(f) for f in state["factors"]], keep=state["keep"],
                       group_by=state["group_by"])
        searcher.round = int(state["round"])
        searcher.configs = [dict(c) for c in state["configs"]]
        searcher.decisions = [Decision.from_dict(d) for d in state["decisions"]]
        return searcher


def _in_range(value: Any, what: str, low: float, high: float, *, open_low: bool = False
              ) -> float:
    ok = (not isinstance(value, bool) and isinstance(value, numbers.Real)
          and math.isfinite(value) and (low < value if open_low else low <= value)
          and value <= high)
    if not ok:
        left = "(" if open_low else "["
        raise ValueError(f"{what} must be a number in {left}{low:g}, {high:g}], got {value!r}")
    return float(value)
