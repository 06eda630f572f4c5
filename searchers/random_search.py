"""Random search (Bergstra & Bengio, 2012): independent draws from the prior.

The k-th configuration the searcher ever produces (k = 0, 1, 2, ...) is drawn with
``np.random.default_rng([seed, k])``, one uniform number per dimension mapped through the space's
unit-cube mapping, so it depends only on ``(seed, k)``: a seed names the same configurations
whatever the batch sizes of ``ask`` were (DESIGN principle 2).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from searchers.base import Searcher
from searchers.space import Space, space_sample

__all__ = ["RandomSearch"]


class RandomSearch(Searcher):
    """Samples configs from the prior (log scales log-uniformly); ``tell`` only tracks the best.

    Asks and tells may interleave freely (``synchronous = False``): ``tell`` accepts any configs.

    Example:
        >>> space = {"learning_rate": Float(1e-5, 1e-1, log=True), "depth": Int(1, 4)}
        >>> searcher = RandomSearch(space, batch_size=4, seed=0)
        >>> configs = searcher.ask()                  # 4 configs: the 0th to the 3rd
        >>> searcher.tell(configs, [0.3, 0.1, float("nan"), 0.2])
        >>> searcher.best_loss
        0.1
        >>> searcher.config_at(5) == RandomSearch(space, batch_size=6).ask()[5]
        True
    """

    name = "random"
    synchronous = False
    adaptive = False

    def __init__(self, space: Space, batch_size: int = 1, seed: int = 0) -> None:
        super().__init__(space, seed)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size
        self.num_asked = 0  # configurations produced so far: the next one is config_at(num_asked)

    def config_at(self, k: int) -> dict[str, Any]:
        """The k-th configuration of this seed (a function of ``(seed, k)`` only)."""
        return space_sample(self.space, np.random.default_rng([self.seed, k]))

    def _ask(self) -> list[dict[str, Any]]:
        start, self.num_asked = self.num_asked, self.num_asked + self.batch_size
        return [self.config_at(k) for k in range(start, self.num_asked)]

    def _tell(self, configs: list[dict[str, Any]], losses: np.ndarray) -> None:
        # Nothing to learn: the base class already keeps the best-so-far.
        pass

    def _state(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "num_asked": self.num_asked}

    @classmethod
    def _from_state(cls, space: Space, state: Mapping[str, Any]) -> RandomSearch:
        searcher = cls(space, batch_size=int(state["batch_size"]), seed=int(state["seed"]))
        searcher.num_asked = int(state["num_asked"])
        return searcher
