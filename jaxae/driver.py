"""The sweep loop: a scheduler's jobs fill population slots, chunks train them, results flow back.

Continuous batching: whenever a trial's job ends (its budget reached, or it diverged), its slots are
freed and the next chunk refills them with the scheduler's next jobs; the accelerator waits for a
whole generation only when the searcher is synchronous by nature (CMA-ES, successive halving).

Shape-changing hyperparameters (``hparams.BUCKET_NAMES``) split trials into *buckets*, one compiled
program each, created lazily and trained every chunk while they hold active slots. Width and code
size are masked inside the sweep's padded maximum, so they never add a bucket.

Replicates: with ``repeats = K`` every trial runs as K members with different seeds (or, with
common random numbers, the same data order per replicate index across trials) and the scheduler is
told their mean or median.

Everything here is deterministic given the config: the order of tells, the slot a job lands in and
the checkpoint timing never change a trial's numbers, so a resumed sweep replays to the same end.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

from jaxae import hparams
from jaxae import population as pop_lib
from jaxae import sharding as sharding_lib
from jaxae.config import SweepConfig, count_buckets, fixed, searched, value_range
from jaxae.data import Dataset
from jaxae.models import ModelSpec
from jaxae.store import TrialStore, atomic_write_bytes
from searchers import Job, Scheduler, make_scheduler, restore_scheduler

CHECKPOINT = "checkpoint.msgpack"


def train_spec(config: SweepConfig, features: int, bucket: tuple) -> pop_lib.TrainSpec:
    """The program of ``bucket`` (values of ``hparams.BUCKET_NAMES``) in a sweep of ``config``:
    width and code size padded to the largest values the space allows."""
    b = dict(zip(hparams.BUCKET_NAMES, bucket, strict=True))
    model = ModelSpec(
        kind=config.model,
        features=features,
        hidden=max(value_range(config, "hidden")),
        latent_dim=max(value_range(config, "latent_dim")),
        depth=b["depth"],
        activation=b["activation"],
        loss=b["loss"],
        precision=config.precision,
        norm=b["norm"],
        dropout=max(value_range(config, "dropout")) > 0,
    )
    # The gradient-norm pass only where some trial of the space can clip (grad_clip > 0).
    clips = max(value_range(config, "grad_clip")) > 0
    return pop_lib.TrainSpec(model, b["optimizer"], b["batch_size"], clip_gradients=clips)


def member_keys(config: SweepConfig, trial: int, replicate: int) -> dict[str, np.ndarray]:
    """The PRNG keys of one member of ``trial``; with common random numbers, replicate r of every
    trial shares one data order."""
    keys = pop_lib.trial_keys(config.seed, trial, replicate)
    if config.crn:
        keys = {**keys, "data_key": pop_lib.shared_data_key(config.seed, replicate)}
    return keys


@dataclasses.dataclass
class Bucket:
    """One compiled program and its slots."""

    key: tuple  # values of hparams.BUCKET_NAMES
    spec: pop_lib.TrainSpec
    pop: pop_lib.Population
    owner: list[tuple[int, int] | None]  # (trial, replicate) in each slot, None when free
    first_chunk_s: float | None = None  # wall time of its first chunk: mostly compilation

    def free_slots(self) -> list[int]:
        return [i for i, o in enumerate(self.owner) if o is None]


@dataclasses.dataclass
class Running:
    """A job being trained: one slot per replicate."""

    job: Job
    config: dict[str, Any]  # the resolved configuration (defaults filled in)
    bucket: tuple
    slots: list[int]


@dataclasses.dataclass
class Paused:
    """A trial waiting for a scheduler's decision, its members' states kept on the host."""

    config: dict[str, Any]
    bucket: tuple
    members: list[pop_lib.Population]  # one per replicate, no slot axis
    budget: int
    loss: float  # what the scheduler was told at `budget`
    replicate_losses: list[float]


@dataclasses.dataclass
class Event:
    """What happened to a trial during a chunk, for the store and the progress display."""

    trial: int
    status: str  # running, completed, pruned, diverged
    config: dict[str, Any]
    val_loss: float
    steps: int
    budget: int
    bucket: tuple
    replicate_losses: list[float]
    told: bool  # whether the scheduler was told a loss at `budget` this chunk
    keys: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (init, data) hex


class Driver:
    """Runs one sweep. ``step()`` trains one chunk; ``done`` tells when the sweep has ended.

    Args:
        config: the validated sweep configuration.
        dataset: the data; train and val splits go to the device once.
    """

    def __init__(self, config: SweepConfig, dataset: Dataset) -> None:
        self.config = config
        # With several devices the slot axis is sharded over all of them (each device trains its
        # share of every bucket, no communication); the data is replicated.
        self.mesh = sharding_lib.slot_mesh()
        self.slots = sharding_lib.slot_sharding(self.mesh)
        # One process, several devices: each trains its own slots (grouped on CPU devices).
        self.local_mesh = self.mesh if self.mesh.size > 1 and jax.process_count() == 1 else None
        data_sharding = sharding_lib.replicated(self.mesh)
        self.train_x = jax.device_put(dataset.train.x, data_sharding)
        self.val_x = jax.device_put(dataset.val.x, data_sharding)
        self.features = dataset.features
        self.repeats = config.repeats
        n_buckets = count_buckets(config)
        per_bucket = max(self.repeats, math.ceil(config.population / n_buckets))
        capacity = self.repeats * math.ceil(per_bucket / self.repeats)
        self.capacity = sharding_lib.round_up(capacity, self.mesh)
        self.scheduler: Scheduler = make_scheduler(
            config.searcher,
            searched(config),
            max_trials=config.trials,
            max_budget=config.steps,
            min_budget=config.min_steps,
            eta=config.eta,
            population=max(1, config.population // self.repeats),
            seed=config.seed,
            sampler=config.sampler,
        )
        self.buckets: dict[tuple, Bucket] = {}
        self.running: dict[int, Running] = {}
        self.paused: dict[int, Paused] = {}
        self.queue: list[Job] = []
        self.chunk = 0
        self.member_steps = 0
        # Measurement only (bench/sweep.py): slot-steps computed, busy or not, and program calls.
        self.slot_steps = 0
        self.bucket_calls = 0
        self._started: list[Event] = []

    # -- configuration --------------------------------------------------------------------------

    def resolve(self, job_config: Mapping[str, Any]) -> dict[str, Any]:
        """A trial's full configuration: defaults < the space's fixed values < the searched ones."""
        return hparams.resolve(self.config.model, {**fixed(self.config), **job_config})

    def bucket_key(self, config: Mapping[str, Any]) -> tuple:
        return tuple(config[name] for name in hparams.BUCKET_NAMES)

    def _bucket(self, key: tuple) -> Bucket:
        if key not in self.buckets:
            spec = train_spec(self.config, self.features, key)
            pop = sharding_lib.shard(pop_lib.create(spec, self.capacity), self.slots)
            self.buckets[key] = Bucket(key, spec, pop, [None] * self.capacity)
        return self.buckets[key]

    # -- the loop ---------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.scheduler.finished and not self.running and not self.queue

    def reported(self) -> set[int]:
        """The trials that have reported a loss at least once (for the progress display)."""
        return {t for t, trial in enumerate(self.scheduler.trials) if trial.losses}

    def record(self, store: TrialStore, events: list[Event], curves: list[tuple]) -> None:
        """Writes one chunk's results (``step()``'s) in one transaction."""
        record(store, self.config, events, curves)

    def _fill(self) -> None:
        """Asks the scheduler for as many jobs as free member slots allow, then places what fits."""
        busy = self.repeats * (len(self.running) + len(self.queue))
        want = (self.config.population - busy) // self.repeats
        if want > 0:
            self.queue.extend(self.scheduler.ask(want))
        waiting = []
        for job in self.queue:
            config = self.resolve(job.config)
            bucket = self._bucket(self.bucket_key(config))
            free = bucket.free_slots()
            if len(free) < self.repeats:
                waiting.append(job)
                continue
            self._place(job, config, bucket, free[: self.repeats])
        self.queue = waiting

    def _keys_hex(self, trial: int) -> list[tuple[str, str]]:
        keys = [member_keys(self.config, trial, r) for r in range(self.repeats)]
        return [(k["init_key"].tobytes().hex(), k["data_key"].tobytes().hex()) for k in keys]

    def _place(self, job: Job, config: dict, bucket: Bucket, slots: list[int]) -> None:
        paused = self.paused.pop(job.trial_id, None)
        if paused is not None:
            for slot, member in zip(slots, paused.members, strict=True):
                bucket.pop = pop_lib.put(bucket.pop, slot, member)
            bucket.pop = pop_lib.set_targets(bucket.pop, slots, [job.budget] * len(slots))
        else:
            members = [pop_lib.Member(job.trial_id, config, job.budget,
                                      member_keys(self.config, job.trial_id, r),
                                      horizon=self.config.steps)
                       for r in range(self.repeats)]
            bucket.pop = pop_lib.assign(bucket.spec, bucket.pop, slots, members)
        for r, slot in enumerate(slots):
            bucket.owner[slot] = (job.trial_id, r)
        self.running[job.trial_id] = Running(job, config, bucket.key, slots)
        steps = 0 if paused is None else int(paused.members[0].step)
        loss = math.nan if paused is None else paused.loss
        self._started.append(Event(job.trial_id, "running", config, loss, steps, job.budget,
                                   bucket.key, [], False))

    def step(self) -> tuple[list[Event], list[tuple]]:
        """Trains one chunk. Returns the trial events and the learning-curve rows
        ``(trial, replicate, step, train_loss, val_loss)`` of the chunk."""
        self._fill()
        if not self.running:
            if self.done:
                return [], []
            raise RuntimeError("scheduler handed out no job while nothing is running")
        curves = []
        finished: dict[int, list[tuple[int, float, bool]]] = {}
        for bucket in self.buckets.values():
            if all(o is None for o in bucket.owner):
                continue
            # Host-side edits (assign, pause, clear) may leave leaves on one device.
            bucket.pop = sharding_lib.shard(bucket.pop, self.slots)
            before = sharding_lib.to_host(bucket.pop.step)
            t0 = time.perf_counter()
            bucket.pop, losses = pop_lib.train_chunk(
                bucket.spec, bucket.pop, self.train_x, self.config.chunk, mesh=self.local_mesh
            )
            metrics = pop_lib.evaluate(bucket.spec, bucket.pop, self.val_x)
            host = sharding_lib.to_host({"losses": losses, "val": metrics["val_loss"],
                                   "step": bucket.pop.step, "diverged": bucket.pop.diverged,
                                   "active": bucket.pop.active})
            if bucket.first_chunk_s is None:
                bucket.first_chunk_s = time.perf_counter() - t0
            self.member_steps += int((host["step"] - before).sum())
            self.slot_steps += bucket.pop.size * self.config.chunk
            self.bucket_calls += 1
            for slot, owner in enumerate(bucket.owner):
                if owner is None:
                    continue
                trial, replicate = owner
                chunk_losses = host["losses"][slot]
                trained = np.isfinite(chunk_losses)
                if host["step"][slot] > before[slot] or host["diverged"][slot]:
                    train_loss = float(chunk_losses[trained].mean()) if trained.any() else None
                    curves.append((trial, replicate, int(host["step"][slot]), train_loss,
                                   float(host["val"][slot])))
                if not host["active"][slot]:
                    finished.setdefault(trial, []).append(
                        (replicate, float(host["val"][slot]), bool(host["diverged"][slot]))
                    )
        events, self._started = self._started, []
        events += self._settle(finished)
        self.chunk += 1
        return events, curves

    def _settle(self, finished: dict[int, list[tuple[int, float, bool]]]) -> list[Event]:
        """Tells the scheduler about every job whose members all stopped training, in trial order,
        and frees or pauses their slots."""
        events = []
        for trial in sorted(finished):
            run = self.running[trial]
            results = sorted(finished[trial])
            if len(results) < len(run.slots):
                continue  # other replicates still training
            diverged = any(d for _, _, d in results)
            losses = [math.nan if d else v for _, v, d in results]
            loss = math.nan if diverged else _aggregate(losses, self.config.aggregate)
            self.scheduler.tell(trial, run.job.budget, loss)
            del self.running[trial]
            bucket = self.buckets[run.bucket]
            steps = int(sharding_lib.to_host(bucket.pop.step)[run.slots].max())
            status = self.scheduler.status(trial)
            if status == "paused":
                members = [pop_lib.take(bucket.pop, s) for s in run.slots]
                self.paused[trial] = Paused(run.config, run.bucket, members, run.job.budget,
                                            loss, losses)
                state = "running"
            else:
                state = {"completed": "completed", "stopped": "pruned"}.get(status, status)
                if diverged:
                    state = "diverged"
            bucket.pop = pop_lib.clear(bucket.pop, run.slots)
            for s in run.slots:
                bucket.owner[s] = None
            events.append(Event(trial, state, run.config, loss, steps, run.job.budget, run.bucket,
                                losses, True, self._keys_hex(trial)))
        # A synchronous rung decides about paused trials only when it completes.
        for trial in sorted(self.paused):
            if self.scheduler.status(trial) == "stopped":
                p = self.paused.pop(trial)
                events.append(Event(trial, "pruned", p.config, p.loss, int(p.members[0].step),
                                    p.budget, p.bucket, p.replicate_losses, False,
                                    self._keys_hex(trial)))
        return events

    # -- checkpoints ------------------------------------------------------------------------------

    def state_bytes(self) -> bytes:
        """Everything needed to continue this sweep exactly, as msgpack (no pickle)."""
        meta = {
            "chunk": self.chunk,
            "member_steps": self.member_steps,
            "scheduler": self.scheduler.state_dict(),
            "buckets": [{"key": list(b.key), "owner": b.owner} for b in self.buckets.values()],
            "running": [
                {"trial": t, "budget": r.job.budget, "job_config": r.job.config,
                 "config": r.config, "bucket": list(r.bucket), "slots": r.slots}
                for t, r in self.running.items()
            ],
            "paused": [
                {"trial": t, "config": p.config, "bucket": list(p.bucket), "budget": p.budget,
                 "loss": _json_float(p.loss), "replicate_losses": [_json_float(v) for v in
                                                                   p.replicate_losses]}
                for t, p in self.paused.items()
            ],
            "queue": [{"trial": j.trial_id, "config": j.config, "budget": j.budget}
                      for j in self.queue],
        }
        arrays = {
            "buckets": {str(i): serialization.to_state_dict(sharding_lib.to_host(b.pop))
                        for i, b in enumerate(self.buckets.values())},
            "paused": {str(t): {str(r): serialization.to_state_dict(m)
                                for r, m in enumerate(p.members)}
                       for t, p in self.paused.items()},
        }
        return serialization.msgpack_serialize({"meta": json.dumps(meta), "arrays": arrays})

    def restore(self, data: bytes) -> None:
        """Continues from ``state_bytes()`` output."""
        state = serialization.msgpack_restore(data)
        meta = json.loads(state["meta"])
        arrays = state["arrays"]
        self.chunk = meta["chunk"]
        self.member_steps = meta["member_steps"]
        self.scheduler = restore_scheduler(searched(self.config), meta["scheduler"])
        self.buckets = {}
        for i, b in enumerate(meta["buckets"]):
            key = tuple(b["key"])
            bucket = self._bucket(key)
            bucket.pop = serialization.from_state_dict(bucket.pop, arrays["buckets"][str(i)])
            bucket.pop = sharding_lib.shard(bucket.pop, self.slots)
            bucket.owner = [tuple(o) if o is not None else None for o in b["owner"]]
        self.running = {
            r["trial"]: Running(Job(r["trial"], r["job_config"], r["budget"]), r["config"],
                                tuple(r["bucket"]), r["slots"])
            for r in meta["running"]
        }
        self.paused = {}
        for p in meta["paused"]:
            template = pop_lib.take(self._bucket(tuple(p["bucket"])).pop, 0)
            members = [serialization.from_state_dict(template, m)
                       for _, m in sorted(arrays["paused"][str(p["trial"])].items(),
                                          key=lambda kv: int(kv[0]))]
            self.paused[p["trial"]] = Paused(
                p["config"], tuple(p["bucket"]), members, p["budget"], _from_json(p["loss"]),
                [_from_json(v) for v in p["replicate_losses"]])
        self.queue = [Job(j["trial"], j["config"], j["budget"]) for j in meta["queue"]]


def _json_float(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _from_json(v: float | None) -> float:
    return math.nan if v is None else float(v)


def _aggregate(losses: list[float], how: str) -> float:
    if not losses or any(not math.isfinite(v) for v in losses):
        return math.nan
    return float(np.mean(losses) if how == "mean" else np.median(losses))


def record(store: TrialStore, config: SweepConfig, events: list[Event], curves: list[tuple]
           ) -> None:
    """Writes one chunk's results in one transaction."""
    with store.transaction():
        write(store, config, events, curves)


