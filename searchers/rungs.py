"""Budget ladders and bracket plans of successive halving, Hyperband and ASHA.

With minimum budget r, maximum budget R and reduction factor eta, ``s_max = floor(log_eta(R / r))``
(Li et al. 2017) and the *ladder* of rung budgets is ``r * eta**k`` for ``k = 0 .. s_max - 1``, with
the top rung ``k = s_max`` at ``R``. When ``R / r`` is a power of eta that is exactly
``r * eta**k`` for every rung, i.e. Hyperband's ``r_i = R * eta**(i - s)``; otherwise the last step
is longer than eta (at most eta**2), so that every trial that runs to the end gets exactly R and
no rung is a sliver (e.g. r=74, R=2000: 74, 222, 666, 2000 rather than 74, ..., 1998, 2000).

Successive halving with n configurations uses the whole ladder with ``max(1, n // eta**k)`` trials
in rung k (the paper's ``floor(n eta^-k)``; at least one so that the best trial always reaches R).
Hyperband's bracket s uses the top ``s + 1`` rungs of the ladder with
``n = ceil((s_max + 1) / (s + 1) * eta**s)`` configurations.
"""

from __future__ import annotations

import numbers
from typing import Any

__all__ = [
    "check_rungs",
    "default_min_budget",
    "hyperband_brackets",
    "rung_budgets",
    "s_max",
    "sha_rung_sizes",
]


def check_rungs(min_budget: Any, max_budget: Any, eta: Any) -> tuple[int, int, int]:
    """Validates (min_budget, max_budget, eta): integers with 1 <= r <= R and eta >= 2."""
    for value, what, least in ((min_budget, "min_budget", 1), (max_budget, "max_budget", 1),
                               (eta, "eta", 2)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
            raise ValueError(f"{what} must be an integer >= {least}, got {value!r}")
    if min_budget > max_budget:
        raise ValueError(f"min_budget ({min_budget}) must not exceed max_budget ({max_budget})")
    return int(min_budget), int(max_budget), int(eta)


def default_min_budget(max_budget: int, eta: int) -> int:
    """``max(1, R // eta**3)``: four rungs when R allows (eta=3: 1/27, 1/9, 1/3 and all of R)."""
    return max(1, max_budget // eta**3)


def s_max(min_budget: int, max_budget: int, eta: int) -> int:
    """``floor(log_eta(R / r))``, computed in integers (no floating-point log at exact powers)."""
    s = 0
    while min_budget * eta ** (s + 1) <= max_budget:
        s += 1
    return s


def ladder(min_budget: Any, max_budget: int, eta: Any) -> tuple[int, int, list[int]]:
    """Validated ``(min_budget, eta, rung budgets)``; ``min_budget=None`` takes
    ``default_min_budget`` (eta is checked first, since the default depends on it)."""
    if min_budget is None:
        check_rungs(1, max_budget, eta)
        min_budget = default_min_budget(max_budget, eta)
    min_budget, _, eta = check_rungs(min_budget, max_budget, eta)
    return min_budget, eta, rung_budgets(min_budget, max_budget, eta)


def rung_budgets(min_budget: int, max_budget: int, eta: int) -> list[int]:
    """The ladder ``[r, r eta, ..., r eta^(s_max - 1), R]`` (length ``s_max + 1``)."""
    top = s_max(min_budget, max_budget, eta)
    return [min_budget * eta**k for k in range(top)] + [max_budget]


def sha_rung_sizes(n: int, num_rungs: int, eta: int) -> list[int]:
    """Trials per rung of successive halving with n configurations: ``max(1, n // eta**k)``."""
    return [max(1, n // eta**k) for k in range(num_rungs)]


def hyperband_brackets(min_budget: int, max_budget: int, eta: int) -> list[list[tuple[int, int]]]:
    """Hyperband's brackets s = s_max, ..., 0, each a list of ``(n_i, r_i)`` per rung i.

    ``n_i = floor(n * eta**-i)`` with ``n = ceil((s_max + 1) / (s + 1) * eta**s)`` and ``r_i`` the
    ladder's rung ``s_max - s + i`` (``R * eta**(i - s)`` when R / r is a power of eta).
    """
    ladder = rung_budgets(min_budget, max_budget, eta)
    top = len(ladder) - 1
    brackets = []
    for s in range(top, -1, -1):
        n = -(-(top + 1) * eta**s // (s + 1))  # exact integer ceil
        brackets.append([(n // eta**i, ladder[top - s + i]) for i in range(s + 1)])
    return brackets
