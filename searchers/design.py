"""The initial design: space-filling first points shared by the model-based searchers.

CMA-ES's first generation, TPE's startup configs and GP's initial design are the same points: the
first ``n`` points of the seed's scrambled Sobol sequence in the unit cube (I. M. Sobol', 1967;
Owen's scrambling with a random digital shift, as ``scipy.stats.qmc.Sobol``). When ``n`` is a
power of 2 they form a (t, m, s)-net: every one-dimensional projection has exactly one point in
each of the ``n`` strata ``[i / n, (i + 1) / n)`` (a Latin hypercube), and the two-dimensional
projections are balanced too; for other ``n`` they are a prefix of such a net, so point k is the
same whatever ``n`` is and whatever the batches of ``ask`` were.

Why: at the budgets a population sweep affords (a few generations of 16), random first points
leave holes and clumps that a model then spends trials on (``bench/SEARCHERS.md``). A maximin
Latin hypercube was tried first and dropped: as GP's initial design on Hartmann-6 (48
evaluations in batches of 4) its median best loss over seeds 0-12 was worse than Sobol's
(seeds 0-4: -1.50 against -3.11; seeds 5-12: -2.38 against -2.66).

The sequence of a seed is drawn from ``np.random.default_rng([seed, _TAG])``; the tag keeps it
apart from the searchers' per-config streams ``[seed, k]``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import qmc

__all__ = ["sobol_design"]

_TAG = 0x5AB01  # GP's design tag since it was added, so its design points did not change


def sobol_design(n: int, dims: int, seed: int) -> np.ndarray:
    """The first ``n`` points ``[n, dims]`` in ``[0, 1)`` of the seed's scrambled Sobol sequence.

    Example:
        >>> points = sobol_design(16, 3, seed=0)
        >>> sorted(np.floor(points[:, 0] * 16).astype(int).tolist()) == list(range(16))
        True

    Args:
        n: number of points (>= 1).
        dims: dimensions (>= 1).
        seed: non-negative seed.
    """
    if n < 1 or dims < 1:
        raise ValueError(f"a design needs n >= 1 and dims >= 1, got n={n}, dims={dims}")
    sobol = qmc.Sobol(dims, scramble=True, rng=np.random.default_rng([seed, _TAG]))
    # Whole powers of 2 keep scipy's balance (and its warning) quiet; the prefix is the same.
    return sobol.random_base2(max(0, math.ceil(math.log2(n))))[:n]
