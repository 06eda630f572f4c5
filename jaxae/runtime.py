"""Process-level JAX setup for the command-line tools: one CPU device per core, the persistent
compilation cache and, on clusters, ``jax.distributed``.

Compiled programs are cached on disk (``~/.cache/jaxae/xla``, or ``$JAXAE_COMPILATION_CACHE``;
set it to ``off`` to disable), so a second sweep of the same shapes starts training at once.

Several hosts: when ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` are
set, ``jax.distributed.initialize`` joins the processes into one JAX runtime before anything else
touches a device.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path

import jax

from jaxae.errors import UserError

_DISTRIBUTED_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


# Most CPU devices "auto" makes: every device holds its own copy of the training data.
AUTO_MAX_DEVICES = 8


def cpu_cores() -> int:
    """Cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def use_cpu_cores() -> int | None:
    """Splits the host CPU into one JAX device per core, so each core trains its own share of the
    slots: 2x the training throughput of one device on two cores (bench/RESULTS.md: XLA runs a
    training step's small kernels on one thread). ``JAXAE_CPU_DEVICES``: ``auto`` (the default:
    one per core, at most ``AUTO_MAX_DEVICES``) or a count (``1``: one device for the whole CPU).

    Returns the count, or None when the user's ``XLA_FLAGS`` already choose. Must run before JAX
    starts its backends; accelerators are unaffected.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    setting = os.environ.get("JAXAE_CPU_DEVICES", "").strip() or "auto"
    if "xla_force_host_platform_device_count" in flags:
        return None
    try:
        count = min(cpu_cores(), AUTO_MAX_DEVICES) if setting == "auto" else int(setting)
    except ValueError:
        raise UserError(f"JAXAE_CPU_DEVICES={setting!r} must be an integer or 'auto'") from None
    count = max(1, count)
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()
    return count


def device_name() -> str:
    """The first device as benchmarks record it: ``platform:kind``, and a CPU's core count."""
    d = jax.devices()[0]
    name = f"{d.platform}:{d.device_kind}"
    return f"{name} ({os.cpu_count()} cores)" if d.platform == "cpu" else name


# The most bytes XLA's persistent cache keeps (``enable_compilation_cache``).
CACHE_MAX_BYTES = 2 * 2**30


def cache_can_evict() -> bool:
    """Whether JAX can cap its persistent cache: past ``CACHE_MAX_BYTES`` the least recently used
    entries go (jaxae's exported programs beside them are pruned likewise: ``programs.MAX_BYTES``).
    The eviction locks the directory with ``filelock`` (a dependency; a machine without it, or
    with a JAX that has no such setting, keeps an unbounded cache rather than none: JAX refuses
    to read or write the cache when the cap is set without it)."""
    return ("jax_compilation_cache_max_size" in jax.config.values
            and importlib.util.find_spec("filelock") is not None)


def compilation_cache_dir() -> Path | None:
    setting = os.environ.get("JAXAE_COMPILATION_CACHE")
    if setting is not None:
        return None if setting.lower() in ("", "0", "off", "false", "no") else Path(setting)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "jaxae" / "xla"


def enable_compilation_cache() -> Path | None:
    """Turns on JAX's persistent compilation cache; returns its directory (None: disabled or
    not writable, in which case programs are simply compiled again)."""
    path = compilation_cache_dir()
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    # Only programs taking 0.2 s to compile: keeping every small one too (0.0) made the test
    # suite's cold run write ~1,100 entries instead of 185 and take 760-790 s instead of 537 s on
    # the 2-core CPU; a sweep's own programs are kept whole by jaxae.programs.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    if cache_can_evict():
        stamp_cache_entries(path)
        jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)
    return path


def stamp_cache_entries(path: Path) -> None:
    """Gives every entry of the cache in ``path`` the last-use stamp JAX's eviction reads.

    JAX stamps an entry (a ``-atime`` file beside its ``-cache`` file) only while a cap is set;
    entries written without one (by jaxae before it set the cap, or by other JAX programs) have
    none, and JAX's eviction then fails on them: every later write of the cache warned
    ``FileNotFoundError ... -atime`` and was lost. Such entries get their file's modification
    time, so they are evicted first among what was used since.
    """
    try:
        entries = list(path.glob("*-cache"))
    except OSError:
        return
    for entry in entries:
        stamp = entry.with_name(entry.name.removesuffix("-cache") + "-atime")
        if stamp.exists():
            continue
        with contextlib.suppress(OSError):
            stamp.write_bytes(entry.stat().st_mtime_ns.to_bytes(8, "little"))


def initialize_distributed() -> bool:
    """Joins a multi-process JAX runtime when the environment describes one; returns whether it
    did. Process 0 alone writes the sweep's outputs; every process runs the same driver on its
    own devices."""
    present = [v for v in _DISTRIBUTED_VARS if v in os.environ]
    if not present:
        return False
    if len(present) != len(_DISTRIBUTED_VARS):
        missing = sorted(set(_DISTRIBUTED_VARS) - set(present))
        raise UserError(f"multi-process run: {', '.join(missing)} not set (need all of "
                        f"{', '.join(_DISTRIBUTED_VARS)})")
    try:
        num, pid = int(os.environ["JAX_NUM_PROCESSES"]), int(os.environ["JAX_PROCESS_ID"])
    except ValueError:
        raise UserError("JAX_NUM_PROCESSES and JAX_PROCESS_ID must be integers") from None
    # CPU processes exchange results (the gathers of the driver's host reads) through gloo.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                               num_processes=num, process_id=pid)
    return True
