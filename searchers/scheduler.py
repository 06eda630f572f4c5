"""The scheduler interface a sweep driver uses: jobs out, losses in, every method alike.

A *trial* is one configuration being trained; a *job* asks the driver to train a trial until it
has ``budget`` steps in total and then ``tell`` its loss. Black-box searchers run each trial as one
job at the maximum budget (``FullBudget``); multi-fidelity schedulers (successive halving,
Hyperband, ASHA) first run trials at small budgets and continue only the promising ones, handing
out further jobs for the same ``trial_id`` at higher budgets.

Trial statuses: ``"running"`` (a job is out), ``"paused"`` (told, waiting: may still be promoted),
``"completed"`` (told at the maximum budget with a finite loss), ``"stopped"`` (will never continue:
pruned, or failed with a NaN / inf loss, which ranks last and is never promoted). When the scheduler
is ``finished`` no trial is running or paused.

New configurations come from a pluggable sampler, any ``Searcher``, through
:class:`searchers.feed.SamplerFeed`, whose module docstring gives the rules: when a sampler is told
a trial's loss, which configs are pending, and how a synchronous sampler's batch completes.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from typing import Any, ClassVar

from searchers.base import (
    Searcher,
    check_state_space,
    clean_loss,
    decode_loss,
    encode_loss,
    searcher_from_state_dict,
)
from searchers.feed import SamplerFeed
from searchers.random_search import RandomSearch
from searchers.space import Space, space_to_dict

__all__ = ["COMPLETED", "PAUSED", "RUNNING", "STOPPED", "Job", "Scheduler", "check_positive_int"]


RUNNING, PAUSED, COMPLETED, STOPPED = "running", "paused", "completed", "stopped"


def check_positive_int(value: Any, what: str) -> int:
    """Returns ``value`` as an int; ``ValueError`` unless it is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class Job:
    """Train trial ``trial_id`` (with ``config``) until it has ``budget`` steps, then tell its loss.

    Attributes:
        trial_id: 0, 1, 2, ... in the order the scheduler created the trials.
        config: the trial's hyperparameters (a fresh dict: the driver may keep it).
        budget: total steps the trial must have reached when its loss is told.
    """

    trial_id: int
    config: dict[str, Any]
    budget: int

    def __hash__(self) -> int:
        # The generated hash would hash the dict and fail; (trial, budget) identifies a job.
        return hash((self.trial_id, self.budget))


@dataclasses.dataclass
class Trial:
    """The scheduler's record of one trial (host-side, mutable)."""

    config: dict[str, Any]
    status: str
    budget: int  # budget of the job that is out, or of the last job told
    # budget -> loss told at it (inf: failed)
    losses: dict[int, float] = dataclasses.field(default_factory=dict)

    @property
    def last_loss(self) -> float:
        """The loss at the highest budget told (``inf`` before any)."""
        return self.losses[max(self.losses)] if self.losses else math.inf

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "status": self.status, "budget": self.budget,
                "losses": [[b, encode_loss(x)] for b, x in self.losses.items()]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Trial:
        return cls(dict(d["config"]), str(d["status"]), int(d["budget"]),
                   {int(b): decode_loss(x) for b, x in d["losses"]})


