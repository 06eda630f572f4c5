"""A trial's PRNG keys computed on the host, bit for bit as ``jax.random`` computes them.

The sweep needs three keys per member (init, data order, evaluation) derived from ``(seed, trial,
replicate)`` by ``jax.random.fold_in``. Computed eagerly with JAX, each ``fold_in`` is a dispatched
device program: 1.7-2.6 ms of host time per trial on a CPU (issue 13), several device round trips
on an accelerator. Threefry-2x32 (Salmon et al. 2011) is a 20-round integer hash, so numpy gives the
same bits in microseconds. ``tests/test_keys.py`` checks them against ``jax.random``.

Only JAX's default key implementation (``threefry2x32``) is reproduced; ``trial_keys`` falls back to
JAX for any other.
"""

from __future__ import annotations

import jax
import numpy as np

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def threefry2x32(key: tuple[int, int], x: tuple[int, int]) -> tuple[int, int]:
    """Threefry-2x32 of one counter pair ``x`` under ``key`` (JAX's lowering, unrolled)."""
    ks = (int(key[0]), int(key[1]), int(key[0]) ^ int(key[1]) ^ int(_PARITY))
    mask = 0xFFFFFFFF
    x0 = (int(x[0]) + ks[0]) & mask
    x1 = (int(x[1]) + ks[1]) & mask
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = (x0 + x1) & mask
            x1 = ((x1 << r) | (x1 >> (32 - r))) & mask
            x1 ^= x0
        x0 = (x0 + ks[(i + 1) % 3]) & mask
        x1 = (x1 + ks[(i + 2) % 3] + i + 1) & mask
    return x0, x1


def prng_key(seed: int) -> np.ndarray:
    """``jax.random.PRNGKey(seed)``'s data for a seed in ``[0, 2**32)``."""
    return np.asarray([0, seed & 0xFFFFFFFF], np.uint32)


def fold_in(key: np.ndarray, data: int) -> np.ndarray:
    """``jax.random.fold_in(key, data)`` for a raw ``[2] uint32`` key and ``data`` in uint32."""
    return np.asarray(threefry2x32((key[0], key[1]), (0, data & 0xFFFFFFFF)), np.uint32)


def default_impl() -> bool:
    """Whether JAX's keys are threefry2x32 (the only implementation reproduced here)."""
    return str(jax.config.jax_default_prng_impl) == "threefry2x32"
