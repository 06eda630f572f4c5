"""Synchronous successive halving (Jamieson & Talwalkar 2016), and the bracket machinery Hyperband
shares.

A *bracket* is one run of successive halving: ``n_0`` new trials at the bottom budget; when every
trial of rung k has reported, the best ``n_{k+1}`` (finite losses, ties broken by trial id) are
promoted to rung k + 1 and the rest are stopped; the top rung trains to the maximum budget. Rung
sizes and budgets are in ``searchers.rungs``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from searchers.base import Searcher
from searchers.rungs import ladder, sha_rung_sizes
from searchers.scheduler import Job, Scheduler
from searchers.space import Space

__all__ = ["Bracket", "BracketScheduler", "SuccessiveHalving"]


class Bracket:
    """One synchronous successive-halving bracket.

    Attributes:
        sizes: ``[num_rungs]`` planned trials per rung.
        budgets: ``[num_rungs]`` budget of each rung (increasing; the last is the maximum).
        members: per rung, the trial ids that entered it (rung 0: created; others: promoted).
    """

    def __init__(self, sizes: list[int], budgets: list[int]) -> None:
        self.sizes = list(sizes)
        self.budgets = list(budgets)
        self.members: list[list[int]] = [[] for _ in self.sizes]

    def wants_new(self) -> bool:
        """Whether rung 0 still needs new trials."""
        return len(self.members[0]) < self.sizes[0]

    def to_dict(self) -> dict[str, Any]:
        return {"sizes": self.sizes, "budgets": self.budgets, "members": self.members}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Bracket:
        bracket = cls([int(x) for x in d["sizes"]], [int(x) for x in d["budgets"]])
        bracket.members = [[int(t) for t in rung] for rung in d["members"]]
        return bracket


class BracketScheduler(Scheduler):
    """Runs successive-halving brackets; subclasses choose the brackets (``_open_bracket``).

    Promotions decided by a completed rung are handed out first (oldest first); free slots then go
    to new trials of the oldest bracket that still needs them, and when every open bracket is full
    a new bracket is opened, so several brackets may run concurrently to keep slots busy.
    """

    def __init__(self, space: Space, sampler: Searcher | None, max_trials: int, max_budget: int,
                 min_budget: int | None, eta: int, seed: int = 0) -> None:
        super().__init__(space, sampler, max_trials, max_budget, seed)
        self.min_budget, self.eta, self.budgets = ladder(min_budget, self.max_budget, eta)
        self.brackets: list[Bracket] = []
        self._bracket_of: dict[int, int] = {}
        self._pending: list[tuple[int, int]] = []  # decided promotions not yet out: (trial, budget)
        self._told: dict[tuple[int, int], int] = {}  # (bracket, rung) -> members told (a cache)
        self._filling = 0  # no bracket before it wants new trials (a cache)

    def bracket_of(self, trial_id: int) -> int:
        """Index in ``brackets`` of the bracket a trial belongs to."""
        self._trial(trial_id)
        return self._bracket_of[trial_id]

    def _open_bracket(self) -> Bracket | None:
        raise NotImplementedError

    def _ask(self, n: int) -> list[Job]:
        jobs = []
        while self._pending and len(jobs) < n:
            jobs.append(self._continue(*self._pending.pop(0)))
        while len(jobs) < n and len(self.trials) < self.max_trials:
            # A bracket's first rung only fills: the brackets before the first that wants new
            # trials never will again (Hyperband opens hundreds in a large sweep).
            while self._filling < len(self.brackets) and not self.brackets[
                    self._filling].wants_new():
                self._filling += 1
            j = self._filling if self._filling < len(self.brackets) else None
            if j is None:
                bracket = self._open_bracket()
                if bracket is None:
                    break
                self.brackets.append(bracket)
                j = len(self.brackets) - 1
            job = self._create(self.brackets[j].budgets[0])
            if job is None:
                break  # the sampler waits for its batch to settle
            self.brackets[j].members[0].append(job.trial_id)
            self._bracket_of[job.trial_id] = j
            jobs.append(job)
        return jobs

    def _on_result(self, trial_id: int, budget: int, loss: float) -> None:
        bracket = self.brackets[self._bracket_of[trial_id]]
        k = bracket.budgets.index(budget)
        if k == len(bracket.budgets) - 1 or (k == 0 and bracket.wants_new()):
            return
        members = bracket.members[k]
        # The rung's members before ``told`` have reported at its budget (a loss, once told, is
        # kept): each tell moves past the ones told since, instead of scanning the rung again.
        key = (self._bracket_of[trial_id], k)
        told = self._told.get(key, 0)
        while told < len(members) and budget in self.trials[members[told]].losses:
            told += 1
        self._told[key] = told
        if told < len(members):
            return  # the rung is still running: synchronous, so wait for all of it
        ranked = sorted((t for t in members if math.isfinite(self.trials[t].losses[budget])),
                        key=lambda t: (self.trials[t].losses[budget], t))
        promoted = ranked[:bracket.sizes[k + 1]]
        bracket.members[k + 1] = promoted
        self._pending.extend((t, bracket.budgets[k + 1]) for t in promoted)
        kept = set(promoted)
        for t in members:
            if t not in kept:
                self._stop_if_paused(t)

    def _exhausted(self) -> bool:
        # Brackets are planned so that their first rungs add up to max_trials, so once all trials
        # exist every later job is a promotion, and promotions are only decided by a tell.
        return not self._pending and len(self.trials) >= self.max_trials

    def _settings(self) -> dict[str, Any]:
        return {"min_budget": self.min_budget, "eta": self.eta}

    def _state(self) -> dict[str, Any]:
        return {"brackets": [b.to_dict() for b in self.brackets],
                "pending": [list(p) for p in self._pending]}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        self.brackets = [Bracket.from_dict(d) for d in state["brackets"]]
        self._bracket_of = {t: j for j, b in enumerate(self.brackets) for t in b.members[0]}
        self._pending = [(int(t), int(b)) for t, b in state["pending"]]
        self._told, self._filling = {}, 0

    @classmethod
    def _construct(cls, space: Space, sampler: Searcher,
                   state: Mapping[str, Any]) -> BracketScheduler:
        return cls(space, max_trials=int(state["max_trials"]), max_budget=int(state["max_budget"]),
                   min_budget=int(state["min_budget"]), eta=int(state["eta"]), sampler=sampler)


class SuccessiveHalving(BracketScheduler):
    """Synchronous successive halving over ``max_trials`` configurations.

    Rung k has ``max(1, max_trials // eta**k)`` trials at budget ``min_budget * eta**k``, the top
    rung at ``max_budget`` (``searchers.rungs``). New configurations come from ``sampler``
    (default: ``RandomSearch(space, seed=seed)``; ``seed`` is unused when a sampler is given).

    Example:
        >>> sha = SuccessiveHalving(space, max_trials=27, max_budget=900, min_budget=100, eta=3)
        >>> jobs = sha.ask(8)         # trials 0..7 at budget 100
        >>> sha.tell(jobs[0].trial_id, jobs[0].budget, 0.42)
        >>> sha.status(jobs[0].trial_id)   # 'paused' until rung 0 is complete
        'paused'
    """

    kind = "sha"

    def __init__(self, space: Space, *, max_trials: int, max_budget: int,
                 min_budget: int | None = None, eta: int = 3, sampler: Searcher | None = None,
                 seed: int = 0) -> None:
        super().__init__(space, sampler, max_trials, max_budget, min_budget, eta, seed)

    @property
    def rung_sizes(self) -> list[int]:
        """Planned trials per rung."""
        return sha_rung_sizes(self.max_trials, len(self.budgets), self.eta)

    def _open_bracket(self) -> Bracket | None:
        return None if self.brackets else Bracket(self.rung_sizes, self.budgets)

    @property
    def asks_ahead(self) -> bool:
        """One bracket of synchronous rungs: every new trial is handed out before the first
        promotion, and a promotion is decided only when its whole rung is told, which cannot
        happen while a job of it is out; a sampler that learns nothing draws the same configs
        either way. (Hyperband's next bracket would send new trials out ahead of promotions.)"""
        return not self.sampler.adaptive
