"""The Searcher protocol: ``ask`` a batch of configs, ``tell`` their losses, save and restore.

A shared base does the common work (as evosax's ``EvolutionaryAlgorithm`` does): it validates the
space and seed, turns NaN / inf losses into ``inf`` so that failed configs rank last, keeps the
best-so-far ``best_config`` / ``best_loss``, and wraps the subclass's state in a JSON-serialisable
dict that also records the searcher's name and space. Subclasses implement ``_ask``, ``_tell``,
``_state`` and ``_from_state``, and register themselves by ``name`` (see ``SEARCHERS``).

Losses are minimised. Non-finite losses are stored as ``null`` in state dicts so that they pass
``json.dumps(..., allow_nan=False)``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from searchers.design import sobol_design
from searchers.space import Space, check_space, space_from_unit, space_to_dict, space_to_unit

__all__ = [
    "SEARCHERS",
    "ModelBased",
    "Searcher",
    "check_seed",
    "clean_loss",
    "decode_loss",
    "encode_loss",
    "searcher_from_state_dict",
]

# name -> Searcher subclass; filled by Searcher.__init_subclass__ (evosax-style registry).
SEARCHERS: dict[str, type[Searcher]] = {}


def clean_loss(loss: Any) -> float:
    """A loss as a Python float; NaN and +-inf (failed) become ``inf`` so they rank last."""
    if isinstance(loss, bool) or not isinstance(loss, numbers.Real | np.floating | np.integer):
        raise ValueError(f"a loss must be a number, got {loss!r}")
    loss = float(loss)
    return loss if math.isfinite(loss) else math.inf


def encode_loss(loss: float) -> float | None:
    """A loss for a JSON state dict: finite floats as they are, failures as ``None``."""
    return loss if math.isfinite(loss) else None


def decode_loss(value: float | None) -> float:
    """Inverse of ``encode_loss``."""
    return math.inf if value is None else float(value)


def check_seed(seed: Any) -> int:
    """Returns ``seed`` as an int; ``ValueError`` unless it is a non-negative integer."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def check_state_space(space: Space, state: Mapping[str, Any]) -> None:
    """Refuses to restore a state saved for another search space (names, order or priors)."""
    saved = state.get("space")
    # Compare item lists, not dicts: the order fixes the unit-cube coordinates.
    if not isinstance(saved, Mapping) or list(space_to_dict(space).items()) != list(saved.items()):
        raise ValueError("the state was saved for a different search space")


