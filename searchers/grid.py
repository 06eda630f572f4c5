"""Grid search: every combination of a few values per dimension, in a fixed order.

Each dimension contributes a list of values (``grid_values``): all options of a ``Choice``;
``num`` evenly spaced points of a ``Float`` range, ends included, spaced on the log scale if the
dimension is log-scaled (``num = 1``: the midpoint, the geometric one on a log scale); for an
``Int``, ``num`` evenly (or log-evenly) spaced points rounded to integers with duplicates dropped,
so a range holds at most ``high - low + 1`` of them. ``num`` defaults to 5 (``Int``: at most 5).
The grid is the Cartesian product of those lists in the space's order, the last dimension varying
fastest (``itertools.product``), so the same space always gives the same sequence whatever the
seed.

A cap (``max_configs``, the sweep's ``--trials``) smaller than the grid keeps a uniformly random
subset of ``max_configs`` distinct grid points, in the order they were drawn with
``np.random.default_rng(seed)``: every point is equally likely to be kept, so every value of
every dimension appears about equally often, whatever the product order. (A stride through the
product order would not do: with ``max_configs`` below the size of the last dimensions' block, it
would never leave the first values of the leading dimensions.) A cap at or above the grid's size
changes nothing.

The grid is finite: asking past its end raises ``ValueError`` saying so. ``make_scheduler`` caps a
sweep's trials at the grid's size (``GridSearch.size``), so schedulers built there finish cleanly.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from searchers.base import Searcher
from searchers.space import Choice, Dimension, Float, Space

__all__ = ["DEFAULT_NUM", "GridSearch", "grid_values"]

DEFAULT_NUM = 5  # points per numeric range when the dimension does not set ``num``


def grid_values(dim: Dimension) -> list[Any]:
    """The values grid search takes along one dimension, in increasing order (plain Python).

    Example:
        >>> grid_values(Float(1e-4, 1e-0, log=True, num=5))
        [0.0001, 0.001, 0.01, 0.1, 1.0]
        >>> grid_values(Int(1, 3))
        [1, 2, 3]
    """
    if isinstance(dim, Choice):
        return list(dim.options)
    num = DEFAULT_NUM if dim.num is None else dim.num
    units = [0.5] if num == 1 else [i / (num - 1) for i in range(num)]
    if isinstance(dim, Float):
        # 12 significant digits: 0.001, not exp's 0.0010000000000000002, in configs and reports.
        return [min(max(float(f"{dim.from_unit(u):.12g}"), dim.low), dim.high) for u in units]
    # Spread over [low, high] itself, not over the unit intervals: the ends are low and high.
    if dim.log:
        lo, hi = math.log(dim.low), math.log(dim.high)
        points = [round(math.exp(lo + u * (hi - lo))) for u in units]
    else:
        points = [round(dim.low + u * (dim.high - dim.low)) for u in units]
    return sorted({int(min(max(k, dim.low), dim.high)) for k in points})


def _check_cap(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"max_configs must be a positive integer or None, got {value!r}")
    return int(value)


class GridSearch(Searcher):
    """Grid search over the product of ``grid_values`` (module docstring: order, cap, end).

    Asks and tells may interleave freely (``synchronous = False``); ``tell`` only tracks the best.

    Example:
        >>> space = {"learning_rate": Float(1e-4, 1e-1, log=True, num=4),
        ...          "activation": Choice(["relu", "tanh"])}
        >>> searcher = GridSearch(space, batch_size=3)
        >>> searcher.size
        8
        >>> [c["activation"] for c in searcher.ask()]
        ['relu', 'tanh', 'relu']

    Args:
        space: the search space (``num`` of each numeric dimension sets its number of points).
        batch_size: configs per ``ask`` (the last ask may return fewer: the rest of the grid).
        seed: chooses the subset when ``max_configs`` is below the grid's size; else unused.
        max_configs: the most configs ever asked (``None``: the whole grid).
    """

    name = "grid"
    synchronous = False
    adaptive = False

    def __init__(self, space: Space, batch_size: int = 1, seed: int = 0,
                 max_configs: int | None = None) -> None:
        super().__init__(space, seed)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size
        self.max_configs = _check_cap(max_configs)
        self.values = [grid_values(dim) for dim in self.space.values()]
        self.grid_size = math.prod(len(v) for v in self.values)  # Python int: never overflows
        self.size = (self.grid_size if self.max_configs is None
                     else min(self.grid_size, self.max_configs))
        self._indices = self._subset() if self.size < self.grid_size else None
        self.num_asked = 0  # configs produced so far: the next one is config_at(num_asked)

    def _subset(self) -> list[tuple[int, ...]]:
        """``size`` distinct index tuples drawn uniformly from the grid (module docstring)."""
        rng = np.random.default_rng(self.seed)
        if self.grid_size <= 4 * self.size:
            # A dense subset: one permutation of every flat index (the grid is small here).
            flat = rng.permutation(self.grid_size)[:self.size]
            return [self._unravel(int(i)) for i in flat]
        # A sparse subset of a possibly huge grid: redraw the (rare) repeats.
        chosen: dict[tuple[int, ...], None] = {}
        while len(chosen) < self.size:
            chosen.setdefault(tuple(int(rng.integers(len(v))) for v in self.values), None)
        return list(chosen)

    def _unravel(self, flat: int) -> tuple[int, ...]:
        """Indices of the ``flat``-th point of the product order (last dimension fastest)."""
        index = []
        for values in reversed(self.values):
            flat, i = divmod(flat, len(values))
            index.append(i)
        return tuple(reversed(index))

    def config_at(self, k: int) -> dict[str, Any]:
        """The k-th config of the sequence, ``0 <= k < size``."""
        if not 0 <= k < self.size:
            raise ValueError(f"grid search has {self.size} configs; there is no config {k}")
        index = self._unravel(k) if self._indices is None else self._indices[k]
        return {name: values[i]
                for name, values, i in zip(self.space, self.values, index, strict=True)}

    def _ask(self) -> list[dict[str, Any]]:
        if self.num_asked >= self.size:
            raise ValueError(f"grid search is exhausted: all {self.size} configs of the grid were "
                             f"asked")
        start = self.num_asked
        self.num_asked = min(self.size, start + self.batch_size)
        return [self.config_at(k) for k in range(start, self.num_asked)]

    def _tell(self, configs: list[dict[str, Any]], losses: np.ndarray) -> None:
        pass  # nothing to learn: the base class keeps the best-so-far

    def _state(self) -> dict[str, Any]:
        # The sequence is a function of (space, seed, max_configs): no need to store it.
        return {"batch_size": self.batch_size, "max_configs": self.max_configs,
                "num_asked": self.num_asked}

    @classmethod
    def _from_state(cls, space: Space, state: Mapping[str, Any]) -> GridSearch:
        cap = state["max_configs"]
        searcher = cls(space, batch_size=int(state["batch_size"]), seed=int(state["seed"]),
                       max_configs=None if cap is None else int(cap))
        searcher.num_asked = int(state["num_asked"])
        return searcher
