"""Population-based training inside the population (``--searcher pbt``; Jaderberg et al. 2017).

The sweep's ``trials`` are its members, trained together for ``steps`` steps. Every ``ready``
steps (``pbt_ready``, a whole number of chunks) all members are evaluated on the validation
data and the policy (``searchers.PBT``) decides: the bottom ``pbt_fraction`` of the members take
the weights, optimizer state, batch-norm statistics and step count of members from the top
``pbt_fraction`` (``exploit``: one jitted gather on the device, no parameter crosses to the host)
and continue under explored hyperparameters. A member keeps its trial id, PRNG keys and data
order for the whole sweep, so a trial is a *lineage*: its ``lineage`` rows in the store say
whose weights it took, when, and which hyperparameters it had before and after.

Shape-changing hyperparameters (buckets) never change: members exploit only members of their own
bucket (``group_by``), and masked sizes (``hidden``, ``latent_dim``) are inherited from the
parent with its weights, never perturbed (``keep``), as is the activation. A bucket with a
single member never exploits.

``PBTDriver`` has ``driver.Driver``'s shape (``step()``, ``done``, ``state_bytes()``,
``restore()``, ``record()``), so ``driver.run`` and the CLI checkpoint, resume and stop it alike;
it is deterministic given the configuration, so a resumed sweep ends where an uninterrupted one
does.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from flax import serialization

from jaxae import hparams, placement
from jaxae import population as pop_lib
from jaxae import sharding as sharding_lib
from jaxae.buckets import member_keys, train_spec
from jaxae.config import SweepConfig, curve_examples, fixed, searched
from jaxae.data import Dataset
from jaxae.jobs import Event
from jaxae.runner import write
from jaxae.store import TrialStore
from searchers import PBT

DEFAULT_FRACTION = 0.25
DEFAULT_RESAMPLE = 0.25


def ready_steps(config: SweepConfig) -> int:
    """Steps between exploits: ``pbt_ready``, else about a tenth of ``steps`` in whole chunks
    (at least one chunk)."""
    if config.pbt_ready is not None:
        return config.pbt_ready
    return max(1, round(config.steps / 10 / config.chunk)) * config.chunk


def make_policy(config: SweepConfig) -> PBT:
    """The exploit / explore policy of a PBT sweep over its searched dimensions."""
    space = searched(config)
    return PBT(
        space, config.trials, config.seed,
        fraction=DEFAULT_FRACTION if config.pbt_fraction is None else config.pbt_fraction,
        resample_probability=(DEFAULT_RESAMPLE if config.pbt_resample is None
                              else config.pbt_resample),
        # Inherited with the weights: the masked sizes, and the activation the weights were
        # trained through (a per-slot choice, so it needs no bucket of its own).
        keep=[n for n in space if hparams.HPARAMS[n].kind == "masked" or n == "activation"],
        group_by=[n for n in space if hparams.HPARAMS[n].kind == "bucket"],
    )


@functools.partial(jax.jit, donate_argnums=(0,))
def exploit(pop: pop_lib.Population, src: jax.Array) -> pop_lib.Population:
    """Slot ``i`` takes slot ``src[i]``'s weights, optimizer state, batch statistics, step count
    and divergence flag (``src[i] == i`` keeps its own): one gather per leaf, on the device.

    Args:
        pop: the population; its buffers are donated.
        src: [slots] int32, the slot each slot copies.

    Returns:
        The population with those leaves gathered; hyperparameters, keys, targets and trial ids
        stay each slot's own.
    """
    gather = functools.partial(jax.tree.map, lambda a: a[src])
    return pop.replace(params=gather(pop.params), opt_state=gather(pop.opt_state),
                       stats=gather(pop.stats), step=pop.step[src], diverged=pop.diverged[src])


def set_hparams(pop: pop_lib.Population, configs: list[Mapping[str, Any]], horizon: int
                ) -> pop_lib.Population:
    """The population with every slot's per-slot hyperparameters from ``configs`` (one resolved
    configuration per slot; an empty slot's may be any) and the schedule's ``horizon``. Placed
    like the population's slots, so the next chunk finds its compiled program."""
    arrays = hparams.slot_hparams(configs, [horizon] * len(configs))
    return pop.replace(hparams=jax.device_put(arrays, pop.step.sharding))