class Searcher:
    """Base class of black-box searchers over a search space (losses are minimised).

    Attributes:
        space: the search space, ``{name: Float | Int | Choice}``.
        seed: the seed; together with the history of tells it fixes every ask.
        best_config: the config with the lowest finite loss told so far (``None`` before).
        best_loss: its loss (``inf`` before any finite loss).
        num_told: how many (config, loss) pairs were told.
        synchronous: class constant; ``True`` if every ``tell`` must receive exactly the batch of
            the last ``ask`` before the next ``ask`` (a generation). ``False`` if asks and tells may
            interleave freely, one config at a time (schedulers then tell each loss as it settles).
        adaptive: class constant; ``False`` if what ``ask`` returns never depends on the losses
            told (random search, grid search): such a searcher may be asked before the losses
            of the configs in flight arrive, with the same result (``Scheduler.asks_ahead``).

    Subclasses must be deterministic: the same seed and the same tells give the same asks, and a
    searcher restored from ``state_dict`` asks exactly what the original would have asked.
    """

    name: ClassVar[str] = ""
    synchronous: ClassVar[bool] = True
    adaptive: ClassVar[bool] = True
    # A model of the losses that a multi-fidelity scheduler should build from one budget's
    # results at a time (BOHB): such a searcher implements ``fresh``, ``min_observations`` and
    # ``set_pending``.
    learns_per_budget: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if name:
            if name in SEARCHERS and SEARCHERS[name] is not cls:
                raise ValueError(f"a searcher named {name!r} is already registered")
            SEARCHERS[name] = cls

    def __init__(self, space: Space, seed: int = 0) -> None:
        check_space(space)
        self.space: dict[str, Any] = dict(space)
        self.seed = check_seed(seed)
        self.best_config: dict[str, Any] | None = None
        self.best_loss = math.inf
        self.num_told = 0

    def ask(self) -> list[dict[str, Any]]:
        """The next batch of configs to evaluate (fresh dicts the caller may keep)."""
        return [dict(config) for config in self._ask()]

    def tell(self, configs: Sequence[Mapping[str, Any]], losses: Sequence[float]) -> None:
        """Reports the losses of evaluated configs; NaN / inf mean failed and rank last.

        Raises:
            ValueError: lengths differ, a loss is not a number, or (for synchronous searchers)
                the configs are not the batch of the last ask.
        """
        configs = [dict(config) for config in configs]
        clean = [clean_loss(loss) for loss in losses]
        if len(configs) != len(clean):
            raise ValueError(f"tell got {len(configs)} configs but {len(clean)} losses")
        self._tell(configs, np.array(clean, dtype=float))
        for config, loss in zip(configs, clean, strict=True):
            if loss < self.best_loss:
                self.best_config, self.best_loss = config, loss
        self.num_told += len(configs)

    def fresh(self) -> Searcher:
        """For ``learns_per_budget`` searchers: the same settings and seed, told nothing, whose
        asks continue after this one's (it never repeats a config this one drew)."""
        raise NotImplementedError(f"{type(self).__name__} does not learn per budget")

    def set_pending(self, configs: Sequence[Mapping[str, Any]]) -> None:
        """For ``learns_per_budget`` searchers: the configs being evaluated now, replacing those
        the searcher counted as pending (asked, not told). A scheduler that tells it only one
        budget's losses keeps this list to the configs actually in flight."""
        raise NotImplementedError(f"{type(self).__name__} does not learn per budget")

    @property
    def min_observations(self) -> int:
        """Finite losses this searcher needs before its model guides its asks."""
        return 1

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue identically, as JSON-serialisable data."""
        return {
            "name": self.name,
            "space": space_to_dict(self.space),
            "seed": self.seed,
            "best_config": self.best_config,
            "best_loss": encode_loss(self.best_loss),
            "num_told": self.num_told,
            **self._state(),
        }

    @classmethod
    def from_state_dict(cls, space: Space, state: Mapping[str, Any]) -> Searcher:
        """Rebuilds a searcher saved by ``state_dict`` over the same ``space``."""
        if state.get("name") != cls.name:
            raise ValueError(f"the state is for searcher {state.get('name')!r}, not {cls.name!r}")
        check_state_space(space, state)
        searcher = cls._from_state(space, state)
        searcher.best_config = state["best_config"]
        searcher.best_loss = decode_loss(state["best_loss"])
        searcher.num_told = int(state["num_told"])
        return searcher

    # -- what subclasses implement --------------------------------------------------------------

    def _ask(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _tell(self, configs: list[dict[str, Any]], losses: np.ndarray) -> None:
        """``losses``: ``[len(configs)]`` floats, failures already ``inf``."""
        raise NotImplementedError

    def _state(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def _from_state(cls, space: Space, state: Mapping[str, Any]) -> Searcher:
        raise NotImplementedError


class ModelBased(Searcher):
    """The history a model-based searcher (TPE, GP) learns from, and its initial design.

    Keeps what both models need and did identically: the unit-cube point and loss of every told
    config (in tell order), the configs asked and not yet told (``pending``: TPE's constant liars,
    GP's Kriging believers), the count of configs asked (config k draws from
    ``np.random.default_rng([seed, k])``), their state-dict form, and the initial design: point k
    of the seed's scrambled Sobol sequence (``design.sobol_design``), the first ``n_design`` of
    which ``_ask_design`` hands out.

    Asks and tells may interleave freely (``synchronous = False``): ``tell`` accepts any configs of
    the space, asked or not, in any grouping and order.

    Attributes:
        n_design: configs taken from the initial design (0: none).
        num_asked: configs produced so far.
        points: unit-cube point ``[dims]`` of each told config, in tell order.
        losses: their losses (failures: inf).
        pending: configs asked and not yet told.
    """

    synchronous = False
    learns_per_budget = True

    def __init__(self, space: Space, seed: int = 0, n_design: int = 0) -> None:
        super().__init__(space, seed)
        if (isinstance(n_design, bool) or not isinstance(n_design, numbers.Integral)
                or n_design < 0):
            raise ValueError(f"n_design must be a non-negative integer, got {n_design!r}")
        self.n_design = int(n_design)
        self.num_asked = 0
        self.points: list[list[float]] = []
        self.losses: list[float] = []
        self.pending: list[dict[str, Any]] = []
        self._design: np.ndarray | None = None  # [n_design, dims], built on first use
        self._units: dict[tuple, np.ndarray] = {}  # a config's values -> its unit point

    def unit_points(self, configs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """The unit-cube points ``[len(configs), dims]`` of ``configs``, each converted once:
        the pending configs (the liars) are converted again at every ask otherwise, quadratic
        in the trials."""
        rows = []
        for config in configs:
            key = tuple(config.get(name) for name in self.space)
            try:
                point = self._units.get(key)
            except TypeError:  # an unhashable value (a list option): converted every time
                rows.append(space_to_unit(self.space, config))
                continue
            if point is None:
                point = self._units[key] = space_to_unit(self.space, config)
            rows.append(point)
        return np.array(rows, dtype=float).reshape(len(rows), len(self.space))

    def design_point(self, k: int) -> np.ndarray:
        """Point k ``[dims]`` of the seed's design sequence (``design.sobol_design``)."""
        if self._design is None or len(self._design) <= k:
            self._design = sobol_design(max(k + 1, self.n_design), len(self.space), self.seed)
        return self._design[k]

    def num_finite(self) -> int:
        """Finite losses told so far."""
        return int(np.isfinite(np.array(self.losses, dtype=float)).sum())

    def set_pending(self, configs: Sequence[Mapping[str, Any]]) -> None:
        """The configs being evaluated now, replacing the pending list (see ``Searcher``)."""
        self.pending = [dict(config) for config in configs]

    def _tell(self, configs: list[dict[str, Any]], losses: np.ndarray) -> None:
        # Convert every config first: a config outside the space refuses the whole tell.
        points = self.unit_points(configs).tolist()  # the pending ones: converted already
        self.points += points
        self.losses += losses.tolist()
        for config in configs:
            if config in self.pending:
                self.pending.remove(config)

    def _ask_design(self) -> dict[str, Any] | None:
        """Config ``num_asked`` from the design (counted as asked and pending), or None past
        the first ``n_design``."""
        if self.num_asked >= self.n_design:
            return None
        config = space_from_unit(self.space, self.design_point(self.num_asked))
        self.num_asked += 1
        self.pending.append(config)
        return config

    def _history_state(self) -> dict[str, Any]:
        """The shared part of ``_state``."""
        return {
            "n_design": self.n_design,
            "num_asked": self.num_asked,
            "points": self.points,
            "losses": [encode_loss(loss) for loss in self.losses],
            "pending": self.pending,
        }

    def _restore_history(self, state: Mapping[str, Any]) -> None:
        """Inverse of ``_history_state`` (``n_design`` goes to the constructor)."""
        self.num_asked = int(state["num_asked"])
        self.points = [[float(x) for x in point] for point in state["points"]]
        self.losses = [decode_loss(loss) for loss in state["losses"]]
        self.pending = [dict(config) for config in state["pending"]]
        if len(self.points) != len(self.losses):
            raise ValueError(f"{type(self).__name__} state: points and losses differ in length")


def searcher_from_state_dict(space: Space, state: Mapping[str, Any]) -> Searcher:
    """Rebuilds any registered searcher from its ``state_dict`` (dispatching on its name)."""
    name = state.get("name") if isinstance(state, Mapping) else None
    if name not in SEARCHERS:
        raise ValueError(f"unknown searcher {name!r} in state (known: {sorted(SEARCHERS)})")
    return SEARCHERS[name].from_state_dict(space, state)