class Scheduler:
    """Base class: hands out ``Job``s, takes losses, tracks each trial's status.

    Subclasses implement ``_ask``, ``_on_result``, ``_exhausted``, ``_settings``, ``_state`` and
    ``_load_state``; this class validates calls, keeps trial records, marks trials completed /
    stopped, feeds the sampler, and at the end stops every paused trial.

    Example (a driver with ``slots`` slots; ``train`` continues a trial to ``budget`` steps):
        >>> scheduler = make_scheduler("asha", space, max_trials=64, max_budget=2000)
        >>> running = []
        >>> while not scheduler.finished:
        ...     running += scheduler.ask(slots - len(running))
        ...     job = running.pop(0)
        ...     loss = train(job.trial_id, job.config, job.budget)
        ...     scheduler.tell(job.trial_id, job.budget, loss)
        ...     # scheduler.status(job.trial_id): "paused", "completed" or "stopped"

    Attributes:
        kind: class constant naming the scheduler class in state dicts.
        space: the search space.
        max_trials: the most trials (configurations) ever created.
        max_budget: the budget of a trial that runs to the end.
        trials: the trial records, indexed by trial id.
    """

    kind: ClassVar[str] = ""

    def __init__(self, space: Space, sampler: Searcher | None, max_trials: int, max_budget: int,
                 seed: int = 0) -> None:
        if sampler is None:  # random search, configuration k from (seed, k)
            sampler = RandomSearch(space, batch_size=1, seed=seed)
        self._feed = SamplerFeed(sampler)
        if list(space_to_dict(space).items()) != list(space_to_dict(sampler.space).items()):
            raise ValueError("the sampler searches a different space than the scheduler")
        self.space: dict[str, Any] = dict(space)
        self.max_trials = check_positive_int(max_trials, "max_trials")
        self.max_budget = check_positive_int(max_budget, "max_budget")
        self.trials: list[Trial] = []
        self._running: set[int] = set()

    @property
    def name(self) -> str:
        """The scheduler's name in ``SCHEDULERS``."""
        return self.kind

    @property
    def sampler(self) -> Searcher:
        """The searcher that proposes new configurations."""
        return self._feed.searcher

    def ask(self, n: int) -> list[Job]:
        """Up to ``n`` jobs runnable now: new trials or continuations of paused ones.

        May return fewer, or none (e.g. while a synchronous rung or generation is incomplete).
        """
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
            raise ValueError(f"ask needs a non-negative integer, got {n!r}")
        jobs = self._ask(int(n)) if n else []
        self._maybe_finish()
        self._track_in_flight()
        return jobs

    def tell(self, trial_id: int, budget: int, loss: float) -> None:
        """Reports the loss of ``trial_id`` at ``budget``; NaN / inf = failed (stopped).

        Raises:
            ValueError: the trial has no job out at this budget, or the loss is not a number.
        """
        trial = self._trial(trial_id)
        if trial.status != RUNNING or budget != trial.budget:
            raise ValueError(f"trial {trial_id} has no job out at budget {budget} "
                             f"(status {trial.status}, budget {trial.budget})")
        loss = clean_loss(loss)
        trial.losses[trial.budget] = loss
        self._feed.observe(trial.config, trial.budget, loss)
        self._running.discard(trial_id)
        trial.status = PAUSED
        if not math.isfinite(loss):
            self._settle(trial_id, STOPPED)
        elif trial.budget >= self.max_budget:
            self._settle(trial_id, COMPLETED)
        self._on_result(trial_id, trial.budget, loss)
        self._maybe_finish()
        self._track_in_flight()

    def status(self, trial_id: int) -> str:
        """``"running"``, ``"paused"``, ``"completed"`` or ``"stopped"``."""
        return self._trial(trial_id).status

    @property
    def finished(self) -> bool:
        """No job will ever be returned again and none is outstanding."""
        return not self._running and self._exhausted()

    @property
    def asks_ahead(self) -> bool:
        """Whether asking before the losses of the jobs out are told hands out the same jobs
        (trials, configs, budgets) in the same order as asking after them: a driver may then
        ask while those jobs train. False unless a subclass knows better."""
        return False

    @property
    def num_trials(self) -> int:
        """Trials created so far."""
        return len(self.trials)

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state, including the sampler's; restore with ``from_state_dict``."""
        return {
            "kind": self.kind,
            "name": self.name,
            "space": space_to_dict(self.space),
            "max_trials": self.max_trials,
            "max_budget": self.max_budget,
            **self._settings(),
            "trials": [trial.to_dict() for trial in self.trials],
            "feed": self._feed.state_dict(),
            **self._state(),
        }

    @classmethod
    def from_state_dict(cls, space: Space, state: Mapping[str, Any]) -> Scheduler:
        """Rebuilds a scheduler saved mid-run; it continues exactly as the original would."""
        if state.get("kind") != cls.kind:
            raise ValueError(f"the state is for scheduler {state.get('kind')!r}, not {cls.kind!r}")
        check_state_space(space, state)
        sampler = searcher_from_state_dict(space, state["feed"]["searcher"])
        scheduler = cls._construct(space, sampler, state)
        scheduler.trials = [Trial.from_dict(d) for d in state["trials"]]
        scheduler._running = {i for i, t in enumerate(scheduler.trials) if t.status == RUNNING}
        scheduler._feed.load_state_dict(state["feed"])
        scheduler._load_state(state)
        return scheduler

    # -- helpers for subclasses -----------------------------------------------------------------

    def _trial(self, trial_id: int) -> Trial:
        if (isinstance(trial_id, bool) or not isinstance(trial_id, numbers.Integral)
                or not 0 <= trial_id < len(self.trials)):
            raise ValueError(f"unknown trial {trial_id!r}")
        return self.trials[trial_id]

    def _create(self, budget: int) -> Job | None:
        """A new trial's first job, or None (max_trials reached or the sampler must wait)."""
        if len(self.trials) >= self.max_trials:
            return None
        trial_id = len(self.trials)
        self._track_in_flight()  # promotions since the last ask are in flight too
        config = self._feed.next_config(trial_id, self._provisional)
        if config is None:
            return None
        self.trials.append(Trial(config, RUNNING, budget))
        self._running.add(trial_id)
        return Job(trial_id, dict(config), budget)

    def _continue(self, trial_id: int, budget: int) -> Job:
        """A paused trial's next job (a promotion)."""
        trial = self.trials[trial_id]
        assert trial.status == PAUSED and budget > trial.budget, (trial_id, trial, budget)
        trial.status, trial.budget = RUNNING, budget
        self._running.add(trial_id)
        return Job(trial_id, dict(trial.config), budget)

    def _settle(self, trial_id: int, status: str) -> None:
        """Marks a trial completed / stopped and tells the sampler its last loss."""
        trial = self.trials[trial_id]
        trial.status = status
        self._feed.settle(trial_id, trial.config, trial.last_loss)

    def _stop_if_paused(self, trial_id: int) -> None:
        if self.trials[trial_id].status == PAUSED:
            self._settle(trial_id, STOPPED)

    def _track_in_flight(self) -> None:
        self._feed.set_in_flight([(self.trials[t].config, self.trials[t].losses)
                                  for t in sorted(self._running)])

    def _provisional(self, trial_id: int) -> float | None:
        trial = self.trials[trial_id]
        return trial.last_loss if trial.status == PAUSED and trial.losses else None

    def _maybe_finish(self) -> None:
        # Once nothing can ever run again, a trial still waiting would wait forever.
        if self.finished:
            for trial_id, trial in enumerate(self.trials):
                if trial.status == PAUSED:
                    self._settle(trial_id, STOPPED)

    # -- what subclasses implement --------------------------------------------------------------

    def _ask(self, n: int) -> list[Job]:
        raise NotImplementedError

    def _on_result(self, trial_id: int, budget: int, loss: float) -> None:
        """Called after a loss is recorded (the trial is already completed / stopped if final)."""
        raise NotImplementedError

    def _exhausted(self) -> bool:
        """Whether no job can ever be handed out again, given that none is outstanding."""
        raise NotImplementedError

    def _settings(self) -> dict[str, Any]:
        """Constructor settings beyond space, max_trials and max_budget."""
        return {}

    def _state(self) -> dict[str, Any]:
        return {}

    def _load_state(self, state: Mapping[str, Any]) -> None:
        pass

    @classmethod
    def _construct(cls, space: Space, sampler: Searcher, state: Mapping[str, Any]) -> Scheduler:
        raise NotImplementedError
