"""Name -> class registries and the factory the sweep driver uses.

``make_scheduler(name, space, ...)`` builds any method behind the one ``Scheduler`` interface:
``random``, ``grid``, ``cmaes``, ``tpe`` and ``gp`` run each trial as one job at the maximum budget
(``FullBudget``); ``sha``, ``hyperband`` and ``asha`` are multi-fidelity and draw new
configurations from ``sampler`` (any of the five). ``restore_scheduler(space, state)`` rebuilds
any of them from its ``state_dict``.

A grid is finite: when it has fewer configurations than ``max_trials``, the scheduler is built
with ``max_trials`` lowered to the grid's size (with a ``UserWarning`` saying so), so it finishes
after the whole grid instead of asking past its end.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from searchers.asha import ASHA
from searchers.base import SEARCHERS, Searcher
from searchers.cma_es import CMAES
from searchers.full_budget import FullBudget
from searchers.gp import GP
from searchers.grid import GridSearch
from searchers.hyperband import Hyperband
from searchers.random_search import RandomSearch
from searchers.scheduler import Scheduler, check_positive_int
from searchers.space import Space
from searchers.successive_halving import SuccessiveHalving
from searchers.tpe import TPE

__all__ = ["MULTI_FIDELITY", "SAMPLERS", "SCHEDULERS", "SEARCHERS", "make_sampler",
           "make_scheduler", "restore_scheduler"]

SCHEDULERS: tuple[str, ...] = ("random", "grid", "cmaes", "tpe", "gp", "sha", "hyperband", "asha")
SAMPLERS: tuple[str, ...] = ("random", "grid", "cmaes", "tpe", "gp")  # for make_sampler, by name

_MULTI_FIDELITY: dict[str, type[SuccessiveHalving | Hyperband | ASHA]] = {
    "sha": SuccessiveHalving,
    "hyperband": Hyperband,
    "asha": ASHA,
}
# The schedulers that pause trials between rungs (the rest run each trial once, to the end).
MULTI_FIDELITY: tuple[str, ...] = tuple(_MULTI_FIDELITY)
_BY_KIND: dict[str, type[Scheduler]] = {
    cls.kind: cls for cls in (FullBudget, SuccessiveHalving, Hyperband, ASHA)
}


def make_sampler(sampler: str | Searcher, space: Space, *, population: int | None = None,
                 seed: int = 0, max_trials: int | None = None) -> Searcher:
    """A searcher by name (one of ``SAMPLERS``), or ``sampler`` if it is one.

    Random search, grid search, TPE and GP get ``batch_size=1`` (one config per new trial: TPE
    and GP propose it from every loss told so far, GP believing the configs still running at
    their predicted loss). All three model-based searchers start from the seed's Sobol design
    (``searchers.design``): CMA-ES's first generation, GP's configs until it has ``n_initial``
    losses, TPE's first ``max(population, n_startup)`` configs. Grid search keeps at most
    ``max_trials`` configurations (a seeded random subset when the grid is larger:
    ``searchers.grid``). CMA-ES gets
    ``population_size = population`` (at least 2, which CMA-ES needs; ``None``: its default
    ``4 + floor(3 ln n)``).
    """
    if isinstance(sampler, Searcher):
        return sampler
    if sampler == "random":
        return RandomSearch(space, batch_size=1, seed=seed)
    if sampler == "grid":
        return GridSearch(space, batch_size=1, seed=seed, max_configs=max_trials)
    if sampler == "tpe":
        design = {} if population is None else {"n_design": max(population, 10)}
        return TPE(space, batch_size=1, seed=seed, **design)
    if sampler == "gp":
        return GP(space, batch_size=1, seed=seed)
    if sampler == "cmaes":
        return CMAES(space, population_size=None if population is None else max(2, population),
                     seed=seed)
    raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)} or a Searcher, "
                     f"got {sampler!r}")


def make_scheduler(name: str, space: Space, *, max_trials: int, max_budget: int,
                   min_budget: int | None = None, eta: int = 3, population: int | None = None,
                   seed: int = 0, sampler: str | Searcher = "random") -> Scheduler:
    """Builds the scheduler ``name`` (one of ``SCHEDULERS``).

    Args:
        name: ``random`` / ``grid`` / ``cmaes`` / ``tpe`` / ``gp`` (black-box, one job per trial
            at ``max_budget``), or ``sha`` / ``hyperband`` / ``asha`` (multi-fidelity).
        space: the search space.
        max_trials: configurations the sweep tries (for multi-fidelity: started at the lowest
            budget); never more trials than this are created (nor more than a grid holds).
        max_budget: steps of a trial that runs to the end.
        min_budget: lowest rung's budget (multi-fidelity only; default ``max(1, R // eta**3)``).
        eta: reduction factor (multi-fidelity only), an integer >= 2.
        population: the driver's slot count; CMA-ES's population size (``cmaes``, or the ``cmaes``
            sampler).
        seed: seed of the searcher / sampler.
        sampler: where multi-fidelity schedulers get new configurations: a name in ``SAMPLERS``
            or any ``Searcher`` over ``space`` (ignored by the black-box names).

    Example:
        >>> scheduler = make_scheduler("asha", space, max_trials=64, max_budget=2000)
        >>> jobs = scheduler.ask(8)
    """
    max_trials = check_positive_int(max_trials, "max_trials")
    if name not in SAMPLERS and name not in _MULTI_FIDELITY:
        raise ValueError(f"unknown scheduler {name!r} (known: {', '.join(SCHEDULERS)})")
    source = make_sampler(name if name in SAMPLERS else sampler, space, population=population,
                          seed=seed, max_trials=max_trials)
    if isinstance(source, GridSearch) and source.size < max_trials:
        warnings.warn(f"grid search has {source.size} configurations, fewer than max_trials="
                      f"{max_trials}: the sweep tries {source.size}", UserWarning, stacklevel=2)
        max_trials = source.size
    if name in SAMPLERS:
        return FullBudget(source, max_budget=max_budget, max_trials=max_trials)
    return _MULTI_FIDELITY[name](
        space, max_trials=max_trials, max_budget=max_budget, min_budget=min_budget, eta=eta,
        sampler=source)


def restore_scheduler(space: Space, state: Mapping[str, Any]) -> Scheduler:
    """Rebuilds any scheduler from its ``state_dict``; it continues exactly as the original."""
    kind = state.get("kind") if isinstance(state, Mapping) else None
    if kind not in _BY_KIND:
        raise ValueError(f"unknown scheduler kind {kind!r} in state")
    return _BY_KIND[kind].from_state_dict(space, state)