def write(store: TrialStore, config: SweepConfig, events: list[Event], curves: list[tuple]
          ) -> None:
    """Writes one chunk's results inside the caller's transaction."""
    store.put_curve(curves)
    for e in events:
        bucket = json.dumps(dict(zip(hparams.BUCKET_NAMES, e.bucket, strict=True)),
                            sort_keys=True)
        store.put_trial(e.trial, status=e.status, params=e.config, val_loss=e.val_loss,
                        steps=e.steps, seed=config.seed, budget=e.budget, bucket=bucket)
        for r, v in enumerate(e.replicate_losses):
            status = "diverged" if not math.isfinite(v) else e.status
            init_key, data_key = e.keys[r] if r < len(e.keys) else (None, None)
            store.put_replicate(e.trial, r, status=status, val_loss=v, steps=e.steps,
                                init_key=init_key, data_key=data_key)
        if e.told:
            store.put_rung(e.trial, e.budget, e.val_loss)


# With several processes a checkpoint gathers every process's slots, so all processes must take it
# at the same chunks: a chunk count replaces the (per-process) clock.
MULTIPROCESS_CHECKPOINT_CHUNKS = 20


def run(driver: Driver, store: TrialStore, out: Path | None, *, checkpoint_every: float = 30.0,
        on_chunk: Callable[[Driver, list[Event]], None] | None = None,
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

    while not driver.done:
        events, curves = driver.step()
        driver.record(store, events, curves)
        if on_chunk is not None:
            on_chunk(driver, events)
        if multiprocess:
            due = driver.chunk % MULTIPROCESS_CHECKPOINT_CHUNKS == 0
        else:
            due = out is not None and time.monotonic() - last >= checkpoint_every
        if due:
            checkpoint()
            last = time.monotonic()
        if should_stop is not None and should_stop():
            break
    if out is not None or multiprocess:
        checkpoint()
