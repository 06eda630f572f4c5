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

from jaxae import buckets as buckets_lib
from jaxae import grouping, hparams, placement
from jaxae import population as pop_lib
from jaxae import sharding as sharding_lib
from jaxae.buckets import Bucket, member_keys, train_spec
from jaxae.config import SweepConfig, fixed, searched
from jaxae.data import Dataset
from jaxae.store import TrialStore, atomic_write_bytes
from searchers import FullBudget, Job, Scheduler, make_scheduler, restore_scheduler

CHECKPOINT = "checkpoint.msgpack"


# A chunk's fixed host cost (planning, dispatch, reading results back, the store's transaction),
# in seconds, and the model FLOP/s a device of each platform sustains on these small models
# (rough figures: a 2-core CPU, an H100 / H200-class GPU): the two make the chunk-length rule's
# exchange rate between idle slot-steps and extra chunks (``chunk_length``). They are constants,
# not measurements of this run, so a sweep's schedule is the same on every machine of a platform.
CHUNK_HOST_S = {"cpu": 2e-3, "gpu": 1e-3, "tpu": 1e-3}
DEVICE_FLOPS = {"cpu": 4e10, "gpu": 4e13, "tpu": 4e13}
# Device memory a bucket's parking lot (paused members) starts with at most; it grows past it only
# when more members are paused at once.
PARKING_BYTES = 256 * 2**20

# The most rounds of ``chunk`` steps one program call trains (``population.run_chunk``): a call's
# fixed cost is paid once per this many evaluations. Accelerators, whose calls cost more than
# their steps, take more.
ROUNDS = {"cpu": 4, "gpu": 16, "tpu": 16}


@dataclasses.dataclass
class Running:
    """A job being trained: one slot per replicate."""

    job: Job
    config: dict[str, Any]  # the resolved configuration (defaults filled in)
    bucket: tuple
    slots: list[int]


@dataclasses.dataclass
class Paused:
    """A trial waiting for a scheduler's decision, its members parked on the device."""

    config: dict[str, Any]
    bucket: tuple
    rows: list[int]  # parking rows, one per replicate
    step: int
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


def chunk_length(remaining: np.ndarray, longest: int, overhead: float) -> int:
    """The steps of the next chunk: the one that trains the most member-steps per unit of time.

    A chunk of ``n`` steps costs ``overhead + n`` population-steps of time (``overhead``: the fixed
    host cost of a chunk in population-steps) and trains ``sum(min(remaining, n))`` member-steps;
    the candidates are the steps at which some job ends and ``longest``. Ending a chunk where a job
    ends lets its slot take the next job at once instead of idling to a fixed boundary (50 steps
    against rung budgets of 15 / 44 / 133 idled 65 % of ASHA's slot-steps, issue 13).

    Args:
        remaining: [active slots] steps each active slot still has to train (> 0).
        longest: the sweep's chunk setting, the most steps one chunk may take.
        overhead: a chunk's fixed cost in population-steps (>= 0).
    """
    if remaining.size == 0:
        return longest
    candidates = np.unique(np.minimum(remaining, longest))
    trained = np.minimum(remaining[None, :], candidates[:, None]).sum(axis=1)
    rate = trained / (overhead + candidates)
    # The longest of the (numerically) best: fewer chunks for the same rate.
    best = np.flatnonzero(rate >= rate.max() * (1 - 1e-9))[-1]
    return int(candidates[best])


