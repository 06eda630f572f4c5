"""How a scheduler's new trials get their configs from a ``Searcher``, and what it is told back.

New configurations come from a pluggable sampler, any ``Searcher``, through a :class:`SamplerFeed`.
Each trial's loss is told to the sampler once the trial has *settled* (stopped or completed), using
the loss at the highest budget it reached -- except for a sampler that ``learns_per_budget`` (TPE):
as in BOHB (Falkner et al., 2018), it learns from every reported loss of one budget, the largest
budget with at least ``max(dims + 1, sampler.min_observations)`` finite losses (until one has, the
lowest budget reported), and is rebuilt (``Searcher.fresh``) with that budget's results each time
the choice moves up. Under ASHA trials settle only at the end, so a sampler told at settlement
would learn nothing while it matters. A trial stopped below the model's budget is never told to it:
its losses are observations of lower budgets only.

Such a sampler's *pending* configs (TPE's constant liars) are set by the scheduler, after every
``ask`` and ``tell`` and before each new config is drawn, to exactly the configs in flight: trials
with a job out (``running``) that have no loss at the model's budget yet, in trial order, then any
configs asked but not yet handed out (``batch_size > 1``). A paused trial is not pending, promotable
or not: nothing is evaluating it, and under ASHA most paused trials are never promoted and only
stop when the sweep ends, so counting them would repel new configs from every config that ever
ran at a low budget; a promoted trial is pending again while its job is out. A trial with a loss at
the model's budget is not pending either: the model already has that loss (Optuna's
``constant_liar`` likewise lies only for running trials). Left to the sampler's own bookkeeping
(pending until told), configs told only at other budgets stayed pending for ever and swamped the
model: 222 liars against 18 results after 286 trials of ASHA with R=81, r=1 and 8 slots (issue 12).

A synchronous sampler (CMA-ES: ``tell`` must receive exactly the batch of the last ``ask``) hands
out its batch one config per new trial and is told the batch when all of its trials have settled.
When a new config is needed, the batch is used up, and every unsettled trial of the batch is paused
(not running), those paused trials are told early with the loss at the highest budget they have
reached so far: otherwise a synchronous rung larger than the batch (successive halving's first rung)
could never fill. While some trial of the batch is still running the scheduler creates no new trial
(``ask`` returns fewer jobs); the batch completes as soon as those report, so nothing deadlocks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from searchers.base import Searcher, decode_loss, encode_loss

__all__ = ["SamplerFeed"]


class SamplerFeed:
    """Draws new trials' configs from a ``Searcher`` and tells it settled trials' losses.

    See the module docstring for the rules; the state is JSON-serialisable.
    """

    def __init__(self, searcher: Searcher) -> None:
        if not isinstance(searcher, Searcher):
            raise ValueError(f"a sampler must be a Searcher, got {type(searcher).__name__}")
        self.searcher = searcher
        self.queue: list[dict[str, Any]] = []  # asynchronous: asked, not yet handed out
        self.batch: list[dict[str, Any]] = []  # synchronous: the generation being handed out
        self.batch_trials: list[int] = []  # trial id of batch[i], for the i handed out so far
        self.batch_losses: dict[int, float] = {}  # batch index -> loss, once known
        # learns_per_budget: budget -> [(config, loss)] as reported; the budget it learns from
        self.observed: dict[int, list[tuple[dict[str, Any], float]]] = {}
        self.model_budget: int | None = None

    def next_config(self, trial_id: int,
                    provisional: Callable[[int], float | None]) -> dict[str, Any] | None:
        """A config for new trial ``trial_id``, or None while a synchronous batch is pending.

        Args:
            trial_id: the trial that will receive the config.
            provisional: trial id -> its loss at the highest budget reached if it is paused,
                else None; used to complete a used-up batch early (module docstring).
        """
        if not self.searcher.synchronous:
            if not self.queue:
                self.queue = self.searcher.ask()
            return dict(self.queue.pop(0))
        if self.batch and len(self.batch_trials) == len(self.batch):
            early = {}
            for i, tid in enumerate(self.batch_trials):
                if i not in self.batch_losses:
                    loss = provisional(tid)
                    if loss is None:
                        return None  # a trial of the batch is still running: wait for it
                    early[i] = loss
            self.batch_losses.update(early)
            self._tell_batch()
        if not self.batch:
            self.batch = self.searcher.ask()
        self.batch_trials.append(trial_id)
        return dict(self.batch[len(self.batch_trials) - 1])

    def observe(self, config: dict[str, Any], budget: int, loss: float) -> None:
        """Reports a loss at a budget, as it arrives (used by ``learns_per_budget`` samplers)."""
        if not self.searcher.learns_per_budget:
            return
        self.observed.setdefault(budget, []).append((dict(config), loss))
        if budget == self.model_budget:
            self.searcher.tell([config], [loss])
        need = max(len(self.searcher.space) + 1, self.searcher.min_observations)
        enough = [b for b, seen in self.observed.items()
                  if sum(math.isfinite(x) for _, x in seen) >= need]
        best = max(enough) if enough else min(self.observed)
        if best != self.model_budget:
            seen = self.observed[best]
            self.searcher = self.searcher.fresh()
            self.searcher.tell([c for c, _ in seen], [x for _, x in seen])
            self.model_budget = best

    def set_in_flight(self, running: list[tuple[dict[str, Any], Mapping[int, float]]]) -> None:
        """Sets a ``learns_per_budget`` sampler's pending configs (module docstring).

        Args:
            running: ``(config, losses by budget)`` of every trial with a job out, in trial order.
        """
        if not self.searcher.learns_per_budget:
            return
        in_flight = [config for config, losses in running if self.model_budget not in losses]
        self.searcher.set_pending(in_flight + self.queue)

    def settle(self, trial_id: int, config: dict[str, Any], loss: float) -> None:
        """Reports a settled trial's loss (at the highest budget it reached)."""
        if not self.searcher.synchronous:
            if not self.searcher.learns_per_budget:  # (those have seen it in observe)
                self.searcher.tell([config], [loss])
            return
        if trial_id not in self.batch_trials:
            return  # from an earlier batch that was already told (early)
        i = self.batch_trials.index(trial_id)
        self.batch_losses.setdefault(i, loss)
        if len(self.batch_losses) == len(self.batch):
            self._tell_batch()

    def _tell_batch(self) -> None:
        self.searcher.tell(self.batch, [self.batch_losses[i] for i in range(len(self.batch))])
        self.batch, self.batch_trials, self.batch_losses = [], [], {}

    def state_dict(self) -> dict[str, Any]:
        return {
            "searcher": self.searcher.state_dict(),
            "queue": self.queue,
            "batch": self.batch,
            "batch_trials": self.batch_trials,
            "batch_losses": [[i, encode_loss(x)] for i, x in sorted(self.batch_losses.items())],
            "observed": [[b, [[c, encode_loss(x)] for c, x in seen]]
                         for b, seen in self.observed.items()],
            "model_budget": self.model_budget,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.queue = [dict(c) for c in state["queue"]]
        self.batch = [dict(c) for c in state["batch"]]
        self.batch_trials = [int(t) for t in state["batch_trials"]]
        self.batch_losses = {int(i): decode_loss(x) for i, x in state["batch_losses"]}
        self.observed = {int(b): [(dict(c), decode_loss(x)) for c, x in seen]
                         for b, seen in state.get("observed", [])}
        model_budget = state.get("model_budget")
        self.model_budget = None if model_budget is None else int(model_budget)
