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

Pipelined (``JAXAE_PIPELINE=on``), each chunk is dispatched before the previous one's results are
read and told, so the host's work overlaps the device's; a checkpoint then carries the chunk in
flight, read but not told, so the schedule never depends on when checkpoints are taken.

Everything here is deterministic given the config: the order of tells, the slot a job lands in and
the checkpoint timing never change a trial's numbers, so a resumed sweep replays to the same end.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxae import buckets as buckets_lib
from jaxae import driver_state, hparams, placement, programs, runner
from jaxae import population as pop_lib
from jaxae import sharding as sharding_lib
from jaxae.buckets import Bucket, member_keys, train_spec
from jaxae.config import SweepConfig, curve_examples, fixed, searched
from jaxae.data import Dataset
from jaxae.jobs import Event, Paused, Running, aggregate
from jaxae.store import TrialStore
from searchers import FullBudget, Job, Scheduler, make_scheduler

# A chunk's fixed host cost (planning, dispatch, reading results back, the store's transaction),
# in seconds, and the model FLOP/s a device of each platform sustains on these small models
# (rough figures: a 2-core CPU, an H100 / H200-class GPU): the two make the chunk-length rule's
# exchange rate between idle slot-steps and extra chunks (``chunk_length``). They are constants,
# not measurements of this run, so a sweep's schedule is the same on every machine of a platform.
CHUNK_HOST_S = {"cpu": 2e-3, "gpu": 1e-3, "tpu": 1e-3}
DEVICE_FLOPS = {"cpu": 4e10, "gpu": 4e13, "tpu": 4e13}

# The most rounds of ``chunk`` steps one program call trains (``population.run_chunk``): a call's
# fixed cost is paid once per this many evaluations. Accelerators, whose calls cost more than
# their steps, take more.
ROUNDS = {"cpu": 4, "gpu": 16, "tpu": 16}

# Whether sweeps pipeline their chunks by default, per platform (``pipelined``). Off everywhere
# until measured: on a CPU host and device share the cores (asking ahead gained nothing there);
# on an accelerator it overlaps the host's work per chunk with the device's, at the price of a
# chunk's idling for each slot whose job ends (bench/gpu.sh measures both).
PIPELINE: dict[str, bool] = {}


def pipelined(platform: str) -> bool:
    """Whether a sweep on ``platform`` pipelines its chunks (``Driver.lagged``):
    ``JAXAE_PIPELINE=on`` / ``off``, else ``PIPELINE``'s choice for the platform."""
    setting = os.environ.get("JAXAE_PIPELINE", "").lower()
    if setting in ("1", "on", "true", "yes"):
        return True
    if setting in ("0", "off", "false", "no"):
        return False
    return PIPELINE.get(platform, False)


class Snapshot(NamedTuple):
    """A bucket's host state as a chunk starts: what reading its results needs."""

    step: np.ndarray  # [slots] int32
    diverged: np.ndarray  # [slots] bool
    target: np.ndarray  # [slots] int32
    active: np.ndarray  # [slots] bool: the slots the chunk trains
    owner: list[tuple[int, int] | None]


class Launched(NamedTuple):
    """One bucket's chunk call: its results, on the device (or read already: a numpy array)."""

    bucket: tuple
    t0: float
    computed: int  # slots of the groups it computes
    before: Snapshot
    out: Any  # population.run_chunk_packed's array


