"""Memory a sweep will need, checked against what the machine has before anything is allocated.

A configuration that cannot fit should be refused with its numbers in one line, not die minutes
later in the allocator (or be killed by the kernel) after its output directory was created. The
per-member figures come from ``grouping.state_bytes`` / ``activation_bytes``; this module only
multiplies them by the sweep's shape and compares.
"""

from __future__ import annotations

import itertools
import os
from typing import NamedTuple

from jaxae.errors import UserError

# Copies of the device state a checkpoint holds on the host at its peak: the host copy of every
# population and its msgpack serialisation (the envelope is written around it, not copied).
_CHECKPOINT_COPIES = 2
# Host memory of the Python process, JAX's runtime and XLA's compiler before any population.
# Measured (2-core Xeon, one CPU device, hidden 4096 / latent 1024 digits model, populations 4
# and 8): peak RSS = 0.6 GB + 2.85 x the state this module estimates; the model below, device
# state + 2 checkpoint copies + this, predicts 0.5 GB + 3 x state.
_RUNTIME = 512 * 2**20
# Per member, beyond parameters and moments: its hyperparameter arrays (also inside the optimizer
# state), keys and counters, a few hundred bytes; this bounds them.
_MEMBER_OVERHEAD = 4096


def host_available() -> int:
    """Bytes of host memory available to a new allocation (``MemAvailable`` where the kernel
    reports it: free memory plus reclaimable cache), else free pages."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def device_available() -> int | None:
    """Free bytes on the first device where the backend reports them (GPU, TPU); None on CPU,
    whose device memory is the host's."""
    import jax

    device = jax.devices()[0]
    if device.platform == "cpu":
        return None
    stats = device.memory_stats() or {}
    if "bytes_limit" not in stats:
        return None
    return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))


class Estimate(NamedTuple):
    """Bytes a sweep holds at its peak, by kind."""

    buckets: int  # compiled programs that can exist at once
    slots: int  # slots of each
    member: int  # parameters and optimizer state of one member (the largest program's)
    state: int  # buckets x slots x member
    activations: int  # one training group of the largest program
    data: int  # train and val on the device, plus the chunk's losses
    parking: int = 0  # paused members' rows (schedulers that pause trials), at their most

    @property
    def device(self) -> int:
        return self.state + self.parking + self.activations + self.data


def estimate(config, features: int, n_train: int, n_val: int, slots: int, devices: int = 1
             ) -> Estimate:
    """The peak device memory of a sweep of ``config`` (a ``SweepConfig``) whose buckets hold
    ``slots`` slots each over ``devices`` devices; the largest program bounds every bucket."""
    from jaxae import grouping
    from jaxae.buckets import share

    specs = _specs(config, features)
    member = max(grouping.state_bytes(s) for s in specs) + _MEMBER_OVERHEAD
    least = share(config)
    activations = max(grouping.group_size(s, slots, least=least) * grouping.activation_bytes(s)
                      for s in specs)
    buckets = most_buckets(config)
    data = 4 * features * (n_train + n_val) + 4 * slots * buckets * config.chunk
    return Estimate(buckets, slots, member, buckets * slots * member, activations, data,
                    parking(config, specs, member, slots, devices))


def parking(config, specs: list, member: int, slots: int, devices: int) -> int:
    """The most bytes a sweep's parking lots (``Driver._grow_parking``) hold: none where no trial
    pauses (the black-box searchers, population-based training); else each bucket's first rows
    (``buckets.parking_rows``) plus at most twice the members paused at once (a lot doubles when
    a device lacks a row), and never more than every trial's members on every device of every
    bucket. ``member``: the largest program's bytes per member (``Estimate.member``)."""
    from jaxae import grouping
    from jaxae.buckets import most_parked, parking_rows
    from searchers import MULTI_FIDELITY

    if config.searcher not in MULTI_FIDELITY:
        return 0
    most = most_parked(config)
    first = max(devices * parking_rows(config, s, slots, devices)
                * (grouping.state_bytes(s) + _MEMBER_OVERHEAD) for s in specs)
    buckets = most_buckets(config)
    return min(buckets * devices * most * member, buckets * first + 2 * most * member)


def most_buckets(config) -> int:
    """How many buckets a sweep of ``config`` can hold at once: they are created lazily, at most
    one per trial, and never freed."""
    from jaxae.config import count_buckets

    return min(count_buckets(config), config.trials)


def member_bytes(config, features: int) -> int:
    """Bytes one member of the largest program of ``config``'s space keeps between steps."""
    from jaxae import grouping

    return max(grouping.state_bytes(s) for s in _specs(config, features)) + _MEMBER_OVERHEAD


def _specs(config, features: int) -> list:
    """The programs (``TrainSpec``) of ``config``'s buckets, or, when they are many, the one that
    bounds them all."""
    from jaxae import hparams
    from jaxae.buckets import train_spec
    from jaxae.config import count_buckets, value_range

    ranges = [sorted(set(value_range(config, name)), key=str) for name in hparams.BUCKET_NAMES]
    # Every combination when they are few; beyond that, the largest value of each numeric
    # setting bounds the program (state and activations grow with depth and batch size).
    if count_buckets(config) <= 256:
        keys = list(itertools.product(*ranges))
    else:
        keys = [tuple(max(r) if all(isinstance(v, int) for v in r) else r[0] for r in ranges)]
    return [train_spec(config, features, key) for key in keys]


def check(config, features: int, n_train: int, n_val: int, slots: int, host_data: int,
          devices: int = 1) -> None:
    """Refuses a sweep that cannot fit, naming the numbers.

    Args:
        config: the ``SweepConfig``.
        features, n_train, n_val: the data's shape.
        slots: slots per bucket (``Driver.capacity``).
        host_data: bytes the data set already holds on the host.
        devices: devices the slots are sharded over (each keeps its own parking rows).

    Raises:
        UserError: the estimate exceeds the device's free memory, or (with checkpoints' host
            copies; on a CPU, with the device's share too) the host's available memory.
    """
    e = estimate(config, features, n_train, n_val, slots, devices)
    device_free = device_available()
    # A checkpoint copies the paused members too.
    host_need = _CHECKPOINT_COPIES * (e.state + e.parking) + host_data + _RUNTIME
    if device_free is None:  # a CPU: the device's memory is the host's
        host_need += e.device
    elif e.device > device_free:
        _refuse(e, e.device, "device", device_free)
    host_free = host_available()
    if host_need > host_free:
        _refuse(e, host_need, "host", host_free)


def _refuse(e: Estimate, need: int, where: str, free: int) -> None:
    raise UserError(
        f"this sweep needs about {_size(need)} of {where} memory ({e.buckets} program(s) x "
        f"{e.slots} slots x {_size(e.member)} of parameters and optimizer state per member, "
        f"{_size(e.activations)} of activations, {_size(e.data)} of data"
        + (f", {_size(e.parking)} for paused members" if e.parking else "")
        + f"), but only {_size(free)} is available; lower --population"
        + (", --trials" if e.parking else "") + " or the widths in [space]")


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
