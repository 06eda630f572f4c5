"""CMA-ES: the covariance matrix adaptation evolution strategy, in the space's unit cube.

``CMAESCore`` is the (mu/mu_W, lambda)-CMA-ES on plain vectors of R^n exactly as summarised in
N. Hansen, "The CMA Evolution Strategy: A Tutorial", arXiv:1604.00772 (equation numbers below refer
to its algorithm summary and Appendix A, "Table 1" defaults): weighted recombination with the
default positive and negative ("active") weights, cumulative step-size adaptation, and rank-one
plus rank-mu covariance updates.

``CMAES`` wraps it as a ``Searcher`` over a search space:

* The core runs unbounded in R^n; a sample x is *evaluated* at the unit-cube point obtained by
  mirroring each coordinate into [0, 1] (a 2-periodic reflection: 1.2 -> 0.8, -0.1 -> 0.1), while
  the update uses the unmirrored sample. The mirror is continuous, so the landscape seen by the
  core is the user's landscape reflected at the faces of the cube; an optimum on a face stays an
  optimum. (pycma's default boundary handling is a smoothed form of the same transformation.)
  Because the mirror has period 2, the mean is folded into [-0.5, 1.5) after each update, which
  changes no evaluated config and keeps the state tidy.
* Integers are the nearest integer of the mapped value (``Int.from_unit``); a choice is one
  coordinate whose unit interval is cut into ``len(options)`` equal parts. The core sees a
  piecewise-constant landscape along those coordinates; its rank-based update is unaffected by
  plateaus, though the step size along them may shrink until the value stops changing.
* The first generation is the initial design (``searchers.design``: a scrambled Sobol set of
  ``population_size`` points, shared with TPE and GP), not a Gaussian sample. Its losses start
  the core where the design found the good region: the mean is the weighted recombination of its
  best ``mu`` points with the core's positive weights (Eq. (41)-(42) applied to the design), and
  the covariance their weighted spread around that mean per coordinate, ``sigma**2 * C =
  diag(sum_i w_i (x_i - m)**2)``, with ``sigma`` clipped to ``[sigma_min, sigma0]``. This is the
  warm start of M. Nomura, S. Watanabe, Y. Akimoto, Y. Ozaki and M. Onishi, "Warm Starting CMA-ES
  for Hyperparameter Optimization", AAAI 2021 (a Gaussian fitted to the good points), with the
  design as its "previous task". Why: at a population sweep's budget (three generations of 16)
  the plain start, the centre of the cube with ``sigma0 = 0.3``, spends its few generations
  walking there from the centre while the best learning rates sit near the top of the range
  (measured on the autoencoder bench, ``bench/SEARCHERS.md``).
  ``initial_design=False`` gives the plain start: the mean at the centre of the cube (the prior's
  median: the geometric mean on log scales) and ``sigma0`` in unit-cube units (0.3: Hansen's
  advice of about a third of the range).

Sampling is seeded per generation with ``np.random.default_rng([seed, generation])``, so the state
that ``state_dict`` saves (mean, step size, covariance, paths, generation) fixes every later ask.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from searchers.base import Searcher, check_seed
from searchers.design import sobol_design
from searchers.space import Space, space_from_unit

__all__ = ["CMAES", "CMAESCore", "mirror_unit"]


def _check_popsize(population_size: Any) -> int | None:
    if population_size is None:
        return None
    if (isinstance(population_size, bool) or not isinstance(population_size, numbers.Integral)
            or population_size < 2):
        raise ValueError(f"population_size must be an integer >= 2, got {population_size!r}")
    return int(population_size)


def _check_sigma(sigma: Any) -> float:
    if (isinstance(sigma, bool) or not isinstance(sigma, numbers.Real)
            or not math.isfinite(sigma) or sigma <= 0):
        raise ValueError(f"sigma0 must be a positive finite number, got {sigma!r}")
    return float(sigma)


class CMAESCore:
    """The (mu/mu_W, lambda)-CMA-ES minimising a function on R^n (Hansen's tutorial).

    Example:
        >>> core = CMAESCore(mean=np.zeros(10), sigma=0.5, seed=0)
        >>> for _ in range(200):
        ...     x = core.ask()                      # [population_size, n]
        ...     core.tell((x ** 2).sum(axis=1))     # losses in the order of the rows
        >>> float((core.mean ** 2).sum()) < 1e-8
        True

    Attributes:
        mean: ``[n]`` the distribution mean m.
        sigma: the step size.
        C: ``[n, n]`` the covariance matrix.
        p_sigma: ``[n]`` the conjugate evolution path.
        p_c: ``[n]`` the evolution path.
        generation: number of completed updates g.
    """

    def __init__(self, mean: Sequence[float] | np.ndarray, sigma: float,
                 population_size: int | None = None, seed: int = 0) -> None:
        self.mean = np.array(mean, dtype=float)
        if self.mean.ndim != 1 or self.mean.size < 1 or not np.all(np.isfinite(self.mean)):
            raise ValueError(f"mean must be a non-empty finite vector, got shape {self.mean.shape}")
        self.n = n = self.mean.size
        self.sigma = _check_sigma(sigma)
        self.seed = check_seed(seed)
        lam = _check_popsize(population_size)
        if lam is None:
            lam = 4 + math.floor(3 * math.log(n))  # (48)
        self.population_size = lam
        self.mu = mu = lam // 2

        # Recombination weights, Eq. (49)-(53): positive for the better half, negative (active
        # CMA) for the worse half, scaled so that C stays positive definite.
        w_prime = math.log((lam + 1) / 2) - np.log(np.arange(1, lam + 1))  # (49)
        self.mueff = w_prime[:mu].sum() ** 2 / (w_prime[:mu] ** 2).sum()
        mueff_neg = w_prime[mu:].sum() ** 2 / (w_prime[mu:] ** 2).sum()
        alpha_cov = 2.0
        self.c_sigma = (self.mueff + 2) / (n + self.mueff + 5)  # (55)
        self.d_sigma = (1 + 2 * max(0.0, math.sqrt((self.mueff - 1) / (n + 1)) - 1)
                        + self.c_sigma)  # (55)
        self.c_c = (4 + self.mueff / n) / (n + 4 + 2 * self.mueff / n)  # (56)
        self.c_1 = alpha_cov / ((n + 1.3) ** 2 + self.mueff)  # (57)
        # (58), with the 1/4 of the tutorial's later revisions (as pycma): keeps c_mu > 0 at mu = 1.
        self.c_mu = min(1 - self.c_1, alpha_cov * (0.25 + self.mueff + 1 / self.mueff - 2)
                        / ((n + 2) ** 2 + alpha_cov * self.mueff / 2))
        self.c_m = 1.0  # (54)
        alpha_mu_neg = 1 + self.c_1 / self.c_mu  # (50)
        alpha_mueff_neg = 1 + 2 * mueff_neg / (self.mueff + 2)  # (51)
        alpha_posdef_neg = (1 - self.c_1 - self.c_mu) / (n * self.c_mu)  # (52)
        positive = w_prime >= 0
        self.weights = np.where(  # (53)
            positive,
            w_prime / w_prime[positive].sum(),
            min(alpha_mu_neg, alpha_mueff_neg, alpha_posdef_neg) * w_prime
            / np.abs(w_prime[~positive]).sum(),
        )
        self.chi_n = math.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n**2))  # E||N(0, I)||

        self.C = np.eye(n)
        self.p_sigma = np.zeros(n)
        self.p_c = np.zeros(n)
        self.generation = 0

    def _eigen(self) -> tuple[np.ndarray, np.ndarray]:
        """``B [n, n]`` and ``D [n]`` with ``C = B diag(D**2) B^T``."""
        eigvals, B = np.linalg.eigh(self.C)
        # Round-off can push a tiny eigenvalue below zero; clamp relative to the largest.
        eigvals = np.maximum(eigvals, eigvals.max() * 1e-20)
        return B, np.sqrt(eigvals)

    def _sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(x, y, B, D)`` of this generation; a function of the state only."""
        B, D = self._eigen()
        rng = np.random.default_rng([self.seed, self.generation])
        z = rng.standard_normal((self.population_size, self.n))  # (38)
        y = (z * D) @ B.T  # (39) y_k = B D z_k ~ N(0, C)
        x = self.mean + self.sigma * y  # (40)
        return x, y, B, D

    def ask(self) -> np.ndarray:
        """This generation's samples ``[population_size, n]`` (the same until ``tell``)."""
        return self._sample()[0]

    def tell(self, losses: Sequence[float] | np.ndarray) -> None:
        """Updates the distribution from the losses ``[population_size]`` of ``ask``'s rows.

        NaN / inf rank last; ties keep the order of the rows.
        """
        losses = np.asarray(losses, dtype=float)
        if losses.shape != (self.population_size,):
            raise ValueError(f"expected {self.population_size} losses, got shape {losses.shape}")
        losses = np.where(np.isfinite(losses), losses, np.inf)
        _, y, B, D = self._sample()
        y = y[np.argsort(losses, kind="stable")]  # y_{i:lambda}, best first
        n, mu, w = self.n, self.mu, self.weights
        C_inv_sqrt = (B / D) @ B.T  # C^{-1/2} = B D^{-1} B^T

        # Selection and recombination.
        y_w = w[:mu] @ y[:mu]  # (41)
        self.mean = self.mean + self.c_m * self.sigma * y_w  # (42)

        # Step-size control.
        cs = self.c_sigma
        self.p_sigma = ((1 - cs) * self.p_sigma
                        + math.sqrt(cs * (2 - cs) * self.mueff) * (C_inv_sqrt @ y_w))  # (43)
        norm_ps = float(np.linalg.norm(self.p_sigma))
        self.sigma *= math.exp(cs / self.d_sigma * (norm_ps / self.chi_n - 1))  # (44)

        # Covariance matrix adaptation. h_sigma stalls the rank-one update while p_sigma is long
        # (a large step just happened), the Heaviside function under Eq. (45).
        h_sigma = float(norm_ps / math.sqrt(1 - (1 - cs) ** (2 * (self.generation + 1)))
                        < (1.4 + 2 / (n + 1)) * self.chi_n)
        cc = self.c_c
        self.p_c = ((1 - cc) * self.p_c
                    + h_sigma * math.sqrt(cc * (2 - cc) * self.mueff) * y_w)  # (45)
        # Negative weights act on directions rescaled to length sqrt(n) in the C^{-1/2} metric,
        # so the active update cannot blow up along a long sample. (46)
        mahalanobis_sq = ((y @ C_inv_sqrt.T) ** 2).sum(axis=1)
        w_circ = np.where(w >= 0, w, w * n / np.maximum(mahalanobis_sq, 1e-300))
        delta_h = (1 - h_sigma) * cc * (2 - cc)
        self.C = ((1 + self.c_1 * delta_h - self.c_1 - self.c_mu * w.sum()) * self.C
                  + self.c_1 * np.outer(self.p_c, self.p_c)
                  + self.c_mu * (w_circ[:, None] * y).T @ y)  # (47)
        self.C = (self.C + self.C.T) / 2  # keep it exactly symmetric against round-off
        self.generation += 1

    def state_dict(self) -> dict[str, Any]:
        """The dynamic state as JSON-serialisable lists (floats round-trip exactly via repr)."""
        return {
            "population_size": self.population_size,
            "seed": self.seed,
            "mean": self.mean.tolist(),
            "sigma": self.sigma,
            "C": self.C.tolist(),
            "p_sigma": self.p_sigma.tolist(),
            "p_c": self.p_c.tolist(),
            "generation": self.generation,
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> CMAESCore:
        """Inverse of ``state_dict``."""
        core = cls(state["mean"], state["sigma"], int(state["population_size"]),
                   int(state["seed"]))
        core.C = np.array(state["C"], dtype=float)
        core.p_sigma = np.array(state["p_sigma"], dtype=float)
        core.p_c = np.array(state["p_c"], dtype=float)
        core.generation = int(state["generation"])
        if core.C.shape != (core.n, core.n):
            raise ValueError(f"CMA-ES state: C has shape {core.C.shape}, expected {(core.n,) * 2}")
        return core


def mirror_unit(x: np.ndarray) -> np.ndarray:
    """Reflects each coordinate into [0, 1] (2-periodic triangle wave: 1.2 -> 0.8, -0.1 -> 0.1)."""
    r = np.mod(x, 2.0)
    return np.where(r > 1.0, 2.0 - r, r)


class CMAES(Searcher):
    """CMA-ES over a search space (see the module docstring for bounds, integers and choices).

    ``ask`` returns exactly ``population_size`` configs (a generation); ``tell`` must receive those
    same configs (in any order) with their losses before the next generation is asked. Asking
    again before telling returns the same generation. With ``initial_design`` the first
    generation is the design and ``generation`` counts it.

    Example:
        >>> space = {"learning_rate": Float(1e-5, 1e-1, log=True), "beta": Float(0.0, 4.0)}
        >>> searcher = CMAES(space, population_size=8, seed=0)
        >>> configs = searcher.ask()
        >>> searcher.tell(configs, [loss_fn(c) for c in configs])
        >>> state = searcher.state_dict()              # json.dumps(state) works
        >>> CMAES.from_state_dict(space, state).ask() == searcher.ask()
        True
    """

    name = "cmaes"
    synchronous = True

    def __init__(self, space: Space, population_size: int | None = None, seed: int = 0,
                 sigma0: float = 0.3, initial_design: bool = True,
                 sigma_min: float = 0.05) -> None:
        super().__init__(space, seed)
        if not self.space:
            raise ValueError("CMAES needs a search space with at least one dimension")
        if not isinstance(initial_design, bool):
            raise ValueError(f"initial_design must be true or false, got {initial_design!r}")
        self.sigma0 = _check_sigma(sigma0)
        self.sigma_min = min(_check_sigma(sigma_min), self.sigma0)
        self.core = CMAESCore(np.full(len(self.space), 0.5), self.sigma0,
                              _check_popsize(population_size), self.seed)
        self.population_size = self.core.population_size
        self.initial_design = initial_design
        self.design_pending = initial_design  # the design generation is asked and not yet told

    @property
    def generation(self) -> int:
        """Number of generations told so far (the design included)."""
        return self.core.generation + (self.initial_design and not self.design_pending)

    def _units(self) -> np.ndarray:
        """This generation's unit-cube points ``[population_size, n]``."""
        if self.design_pending:
            return sobol_design(self.population_size, len(self.space), self.seed)
        return mirror_unit(self.core.ask())

    def _ask(self) -> list[dict[str, Any]]:
        return [space_from_unit(self.space, u) for u in self._units()]

    def _tell(self, configs: list[dict[str, Any]], losses: np.ndarray) -> None:
        expected = self._ask()
        order = _match(expected, configs)
        if order is None:
            raise ValueError(f"CMAES.tell must receive the {self.population_size} configs of the "
                             f"last ask (generation {self.generation})")
        if self.design_pending:
            self._start_from_design(self._units(), losses[order])
            return
        self.core.tell(losses[order])
        # The mirror has period 2, so shifting the mean by an even integer changes nothing.
        self.core.mean = self.core.mean - 2.0 * np.floor((self.core.mean + 0.5) / 2.0)

    def _start_from_design(self, units: np.ndarray, losses: np.ndarray) -> None:
        """Mean, step size and covariance from the design's best points (module docstring)."""
        core = self.core
        best = units[np.argsort(losses, kind="stable")[:core.mu]]  # [mu, n], best first
        w = core.weights[:core.mu]
        mean = w @ best  # (41)-(42) with sigma * y_i = x_i - m_old
        var = w @ (best - mean) ** 2  # [n]
        var = np.maximum(var, self.sigma_min**2)
        sigma = float(np.clip(math.sqrt(var.mean()), self.sigma_min, self.sigma0))
        core.mean, core.sigma, core.C = mean, sigma, np.diag(var / sigma**2)
        self.design_pending = False

    def _state(self) -> dict[str, Any]:
        return {"sigma0": self.sigma0, "sigma_min": self.sigma_min,
                "initial_design": self.initial_design, "design_pending": self.design_pending,
                "core": self.core.state_dict()}

    @classmethod
    def _from_state(cls, space: Space, state: Mapping[str, Any]) -> CMAES:
        core = CMAESCore.from_state_dict(state["core"])
        # States saved before the initial design existed resume as the plain start they were.
        searcher = cls(space, population_size=core.population_size, seed=int(state["seed"]),
                       sigma0=float(state["sigma0"]),
                       initial_design=bool(state.get("initial_design", False)),
                       sigma_min=float(state.get("sigma_min", 0.05)))
        if core.n != len(searcher.space):
            raise ValueError("CMA-ES state does not match the search space's dimension")
        searcher.core = core
        searcher.design_pending = bool(state.get("design_pending", False))
        return searcher


def _match(expected: list[dict[str, Any]], told: list[dict[str, Any]]) -> list[int] | None:
    """``order`` with ``told[order[i]] == expected[i]`` for all i, or None if not a permutation."""
    if len(told) != len(expected):
        return None
    if told == expected:
        return list(range(len(told)))
    unused = list(range(len(told)))
    order = []
    for config in expected:
        j = next((j for j in unused if told[j] == config), None)
        if j is None:
            return None
        unused.remove(j)
        order.append(j)
    return order