class Launch(NamedTuple):
    """A chunk: its steps and each bucket's call."""

    steps: int
    entries: list[Launched]


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
        self.capacity = buckets_lib.capacity(config, self.mesh, self.features)
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
        self._program_pairs: dict[tuple, tuple[programs.Program, programs.Program]] = {}
        self.running: dict[int, Running] = {}
        self.paused: dict[int, Paused] = {}
        self.queue: list[Job] = []
        self.chunk = 0
        self.member_steps = 0
        # Measurement only (bench/sweep.py): slot-steps computed, busy or not, and program calls;
        # ``critical_slot_steps``: the slot-steps had every device computed as many groups as
        # the busiest one, whose groups set a chunk's time (member_steps / critical_slot_steps
        # bounds a sweep's speed against the full population's: the packing bound).
        self.slot_steps = 0
        self.critical_slot_steps = 0
        # ... and the chunks' steps times the population: member_steps over it is the share of
        # the population that trained (``occupancy``: jobs waiting for slots lower it).
        self.population_steps = 0
        self.bucket_calls = 0
        self._started: list[Event] = []
        self._keys: dict[int, list[dict[str, np.ndarray]]] = {}
        # Asking for the next jobs while a chunk trains (``_ask_ahead``), where the scheduler
        # hands out the same trials either way; and what ``_prepare_all`` made of each queued job.
        self.ask_ahead = self.scheduler.asks_ahead
        # Pipelining (``lagged``): each chunk is dispatched before the previous one's results
        # are read and told, so the host's work on them overlaps the device's; a slot whose job
        # ends then idles one chunk before it takes the next. The chunk in flight between two
        # steps, read by the next (a checkpoint carries its results).
        self.lagged = pipelined(self.platform)
        self._inflight: Launch | None = None
        # Pipelined: running jobs whose slots were freed as their last chunk started
        # (``_release_ending``), told when that chunk's results are read.
        self._released: set[int] = set()
        self._prepared: dict[Job, tuple[dict[str, Any], Bucket, tuple[Any, int]]] = {}

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
                group=buckets_lib.group(self.config, spec, n, self.mesh),
                # Paused members each device may hand to another per call: every call that
                # moves any gathers this many rows from each device, so it stays small.
                migrate=4 if self.pauses and self.local_mesh else 0)
            if self.pauses:
                self._grow_parking(bucket, buckets_lib.parking_rows(self.config, spec, n,
                                                                    self.mesh.size))
            self.buckets[key] = bucket
        return self.buckets[key]

    def _grow_parking(self, bucket: Bucket, per_device: int) -> None:
        """Gives ``bucket`` at least ``per_device`` parking rows on each device (at least doubling
        them: a new placement program's shape, so this happens a few times per sweep at most).
        Each device's rows keep their members; row numbers are remapped."""
        devices = self.mesh.size
        have = bucket.rows_per_device
        if per_device <= have:
            return
        # Never more than every member of every trial (``memory``'s estimate counts on it).
        grown = max(per_device, min(2 * have, buckets_lib.most_parked(self.config)))
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
        return (self.scheduler.finished and not self.running and not self.queue
                and self._inflight is None)

    def reported(self) -> set[int]:
        """The trials that have reported a loss at least once (for the progress display)."""
        return {t for t, trial in enumerate(self.scheduler.trials) if trial.losses}

    def record(self, store: TrialStore, events: list[Event], curves: list[tuple]) -> None:
        """Writes one chunk's results (``step()``'s) in one transaction."""
        runner.record(store, self.config, events, curves)

    def _fill(self) -> None:
        """Asks the scheduler for as many jobs as free member slots allow, then places what fits."""
        busy = self.repeats * (len(self.running) - len(self._released) + len(self.queue))
        want = (self.config.population - busy) // self.repeats
        if want > 0:
            self.queue.extend(self.scheduler.ask(want))
        waiting = []
        self._prepare_all(self.queue)
        for job in self.queue:
            bucket = self._prepared[job][1]
            found = self._free_slots_for(job, bucket)
            if found is None:
                waiting.append(job)
                continue
            self._place(job, *self._prepared.pop(job), *found)
        self.queue = waiting
        for bucket in self.buckets.values():
            if bucket.parked is not None:
                for src, dst in bucket.repack():
                    trial, replicate = bucket.owner[dst]
                    self.running[trial].slots[replicate] = dst

    def _prepare_all(self, jobs: list[Job]) -> None:
        """Resolves every job of ``jobs`` not prepared yet: its full configuration, bucket, keys
        and slot hyperparameters, kept in ``_prepared`` until it is placed. The hyperparameters
        of all of them are built and checked together (one job at a time, that was a large share
        of a multi-fidelity sweep's host time per trial)."""
        fresh = [job for job in jobs if job not in self._prepared]
        if not fresh:
            return
        configs = [self.resolve(job.config) for job in fresh]
        values = hparams.slot_hparams(configs, [self.config.steps] * len(fresh))
        buckets = [self._bucket(self.bucket_key(config)) for config in configs]
        # The per-trial path's one guard: a resumed checkpoint's searcher state is the one way a
        # value can arrive from outside the validated space, and this is what it could break.
        for key in dict.fromkeys(b.key for b in buckets):
            placement.check_fits(self.buckets[key].spec, values,
                                 [i for i, b in enumerate(buckets) if b.key == key])
        for i, (job, config, bucket) in enumerate(zip(fresh, configs, buckets, strict=True)):
            self.member_keys(job.trial_id)
            self._prepared[job] = (config, bucket, (values, i))

    def _ask_ahead(self) -> None:
        """While a chunk trains: asks for the jobs that will take the slots whose jobs reach
        their budgets in it (the host's steps are already where the chunk leaves them), and
        prepares them, so the next chunk starts sooner. Only where the scheduler hands out the
        same trials either way (``asks_ahead``); a diverged member's slot is asked for after
        the chunk, as without asking ahead."""
        if not self.ask_ahead:
            return
        ending = sum(trial in self._released or self._stops(run)
                     for trial, run in self.running.items())
        busy = self.repeats * (len(self.running) - ending + len(self.queue))
        want = (self.config.population - busy) // self.repeats
        if want > 0:
            self.queue.extend(self.scheduler.ask(want))
        self._prepare_all(self.queue)

    def _free_slots_for(self, job: Job, bucket: Bucket
                        ) -> tuple[list[int], list[bool]] | None:
        """Free slots for ``job``'s members and, per member, whether it moves to another device
        than the one that parked it; None when they are not free yet.

        A paused member continues on its parking row's device unless moving shortens the chunk
        (``Bucket.migrate`` members per device and call may move; each move costs a gather):
        its device is full, or there it would open a group while a slot elsewhere joins an
        occupied one, or opens a group on a device that runs fewer groups than its own.
        """
        paused = self.paused.get(job.trial_id)
        if paused is None:
            free = bucket.free_slots()
            return (free[: self.repeats], [False] * self.repeats) if len(free) >= self.repeats \
                else None
        slots: list[int] = []
        moved: list[bool] = []
        handing = collections.Counter()
        for row in paused.rows:
            device = bucket.row_device(row)
            own = next((s for s in bucket.free_slots(device) if s not in slots), None)
            best = next((s for s in bucket.free_slots() if s not in slots), None)
            can_move = bucket.shares_left(device) > handing[device]
            move = best is not None and can_move and bucket.slot_device(best) != device and (
                own is None or (bucket.opens_group(own) and (
                    not bucket.opens_group(best)
                    or bucket.groups_on(bucket.slot_device(best)) < bucket.groups_on(device))))
            slot = best if move else own
            if slot is None:
                return None
            handing[device] += move
            slots.append(slot)
            moved.append(bool(move))
        return slots, moved

    def _keys_hex(self, trial: int) -> list[tuple[str, str]]:
        return [(k["init_key"].tobytes().hex(), k["data_key"].tobytes().hex())
                for k in self.member_keys(trial)]

    def _place(self, job: Job, config: dict, bucket: Bucket, values: tuple[Any, int],
               slots: list[int], moved: list[bool]) -> None:
        """Puts ``job``'s members into ``slots``; ``values``: slot hyperparameters and the row
        that is this job's (``_prepare_all``)."""
        paused = self.paused.pop(job.trial_id, None)
        hparams.set_rows(bucket.hparams, slots, *values)
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
                bucket.continue_from(paused.rows[r], slot, moved[r])
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
        plan = jax.device_put(bucket.plan().pack(), self.slots)
        bucket.pop, bucket.parked = self._programs(bucket)[0](bucket.pop, bucket.parked, plan)
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
        ``(trial, replicate, step, train_loss, val_loss)`` of the chunk; pipelined
        (``lagged``), those of the chunk before, while this one stays in flight.

        ``while_training`` is called once the chunk's programs are dispatched and before their
        results are read: host work that does not change the sweep (the previous chunk's store
        rows) overlaps the device's, as does asking for the next jobs where that changes nothing
        (``_ask_ahead``).
        """
        self._fill()
        launch = self._launch()
        if launch is None and self._inflight is None:
            if self.done:
                return [], []
            raise RuntimeError("scheduler handed out no job while nothing is running")
        if self.lagged:
            # This chunk trains while the previous one's results are read and told.
            launch, self._inflight = self._inflight, launch
        if while_training is not None:
            while_training()
        self._ask_ahead()
        events, self._started = self._started, []
        curves: list[tuple] = []
        if launch is not None:
            events += self._collect(launch, curves)
        self.chunk += 1
        return events, curves

    def _launch(self) -> Launch | None:
        """Dispatches a chunk of every bucket with an active slot (None: none has one), and
        advances the host's steps to where the chunk leaves them (divergence aside: ``_collect``
        corrects those)."""
        busy = [b for b in self.buckets.values() if b.active().any()]
        if not busy:
            return None
        remaining = np.concatenate([(b.target - b.step)[b.active()] for b in busy])
        lists = 1 if self.local_mesh is None else self.mesh.size
        to_run = {b.key: b.groups_to_run(lists) for b in busy}
        n = chunk_length(remaining, self.config.chunk * self.rounds, self._overhead(busy, to_run))
        self.population_steps += n * self.config.population
        self._compile([b for b in busy if b.compile_s is None], to_run)
        entries = []
        for bucket in busy:
            self._apply(bucket)
            t0 = time.perf_counter()
            groups = to_run[bucket.key]
            active = bucket.active()
            before = Snapshot(bucket.step.copy(), bucket.diverged.copy(), bucket.target.copy(),
                              active, list(bucket.owner))
            bucket.pop, out = self._programs(bucket)[1](*self._chunk_args(bucket, groups, n))
            if jax.process_count() == 1:
                out.copy_to_host_async()  # on its way back as soon as the chunk ends
            entries.append(Launched(bucket.key, t0, int((groups >= 0).sum()) * bucket.group,
                                    before, out))
            busiest = int((groups.reshape(lists, -1) >= 0).sum(axis=1).max())
            self.critical_slot_steps += n * busiest * bucket.group * lists
            bucket.step = np.where(active, np.minimum(bucket.step + n, bucket.target),
                                   bucket.step).astype(np.int32)
        if self.lagged and not self.pauses:
            self._release_ending()
        return Launch(n, entries)

    def _release_ending(self) -> None:
        """Pipelined, where no trial pauses: frees the slots of the jobs whose members all stop
        in the chunk just dispatched, so that the next chunk's jobs take them at once (the
        device runs the chunks in order, and the jobs' results are read from the chunk's
        output, not from the slots; they are told as usual). A member that diverges
        unexpectedly still frees its slot only once its results are read."""
        for trial, run in self.running.items():
            if trial in self._released or not self._stops(run):
                continue
            self._released.add(trial)
            bucket = self.buckets[run.bucket]
            bucket.trial[run.slots] = -1
            for slot in run.slots:
                bucket.owner[slot] = None
            bucket.dirty = True

    def _stops(self, run: Running) -> bool:
        """Whether every member of ``run`` has stopped, or stops in the chunk in flight (the
        host's steps are where that chunk leaves them): its budget reached, or diverged."""
        bucket, slots = self.buckets[run.bucket], run.slots
        return bool(np.all((bucket.step[slots] >= bucket.target[slots]) | bucket.diverged[slots]))

    def _collect(self, launch: Launch, curves: list[tuple]) -> list[Event]:
        """Reads ``launch``'s results: appends its learning-curve points to ``curves``, tells the
        scheduler about the jobs that ended in it, and returns their events."""
        results = [pop_lib.unpack_results(r) for r in sharding_lib.to_host(
            [e.out for e in launch.entries])]
        rounds = -(-launch.steps // self.config.chunk)
        finished: dict[int, list[tuple[int, float, bool, int]]] = {}
        for entry, host in zip(launch.entries, results, strict=True):
            bucket, before = self.buckets[entry.bucket], entry.before
            if bucket.first_chunk_s is None and bucket.compile_s is not None:
                bucket.first_chunk_s = bucket.compile_s + time.perf_counter() - entry.t0
            self.member_steps += int((host["step"][rounds - 1] - before.step).sum())
            self.slot_steps += entry.computed * launch.steps
            self.bucket_calls += 1
            # Per round and slot: a curve point wherever a member trained or diverged.
            step, diverged = host["step"][:rounds], host["diverged"][:rounds]
            expected = np.where(before.active,
                                np.minimum(before.step + launch.steps, before.target),
                                before.step)
            if np.any((step[-1] != expected) & ~diverged[-1]):  # what _launch assumed
                raise RuntimeError("a chunk trained other steps than its slots' targets allow")
            prev = np.vstack([before.step[None], step[:-1]])
            was = np.vstack([before.diverged[None], diverged[:-1]])
            owned = np.array([o is not None for o in before.owner])
            moved = ((step > prev) | (diverged & ~was)) & owned
            for slot, r in zip(*np.nonzero(moved.T), strict=True):
                owner, train = before.owner[slot], host["train"][r, slot]
                curves.append((owner[0], owner[1], int(step[r, slot]),
                               float(train) if np.isfinite(train) else None,
                               float(host["val"][r, slot])))
            # Every member of a job still running that has stopped (a replicate that stopped
            # earlier is reported again until its job's last one stops); pipelined, a job told
            # already, or promoted since (another budget), is not this chunk's.
            ended = owned & (diverged[-1] | (step[-1] >= before.target))
            for slot in np.flatnonzero(ended):
                owner = before.owner[slot]
                run = self.running.get(owner[0])
                if run is None or run.job.budget != before.target[slot]:
                    continue
                # The whole split's loss (the curve's points may use fewer examples).
                loss = host["final"][slot] if "final" in host else host["val"][rounds - 1, slot]
                finished.setdefault(owner[0], []).append(
                    (owner[1], float(loss), bool(diverged[-1, slot]), int(step[-1, slot])))
                if before.active[slot] and diverged[-1, slot] and owner[0] not in self._released:
                    now = run.slots[owner[1]]  # stopped where it diverged, wherever it is now
                    bucket.step[now], bucket.diverged[now] = step[-1, slot], True
        return self._settle(finished)

    def _programs(self, bucket: Bucket) -> tuple[programs.Program, programs.Program]:
        """``bucket``'s placement and chunk programs (``placement.place``,
        ``population.run_chunk_packed``) of the dynamic arguments, kept across processes
        (``jaxae.programs``)."""
        if bucket.key not in self._program_pairs:
            spec, length, rounds, mesh, group = (bucket.spec, self.config.chunk, self.rounds,
                                                 self.local_mesh, bucket.group)
            curve = curve_examples(self.config)
            place = functools.partial(placement.place, spec, mesh=mesh)
            run = lambda f: lambda pop, x, val, groups, steps: f(  # noqa: E731
                spec, pop, x, val, groups, length, rounds, steps, mesh=mesh, group=group,
                curve=curve)
            self._program_pairs[bucket.key] = (
                programs.Program("place", place, functools.partial(placement.place.lower, spec,
                                                                   mesh=mesh),
                                 (spec, mesh), donated=2),
                programs.Program("run_chunk", run(pop_lib.run_chunk_packed),
                                 run(pop_lib.run_chunk_packed.lower),
                                 (spec, length, rounds, mesh, group, curve), donated=1))
        return self._program_pairs[bucket.key]

    def _chunk_args(self, bucket: Bucket, groups: np.ndarray, steps: int) -> tuple:
        """The chunk program's arguments for ``bucket`` (``_programs``)."""
        if self.local_mesh is not None:
            groups = jax.device_put(groups, self.slots)
        return bucket.pop, self.train_x, self.val_x, groups, np.int32(steps)

    def _compile(self, fresh: list[Bucket], to_run: dict[tuple, np.ndarray]) -> None:
        """Compiles the placement and chunk programs of buckets about to run for the first time
        side by side, in threads: XLA compiles outside Python's lock, so a sweep's first chunk
        waits for its slowest program instead of the sum of them (a bucket's programs are
        compiled once; the calls that follow find them in ``jax.jit``'s cache)."""
        if not fresh or jax.process_count() > 1:
            for bucket in fresh:
                bucket.compile_s = 0.0
            return
        tasks = []
        for bucket in fresh:
            place, run = self._programs(bucket)
            tasks.append(functools.partial(run.compile,
                                           *self._chunk_args(bucket, to_run[bucket.key], 0)))
            if bucket.dirty:
                plan = jax.device_put(bucket.plan().pack(), self.slots)
                tasks.append(functools.partial(place.compile, bucket.pop, bucket.parked, plan))
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(len(tasks)) as pool:
            for done in [pool.submit(task) for task in tasks]:
                done.result()
        for bucket in fresh:
            bucket.compile_s = time.perf_counter() - t0

    def _overhead(self, busy: list[Bucket], to_run: dict[tuple, np.ndarray]) -> float:
        """A chunk's fixed host cost in steps of the groups it runs (``chunk_length``)."""
        flops = sum((to_run[b.key] >= 0).sum() * b.group * buckets_lib.step_flops(b.spec)
                    for b in busy)
        step_s = flops / DEVICE_FLOPS.get(self.platform, DEVICE_FLOPS["gpu"])
        return CHUNK_HOST_S.get(self.platform, CHUNK_HOST_S["gpu"]) / max(step_s, 1e-12)

    def _settle(self, finished: dict[int, list[tuple[int, float, bool, int]]]) -> list[Event]:
        """Tells the scheduler about every job whose members all stopped training, in trial order,
        and frees or pauses their slots. ``finished``: per trial, ``(replicate, loss, diverged,
        steps)`` of its members that stopped."""
        events = []
        for trial in sorted(finished):
            run = self.running[trial]
            results = sorted(finished[trial])
            if len(results) < len(run.slots):
                continue  # other replicates still training
            diverged = any(d for _, _, d, _ in results)
            losses = [math.nan if d else v for _, v, d, _ in results]
            loss = math.nan if diverged else aggregate(losses, self.config.aggregate)
            self.scheduler.tell(trial, run.job.budget, loss)
            del self.running[trial]
            bucket = self.buckets[run.bucket]
            steps = max(n for *_, n in results)
            status = self.scheduler.status(trial)
            if status == "paused":
                rows = []
                for slot in run.slots:
                    row = bucket.take_row(bucket.slot_device(slot))
                    if row is None:
                        self._grow_parking(bucket, bucket.rows_per_device + 1)
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
            if trial in self._released:  # its slots were freed as its last chunk started
                self._released.discard(trial)
            else:
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
        """Everything needed to continue this sweep exactly, as msgpack (``driver_state``)."""
        return driver_state.save(self)

    def restore(self, data: bytes) -> None:
        """Continues from ``state_bytes()`` output."""
        driver_state.load(self, data)
