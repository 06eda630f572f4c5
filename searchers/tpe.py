"""TPE: the Tree-structured Parzen Estimator (Bergstra et al., 2011), in the space's unit cube.

J. Bergstra, R. Bardenet, Y. Bengio and B. Kegl, "Algorithms for Hyper-Parameter Optimization",
NeurIPS 2011, Section 4; defaults and the details the paper leaves open follow Optuna's
``TPESampler`` (independent sampling). TPE models ``p(x | y)`` instead of ``p(y | x)``: the told
configs are split at a loss quantile into a good set and a bad set, a density is fitted to each,
``l(x)`` and ``g(x)``, and the next config maximises ``l(x) / g(x)``, which is equivalent to
maximising the expected improvement (Section 4.1 of the paper).

The rules, all in unit-cube coordinates (``space_to_unit``: log scales are already log):

* Startup: until ``n_startup`` finite losses have been told, config k is point k of the initial
  design (``searchers.design``: a scrambled Sobol set of ``n_design`` points, shared with
  CMA-ES and GP) while k < ``n_design``, else random search's k-th config
  (``np.random.default_rng([seed, k])`` mapped through the prior); with ``n_design = 0`` a TPE
  without history *is* ``RandomSearch``.
* Split: of the n told configs, those with the ``min(max(1, ceil(gamma * n)), 25)`` lowest
  losses are good (ties: the earlier told first), the rest bad; NaN / inf losses are always bad
  (the good set never exceeds the finite losses). With ``gamma = 0.1`` this is Optuna's
  ``default_gamma``.
* Constant liar: configs asked but not yet told join the bad set (as Optuna's ``constant_liar``
  does with running trials), so that configs asked while others are being evaluated, including
  those of one batch, are pushed away from each other instead of piling onto the same spot.
  A multi-fidelity scheduler, which tells only one budget's losses, replaces this list with the
  configs actually in flight (``set_pending``; ``searchers.feed`` gives the rule).
* Float and Int dimensions: each set's density is a mixture of normal kernels truncated to
  [0, 1], one per observation plus a prior kernel centred at 0.5 with width 1, all of weight 1
  (Optuna's ``prior_weight``; its down-weighting of old observations beyond 25 is left out).
  A kernel's width is the larger distance to its neighbours among the sorted observations and
  the ends 0 and 1, except that the lowest and highest observation only look inwards (Optuna's
  ``consider_endpoints=False``), clipped to ``[1 / min(100, n_kernels + 1), 1]`` with
  ``n_kernels`` the observations plus the prior (Optuna's "magic clip": widths shrink as data
  accumulate but never collapse onto one point).
  Integers are modelled as continuous coordinates; ``Int.from_unit`` rounds the proposal.
* Choice dimensions: a categorical distribution over the option indices, ``counts + 1 / k`` (the
  prior's weight 1 spread over the k options), normalised.
* Proposal: ``n_candidates`` points are drawn from ``l``, each coordinate independently from its
  dimension's good density (the dimensions are modelled independently, as in the paper), and the
  one maximising ``sum over dimensions of log l(x) - log g(x)`` is asked.

Config k draws only from its own ``np.random.default_rng([seed, k])``, so asks are a function of
the seed, k and the told / pending configs; ``state_dict`` saves those, and a restored searcher asks
exactly what the original would have asked.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import special

from searchers.base import ModelBased
from searchers.space import Choice, Dimension, Space, space_from_unit

__all__ = ["TPE"]

# Optuna's cap on the good set: beyond ~25 points l(x) stops sharpening around the best region.
_MAX_GOOD = 25


def _check_count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _check_gamma(gamma: Any) -> float:
    if (isinstance(gamma, bool) or not isinstance(gamma, numbers.Real)
            or not 0 < gamma <= 1):
        raise ValueError(f"gamma must be a number in (0, 1], got {gamma!r}")
    return float(gamma)


def _std_normal_cdf(z: np.ndarray) -> np.ndarray:
    return special.ndtr(z)


def _bandwidths(mus: np.ndarray) -> np.ndarray:
    """Kernel widths ``[n]`` for observations ``mus [n]`` in [0, 1] (module docstring's rule)."""
    n = len(mus)
    order = np.argsort(mus, kind="stable")
    edges = np.concatenate([[0.0], mus[order], [1.0]])
    left, right = np.diff(edges)[:-1], np.diff(edges)[1:]
    widths = np.maximum(left, right)
    if n >= 2:
        widths[0], widths[-1] = right[0], left[-1]
    sigmas = np.empty(n)
    sigmas[order] = widths
    n_kernels = n + 1  # the observations and the prior
    return np.clip(sigmas, 1.0 / min(100, n_kernels + 1), 1.0)


class _TruncatedMixture:
    """Equal-weight mixture of normals truncated to [0, 1]: one kernel per observation + prior."""

    def __init__(self, observations: np.ndarray) -> None:
        self.mus = np.append(observations, 0.5)  # [n + 1]
        self.sigmas = np.append(_bandwidths(observations), 1.0)  # [n + 1]
        # Mass of each kernel inside [0, 1]; >= 0.34 because every centre lies in [0, 1].
        self.log_mass = np.log(_std_normal_cdf((1.0 - self.mus) / self.sigmas)
                               - _std_normal_cdf(-self.mus / self.sigmas))

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``[size]`` draws (rejection sampling: redraw the normals that leave [0, 1])."""
        kernel = rng.integers(len(self.mus), size=size)
        mu, sigma = self.mus[kernel], self.sigmas[kernel]
        x = mu + sigma * rng.standard_normal(size)
        while (outside := (x < 0.0) | (x > 1.0)).any():
            x[outside] = mu[outside] + sigma[outside] * rng.standard_normal(outside.sum())
        return x

    def log_pdf(self, x: np.ndarray) -> np.ndarray:
        """``[m]`` log densities at ``x [m]``."""
        z = (x[:, None] - self.mus) / self.sigmas  # [m, kernels]
        log_k = (-0.5 * z**2 - np.log(self.sigmas) - 0.5 * math.log(2 * math.pi)
                 - self.log_mass)
        top = log_k.max(axis=1)
        return top + np.log(np.exp(log_k - top[:, None]).mean(axis=1))


class _Categorical:
    """Smoothed option frequencies of a Choice, in its unit coordinates (interval middles)."""

    def __init__(self, observations: np.ndarray, k: int) -> None:
        self.k = k
        counts = np.bincount(self._index(observations), minlength=k)
        self.log_p = np.log((counts + 1.0 / k) / (len(observations) + 1.0))  # [k]

    def _index(self, u: np.ndarray) -> np.ndarray:
        return np.minimum(np.floor(u * self.k).astype(int), self.k - 1)

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return (rng.choice(self.k, size=size, p=np.exp(self.log_p)) + 0.5) / self.k

    def log_pdf(self, x: np.ndarray) -> np.ndarray:
        return self.log_p[self._index(x)]


def _density(dim: Dimension, observations: np.ndarray) -> _TruncatedMixture | _Categorical:
    """The Parzen estimator of one dimension from its unit coordinates ``[n]``."""
    if isinstance(dim, Choice):
        return _Categorical(observations, len(dim.options))
    return _TruncatedMixture(observations)


class TPE(ModelBased):
    """Tree-structured Parzen Estimator (see the module docstring for the exact rules).

    Asks and tells may interleave freely (``synchronous = False``): ``tell`` accepts any configs of
    the space, asked or not, in any grouping and order.

    Example:
        >>> space = {"learning_rate": Float(1e-5, 1e-1, log=True), "depth": Int(1, 4)}
        >>> searcher = TPE(space, batch_size=4, seed=0)
        >>> for _ in range(15):
        ...     configs = searcher.ask()
        ...     searcher.tell(configs, [loss_fn(c) for c in configs])
        >>> state = searcher.state_dict()              # json.dumps(state) works
        >>> TPE.from_state_dict(space, state).ask() == searcher.ask()
        True

    Args:
        space: the search space.
        batch_size: configs per ``ask``.
        seed: the seed.
        n_startup: finite losses needed before the model is used (random search until then).
        n_candidates: draws from ``l(x)`` among which the best ``l(x) / g(x)`` is asked.
        gamma: fraction of the told configs in the good set (before the clip to 1 .. 25).
        n_design: startup configs taken from the initial design (``None``: ``n_startup``).
    """

    name = "tpe"

    def __init__(self, space: Space, batch_size: int = 1, seed: int = 0, n_startup: int = 10,
                 n_candidates: int = 24, gamma: float = 0.1, n_design: int | None = None) -> None:
        self.n_startup = _check_count(n_startup, "n_startup")
        super().__init__(space, seed, self.n_startup if n_design is None else n_design)
        self.batch_size = _check_count(batch_size, "batch_size")
        self.n_candidates = _check_count(n_candidates, "n_candidates")
        self.gamma = _check_gamma(gamma)

    @property
    def min_observations(self) -> int:
        return self.n_startup

    def fresh(self) -> TPE:
        """Told nothing; keeps the seed's position and the configs still in flight (liars)."""
        twin = TPE(self.space, self.batch_size, self.seed, self.n_startup, self.n_candidates,
                   self.gamma, self.n_design)
        twin.num_asked, twin.pending = self.num_asked, list(self.pending)
        return twin

    def _ask(self) -> list[dict[str, Any]]:
        configs = []
        for _ in range(self.batch_size):
            if self.num_finite() < self.n_startup and (design := self._ask_design()):
                configs.append(design)
                continue
            config = self._propose(np.random.default_rng([self.seed, self.num_asked]))
            self.num_asked += 1
            self.pending.append(config)
            configs.append(config)
        return configs

    def _propose(self, rng: np.random.Generator) -> dict[str, Any]:
        """One config: a prior draw during startup, else the best of the candidates from l."""
        losses = np.array(self.losses, dtype=float)
        if np.isfinite(losses).sum() < self.n_startup:
            return space_from_unit(self.space, rng.random(len(self.space)))
        good, bad = self._split(losses)
        candidates = np.empty((self.n_candidates, len(self.space)))
        score = np.zeros(self.n_candidates)
        for j, dim in enumerate(self.space.values()):
            l_model, g_model = _density(dim, good[:, j]), _density(dim, bad[:, j])
            candidates[:, j] = l_model.sample(rng, self.n_candidates)
            score += l_model.log_pdf(candidates[:, j]) - g_model.log_pdf(candidates[:, j])
        return space_from_unit(self.space, candidates[np.argmax(score)])

    def _split(self, losses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unit points of the good ``[n_good, d]`` and bad ``[n_bad, d]`` sets (liars are bad)."""
        points = np.array(self.points, dtype=float).reshape(len(losses), len(self.space))
        order = np.argsort(losses, kind="stable")  # inf last; ties keep the tell order
        n_good = min(max(1, math.ceil(self.gamma * len(losses))), _MAX_GOOD,
                     int(np.isfinite(losses).sum()))
        liars = self.unit_points(self.pending)
        return points[order[:n_good]], np.concatenate([points[order[n_good:]], liars])

    def _state(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "n_startup": self.n_startup,
            "n_candidates": self.n_candidates,
            "gamma": self.gamma,
            **self._history_state(),
        }

    @classmethod
    def _from_state(cls, space: Space, state: Mapping[str, Any]) -> TPE:
        searcher = cls(space, batch_size=int(state["batch_size"]), seed=int(state["seed"]),
                       n_startup=int(state["n_startup"]),
                       n_candidates=int(state["n_candidates"]), gamma=float(state["gamma"]),
                       n_design=int(state.get("n_design", 0)))
        searcher._restore_history(state)
        return searcher
