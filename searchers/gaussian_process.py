"""Gaussian-process regression with a Matérn 5/2 ARD kernel, fitted by maximum a posteriori.

C. E. Rasmussen and C. K. I. Williams, "Gaussian Processes for Machine Learning", MIT Press 2006
(equation numbers below are theirs). The model of standardised losses ``y [n]`` at inputs
``X [n, p]`` in the unit cube is ``y = f(X) + eps`` with a zero-mean GP prior on ``f`` and
``eps ~ N(0, noise I)``, and the covariance

    k(x, x') = signal * (1 + sqrt(5) r + 5 r^2 / 3) exp(-sqrt(5) r),                     (4.17)
    r^2 = sum_d (x_d - x'_d)^2 / lengthscale_d^2                                        (ARD)

The hyperparameters ``theta = [log lengthscales (p), log signal, log noise]`` maximise the log
marginal likelihood (5.8) plus log-normal priors that keep the fit stable on a few points:
``log lengthscale ~ N(sqrt(2) + log(p) / 2, 3)`` (the dimension-scaled prior of Hvarfner, Hellsten
and Nardi, "Vanilla Bayesian Optimization Performs Great in High Dimensions", ICML 2024, BoTorch's
default), ``log signal ~ N(0, 1)`` (the losses are standardised) and ``log noise ~ N(-4, 1)``
(BoTorch's noise prior), inside box bounds; the gradient is (5.9). Maximisation is L-BFGS-B
(scipy) from a warm start, the prior mean and a few random draws from the prior; the best wins.

numpy and scipy only.
"""

from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import numpy as np
from scipy import linalg, optimize

try:  # shipped with scikit-learn; without it L-BFGS-B is only slower
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

__all__ = ["GPParams", "Posterior", "fit", "matern52", "neg_log_posterior", "one_blas_thread",
           "prior"]

SQRT5 = math.sqrt(5.0)
# Box bounds on the hyperparameters (natural units); the unit cube spans 1 along every input.
LENGTHSCALE_BOUNDS = (1e-2, 1e2)
SIGNAL_BOUNDS = (5e-2, 2e1)
NOISE_BOUNDS = (1e-6, 1.0)
JITTER = 1e-8  # added to the diagonal so that Cholesky survives duplicate inputs


def one_blas_thread() -> contextlib.AbstractContextManager:
    """A context with BLAS limited to one thread (a no-op without ``threadpoolctl``).

    scipy >= 1.15's L-BFGS-B calls LAPACK on tiny matrices, which threaded OpenBLAS makes 10-20x
    slower (scipy issue 22438; BoTorch and Optuna limit BLAS to one thread the same way). Measured
    here: one 5-parameter fit on 30 points, 0.15-0.6 s threaded, 0.015 s on one thread.
    """
    if threadpool_limits is None:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


class GPParams(NamedTuple):
    """Kernel hyperparameters (natural units, not logs)."""

    lengthscales: np.ndarray  # [p]
    signal: float  # signal variance of the standardised losses
    noise: float  # noise variance

    @property
    def theta(self) -> np.ndarray:
        """``[p + 2]`` ``[log lengthscales, log signal, log noise]``."""
        return np.concatenate([np.log(self.lengthscales), [math.log(self.signal),
                                                             math.log(self.noise)]])

    @classmethod
    def from_theta(cls, theta: np.ndarray) -> GPParams:
        theta = np.asarray(theta, dtype=float)
        return cls(np.exp(theta[:-2]), float(np.exp(theta[-2])), float(np.exp(theta[-1])))


def prior(p: int) -> tuple[np.ndarray, np.ndarray, list[tuple[float, float]]]:
    """Mean ``[p + 2]``, variance ``[p + 2]`` and box bounds of ``theta`` (module docstring)."""
    mean = np.concatenate([np.full(p, math.sqrt(2.0) + 0.5 * math.log(p)), [0.0, -4.0]])
    var = np.concatenate([np.full(p, 3.0), [1.0, 1.0]])
    bounds = ([tuple(np.log(LENGTHSCALE_BOUNDS))] * p
              + [tuple(np.log(SIGNAL_BOUNDS)), tuple(np.log(NOISE_BOUNDS))])
    return mean, var, [(float(lo), float(hi)) for lo, hi in bounds]


