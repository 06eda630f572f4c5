"""ASHA, asynchronous successive halving (Li et al. 2020, Algorithm 2).

Every time a slot frees up (``ask``), ASHA looks for a promotion from the highest rung down: a
paused trial of rung k that ranks in the top ``floor(|rung k| / eta)`` of the trials told at
rung k (failed trials count in |rung k| and rank last, and are never promoted) and was not yet
promoted goes to rung k + 1. If there is none, a new trial starts at the bottom rung. So no slot
waits for a rung to complete while configurations remain, at the price of promotions decided on
partial rungs.
Rungs use the ladder of ``searchers.rungs`` (minimum early-stopping rate s = 0).

With ``max_trials`` configurations created and nothing left to promote, the remaining paused trials
are stopped and the scheduler is finished.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Mapping
from typing import Any

from searchers.base import Searcher, decode_loss, encode_loss
from searchers.rungs import ladder
from searchers.scheduler import PAUSED, Job, Scheduler
from searchers.space import Space

__all__ = ["ASHA"]


class ASHA(Scheduler):
    """Asynchronous successive halving: promote as soon as a trial is in its rung's top 1/eta.

    New configurations come from ``sampler`` (default: ``RandomSearch(space, seed=seed)``). With a
    synchronous sampler (CMA-ES) new trials wait for the sampler's batch (see ``scheduler``), so
    slots may idle; with random search every free slot is filled while trials remain.

    Example:
        >>> asha = ASHA(space, max_trials=200, max_budget=2700, min_budget=100, eta=3)
        >>> jobs = asha.ask(16)                      # 16 new trials at budget 100
        >>> asha.tell(jobs[0].trial_id, 100, 0.31)   # its slot is free again:
        >>> asha.ask(1)                              # a promotion if one is due, else a new trial
    """

    kind = "asha"

    def __init__(self, space: Space, *, max_trials: int, max_budget: int,
                 min_budget: int | None = None, eta: int = 3, sampler: Searcher | None = None,
                 seed: int = 0) -> None:
        super().__init__(space, sampler, max_trials, max_budget, seed)
        self.min_budget, self.eta, self.budgets = ladder(min_budget, self.max_budget, eta)
        # Per rung: trial id -> loss at that rung's budget, in the order told.
        self.rungs: list[dict[int, float]] = [{} for _ in self.budgets]
        # Per rung below the top: trials promoted out of it.
        self.promoted: list[set[int]] = [set() for _ in self.budgets[:-1]]
        self._index()

    def _index(self) -> None:
        """Per rung, its entries ``(loss, trial)`` in order (failures, ``inf``, last), and below
        the top a heap of the finite ones that may still be promoted: with them an ask finds
        the best candidate and its rank in O(log |rung|) instead of sorting the rung again after
        every tell (quadratic: minutes at tens of thousands of trials)."""
        self._order = [sorted((x, t) for t, x in rung.items()) for rung in self.rungs]
        self._candidates = [[(x, t) for x, t in order if math.isfinite(x)]
                            for order in self._order[:-1]]
        for heap in self._candidates:
            heapq.heapify(heap)

    def _promotable(self, k: int) -> int | None:
        """The best not-yet-promoted paused trial in rung k's top ``floor(|rung k| / eta)``
        (ties: lower id), failures never."""
        heap = self._candidates[k]
        # A trial that was promoted out of rung k, or stopped, never comes back to it.
        while heap and (heap[0][1] in self.promoted[k]
                        or self.trials[heap[0][1]].status != PAUSED):
            heapq.heappop(heap)
        if heap and bisect.bisect_left(self._order[k], heap[0]) < len(self.rungs[k]) // self.eta:
            return heap[0][1]
        return None

    def _next_job(self) -> Job | None:
        for k in reversed(range(len(self.budgets) - 1)):
            t = self._promotable(k)
            if t is not None:
                self.promoted[k].add(t)
                return self._continue(t, self.budgets[k + 1])
        return self._create(self.budgets[0])

    def _ask(self, n: int) -> list[Job]:
        jobs: list[Job] = []
        while len(jobs) < n and (job := self._next_job()) is not None:
            jobs.append(job)
        return jobs

    def _on_result(self, trial_id: int, budget: int, loss: float) -> None:
        k = self.budgets.index(budget)
        self.rungs[k][trial_id] = loss
        bisect.insort(self._order[k], (loss, trial_id))
        if k < len(self._candidates) and math.isfinite(loss):
            heapq.heappush(self._candidates[k], (loss, trial_id))

    def _exhausted(self) -> bool:
        return (len(self.trials) >= self.max_trials
                and all(self._promotable(k) is None for k in range(len(self.promoted))))

    def _settings(self) -> dict[str, Any]:
        return {"min_budget": self.min_budget, "eta": self.eta}

    def _state(self) -> dict[str, Any]:
        return {"rungs": [[[t, encode_loss(x)] for t, x in rung.items()] for rung in self.rungs],
                "promoted": [sorted(p) for p in self.promoted]}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        self.rungs = [{int(t): decode_loss(x) for t, x in rung} for rung in state["rungs"]]
        self.promoted = [{int(t) for t in p} for p in state["promoted"]]
        self._index()

    @classmethod
    def _construct(cls, space: Space, sampler: Searcher, state: Mapping[str, Any]) -> ASHA:
        return cls(space, max_trials=int(state["max_trials"]), max_budget=int(state["max_budget"]),
                   min_budget=int(state["min_budget"]), eta=int(state["eta"]), sampler=sampler)
