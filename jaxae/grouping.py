"""How many population slots train side by side: a CPU's cache, an accelerator's free memory.

``population`` trains a bucket's slots in groups, one group after another inside one program,
when the whole population would not fit: on a CPU, a group's parameters and moments should stay
in cache for the whole chunk; on an accelerator, a group's activations must fit its free memory.
The per-member figures here are estimates in bytes from the model's shape (``memory`` multiplies
them by the sweep's shape to refuse a sweep that cannot fit).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import jax

from jaxae.models import layer_widths

if TYPE_CHECKING:
    from jaxae.population import TrainSpec

# Slots a CPU trains side by side: at most CPU_GROUP, and more than CPU_GROUP_MIN only while
# they fit CPU_GROUP_BYTES of per-step working set (``activation_bytes``). Measured on a 2-core
# Xeon (2 MiB L2 per core; bench/RESULTS.md, 2026-12-07, member-steps/s at P 64 for groups of
# 1 / 2 / 4 / 8): 64-64-16 batch 128: 18.3k / 20.8k / 19.9k / 17.3k; 64-128-32 batch 64: 14.4k /
# 16.4k / 15.9k / 15.2k; 64-256-16 batch 128: 5.2k / 5.6k / 5.6k / 5.9k; 784-512-32 batch 128:
# 300 / 338 / 320 / 291; a 64-8-2 model with batch 8, whose steps are all overhead: 120k / 175k /
# 145k / 253k. Pairs beat single members everywhere; more pay only for tiny models (earlier, with
# 3 MiB, mid-sized models took 4 and the largest 1). Small groups also pack a multi-fidelity
# tail's few members onto both devices.
CPU_GROUP = 8
CPU_GROUP_MIN = 2
CPU_GROUP_BYTES = 2**20

# On an accelerator, a training step of a group whose model FLOPs stay under this takes about its
# launch latency whatever the group's size (~50 us of an H100's float32 peak): slots up to it
# come nearly free, past it each costs its FLOPs (``group_size``'s ``least``). An estimate from
# the H200 trainer's numbers (a 64-64-16 step of 64 members, batch 128: ~80 us for ~0.5 GFLOP), to
# calibrate with bench/gpu.sh.
ACCELERATOR_GROUP_FLOPS = 2e9

# Share of the device's free memory that one group's activations may take.
ACTIVATION_MEMORY_SHARE = 0.5


def state_bytes(spec: TrainSpec) -> int:
    """Bytes one member keeps between steps: parameters and two optimizer moments (float32)."""
    # The decoder is counted as a mirror of the encoder (a VAE's doubled code included): an
    # estimate within a few biases of the exact count for the other kinds.
    encoder = layer_widths(spec.model, "encoder").values()
    n_params = 2 * sum(n_in * n_out + n_out for n_in, n_out in encoder)
    return 12 * n_params


def activation_bytes(spec: TrainSpec) -> int:
    """A rough upper bound on one member's transient memory in a step: forward activations,
    their gradients and the gradient of every parameter (the contractive penalty also holds the
    encoder Jacobian of the batch)."""
    m = spec.model
    widths = layer_widths(m)
    # The input and every layer's output; a VAE's code is counted once, as it always was here.
    values = m.features + sum(n_out for name, (_, n_out) in widths.items() if name != "code_logvar")
    per_example = 4 * 4 * values
    if m.kind == "contractive":
        encoder_inputs = sum(n_in for n_in, _ in layer_widths(m, "encoder").values())
        per_example += 4 * 2 * m.latent_dim * encoder_inputs
    return spec.batch_size * per_example + state_bytes(spec) // 3


def memory_budget() -> int | None:
    """Bytes a program's transient buffers may use: ``$JAXAE_MEMORY_BUDGET`` if set, else a share
    of the first device's free memory where the backend reports it (GPUs), else None."""
    setting = os.environ.get("JAXAE_MEMORY_BUDGET")
    if setting:
        return int(float(setting))
    stats = jax.devices()[0].memory_stats() or {}
    if "bytes_limit" not in stats:
        return None
    free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
    return int(ACTIVATION_MEMORY_SHARE * free)


def group_size(spec: TrainSpec, slots: int, *, per_device: bool = False,
               least: int | None = None) -> int:
    """How many slots train side by side (the rest wait their turn inside the same program).

    Accelerators take the whole population at once unless its activations would not fit the
    memory budget; a CPU device takes pairs, or more of a model small enough
    (``CPU_GROUP_BYTES``), within any memory budget set. The group is
    the largest divisor of ``slots`` within both limits. ``per_device``: ``slots`` are one
    device's share (inside ``shard_map``); otherwise several devices mean no grouping.
    ``least``: on an accelerator, a group of only as many slots as a step of
    ``ACCELERATOR_GROUP_FLOPS`` holds, but about ``least`` at the fewest (a sweep's bucket holds
    the whole population's slots and computes only its groups with a busy slot: a compute-bound
    program then computes about the population's even share among the buckets, as many slots
    as the space's other buckets leave it, while a launch-bound one takes them all at once).
    """
    devices = jax.devices()
    if len(devices) > 1 and not per_device:
        return slots
    limit = slots
    if devices[0].platform == "cpu":
        fit = max(CPU_GROUP_MIN, CPU_GROUP_BYTES // activation_bytes(spec))
        limit = min(limit, CPU_GROUP, fit)
    elif least is not None:
        from jaxae.buckets import step_flops

        free = int(ACCELERATOR_GROUP_FLOPS // max(step_flops(spec), 1.0))
        limit = min(limit, max(least, free))
    budget = memory_budget()
    if budget is not None:
        limit = min(limit, max(1, budget // activation_bytes(spec)))
    return max(d for d in range(1, limit + 1) if slots % d == 0)
