"""Hyperband (Li et al. 2017): successive halving over brackets of different aggressiveness.

With ``s_max = floor(log_eta(R / r))``, bracket s (s = s_max, ..., 0) starts
``n = ceil((s_max + 1) / (s + 1) * eta**s)`` configurations at budget ``R * eta**-s`` and runs
successive halving with ``floor(n * eta**-i)`` trials at ``R * eta**(i - s)`` in rung i (budgets
from ``searchers.rungs``, integers). The loop over brackets repeats (s_max, ..., 0, s_max, ...)
until ``max_trials`` configurations were created; the last bracket is cut to what remains.

Brackets run concurrently: when every open bracket has all of its first-rung trials, the next
bracket is opened for free slots instead of waiting for the others' rungs to complete. Each bracket
stays synchronous inside, as in the paper; only the interleaving of brackets differs, which the
paper leaves open (its brackets are independent).
"""

from __future__ import annotations

from searchers.base import Searcher
from searchers.rungs import hyperband_brackets, sha_rung_sizes
from searchers.space import Space
from searchers.successive_halving import Bracket, BracketScheduler

__all__ = ["Hyperband"]


class Hyperband(BracketScheduler):
    """Hyperband over ``max_trials`` configurations with brackets run concurrently.

    New configurations come from ``sampler`` (default: ``RandomSearch(space, seed=seed)``).

    Example:
        >>> hb = Hyperband(space, max_trials=100, max_budget=810, min_budget=10, eta=3)
        >>> [[n for n, _ in b] for b in hb.plan]     # s_max = 4
        [[81, 27, 9, 3, 1], [34, 11, 3, 1], [15, 5, 1], [8, 2], [5]]
        >>> jobs = hb.ask(16)                         # the first 16 trials of bracket s = 4
    """

    kind = "hyperband"

    def __init__(self, space: Space, *, max_trials: int, max_budget: int,
                 min_budget: int | None = None, eta: int = 3, sampler: Searcher | None = None,
                 seed: int = 0) -> None:
        super().__init__(space, sampler, max_trials, max_budget, min_budget, eta, seed)

    @property
    def plan(self) -> list[list[tuple[int, int]]]:
        """One loop of brackets s = s_max .. 0, each a list of ``(n_i, r_i)`` per rung."""
        return hyperband_brackets(self.min_budget, self.max_budget, self.eta)

    def _open_bracket(self) -> Bracket | None:
        remaining = self.max_trials - sum(b.sizes[0] for b in self.brackets)
        if remaining <= 0:
            return None
        plan = self.plan[len(self.brackets) % len(self.plan)]
        n = min(plan[0][0], remaining)
        # Uncut, max(1, n // eta**i) is the paper's floor(n eta^-i) since n >= eta**s.
        return Bracket(sha_rung_sizes(n, len(plan), self.eta), [r for _, r in plan])
