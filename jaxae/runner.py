"""Running a sweep to its end durably: each chunk's store rows in one transaction (written while
the next chunk trains) and checkpoints on a clock, at a signal and at the end. ``run`` works with
any driver that has ``step``, ``done``, ``chunk``, ``record`` and ``state_bytes`` (the sweep's
and PBT's)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

from jaxae import buckets as buckets_lib
from jaxae.config import SweepConfig
from jaxae.jobs import Event
from jaxae.store import TrialStore, atomic_write_bytes

CHECKPOINT = "checkpoint.msgpack"


def record(store: TrialStore, config: SweepConfig, events: list[Event], curves: list[tuple]
           ) -> None:
    """Writes one chunk's results in one transaction."""
    with store.transaction():
        write(store, config, events, curves)


def write(store: TrialStore, config: SweepConfig, events: list[Event], curves: list[tuple]
          ) -> None:
    """Writes one chunk's results inside the caller's transaction."""
    store.put_curve(curves)
    trials, replicates, rungs = [], [], []
    for e in events:
        trials.append(dict(trial_id=e.trial, status=e.status, params=e.config,
                           val_loss=e.val_loss, steps=e.steps, seed=config.seed, budget=e.budget,
                           bucket=buckets_lib.bucket_json(e.bucket)))
        for r, v in enumerate(e.replicate_losses):
            status = "diverged" if not math.isfinite(v) else e.status
            init_key, data_key = e.keys[r] if r < len(e.keys) else (None, None)
            replicates.append((e.trial, r, status, v, e.steps, init_key, data_key))
        if e.told:
            rungs.append((e.trial, e.budget, e.val_loss))
    # Rows in event order: a trial with two events in one chunk keeps the last.
    store.put_trials(trials)
    store.put_replicates(replicates)
    store.put_rungs(rungs)


# With several processes a checkpoint gathers every process's slots, so all processes must take it
# at the same chunks: a chunk count replaces the (per-process) clock.
MULTIPROCESS_CHECKPOINT_CHUNKS = 20


def run(driver: Any, store: TrialStore, out: Path | None, *, checkpoint_every: float = 30.0,
        on_chunk: Callable[[Any, list[Event]], None] | None = None,
        write: bool = True, save: Callable[[bytes], None] | None = None,
        should_stop: Callable[[], bool] | None = None) -> None:
    """Steps ``driver`` to the end, recording every chunk and checkpointing into ``out`` every
    ``checkpoint_every`` seconds (0: after every chunk) and at the end. ``write=False`` (processes
    other than 0) takes the same checkpoints without writing them. ``save`` writes a checkpoint's
    bytes in place of ``out / CHECKPOINT``; ``should_stop``, asked between chunks, ends the loop
    early with a checkpoint (``driver.done`` then stays false)."""
    multiprocess = jax.process_count() > 1
    last = time.monotonic()

    def checkpoint() -> None:
        data = driver.state_bytes()
        if write and save is not None:
            save(data)
        elif write and out is not None:
            atomic_write_bytes(out / CHECKPOINT, data)

    # A chunk's store rows are written while the next chunk trains (they change nothing the
    # sweep decides), and always before a checkpoint, which records what the store holds.
    # (``step`` calls ``write_rows`` before it changes anything ``record`` reads.)
    unwritten: list[tuple[list[Event], list[tuple]]] = []

    def write_rows() -> None:
        while unwritten:
            driver.record(store, *unwritten.pop(0))

    while not driver.done:
        events, curves = driver.step(while_training=write_rows)
        write_rows()
        unwritten.append((events, curves))
        if on_chunk is not None:
            on_chunk(driver, events)
        if multiprocess:
            due = driver.chunk % MULTIPROCESS_CHECKPOINT_CHUNKS == 0
        else:
            due = out is not None and time.monotonic() - last >= checkpoint_every
        if due:
            write_rows()
            checkpoint()
            last = time.monotonic()
        if should_stop is not None and should_stop():
            break
    write_rows()
    if out is not None or multiprocess:
        checkpoint()
