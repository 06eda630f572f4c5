"""Spreading a population's slots over devices with JAX sharding.

Slots are independent, so sharding the slot axis over a 1-D mesh (``NamedSharding(mesh,
P("pop"))``) lets XLA run each device's share of ``train_chunk`` and ``evaluate`` with no
communication at all; the data set is replicated. Results equal a one-device run.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "pop"


def slot_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh named ``"pop"`` over ``devices`` (default: every device of every process)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (AXIS,))


def slot_sharding(mesh: Mesh) -> NamedSharding:
    """Shards the leading (slot) axis of every leaf over the mesh."""
    return NamedSharding(mesh, P(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def round_up(slots: int, mesh: Mesh) -> int:
    """The smallest multiple of the mesh size that holds ``slots`` slots."""
    n = mesh.size
    return -(-slots // n) * n


def to_host(tree):
    """A numpy copy of every leaf. With several processes a leaf sharded over all of them is
    gathered first (every process gets the whole array: they all run the same driver)."""

    if jax.process_count() == 1:
        # One call starts every leaf's transfer before waiting for any.
        return jax.tree.map(np.asarray, jax.device_get(tree))

    def leaf(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
            return np.asarray(x)
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(leaf, tree)


def shard(tree, sharding: NamedSharding):
    """Places every leaf of ``tree`` (slot axis first) with ``sharding``; a no-op for leaves that
    are already placed so. With several processes, leaves living on one process's device go via
    the host (every process holds the same value, so each can place its own shards)."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def leaf(x):
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        return jax.device_put(to_host(x), sharding)

    return jax.tree.map(leaf, tree)


class Layout(NamedTuple):
    """Where a sweep's population and data live."""

    mesh: Mesh  # every device of every process, axis "pop"
    slots: NamedSharding  # the slot axis sharded over the mesh
    # One process, several devices: each trains its own slots (shard_map, grouped on CPU
    # devices); None otherwise.
    local_mesh: Mesh | None
    train_x: jax.Array  # replicated on every device
    val_x: jax.Array


def layout(train_x: np.ndarray, val_x: np.ndarray) -> Layout:
    """The slot axis sharded over every device (each trains its share of every program, no
    communication) and the data replicated, as the sweep's loops use them."""
    mesh = slot_mesh()
    local = mesh if mesh.size > 1 and jax.process_count() == 1 else None
    data = replicated(mesh)
    return Layout(mesh, slot_sharding(mesh), local, jax.device_put(train_x, data),
                  jax.device_put(val_x, data))
