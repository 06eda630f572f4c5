"""Buckets: the compiled programs of a sweep and the slots each one holds.

Shape-changing hyperparameters (``hparams.BUCKET_NAMES``: depth, optimizer, batch size, loss,
norm) split a sweep's trials into buckets, one compiled program each. ``train_spec`` gives a
bucket's program (width and code size padded to the largest values the space allows, the space's
activations as a per-slot choice), ``capacity`` the slots each bucket holds, ``member_keys`` a
member's PRNG keys, and ``Bucket`` one bucket's device state with the host's copy of its slots'
small arrays. The driver (``jaxae.driver``) runs the loop; retraining, the memory estimate and the
bench build the same programs from here.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math

import jax
import numpy as np

from jaxae import grouping, hparams, placement
from jaxae import population as pop_lib
from jaxae import sharding as sharding_lib
from jaxae.config import SweepConfig, count_buckets, value_range
from jaxae.models import ModelSpec


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
        activation=activations(config),
        loss=b["loss"],
        precision=config.precision,
        norm=b["norm"],
        dropout=max(value_range(config, "dropout")) > 0,
    )
    # The gradient-norm pass only where some trial of the space can clip (grad_clip > 0).
    clips = max(value_range(config, "grad_clip")) > 0
    return pop_lib.TrainSpec(model, b["optimizer"], b["batch_size"], clip_gradients=clips)


def activations(config: SweepConfig) -> str | tuple[str, ...]:
    """The hidden-layer activations a sweep's programs compute: its one activation, or every
    choice of the space (in ``hparams.ACTIVATIONS`` order), each slot applying its own."""
    used = set(value_range(config, "activation"))
    names = tuple(a for a in hparams.ACTIVATIONS if a in used)
    return names[0] if len(names) == 1 else names


# The most parameter and moment bytes a sweep's buckets hold, all at the population's size, before
# the population is shared among them instead (``capacity``): every small or medium model of the
# field at the usual populations (64-128-32 on digits: ~0.3 MB a member, 3,000 slots).
DEMAND_STATE_BYTES = 2**30
# Platforms whose buckets share the population evenly instead (``capacity``).
SHARED_BUCKETS = frozenset({"cpu"})
# Device memory a bucket's parking lot (paused members) starts with at most (``parking_rows``); it
# grows past it only when more members are paused at once.
PARKING_BYTES = 256 * 2**20


def member_keys(config: SweepConfig, trial: int, replicate: int) -> dict[str, np.ndarray]:
    """The PRNG keys of one member of ``trial``; with common random numbers, replicate r of every
    trial shares one data order."""
    keys = pop_lib.trial_keys(config.seed, trial, replicate)
    if config.crn:
        keys = {**keys, "data_key": pop_lib.shared_data_key(config.seed, replicate)}
    return keys


def capacity(config: SweepConfig, mesh: jax.sharding.Mesh, features: int,
             whole: bool | None = None) -> int:
    """Slots per bucket (whole replicate groups, a multiple of the mesh's devices).

    On an accelerator the whole population, so that a job never waits for a slot while the
    population has room, whichever buckets the searcher's jobs fall in (a chunk computes only a
    bucket's busy groups, at most the population's members train, and a launch-bound step costs
    the same for any number of slots); where every bucket's slots would hold more than
    ``DEMAND_STATE_BYTES`` of parameters and moments, as many as fit, and never fewer than the
    population shared evenly by the space's buckets (``share``). On a CPU that share: a CPU
    device computes its busy groups one after another, so a chunk's time follows its members
    whatever a bucket holds, and larger buckets only gather a sparse bucket's few members into
    fewer, larger groups on fewer cores (bench/RESULTS.md, 2026-12-07 c: 3-50 % slower).
    ``whole`` forces one rule (True: the population's, False: the share).

    A function of the sweep's settings, data shape and platform: a resumed sweep keeps the
    layout its checkpoint names (``driver_state``).
    """
    from jaxae import memory

    if whole is None:
        whole = mesh.devices.flat[0].platform not in SHARED_BUCKETS
    if not whole:
        return sharding_lib.round_up(share(config), mesh)
    held = memory.most_buckets(config) * memory.member_bytes(config, features)
    fits = DEMAND_STATE_BYTES // max(held, 1)
    most = config.repeats * math.ceil(min(config.population, fits) / config.repeats)
    return sharding_lib.round_up(max(share(config), most), mesh)


def parking_rows(config: SweepConfig, spec: pop_lib.TrainSpec, slots: int, devices: int) -> int:
    """Parking rows per device that a bucket of ``slots`` slots starts with where the sweep's
    scheduler pauses trials: as many as members can be paused at once (every trial's), within
    ``PARKING_BYTES``, and at least the bucket's slots. Each growth copies the lot and compiles
    another placement program, which a sweep then pays for at most a few times instead of at
    every doubling."""
    fit = PARKING_BYTES // max(grouping.state_bytes(spec), 1)
    return -(-min(most_parked(config), max(slots, fit)) // devices)


def most_parked(config: SweepConfig) -> int:
    """Parking rows one device of a bucket ever needs: every member of every trial paused on it."""
    return config.trials * config.repeats


def share(config: SweepConfig) -> int:
    """The population shared evenly by the space's buckets, in whole replicate groups."""
    members = max(config.repeats, math.ceil(config.population / count_buckets(config)))
    return config.repeats * math.ceil(members / config.repeats)


def group(config: SweepConfig, spec: pop_lib.TrainSpec, slots: int,
          mesh: jax.sharding.Mesh) -> int:
    """Slots per group of a bucket's program with ``slots`` slots (``population.run_chunk``):
    of each device's share when the mesh's devices each run their own, else of them all; on an
    accelerator about the population's even share among the space's buckets at the fewest
    (``grouping.group_size``'s ``least``). The driver's and a retrained member's."""
    least = share(config)
    if mesh.size == 1 or jax.process_count() > 1:
        return grouping.group_size(spec, slots, least=least)
    return grouping.group_size(spec, slots // mesh.size, per_device=True,
                               least=-(-least // mesh.size))


@functools.lru_cache(maxsize=256)
def bucket_json(key: tuple) -> str:
    """A bucket's values by name, as the store's ``bucket`` column and sweep.json hold them."""
    return json.dumps(dict(zip(hparams.BUCKET_NAMES, key, strict=True)), sort_keys=True)


def step_flops(spec: pop_lib.TrainSpec) -> float:
    """Model FLOPs of one member's training step: the matmuls, forward and backward."""
    m = spec.model
    code = m.latent_dim * (2 if m.variational else 1)
    widths = [m.features] + [m.hidden] * m.depth
    encoder = sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True)) + m.hidden * code
    decoder = m.latent_dim * m.hidden + sum(
        a * b for a, b in zip(widths[1:][::-1], widths[:-1][::-1], strict=True))
    return 6.0 * spec.batch_size * (encoder + decoder)


@dataclasses.dataclass
class Bucket:
    """One compiled program and its slots.

    The host keeps each slot's small arrays (hyperparameters, keys, target, trial, step) and sends
    them with each chunk's placements (``population.place``); parameters never leave the device.
    Paused members wait in ``parked``, a population of parking rows on the device.
    """

    key: tuple  # values of hparams.BUCKET_NAMES
    spec: pop_lib.TrainSpec
    pop: pop_lib.Population
    owner: list[tuple[int, int] | None]  # (trial, replicate) in each slot, None when free
    hparams: hparams.SlotHParams  # leaves [slots] float32 (numpy), the slots' hyperparameters
    keys: dict[str, np.ndarray]  # init_key / data_key / eval_key -> [slots, 2] uint32
    target: np.ndarray  # [slots] int32
    trial: np.ndarray  # [slots] int32, -1 when free
    step: np.ndarray  # [slots] int32, as of the last chunk
    diverged: np.ndarray  # [slots] bool, as of the last chunk
    parked: pop_lib.Population | None = None
    free_rows: list[int] = dataclasses.field(default_factory=list)
    # The next place call: start / park into row / restore from row, per slot.
    new: np.ndarray | None = None
    park: np.ndarray | None = None
    restore: np.ndarray | None = None
    share: np.ndarray | None = None  # [devices * migrate] rows handed to other devices
    fetch: np.ndarray | None = None  # [slots] index of the handed row the slot continues
    dirty: bool = False
    releasing: list[int] = dataclasses.field(default_factory=list)  # rows restored by the plan
    # Wall time compiling its programs (``Driver._compile``; None: not yet) and of its first
    # chunk, compilation included.
    compile_s: float | None = None
    first_chunk_s: float | None = None
    # Devices the slots (and parking rows) are sharded over, each holding a contiguous share.
    # A member parks in a row of its slot's device and continues in a slot of its row's device.
    devices: int = 1
    # Slots per group of the program (``population.run_chunk``): a chunk computes whole groups,
    # those with a busy slot, so new members go where they open no new group.
    group: int = 1
    # Paused members each device may hand to another per placement call (``placement.Plan``'s
    # ``share``; 0: none move, as with one device).
    migrate: int = 0

    def __post_init__(self) -> None:
        self._clear_plan()

    @property
    def rows(self) -> int:
        return 0 if self.parked is None else int(self.parked.step.shape[0])

    def slot_device(self, slot: int) -> int:
        return slot // (len(self.owner) // self.devices)

    @property
    def rows_per_device(self) -> int:
        return self.rows // self.devices

    def row_device(self, row: int) -> int:
        return row // self.rows_per_device

    def take_row(self, device: int) -> int | None:
        """A free parking row of ``device`` (now taken), or None."""
        per_device = self.rows_per_device  # once, not per row (hundreds in a large sweep)
        for i, row in enumerate(self.free_rows):
            if row // per_device == device:
                return self.free_rows.pop(i)
        return None

    def _clear_plan(self) -> None:
        n = len(self.owner)
        self.new = np.zeros(n, bool)
        self.park = np.full(n, -1, np.int32)
        self.restore = np.full(n, -1, np.int32)
        self.share = np.full(self.devices * self.migrate, -1, np.int32)
        self.fetch = np.full(n, -1, np.int32)
        self.dirty = False

    def share_row(self, row: int) -> int | None:
        """Queues parking row ``row`` to be handed to another device in the next placement call;
        returns its index in the call's gathered rows, or None when its device hands over as
        many as it may already."""
        device = self.row_device(row)
        mine = self._shares(device)
        free = np.flatnonzero(mine < 0)
        if free.size == 0:
            return None
        mine[free[0]] = row % self.rows_per_device
        return device * self.migrate + int(free[0])

    def continue_from(self, row: int, slot: int, across: bool) -> None:
        """Queues ``slot`` to continue the member parked in ``row`` in the next placement call:
        restored from it on its own device, or handed over (``share_row``: the caller checked
        ``shares_left``) when ``across`` devices; the row is free again after the call."""
        if across:
            self.fetch[slot] = self.share_row(row)
        else:
            self.restore[slot] = row
        self.releasing.append(row)

    def _shares(self, device: int) -> np.ndarray:
        """``device``'s part of ``share`` (a view): the rows it hands over in the next call."""
        return self.share[device * self.migrate: (device + 1) * self.migrate]

    def shares_left(self, device: int) -> int:
        """How many more parked members ``device`` may hand over in the next placement call."""
        return int((self._shares(device) < 0).sum())

    def _occupancy(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """[slots] whether each slot holds a member, [groups] members per group, [devices]
        groups each device runs."""
        occupied = np.array([o is not None for o in self.owner])
        per_group = occupied.reshape(-1, self.group).sum(axis=1)
        group_device = np.arange(per_group.size) * self.group // (len(self.owner) // self.devices)
        return occupied, per_group, np.bincount(group_device[per_group > 0],
                                                minlength=self.devices)

    def relocate(self, src: int, dst: int) -> bool:
        """Queues the member in slot ``src`` (settled: not placed by the pending plan) to continue
        in free slot ``dst`` after the next placement call: parked into a free row of its
        device, then restored from it, or handed over when ``dst`` is on another device. The
        copy is exact, so the member's numbers do not change. False, and nothing queued, when
        its device has no free row or may hand over no more members in this call."""
        device = self.slot_device(src)
        across = self.slot_device(dst) != device
        if across and self.shares_left(device) == 0:
            return False
        row = self.take_row(device)
        if row is None:
            return False
        self.park[src] = row
        self.continue_from(row, dst, across)
        for arr in (self.target, self.trial, self.step, self.diverged,
                    *self.keys.values(), *jax.tree.leaves(self.hparams)):
            arr[dst] = arr[src]
        self.owner[dst], self.owner[src] = self.owner[src], None
        self.trial[src] = -1
        self.dirty = True
        return True

    def repack(self) -> list[tuple[int, int]]:
        """Empties sparse groups of the device that runs the most, one at a time, while that
        shortens the chunk (devices work side by side) or saves a group: a group's settled
        members move into free slots of occupied groups, or all together into an empty group of
        the device running the fewest when that one would still run fewer. Members finish at
        different steps, so without this a thinning tail keeps one or two members in many
        groups. Returns the ``(src, dst)`` moves queued (``relocate``)."""
        moves: list[tuple[int, int]] = []
        while step := self._repack_group():
            moves += step
        return moves

    def _repack_group(self) -> list[tuple[int, int]]:
        """``repack``'s one step: the moves that empty one group, queued; [] when none helps."""
        occupied, per_group, groups_on = self._occupancy()
        busiest, lightest = int(np.argmax(groups_on)), int(np.argmin(groups_on))
        fewest_groups = -(-int(occupied.sum()) // self.group)
        target = -(-fewest_groups // self.devices)  # groups on the busiest device, packed
        per_device = len(self.owner) // self.devices
        first = busiest * per_device // self.group
        groups = [g for g in range(first, first + per_device // self.group) if per_group[g]]
        per_device_rows = self.rows_per_device
        rows = sum(r // per_device_rows == busiest for r in self.free_rows)
        settled = self.settled()
        for g in sorted(groups, key=lambda g: (per_group[g], g)):
            members = np.flatnonzero(occupied[g * self.group: (g + 1) * self.group])
            members += g * self.group
            if not settled[members].all() or members.size > rows:
                continue
            free = [s for s in self.free_slots() if s // self.group != g]
            joins = [s for s in free if per_group[s // self.group]]
            if len(joins) >= members.size:
                dst = joins[: members.size]
            elif groups_on[busiest] > target and groups_on[lightest] + 1 < groups_on[busiest]:
                dst = [s for s in free if self.slot_device(s) == lightest][: members.size]
            else:
                continue
            across = sum(self.slot_device(d) != busiest for d in dst)
            if len(dst) < members.size or across > self.shares_left(busiest):
                continue
            moves = list(zip(members.tolist(), dst, strict=True))
            for src, to in moves:
                if not self.relocate(src, to):  # rows and hand-overs were counted above
                    raise RuntimeError(f"slot {src} could not move to {to}")
            return moves
        return []

    def settled(self) -> np.ndarray:
        """[slots] bool: slots whose member trains on and that the pending plan leaves alone
        (``relocate``'s sources)."""
        return (self.active() & np.array([o is not None for o in self.owner]) & ~self.new
                & (self.park < 0) & (self.restore < 0) & (self.fetch < 0))

    def groups_on(self, device: int) -> int:
        """How many groups ``device`` runs (those holding a member)."""
        return int(self._occupancy()[2][device])

    def opens_group(self, slot: int) -> bool:
        """Whether a member in free ``slot`` makes its group, empty so far, compute."""
        return bool(self._occupancy()[1][slot // self.group] == 0)

    def free_slots(self, device: int | None = None) -> list[int]:
        """The free slots (of ``device``, or all), in the order new members should take them:
        first those of the fullest groups that are already occupied (they add no computation),
        then those of empty groups on the devices that run the fewest groups (devices work side
        by side, so the busiest one sets the chunk's time)."""
        occupied, per_group, groups_on = self._occupancy()
        per_device = len(self.owner) // self.devices
        free = np.flatnonzero(~occupied)
        if device is not None:
            free = free[free // per_device == device]
        filled = per_group[free // self.group]
        order = np.lexsort((free, groups_on[free // per_device], -filled, filled == 0))
        return free[order].tolist()

    def groups_to_run(self, lists: int) -> np.ndarray:
        """int32 [slots // group]: the groups with a busy slot, as ``lists`` equal shares (one per
        device when each device runs its own slots, else one), each share its groups' local
        indices in order, then -1 (``population.run_chunk``'s ``groups``)."""
        busy = self.active().reshape(lists, -1, self.group).any(axis=2)
        out = np.full(busy.shape, -1, np.int32)
        for d, row in enumerate(busy):
            ids = np.flatnonzero(row)
            out[d, : ids.size] = ids
        return out.reshape(-1)

    def active(self) -> np.ndarray:
        """[slots] bool: the slots the next chunk trains."""
        return (self.trial >= 0) & (self.step < self.target) & ~self.diverged

    def plan(self) -> placement.Plan:
        """The pending placements, parking rows counted from the first row of each device."""
        per_device = max(self.rows_per_device, 1)
        local = lambda r: np.where(r >= 0, r % per_device, -1).astype(np.int32)  # noqa: E731
        return placement.Plan(self.new, local(self.park), local(self.restore), self.hparams,
                              self.keys["init_key"], self.keys["data_key"], self.keys["eval_key"],
                              self.target, self.trial,
                              *((self.share, self.fetch) if self.migrate else ()))