@dataclasses.dataclass
class Group:
    """One bucket's compiled program and its members (PBT's slots never change owner)."""

    key: tuple  # values of hparams.BUCKET_NAMES
    spec: pop_lib.TrainSpec
    pop: pop_lib.Population
    owner: list[tuple[int, int] | None]  # (member, 0) in each slot, None when padding
    first_chunk_s: float | None = None  # wall time of its first chunk: mostly compilation


class PBTDriver:
    """Runs one population-based-training sweep; ``step()`` trains one chunk.

    Args:
        config: the validated sweep configuration (``searcher = "pbt"``).
        dataset: the data; train and val splits go to the device once.
    """

    def __init__(self, config: SweepConfig, dataset: Dataset) -> None:
        self.config = config
        self.mesh, self.slots, self.local_mesh, self.train_x, self.val_x = sharding_lib.layout(
            dataset.train.x, dataset.val.x)
        self.features = dataset.features
        # Curve points between exploits on the split's first examples (``curve_examples``);
        # exploits and final results on all of it. None: the whole split every chunk.
        curve = pop_lib.curve_subset(curve_examples(config), len(dataset.val))
        self.curve_x = None if curve is None else self.val_x[:curve]
        self.ready = ready_steps(config)
        self.policy = make_policy(config)
        self.configs = [self.resolve(c) for c in self.policy.ask()]  # resolved, per member
        self.where: list[tuple[tuple, int]] = []  # member -> (bucket key, slot)
        counts: dict[tuple, int] = {}
        for c in self.configs:
            key = self.bucket_key(c)
            self.where.append((key, counts.get(key, 0)))
            counts[key] = counts.get(key, 0) + 1
        self.capacity = max(sharding_lib.round_up(n, self.mesh) for n in counts.values())
        self.buckets: dict[tuple, Group] = {}
        for key, n in counts.items():
            spec = train_spec(config, self.features, key)
            size = sharding_lib.round_up(n, self.mesh)
            pop = sharding_lib.shard(placement.create(spec, size), self.slots)
            self.buckets[key] = Group(key, spec, pop, [None] * size)
        for key, bucket in self.buckets.items():
            members = [i for i, (k, _) in enumerate(self.where) if k == key]
            slots = [self.where[i][1] for i in members]
            bucket.pop = placement.assign(bucket.spec, bucket.pop, slots, [
                placement.Member(i, self.configs[i], config.steps, member_keys(config, i, 0),
                                 horizon=config.steps) for i in members])
            for i, slot in zip(members, slots, strict=True):
                bucket.owner[slot] = (i, 0)
        self.chunk = 0
        self.member_steps = 0
        self.finished = False
        self.lineage: list[dict[str, Any]] = []  # rows of the last step, for record()
        # Measurement only (bench/): slot-steps computed and program calls, as driver.Driver.
        self.slot_steps = 0
        self.bucket_calls = 0

    # -- configuration --------------------------------------------------------------------------

    def resolve(self, job_config: Mapping[str, Any]) -> dict[str, Any]:
        """A member's full configuration: defaults < the space's fixed values < the searched."""
        return hparams.complete(self.config.model, {**fixed(self.config), **job_config})

    def bucket_key(self, config: Mapping[str, Any]) -> tuple:
        return tuple(config[name] for name in hparams.BUCKET_NAMES)

    @property
    def done(self) -> bool:
        return self.finished

    @property
    def running(self) -> dict[int, dict[str, Any]]:
        """The members still training (all of them until the end), with their configurations."""
        return {} if self.finished else dict(enumerate(self.configs))

    def reported(self) -> set[int]:
        """The trials that have a final result (every member, once the sweep has ended)."""
        return set(range(len(self.configs))) if self.finished else set()

    # -- the loop ---------------------------------------------------------------------------------

    def step(self, while_training: Callable[[], None] | None = None
             ) -> tuple[list[Event], list[tuple]]:
        """Trains one chunk, then (every ``ready`` steps) exploits and explores, or (at the end)
        settles every member. Returns the trial events and learning-curve rows as
        ``driver.Driver.step``; the lineage rows wait in ``self.lineage`` for ``record``.
        ``while_training`` (the previous chunk's store rows) is called first, while
        ``self.lineage`` still holds that chunk's rows."""
        if while_training is not None:
            while_training()
        if self.finished:
            return [], []
        events, self.lineage = [], []
        if self.chunk == 0:
            for i, c in enumerate(self.configs):
                events.append(self._event(i, "running", math.nan, 0, False))
                self.lineage.append(dict(trial_id=i, step=0, parent=None, params_before=None,
                                         params_after=c))
        val = np.full(len(self.configs), np.nan)
        steps = np.zeros(len(self.configs), np.int64)
        diverged = np.zeros(len(self.configs), bool)
        curves = []
        elapsed = min((self.chunk + 1) * self.config.chunk, self.config.steps)
        decides = elapsed >= self.config.steps or elapsed % self.ready == 0
        for bucket in self.buckets.values():
            bucket.pop = sharding_lib.shard(bucket.pop, self.slots)
            before = sharding_lib.to_host(bucket.pop.step)
            t0 = time.perf_counter()
            bucket.pop, losses = pop_lib.train_chunk(
                bucket.spec, bucket.pop, self.train_x, self.config.chunk, mesh=self.local_mesh)
            fetch = {"losses": losses, "step": bucket.pop.step, "diverged": bucket.pop.diverged}
            if self.curve_x is None or decides:  # the whole split: what exploits compare
                fetch["val"] = pop_lib.evaluate(bucket.spec, bucket.pop, self.val_x)["val_loss"]
            if self.curve_x is not None:
                fetch["curve"] = pop_lib.evaluate(bucket.spec, bucket.pop,
                                                  self.curve_x)["val_loss"]
            host = sharding_lib.to_host(fetch)
            host.setdefault("curve", host.get("val"))
            # A member whose evaluation is not finite has diverged (either evaluation).
            finite = np.isfinite(host["curve"]) & np.isfinite(host.get("val", host["curve"]))
            host.setdefault("val", np.full(len(finite), np.nan))
            if bucket.first_chunk_s is None:  # mostly compilation (sweep.json reports it)
                bucket.first_chunk_s = time.perf_counter() - t0
            self.member_steps += int((host["step"] - before).sum())
            self.slot_steps += bucket.pop.size * self.config.chunk
            self.bucket_calls += 1
            for slot, owner in enumerate(bucket.owner):
                if owner is None:
                    continue
                i = owner[0]
                val[i], steps[i] = host["val"][slot], host["step"][slot]
                diverged[i] = host["diverged"][slot] or not finite[slot]
                trained = np.isfinite(host["losses"][slot])
                if host["step"][slot] > before[slot] or host["diverged"][slot]:
                    train_loss = float(host["losses"][slot][trained].mean()) \
                        if trained.any() else None
                    curves.append((i, 0, int(host["step"][slot]), train_loss,
                                   float(host["curve"][slot])))
        self.chunk += 1
        losses = np.where(diverged, np.nan, val)
        if elapsed >= self.config.steps:
            self.finished = True
            for i in range(len(self.configs)):
                status = "diverged" if diverged[i] else "completed"
                events.append(self._event(i, status, float(losses[i]), int(steps[i]), True))
        elif elapsed % self.ready == 0:
            events += self._exploit(elapsed, losses, steps)
        return events, curves

    def _event(self, i: int, status: str, loss: float, steps: int, told: bool) -> Event:
        c = self.configs[i]
        keys = [member_keys(self.config, i, 0)] if told else []
        return Event(i, status, c, loss, steps, self.config.steps, self.bucket_key(c),
                     [loss] if told else [], told,
                     [(k["init_key"].tobytes().hex(), k["data_key"].tobytes().hex())
                      for k in keys])

    def _exploit(self, elapsed: int, losses: np.ndarray, steps: np.ndarray) -> list[Event]:
        """Tells the policy every member's loss and carries out its decisions."""
        configs = self.policy.ask()
        self.policy.tell(configs, [float(v) for v in losses])
        decisions = self.policy.decisions
        src = {key: np.arange(b.pop.size, dtype=np.int32) for key, b in self.buckets.items()}
        events = []
        for d in decisions:
            (key, dst_slot), (src_key, src_slot) = self.where[d.dst], self.where[d.src]
            if key != src_key:  # the policy groups by every bucket dimension
                raise RuntimeError(f"member {d.dst} cannot copy member {d.src} of another bucket")
            src[key][dst_slot] = src_slot
            before = self.configs[d.dst]
            self.configs[d.dst] = self.resolve(d.after)
            self.lineage.append(dict(trial_id=d.dst, step=elapsed, parent=d.src,
                                     params_before=before, params_after=self.configs[d.dst],
                                     parent_loss=d.src_loss, val_loss=d.dst_loss))
            events.append(self._event(d.dst, "running", float(losses[d.src]),
                                      int(steps[d.src]), False))
        for key, bucket in self.buckets.items():
            if np.array_equal(src[key], np.arange(bucket.pop.size)):
                continue
            bucket.pop = exploit(bucket.pop, jax.device_put(src[key], bucket.pop.step.sharding))
            owned = [self.configs[o[0]] if o is not None else None for o in bucket.owner]
            # An empty slot (padding to the device count) never trains: any member's will do.
            first = next(c for c in owned if c is not None)
            slot_configs = [first if c is None else c for c in owned]
            bucket.pop = set_hparams(bucket.pop, slot_configs, self.config.steps)
        return events

    def record(self, store: TrialStore, events: list[Event], curves: list[tuple]) -> None:
        """Writes one chunk's results and its lineage rows in one transaction."""
        with store.transaction():
            write(store, self.config, events, curves)
            for row in self.lineage:
                store.put_lineage(**row)

    # -- checkpoints ------------------------------------------------------------------------------

    def state_bytes(self) -> bytes:
        """Everything needed to continue this sweep exactly, as msgpack (no pickle)."""
        meta = {"chunk": self.chunk, "member_steps": self.member_steps,
                "finished": self.finished, "policy": self.policy.state_dict(),
                "configs": self.configs}
        arrays = {"buckets": {str(i): serialization.to_state_dict(sharding_lib.to_host(b.pop))
                              for i, b in enumerate(self.buckets.values())}}
        return serialization.msgpack_serialize({"meta": json.dumps(meta), "arrays": arrays})

    def restore(self, data: bytes) -> None:
        """Continues from ``state_bytes()`` output (the buckets and slots follow from the
        configuration, so only their contents are restored)."""
        state = serialization.msgpack_restore(data)
        meta = json.loads(state["meta"])
        self.chunk = meta["chunk"]
        self.member_steps = meta["member_steps"]
        self.finished = meta["finished"]
        self.policy = PBT.from_state_dict(searched(self.config), meta["policy"])
        self.configs = meta["configs"]
        for i, bucket in enumerate(self.buckets.values()):
            pop = serialization.from_state_dict(bucket.pop, state["arrays"]["buckets"][str(i)])
            bucket.pop = sharding_lib.shard(pop, self.slots)
