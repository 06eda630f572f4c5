"""GP: Bayesian optimisation with a Gaussian process and (log) expected improvement.

The loop of J. Snoek, H. Larochelle and R. P. Adams, "Practical Bayesian Optimization of Machine
Learning Algorithms", NeurIPS 2012: model the losses with a GP (``searchers.gaussian_process``:
Matérn 5/2, ARD, MAP hyperparameters), propose where the expected improvement is largest. The
rules, in the space's unit cube (``space_to_unit``: log scales are already log):

* Inputs: a ``Float`` is its unit coordinate; an ``Int`` is the unit coordinate of its integer
  (``Int.to_unit(Int.from_unit(u))``: proposals snap to integers before the GP sees them); a
  ``Choice`` of k options is k one-hot inputs, so no order is imposed on its options.
* Outputs: failed trials (NaN / inf) get the worst finite loss told so far (they must repel, not
  dominate the scale); then losses are standardised to mean 0, standard deviation 1.
* Data cap: beyond ``max_points`` told configs, the GP sees the ``max_points // 2`` best and the
  most recent others, so ``ask`` stays fast on long runs while the incumbent region stays sharp.
* Initial design: until ``n_initial`` finite losses (default ``max(dims + 1, 10)``) have been told,
  config k is point k of the seed's scrambled Sobol sequence (``searchers.design``, shared with
  CMA-ES and TPE), so a seed names the same design points whatever the batch sizes.
* Acquisition: log expected improvement over the best standardised loss, with exploration margin
  ``xi`` (S. Ament et al., "Unexpected Improvements to Expected Improvement for Bayesian
  Optimization", NeurIPS 2023, Eq. (9): computed in log space, so it never underflows to a flat
  zero far from the data). It is maximised over ``n_candidates`` uniform points plus Gaussian
  perturbations (standard deviation 0.1) of the best told points, and the best ``n_refine`` of
  them are refined by L-BFGS-B along the ``Float`` coordinates (integers and choices stay at the
  candidate's value: the acquisition is flat along them between snaps). The best candidate whose
  config was not told or asked already wins: EI can peak on a config already tried (at a face of
  the cube, or on integers and choices), which would waste a trial.
* Batches and pending configs: Kriging believer (D. Ginsbourger, R. Le Riche and L. Carraro,
  "Kriging is well-suited to parallelize optimization", 2010): configs asked but not yet told
  (the ``max_pending`` most recent), and those already proposed in the same ``ask``, join the GP
  data with the posterior mean as their loss. The mean is unchanged but the variance collapses
  around them, so a batch, or asks while other trials run, spread out instead of repeating.
  Only a proposal that believes nothing is refined by L-BFGS-B; the others take the best
  candidate as drawn: with 15 believers, the refinement climbed the collapsed variance to the
  faces of the cube, and a generation of 16 on the contractive autoencoder alternated between
  weight decay 1e-6 and 1e-2 (six trials on the bad face); without it the bench's median best
  loss on seeds 0-2 went from 0.5565 to 0.5398 (contractive) and 0.7879 to 0.7662 (sparse)
  (``bench/SEARCHERS.md``).
  A multi-fidelity scheduler, which tells only one budget's losses, replaces the pending list with
  the configs actually in flight (``set_pending``; ``searchers.feed`` gives the rule). Configs
  asked before whose loss the model does not have (under a multi-fidelity scheduler: stopped below
  the model's budget) are believed the same way, the most recent first, up to ``max_pending``
  believers in all; and a config asked before is proposed again only when no candidate is new.
  Without them the model, which sees only the survivors of the lower rungs, finds its variance
  highest where the pruned trials were: under ASHA (``tests/test_searchers_gp.py``) it proposed
  the same two configs in turn for 8 of 30 trials.

Config k draws only from ``np.random.default_rng([seed, k])`` (and the seed's design); the
hyperparameters are refitted (starting from the last fit) when the told data grew by an eighth
since the last fit, or by one config while there are fewer than 16; the posterior always uses all
the data. ``state_dict`` saves the data and the last fit, so a restored searcher asks exactly what
the original would.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import optimize, special

from searchers import gaussian_process as gp_lib
from searchers.base import ModelBased
from searchers.space import Choice, Float, Int, Space, space_from_unit

__all__ = ["GP", "log_expected_improvement"]

_LOCAL_SIGMA = 0.1  # unit-cube std of the perturbations around the best points
_LOCAL_CENTRES = 5  # best told points perturbed
_C1 = 0.5 * math.log(2 * math.pi)
_C2 = 0.5 * math.log(math.pi / 2)


def _log_h(z: np.ndarray) -> np.ndarray:
    """``log(phi(z) + z Phi(z))`` without cancellation (Ament et al. 2023, Eq. (9))."""
    z = np.asarray(z, dtype=float)
    out = np.empty_like(z)
    big = z > -1.0
    zb = z[big]
    out[big] = np.log(np.exp(-0.5 * zb**2 - _C1) + zb * special.ndtr(zb))
    zs = z[~big]
    # phi(z) + z Phi(z) = phi(z) (1 - |z| sqrt(pi/2) erfcx(-z / sqrt 2)) for z < 0.
    t = np.log(special.erfcx(-zs / math.sqrt(2)) * np.abs(zs)) + _C2
    out[~big] = -0.5 * zs**2 - _C1 + np.log(-np.expm1(t))
    return out


def log_expected_improvement(mean: np.ndarray, var: np.ndarray, best: float,
                             xi: float = 0.0) -> np.ndarray:
    """``log E[max(best - xi - f, 0)]`` for ``f ~ N(mean, var)`` (minimisation), ``[m]``."""
    sigma = np.sqrt(var)
    return np.log(sigma) + _log_h((best - xi - mean) / sigma)


def _log_ei_with_grad(mean: np.ndarray, var: np.ndarray, best: float,
                      xi: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """log EI ``[m]`` and its derivatives ``[m]`` with respect to the mean and the variance."""
    sigma = np.sqrt(var)
    z = (best - xi - mean) / sigma
    log_h = _log_h(z)
    # h'(z) = Phi(z): d log h / dz = Phi(z) / h(z), in logs for large negative z.
    ratio = np.exp(special.log_ndtr(z) - log_h)
    d_mean = -ratio / sigma
    d_sigma = 1.0 / sigma - ratio * z / sigma
    return np.log(sigma) + log_h, d_mean, d_sigma / (2.0 * sigma)


def _snap_int(dim: Int, u: np.ndarray) -> np.ndarray:
    """``dim.to_unit(dim.from_unit(u))`` elementwise ``[m]``: the unit coordinate of the integer
    each ``u`` maps to (vectorised: the per-element methods dominate an ask's time)."""
    u = np.clip(u, 0.0, 1.0)
    if dim.log:
        lo, hi = math.log(dim.low - 0.5), math.log(dim.high + 0.5)
        k = np.clip(np.round(np.exp(lo + u * (hi - lo))), dim.low, dim.high)
        return np.clip((np.log(k) - lo) / (hi - lo), 0.0, 1.0)
    width = dim.high - dim.low + 1
    k = np.minimum(np.floor(u * width), width - 1)
    return (k + 0.5) / width


def _check_count(value: Any, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_xi(value: Any) -> float:
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not math.isfinite(value) or value < 0):
        raise ValueError(f"xi must be a non-negative number, got {value!r}")
    return float(value)


class GP(ModelBased):
    """Gaussian-process Bayesian optimisation with log-EI (module docstring for every rule).

    Asks and tells may interleave freely (``synchronous = False``): ``tell`` accepts any configs of
    the space, asked or not, in any grouping and order.

    Example:
        >>> space = {"learning_rate": Float(1e-5, 1e-1, log=True), "depth": Int(1, 4)}
        >>> searcher = GP(space, batch_size=4, seed=0)
        >>> for _ in range(8):
        ...     configs = searcher.ask()                # 4 configs spread by Kriging believer
        ...     searcher.tell(configs, [loss_fn(c) for c in configs])
        >>> state = searcher.state_dict()              # json.dumps(state) works
        >>> GP.from_state_dict(space, state).ask() == searcher.ask()
        True

    Args:
        space: the search space (at least one dimension).
        batch_size: configs per ``ask``.
        seed: the seed.
        n_initial: finite losses needed before the GP is used (``None``: ``max(dims + 1, 10)``).
        n_candidates: uniform random candidates per proposal (plus as many local ones).
        n_refine: best candidates refined by L-BFGS-B.
        xi: exploration margin of EI, in standard deviations of the told losses.
        max_points: the most told configs the GP is fitted on.
        max_pending: the most asked-but-untold configs believed at their mean.
        restarts: random restarts of the hyperparameter fit (besides the warm start and the
            prior mean).
    """

    name = "gp"

    def __init__(self, space: Space, batch_size: int = 1, seed: int = 0,
                 n_initial: int | None = None, n_candidates: int = 512, n_refine: int = 3,
                 xi: float = 0.0, max_points: int = 128, max_pending: int = 64,
                 restarts: int = 1) -> None:
        if not space:
            raise ValueError("GP needs a search space with at least one dimension")
        self.n_initial = (max(len(space) + 1, 10) if n_initial is None
                          else _check_count(n_initial, "n_initial"))
        super().__init__(space, seed, self.n_initial)
        self.batch_size = _check_count(batch_size, "batch_size")
        self.n_candidates = _check_count(n_candidates, "n_candidates")
        self.n_refine = _check_count(n_refine, "n_refine", 0)
        self.xi = _check_xi(xi)
        self.max_points = _check_count(max_points, "max_points", 2)
        self.max_pending = _check_count(max_pending, "max_pending", 0)
        self.restarts = _check_count(restarts, "restarts", 0)
        self.asked: list[list[float]] = []  # unit-cube point of every config asked, in order
        self.theta: list[float] | None = None  # last fitted log hyperparameters (warm start)
        self.theta_told = 0  # len(losses) when theta was fitted
        dims = list(self.space.values())
        self._floats = np.array([j for j, d in enumerate(dims) if isinstance(d, Float)], dtype=int)

    @property
    def min_observations(self) -> int:
        return self.n_initial

    def fresh(self) -> GP:
        """Told nothing; keeps the seed's position, the configs still in flight and those asked."""
        twin = GP(self.space, self.batch_size, self.seed, self.n_initial, self.n_candidates,
                  self.n_refine, self.xi, self.max_points, self.max_pending, self.restarts)
        twin.num_asked, twin.pending = self.num_asked, list(self.pending)
        twin.asked = list(self.asked)
        return twin

    def set_pending(self, configs: list[dict[str, Any]]) -> None:
        """The configs believed at their mean: those being evaluated now (see ``Searcher``)."""
        configs = [dict(config) for config in configs]
        self.pending = configs[-self.max_pending:] if self.max_pending else []

    # -- inputs -----------------------------------------------------------------------------------

    def features(self, units: np.ndarray) -> np.ndarray:
        """GP inputs ``[m, p]`` of unit-cube points ``[m, dims]`` (module docstring)."""
        columns = []
        for j, dim in enumerate(self.space.values()):
            u = units[:, j]
            if isinstance(dim, Float):
                columns.append(u[:, None])
            elif isinstance(dim, Int):
                columns.append(_snap_int(dim, u)[:, None])
            else:
                k = len(dim.options)
                index = np.minimum(np.floor(np.clip(u, 0.0, 1.0) * k).astype(int), k - 1)
                columns.append(np.eye(k)[index])
        return np.concatenate(columns, axis=1)

    def _feature_columns(self) -> np.ndarray:
        """For each Float dimension, its column in ``features`` (the ones L-BFGS-B moves)."""
        starts, column = [], 0
        for dim in self.space.values():
            starts.append(column)
            column += len(dim.options) if isinstance(dim, Choice) else 1
        return np.array([starts[j] for j in self._floats], dtype=int)

    # -- asking -----------------------------------------------------------------------------------

    def _ask(self) -> list[dict[str, Any]]:
        if self.num_finite() < self.n_initial:
            return self._ask_design()
        with gp_lib.one_blas_thread():
            return self._ask_model()

    def _ask_design(self) -> list[dict[str, Any]]:
        configs = []
        for _ in range(self.batch_size):
            configs.append(space_from_unit(self.space, self.design_point(self.num_asked)))
            self._asked(configs[-1])
        return configs

    def _ask_model(self) -> list[dict[str, Any]]:
        model = self._model()
        configs = []
        for _ in range(self.batch_size):
            rng = np.random.default_rng([self.seed, self.num_asked])
            configs.append(self._propose(model, rng))
            self._asked(configs[-1])
        return configs

    def _asked(self, config: dict[str, Any]) -> None:
        self.num_asked += 1
        self.asked.append(self.unit_points([config])[0].tolist())
        self.pending = (self.pending + [config])[-self.max_pending:] if self.max_pending else []

    def _model(self) -> tuple[np.ndarray, np.ndarray, gp_lib.GPParams]:
        """The GP's data ``X [n, p]``, standardised ``y [n]`` and (refitted) hyperparameters."""
        losses = np.array(self.losses, dtype=float)
        points = np.array(self.points, dtype=float).reshape(len(losses), len(self.space))
        keep = np.arange(len(losses))
        if len(keep) > self.max_points:
            best = np.argsort(losses, kind="stable")[:self.max_points // 2]
            chosen = set(best.tolist())
            recent = [i for i in reversed(keep) if i not in chosen]
            keep = np.sort(np.concatenate([best, recent[:self.max_points - len(best)]]))
        finite = losses[np.isfinite(losses)]
        y = np.where(np.isfinite(losses), losses, finite.max())[keep]
        std = y.std()
        y = (y - y.mean()) / (std if std > 0 else 1.0)
        X = self.features(points[keep])
        # Refit once the data grew by an eighth (every tell while there are few): the MAP moves
        # little between single tells, and the fit is most of an ask's time on long runs.
        if self.theta is None or len(self.losses) >= self.theta_told + max(1, self.theta_told // 8):
            rng = np.random.default_rng([self.seed, len(self.losses), 0xF17])
            warm = None if self.theta is None else np.array(self.theta)
            self.theta = gp_lib.fit(X, y, rng, warm=warm, restarts=self.restarts).theta.tolist()
            self.theta_told = len(self.losses)
        return X, y, gp_lib.GPParams.from_theta(np.array(self.theta))

    def _propose(self, model: tuple[np.ndarray, np.ndarray, gp_lib.GPParams],
                 rng: np.random.Generator) -> dict[str, Any]:
        """The config maximising log EI given the data and the believed pending configs."""
        X, y, params = model
        best = float(y.min())
        believed = self._believed()
        if len(believed):
            Xb = self.features(believed)
            at_mean, _ = gp_lib.Posterior(X, y, params).predict(Xb)
            X, y = np.concatenate([X, Xb]), np.concatenate([y, at_mean])
            best = min(best, float(at_mean.min()))
        posterior = gp_lib.Posterior(X, y, params)

        d = len(self.space)
        points = np.array(self.points, dtype=float).reshape(len(self.losses), d)
        order = np.argsort(np.array(self.losses, dtype=float), kind="stable")[:_LOCAL_CENTRES]
        per_centre = -(-self.n_candidates // len(order))
        local = (points[order][:, None, :]
                 + _LOCAL_SIGMA * rng.standard_normal((len(order), per_centre, d)))
        units = np.concatenate([rng.random((self.n_candidates, d)),
                                np.clip(local.reshape(-1, d), 0.0, 1.0)])
        mean, var = posterior.predict(self.features(units))
        scores = log_expected_improvement(mean, var, best, self.xi)

        # Only a proposal that believes nothing is refined: with believers, L-BFGS-B climbs the
        # collapsed variance to the faces of the cube (module docstring, "Batches").
        if self._floats.size and self.n_refine and not len(believed):
            starts = units[np.argsort(-scores, kind="stable")[:self.n_refine]]
            refined = self._refine(posterior, starts, best)
            mean, var = posterior.predict(self.features(refined))
            units = np.concatenate([refined, units])
            scores = np.concatenate([log_expected_improvement(mean, var, best, self.xi), scores])
        return self._first_new(units[np.argsort(-scores, kind="stable")])

    def _believed(self) -> np.ndarray:
        """Unit points ``[b, dims]`` believed at the posterior mean: the pending configs, then
        the other asked configs the model has no loss for, most recent first, ``max_pending`` in
        all (module docstring)."""
        told = {tuple(point) for point in self.points}
        believed: dict[tuple[float, ...], None] = {}
        for point in self.unit_points(self.pending):
            believed.setdefault(tuple(point), None)
        for point in reversed(self.asked):
            if tuple(point) not in told:
                believed.setdefault(tuple(point), None)
        return np.array(list(believed)[:self.max_pending], dtype=float).reshape(-1, len(self.space))

    def _first_new(self, ranked: np.ndarray) -> dict[str, Any]:
        """The best-ranked unit point whose config was neither asked nor told before (else the
        best): at a face of the cube or on integers and choices, EI may peak at a config already
        tried, and a sweep would spend a trial repeating it. Two points are the same config when
        their GP inputs are equal (integers and choices are snapped there; a float coordinate
        repeats exactly only at a face, where the mapping round-trips exactly)."""
        pending = self.unit_points(self.pending).tolist()
        before = np.array(self.points + self.asked + pending, dtype=float)
        seen = {tuple(row) for row in self.features(before.reshape(-1, len(self.space)))}
        for u, key in zip(ranked, self.features(ranked), strict=True):
            if tuple(key) not in seen:
                return space_from_unit(self.space, u)
        return space_from_unit(self.space, ranked[0])

    def _refine(self, posterior: gp_lib.Posterior, starts: np.ndarray,
                best: float) -> np.ndarray:
        """L-BFGS-B on log EI along the Float coordinates of each start ``[s, dims]``.

        The starts are refined jointly, as one problem whose objective is the sum of theirs
        (separable, so each start moves on its own; one call instead of s saves scipy's
        per-call overhead).
        """
        base = self.features(starts)  # [s, p]
        columns = self._feature_columns()
        shape = (len(starts), len(columns))

        def negative(z: np.ndarray) -> tuple[float, np.ndarray]:
            x = base.copy()
            x[:, columns] = z.reshape(shape)
            mean, var, d_mean, d_var = posterior.predict_with_grad(x)
            value, g_mean, g_var = _log_ei_with_grad(mean, var, best, self.xi)
            grad = g_mean[:, None] * d_mean + g_var[:, None] * d_var  # [s, p]
            return -float(value.sum()), -grad[:, columns].ravel()

        result = optimize.minimize(negative, starts[:, self._floats].ravel(), jac=True,
                                   method="L-BFGS-B", bounds=[(0.0, 1.0)] * (shape[0] * shape[1]),
                                   options={"maxiter": 100})
        refined = starts.copy()
        refined[:, self._floats] = np.clip(result.x.reshape(shape), 0.0, 1.0)
        return refined

    # -- telling and state ------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "n_initial": self.n_initial,
            "n_candidates": self.n_candidates,
            "n_refine": self.n_refine,
            "xi": self.xi,
            "max_points": self.max_points,
            "max_pending": self.max_pending,
            "restarts": self.restarts,
            **self._history_state(),
            "asked": self.asked,
            "theta": self.theta,
            "theta_told": self.theta_told,
        }

    @classmethod
    def _from_state(cls, space: Space, state: Mapping[str, Any]) -> GP:
        searcher = cls(space, batch_size=int(state["batch_size"]), seed=int(state["seed"]),
                       n_initial=int(state["n_initial"]),
                       n_candidates=int(state["n_candidates"]), n_refine=int(state["n_refine"]),
                       xi=float(state["xi"]), max_points=int(state["max_points"]),
                       max_pending=int(state["max_pending"]), restarts=int(state["restarts"]))
        searcher._restore_history(state)
        searcher.asked = [[float(x) for x in point] for point in state["asked"]]
        theta = state["theta"]
        searcher.theta = None if theta is None else [float(x) for x in theta]
        searcher.theta_told = int(state["theta_told"])
        return searcher
