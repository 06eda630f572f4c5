"""The black-box scheduler: any ``Searcher`` run with every trial as one job at the full budget."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from searchers.base import Searcher
from searchers.scheduler import Job, Scheduler
from searchers.space import Space

__all__ = ["FullBudget"]


class FullBudget(Scheduler):
    """Runs any ``Searcher`` black-box: every trial is one job at ``max_budget``.

    A synchronous searcher (CMA-ES) hands out a generation's configs, then ``ask`` returns no new
    job until all of them are told; then the searcher is told the generation and asked the next.
    An asynchronous one (random search) refills every free slot at once.

    Example:
        >>> scheduler = FullBudget(CMAES(space, population_size=8), max_budget=1000,
        ...                        max_trials=64)
        >>> while not scheduler.finished:
        ...     for job in scheduler.ask(8):
        ...         scheduler.tell(job.trial_id, job.budget, train(job.config, job.budget))
    """

    kind = "full_budget"

    def __init__(self, searcher: Searcher, max_budget: int, max_trials: int) -> None:
        if not isinstance(searcher, Searcher):
            raise ValueError(f"FullBudget needs a Searcher, got {type(searcher).__name__}")
        super().__init__(searcher.space, searcher, max_trials, max_budget)

    @property
    def name(self) -> str:
        return self.sampler.name

    @property
    def asks_ahead(self) -> bool:
        """A searcher that learns nothing from the losses (random, grid) asks the same either
        way."""
        return not self.sampler.adaptive

    def _ask(self, n: int) -> list[Job]:
        jobs: list[Job] = []
        while len(jobs) < n and (job := self._create(self.max_budget)) is not None:
            jobs.append(job)
        return jobs

    def _on_result(self, trial_id: int, budget: int, loss: float) -> None:
        pass  # one job per trial: the base class already completed / stopped it

    def _exhausted(self) -> bool:
        return len(self.trials) >= self.max_trials

    @classmethod
    def _construct(cls, space: Space, sampler: Searcher, state: Mapping[str, Any]) -> FullBudget:
        return cls(sampler, int(state["max_budget"]), int(state["max_trials"]))