def _scaled_sq_dists(X1: np.ndarray, X2: np.ndarray, lengthscales: np.ndarray) -> np.ndarray:
    """``[p, n1, n2]`` per-input squared differences divided by ``lengthscale_d^2``."""
    diff = (X1[:, None, :] - X2[None, :, :]) / lengthscales  # [n1, n2, p]
    return np.moveaxis(diff**2, -1, 0)


def matern52(X1: np.ndarray, X2: np.ndarray, lengthscales: np.ndarray) -> np.ndarray:
    """The Matérn 5/2 correlation ``[n1, n2]`` (signal variance 1) between rows of X1 and X2."""
    r = np.sqrt(np.maximum(_scaled_sq_dists(X1, X2, lengthscales).sum(axis=0), 0.0))
    return (1.0 + SQRT5 * r + 5.0 / 3.0 * r**2) * np.exp(-SQRT5 * r)


def _cholesky(K: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor, adding jitter (up to 1e-4 of the diagonal) if K is near-singular."""
    scale = float(np.mean(np.diag(K)))
    for jitter in (0.0, 1e-10, 1e-8, 1e-6, 1e-4):
        try:
            return linalg.cholesky(K + jitter * scale * np.eye(len(K)), lower=True,
                                   check_finite=False)
        except linalg.LinAlgError:
            continue
    raise linalg.LinAlgError("the GP covariance is not positive definite even with jitter")


def neg_log_posterior(theta: np.ndarray, X: np.ndarray, y: np.ndarray,
                      sq_diffs: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """``-(log p(y | X, theta) + log prior(theta))`` up to a constant, and its gradient.

    Args:
        theta: ``[p + 2]`` log hyperparameters.
        X: ``[n, p]`` inputs.
        y: ``[n]`` standardised losses.
        sq_diffs: ``[p, n, n]`` the squared input differences ``(X_id - X_kd)^2`` if already
            computed (they do not depend on ``theta``).

    Returns:
        The value and its gradient ``[p + 2]`` with respect to ``theta``.
    """
    params = GPParams.from_theta(theta)
    n, p = X.shape
    if sq_diffs is None:
        sq_diffs = _scaled_sq_dists(X, X, np.ones(p))
    D2 = sq_diffs / (params.lengthscales**2)[:, None, None]  # [p, n, n]
    r = np.sqrt(D2.sum(axis=0))
    decay = np.exp(-SQRT5 * r)
    R = (1.0 + SQRT5 * r + 5.0 / 3.0 * r**2) * decay
    K = params.signal * R + (params.noise + JITTER) * np.eye(n)
    try:
        L = _cholesky(K)
    except linalg.LinAlgError:
        return 1e25, np.zeros_like(theta)  # L-BFGS-B backs off from here
    alpha = linalg.cho_solve((L, True), y, check_finite=False)
    # (5.8) without its constant n/2 log(2 pi).
    nll = 0.5 * float(y @ alpha) + float(np.log(np.diag(L)).sum())
    # (5.9): d nll / d theta_j = 1/2 tr((K^-1 - alpha alpha^T) dK / d theta_j).
    W = linalg.cho_solve((L, True), np.eye(n), check_finite=False) - np.outer(alpha, alpha)
    # dK / d log l_d = signal * 5/3 (1 + sqrt5 r) exp(-sqrt5 r) (x_d - x'_d)^2 / l_d^2.
    G = params.signal * 5.0 / 3.0 * (1.0 + SQRT5 * r) * decay
    grad = np.empty(p + 2)
    grad[:p] = 0.5 * np.einsum("ik,dik->d", W * G, D2)
    grad[p] = 0.5 * float((W * (params.signal * R)).sum())
    grad[p + 1] = 0.5 * params.noise * float(np.trace(W))
    mean, var, _ = prior(p)
    return nll + float(((theta - mean) ** 2 / (2 * var)).sum()), grad + (theta - mean) / var


def fit(X: np.ndarray, y: np.ndarray, rng: np.random.Generator, warm: np.ndarray | None = None,
        restarts: int = 2, maxiter: int = 200) -> GPParams:
    """MAP hyperparameters: L-BFGS-B from ``warm``, the prior mean and ``restarts`` prior draws.

    Args:
        X: ``[n, p]`` inputs in the unit cube.
        y: ``[n]`` standardised losses.
        rng: draws the random starts.
        warm: ``[p + 2]`` a previous ``theta`` to start from (e.g. the last fit's), or None.
        restarts: random starts drawn from the prior (clipped to the bounds).
        maxiter: L-BFGS-B iterations per start.
    """
    p = X.shape[1]
    mean, var, bounds = prior(p)
    lo, hi = np.array(bounds).T
    starts = [mean] if warm is None else [np.clip(warm, lo, hi), mean]
    starts += [np.clip(mean + np.sqrt(var) * rng.standard_normal(p + 2), lo, hi)
               for _ in range(restarts)]
    best_theta, best_value = mean, math.inf
    sq_diffs = _scaled_sq_dists(X, X, np.ones(p))
    with one_blas_thread():
        for start in starts:
            result = optimize.minimize(neg_log_posterior, start, args=(X, y, sq_diffs),
                                       jac=True, method="L-BFGS-B", bounds=bounds,
                                       options={"maxiter": maxiter})
            if np.isfinite(result.fun) and result.fun < best_value:
                best_theta, best_value = result.x, float(result.fun)
    return GPParams.from_theta(best_theta)


class Posterior:
    """The GP posterior of the latent ``f`` given ``(X, y)`` and fixed hyperparameters.

    Attributes:
        X: ``[n, p]`` training inputs.
        params: the hyperparameters.
    """

    def __init__(self, X: np.ndarray, y: np.ndarray, params: GPParams) -> None:
        self.X = np.asarray(X, dtype=float)
        self.params = params
        K = params.signal * matern52(self.X, self.X, params.lengthscales)
        self._L = _cholesky(K + (params.noise + JITTER) * np.eye(len(self.X)))
        self._alpha = linalg.cho_solve((self._L, True), np.asarray(y, dtype=float),
                                       check_finite=False)  # K^-1 y
        self._K_inv: np.ndarray | None = None  # [n, n], for gradients; built on first use

    def predict(self, Xq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean ``[m]`` and variance ``[m]`` of ``f`` at ``Xq [m, p]`` (2.25), (2.26)."""
        k_star = self.params.signal * matern52(Xq, self.X, self.params.lengthscales)  # [m, n]
        v = linalg.solve_triangular(self._L, k_star.T, lower=True, check_finite=False)  # [n, m]
        var = np.maximum(self.params.signal - (v**2).sum(axis=0), 1e-12)
        return k_star @ self._alpha, var

    def predict_with_grad(self, Xq: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Mean ``[m]``, variance ``[m]`` and their gradients ``[m, p]`` at ``Xq [m, p]``."""
        if self._K_inv is None:
            self._K_inv = linalg.cho_solve((self._L, True), np.eye(len(self.X)),
                                           check_finite=False)
        ls2 = self.params.lengthscales**2
        diff = Xq[:, None, :] - self.X[None, :, :]  # [m, n, p]
        r = np.sqrt((diff**2 / ls2).sum(axis=2))  # [m, n]
        decay = np.exp(-SQRT5 * r)
        k = self.params.signal * (1.0 + SQRT5 * r + 5.0 / 3.0 * r**2) * decay  # [m, n]
        # dk_i / dx = -signal * 5/3 (1 + sqrt5 r_i) exp(-sqrt5 r_i) (x - X_i) / l^2: no 1/r.
        dk = -(self.params.signal * 5.0 / 3.0 * (1.0 + SQRT5 * r) * decay)[:, :, None] * diff / ls2
        Kinv_k = k @ self._K_inv  # [m, n] (K^-1 is symmetric)
        var = self.params.signal - (k * Kinv_k).sum(axis=1)
        d_mean = np.einsum("mnp,n->mp", dk, self._alpha)
        d_var = -2.0 * np.einsum("mnp,mn->mp", dk, Kinv_k)
        # Where the variance is clamped (at a data point), it has no gradient.
        floor = var <= 1e-12
        d_var[floor] = 0.0
        return k @ self._alpha, np.maximum(var, 1e-12), d_mean, d_var