class Driver:
    """Runs one sweep. ``step()`` trains one chunk; ``done`` tells when the sweep has ended.

    Args:
        config: the validated sweep configuration.
        dataset: the data; train and val splits go to the device once.
    """

    def __init__(self, config: SweepConfig, dataset: Dataset) -> None:
        self.config = config
        self.mesh, self.slots, self.local_mesh, self.train_x, self.val_x = sharding_lib.layout(
            dataset.train.x, dataset.val.x)
        self.features = dataset.features
        self.repeats = config.repeats
        self.capacity = buckets_lib.capacity(config, self.mesh)
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
        # Schedulers that pause trials get their parking rows with each bucket, so the placement
        # program compiles once with them (not once before the first pause and once after).
        self.pauses = not isinstance(self.scheduler, FullBudget)
        self.platform = jax.devices()[0].platform
        # Rounds of ``chunk`` steps per program call (each evaluated: the curves' interval).
        self.rounds = ROUNDS.get(self.platform, ROUNDS["gpu"])
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
        self._keys: dict[int, list[dict[str, np.ndarray]]] = {}

    # -- configuration --------------------------------------------------------------------------

    def resolve(self, job_config: Mapping[str, Any]) -> dict[str, Any]:
        """A trial's full configuration: defaults < the space's fixed values < the searched ones
        (all checked once, by ``config.build`` and the searchers' ranges: not again here)."""
        return hparams.complete(self.config.model, {**fixed(self.config), **job_config})

    def bucket_key(self, config: Mapping[str, Any]) -> tuple:
        return tuple(config[name] for name in hparams.BUCKET_NAMES)

    def _bucket(self, key: tuple) -> Bucket:
        if key not in self.buckets:
            spec = train_spec(self.config, self.features, key)
            pop = sharding_lib.shard(placement.create(spec, self.capacity), self.slots)
            host = sharding_lib.to_host({"hparams": pop.hparams})
            n = self.capacity
            bucket = Bucket(
                key, spec, pop, [None] * n,
                hparams=jax.tree.map(np.array, host["hparams"]),
                keys={k: np.zeros((n, 2), np.uint32)
                      for k in ("init_key", "data_key", "eval_key")},
                target=np.zeros(n, np.int32), trial=np.full(n, -1, np.int32),
                step=np.zeros(n, np.int32), diverged=np.zeros(n, bool), devices=self.mesh.size,
                group=self._group(spec, n))
            if self.pauses:
                # As many rows as members can be paused at once (every trial's), within
                # PARKING_BYTES: each growth copies the lot and compiles another placement
                # program, which a sweep then pays for at most a few times instead of at every
                # doubling.
                most = self.config.trials * self.repeats
                fit = PARKING_BYTES // max(grouping.state_bytes(spec), 1)
                self._grow_parking(bucket, -(-min(most, max(n, fit)) // self.mesh.size))
            self.buckets[key] = bucket
        return self.buckets[key]

    def _grow_parking(self, bucket: Bucket, per_device: int) -> None:
        """Gives ``bucket`` at least ``per_device`` parking rows on each device (at least doubling
        them: a new placement program's shape, so this happens a few times per sweep at most).
        Each device's rows keep their members; row numbers are remapped."""
        devices = self.mesh.size
        have = bucket.rows // devices
        if per_device <= have:
            return
        grown = max(per_device, 2 * have)
        old = None if bucket.parked is None else sharding_lib.to_host(bucket.parked)
        shapes = jax.tree.map(lambda a: (a.shape[1:], a.dtype), bucket.pop)
        remap = {d * have + i: d * grown + i for d in range(devices) for i in range(have)}

        def leaf(shape_dtype, kept=None):
            shape, dtype = shape_dtype
            out = np.zeros((devices * grown, *shape), dtype)
            for d in range(devices):
                if kept is not None:
                    out[d * grown: d * grown + have] = kept[d * have: (d + 1) * have]
            return out

        is_leaf = lambda x: isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], tuple)  # noqa: E731
        host = (jax.tree.map(leaf, shapes, is_leaf=is_leaf) if old is None
                else jax.tree.map(leaf, shapes, old, is_leaf=is_leaf))
        bucket.parked = sharding_lib.shard(host, self.slots)
        for p in self.paused.values():
            if p.bucket == bucket.key:
                p.rows = [remap[r] for r in p.rows]
        for name in ("park", "restore"):
            arr = getattr(bucket, name)
            arr[arr >= 0] = [remap[int(r)] for r in arr[arr >= 0]]
        bucket.releasing = [remap[r] for r in bucket.releasing]
        bucket.free_rows = [remap[r] for r in bucket.free_rows] + [
            d * grown + i for d in range(devices) for i in range(have, grown)]

    def member_keys(self, trial: int) -> list[dict[str, np.ndarray]]:
        """The keys of every replicate of ``trial`` (computed once)."""
        if trial not in self._keys:
            self._keys[trial] = [member_keys(self.config, trial, r) for r in range(self.repeats)]
        return self._keys[trial]

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
            slots = self._free_slots_for(job, bucket)
            if slots is None:
                waiting.append(job)
                continue
            self._place(job, config, bucket, slots)
        self.queue = waiting

    def _free_slots_for(self, job: Job, bucket: Bucket) -> list[int] | None:
        """Free slots for ``job``'s members (a paused member's on its parking row's device), or
        None when they are not free yet."""
        paused = self.paused.get(job.trial_id)
        if paused is None:
            free = bucket.free_slots()
            return free[: self.repeats] if len(free) >= self.repeats else None
        slots = []
        for row in paused.rows:
            free = bucket.free_slots(bucket.row_device(row))
            slot = next((s for s in free if s not in slots), None)
            if slot is None:
                return None
            slots.append(slot)
        return slots

    def _keys_hex(self, trial: int) -> list[tuple[str, str]]:
        return [(k["init_key"].tobytes().hex(), k["data_key"].tobytes().hex())
                for k in self.member_keys(trial)]

    def _place(self, job: Job, config: dict, bucket: Bucket, slots: list[int]) -> None:
        paused = self.paused.pop(job.trial_id, None)
        values = hparams.slot_hparams([config], [self.config.steps])
        # The per-trial path's one guard: a resumed checkpoint's searcher state is the one way a
        # value can arrive from outside the validated space, and this is what it could break.
        placement.check_fits(bucket.spec, values, [0])
        hparams.set_rows(bucket.hparams, slots, values)
        for r, slot in enumerate(slots):
            for name, key in self.member_keys(job.trial_id)[r].items():
                bucket.keys[name][slot] = key
            bucket.target[slot] = job.budget
            bucket.trial[slot] = job.trial_id
            bucket.diverged[slot] = False
            if paused is None:
                bucket.new[slot] = True
                bucket.step[slot] = 0
            else:
                bucket.restore[slot] = paused.rows[r]
                bucket.releasing.append(paused.rows[r])
                bucket.step[slot] = paused.step
            bucket.owner[slot] = (job.trial_id, r)
        bucket.dirty = True
        self.running[job.trial_id] = Running(job, config, bucket.key, slots)
        steps = 0 if paused is None else paused.step
        loss = math.nan if paused is None else paused.loss
        self._started.append(Event(job.trial_id, "running", config, loss, steps, job.budget,
                                   bucket.key, [], False))

    def _apply(self, bucket: Bucket) -> None:
        """Sends ``bucket``'s pending placements to the device (one program call)."""
        if not bucket.dirty:
            return
        plan = jax.device_put(bucket.plan(), self.slots)
        bucket.pop, bucket.parked = placement.place(bucket.spec, bucket.pop, bucket.parked, plan,
                                                     mesh=self.local_mesh)
        bucket.free_rows.extend(bucket.releasing)
        bucket.releasing = []
        bucket._clear_plan()

    def flush(self) -> None:
        """Applies every pending placement (before reading device state, e.g. a checkpoint)."""
        for bucket in self.buckets.values():
            self._apply(bucket)

    def step(self, while_training: Callable[[], None] | None = None
             ) -> tuple[list[Event], list[tuple]]:
        """Trains one chunk. Returns the trial events and the learning-curve rows
        ``(trial, replicate, step, train_loss, val_loss)`` of the chunk.

        ``while_training`` is called once the chunk's programs are dispatched and before their
        results are read: host work that does not change the sweep (the previous chunk's store
        rows) overlaps the device's.
        """
        self._fill()
        if not self.running:
            if self.done:
                return [], []
            raise RuntimeError("scheduler handed out no job while nothing is running")
        busy = [b for b in self.buckets.values() if b.active().any()]
        remaining = np.concatenate([(b.target - b.step)[b.active()] for b in busy])
        n = chunk_length(remaining, self.config.chunk * self.rounds, self._overhead(busy))
        launched = []
        lists = 1 if self.local_mesh is None else self.mesh.size
        for bucket in busy:
            self._apply(bucket)
            t0 = time.perf_counter()
            groups = bucket.groups_to_run(lists)
            bucket.pop, out = pop_lib.run_chunk(
                bucket.spec, bucket.pop, self.train_x, self.val_x,
                jax.device_put(groups, self.slots) if lists > 1 else groups, self.config.chunk,
                self.rounds, np.int32(n), mesh=self.local_mesh, group=bucket.group)
            launched.append((bucket, t0, int((groups >= 0).sum()) * bucket.group, out))
        if while_training is not None:
            while_training()
        results = sharding_lib.to_host([out for *_, out in launched])
        rounds = -(-n // self.config.chunk)
        curves = []
        finished: dict[int, list[tuple[int, float, bool]]] = {}
        for (bucket, t0, computed, _), host in zip(launched, results, strict=True):
            if bucket.first_chunk_s is None:
                bucket.first_chunk_s = time.perf_counter() - t0
            self.member_steps += int((host["step"][rounds - 1] - bucket.step).sum())
            self.slot_steps += computed * n
            self.bucket_calls += 1
            # Per round and slot: a curve point wherever a member trained or diverged.
            step, diverged = host["step"][:rounds], host["diverged"][:rounds]
            before = np.vstack([bucket.step[None], step[:-1]])
            was = np.vstack([bucket.diverged[None], diverged[:-1]])
            owned = np.array([o is not None for o in bucket.owner])
            moved = ((step > before) | (diverged & ~was)) & owned
            for slot, r in zip(*np.nonzero(moved.T), strict=True):
                owner, train = bucket.owner[slot], host["train"][r, slot]
                curves.append((owner[0], owner[1], int(step[r, slot]),
                               float(train) if np.isfinite(train) else None,
                               float(host["val"][r, slot])))
            ended = owned & (diverged[-1] | (step[-1] >= bucket.target))
            for slot in np.flatnonzero(ended):
                owner = bucket.owner[slot]
                finished.setdefault(owner[0], []).append(
                    (owner[1], float(host["val"][rounds - 1, slot]), bool(diverged[-1, slot])))
            bucket.step, bucket.diverged = step[-1].copy(), diverged[-1].copy()
        events, self._started = self._started, []
        events += self._settle(finished)
        self.chunk += 1
        return events, curves

    def _group(self, spec: pop_lib.TrainSpec, slots: int) -> int:
        """Slots per group of a bucket's program of ``slots`` slots: on each device's share when
        each device runs its own (``shard_map``), else of the whole population."""
        if self.local_mesh is None:
            return grouping.group_size(spec, slots)
        return grouping.group_size(spec, slots // self.mesh.size, per_device=True)

    def _overhead(self, busy: list[Bucket]) -> float:
        """A chunk's fixed host cost in population-steps of the busy buckets (``chunk_length``)."""
        lists = 1 if self.local_mesh is None else self.mesh.size
        flops = sum((b.groups_to_run(lists) >= 0).sum() * b.group * buckets_lib.step_flops(b.spec)
                    for b in busy)
        step_s = flops / DEVICE_FLOPS.get(self.platform, DEVICE_FLOPS["gpu"])
        return CHUNK_HOST_S.get(self.platform, CHUNK_HOST_S["gpu"]) / max(step_s, 1e-12)

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
            steps = int(bucket.step[run.slots].max())
            status = self.scheduler.status(trial)
            if status == "paused":
                rows = []
                for slot in run.slots:
                    row = bucket.take_row(bucket.slot_device(slot))
                    if row is None:
                        self._grow_parking(bucket, bucket.rows // self.mesh.size + 1)
                        row = bucket.take_row(bucket.slot_device(slot))
                    rows.append(row)
                bucket.park[run.slots] = rows
                self.paused[trial] = Paused(run.config, run.bucket, rows, steps, run.job.budget,
                                            loss, losses)
                state = "running"
            else:
                state = {"completed": "completed", "stopped": "pruned"}.get(status, status)
                if diverged:
                    state = "diverged"
            bucket.trial[run.slots] = -1
            bucket.dirty = True
            for s in run.slots:
                bucket.owner[s] = None
            events.append(Event(trial, state, run.config, loss, steps, run.job.budget, run.bucket,
                                losses, True, self._keys_hex(trial)))
        # A synchronous rung decides about paused trials only when it completes.
        for trial in sorted(self.paused):
            if self.scheduler.status(trial) == "stopped":
                p = self.paused.pop(trial)
                self.buckets[p.bucket].free_rows.extend(p.rows)
                events.append(Event(trial, "pruned", p.config, p.loss, p.step, p.budget,
                                    p.bucket, p.replicate_losses, False, self._keys_hex(trial)))
        return events

    # -- checkpoints ------------------------------------------------------------------------------

    def state_bytes(self) -> bytes:
        """Everything needed to continue this sweep exactly, as msgpack (no pickle)."""
        self.flush()
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
        parked = {k: sharding_lib.to_host(b.parked) for k, b in self.buckets.items()
                  if b.parked is not None and any(p.bucket == k for p in self.paused.values())}
        arrays = {
            "buckets": {str(i): serialization.to_state_dict(sharding_lib.to_host(b.pop))
                        for i, b in enumerate(self.buckets.values())},
            "paused": {str(t): {str(r): serialization.to_state_dict(
                                    jax.tree.map(lambda a, row=row: a[row], parked[p.bucket]))
                                for r, row in enumerate(p.rows)}
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
            host = serialization.from_state_dict(sharding_lib.to_host(bucket.pop),
                                                 arrays["buckets"][str(i)])
            bucket.pop = sharding_lib.shard(host, self.slots)
            bucket.owner = [tuple(o) if o is not None else None for o in b["owner"]]
            bucket.hparams = jax.tree.map(np.array, host.hparams)
            bucket.keys = {k: np.array(getattr(host, k))
                           for k in ("init_key", "data_key", "eval_key")}
            bucket.target = np.array(host.target)
            bucket.trial = np.array(host.trial)
            bucket.step = np.array(host.step)
            bucket.diverged = np.array(host.diverged)
        self.running = {
            r["trial"]: Running(Job(r["trial"], r["job_config"], r["budget"]), r["config"],
                                tuple(r["bucket"]), r["slots"])
            for r in meta["running"]
        }
        self.paused = {}
        by_bucket: dict[tuple, list[tuple[int, dict, list]]] = {}
        for p in meta["paused"]:
            members = [m for _, m in sorted(arrays["paused"][str(p["trial"])].items(),
                                            key=lambda kv: int(kv[0]))]
            by_bucket.setdefault(tuple(p["bucket"]), []).append((p["trial"], p, members))
        for key, entries in by_bucket.items():
            bucket = self._bucket(key)
            devices = self.mesh.size
            needed = sum(len(members) for _, _, members in entries)
            self._grow_parking(bucket, -(-needed // devices))
            host = jax.tree.map(np.array, sharding_lib.to_host(bucket.parked))
            template = jax.tree.map(lambda a: a[0], host)
            k = 0
            for trial, p, members in entries:
                rows = []
                for m in members:
                    row = bucket.take_row(k % devices)  # spread over the devices
                    k += 1
                    member = serialization.from_state_dict(template, m)
                    jax.tree.map(lambda a, v, row=row: a.__setitem__(row, v), host, member)
                    rows.append(row)
                step = int(np.asarray(members[0]["step"]))
                self.paused[trial] = Paused(
                    p["config"], key, rows, step, p["budget"], _from_json(p["loss"]),
                    [_from_json(v) for v in p["replicate_losses"]])
            bucket.parked = sharding_lib.shard(host, self.slots)
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
        bucket = buckets_lib.bucket_json(e.bucket)
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
