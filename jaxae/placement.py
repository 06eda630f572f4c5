"""Placement: which member each slot of a population holds, without recompiling.

``create`` gives an empty population; ``place`` applies a ``Plan`` (start, park, restore, and the
host's per-slot arrays) in one program whose arguments always have the full slot shape, so
changing a slot's trial or hyperparameters never recompiles; ``assign`` starts members in slots
through it; ``check_fits`` refuses hyperparameters a program cannot train. The trainer itself
(``member_step``, ``train_chunk``, ``evaluate``) is ``jaxae.population``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from jaxae import hparams as hparams_lib
from jaxae import optimizers
from jaxae.models import init_params, init_stats, make_masks
from jaxae.population import TRACES, Population, TrainSpec
from jaxae.sharding import AXIS, to_host

# The most slots a placement parks, restores or starts side by side on a CPU (``place_block``).
CPU_PLACE_BLOCK = 8


def init_member(spec: TrainSpec, init_key: jax.Array, hp: hparams_lib.ModelHParams
                ) -> tuple[dict, Any]:
    """One member's fresh parameters and optimizer state (no slot axis)."""
    masks = make_masks(spec.model, hp.hidden, hp.latent_dim, hp.activation)
    params = init_params(spec.model, init_key, masks)
    return params, optimizers.init(spec.optimizer, params)


class Plan(NamedTuple):
    """One call's placements for every slot of a population (``place``); leaves are [slots].

    The host keeps the authoritative copy of each slot's hyperparameters, keys, target and trial
    (small arrays) and sends them whole: the device never reads them back.
    """

    new: jax.Array  # bool: the slot starts its trial from scratch (init from init_key, hparams)
    park: jax.Array  # int32: parking row that first saves the slot's member; -1: none
    restore: jax.Array  # int32: parking row whose member the slot continues; -1: none
    hparams: hparams_lib.SlotHParams  # leaves float32, as Population.hparams
    init_key: jax.Array  # [slots, 2] uint32
    data_key: jax.Array  # [slots, 2] uint32
    eval_key: jax.Array  # [slots, 2] uint32
    target: jax.Array  # int32
    trial: jax.Array  # int32, -1 when empty
    # Moving paused members between devices (only with ``place``'s ``mesh``): each device's share
    # of ``share`` [devices * K] names K of its parking rows (counted from its first row; -1:
    # none) whose members every device receives, and ``fetch`` [slots] picks one of those
    # devices * K members (device d's k-th at d * K + k; -1: none) for the slot to continue.
    share: jax.Array | None = None
    fetch: jax.Array | None = None

    def pack(self) -> Packed:
        """The plan (numpy leaves) as three arrays, ``place``'s argument: a placement call
        sends three arrays to the devices instead of one per leaf (~30, each a transfer per
        device)."""
        slots = len(self.new)
        keys = [np.asarray(k, np.uint32).view(np.int32) for k in
                (self.init_key, self.data_key, self.eval_key)]
        fetch = np.full(slots, -1, np.int32) if self.fetch is None else self.fetch
        ints = np.column_stack([np.asarray(a, np.int32) for a in (
            self.new, self.park, self.restore, self.target, self.trial, fetch)] + keys)
        floats = np.column_stack([np.asarray(leaf, np.float32).reshape(slots)
                                  for leaf in jax.tree.leaves(self.hparams)])
        return Packed(floats, ints, self.share)


class Packed(NamedTuple):
    """A ``Plan`` in three arrays (``Plan.pack``; ``unpack`` inside the program)."""

    floats: jax.Array  # float32 [slots, hyperparameters], SlotHParams' leaves in tree order
    ints: jax.Array  # int32 [slots, 12]: new, park, restore, target, trial, fetch, 3 keys
    share: jax.Array | None = None

    def unpack(self, like: hparams_lib.SlotHParams) -> Plan:
        """The ``Plan``, hyperparameters structured like ``like``."""
        i = self.ints
        key = lambda k: jax.lax.bitcast_convert_type(i[:, 6 + 2 * k: 8 + 2 * k],  # noqa: E731
                                                     jnp.uint32)
        hp = jax.tree.unflatten(jax.tree.structure(like),
                                [self.floats[:, j] for j in range(self.floats.shape[1])])
        return Plan(i[:, 0] != 0, i[:, 1], i[:, 2], hp, key(0), key(1), key(2), i[:, 3], i[:, 4],
                    self.share, None if self.share is None else i[:, 5])


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("mesh",),
                   donate_argnums=(1, 2))
def place(spec: TrainSpec, pop: Population, parked: Population | None, plan: Packed,
          mesh: Mesh | None = None) -> tuple[Population, Population | None]:
    """Applies ``plan`` (``Plan.pack``'s) in one program: park, restore, start, then the host's
    slot arrays.

    ``parked`` is a population whose rows hold paused members (the driver's parking lot, on the
    device: pausing and continuing a trial moves no parameters through the host). Parking comes
    first, so a slot whose trial pauses can take a new member in the same call. With ``mesh``
    (slots and rows sharded over its devices) each device places its own share: ``plan.park`` and
    ``plan.restore`` then name rows of the slot's own device, counted from its first row, and no
    parameter crosses devices except the few members ``plan.share`` / ``plan.fetch`` move (one
    all-gather of those rows, only in a call that moves any), so a paused member can continue on
    the device with room.
    """
    TRACES["place"] += 1
    local = functools.partial(_place_local, spec)
    if mesh is not None and mesh.size > 1:
        shard = PartitionSpec(AXIS)
        local = jax.shard_map(local, mesh=mesh, in_specs=(shard, shard, shard),
                              out_specs=(shard, shard))
    return local(pop, parked, plan)


def _place_local(spec: TrainSpec, pop: Population, parked: Population | None, packed: Packed
                 ) -> tuple[Population, Population | None]:
    plan = packed.unpack(pop.hparams)
    if parked is not None:
        rows = parked.step.shape[0]

        def park(start: jax.Array, block: int, q: Population) -> Population:
            dest = _take(jnp.where(plan.park >= 0, plan.park, rows), start, block)  # rows: dropped
            return jax.tree.map(lambda a, b: a.at[dest].set(_take(b, start, block), mode="drop"),
                                q, pop)

        def restore(start: jax.Array, block: int, p: Population) -> Population:
            src = _take(jnp.clip(plan.restore, 0, rows - 1), start, block)
            return _put(p, start, _select(_take(plan.restore >= 0, start, block),
                                          jax.tree.map(lambda a: a[src], parked),
                                          _take(p, start, block)))

        parked = _by_block(plan.park >= 0, park, parked)
        pop = _by_block(plan.restore >= 0, restore, pop)
        if plan.share is not None and plan.share.shape[0] > 0:
            pop = _fetch(parked, plan, pop)

    def start(start: jax.Array, block: int, p: Population) -> Population:
        fresh = jax.vmap(functools.partial(init_member, spec))(
            _take(plan.init_key, start, block), _take(plan.hparams.model, start, block))
        mine = _take(p, start, block)
        fresh = mine.replace(params=fresh[0], opt_state=fresh[1],
                             stats=_fresh_stats(spec, block), step=jnp.zeros_like(mine.step),
                             diverged=jnp.zeros_like(mine.diverged))
        return _put(p, start, _select(_take(plan.new, start, block), fresh, mine))

    pop = _by_block(plan.new, start, pop)
    pop = pop.replace(hparams=plan.hparams, init_key=plan.init_key, data_key=plan.data_key,
                      eval_key=plan.eval_key, target=plan.target, trial=plan.trial)
    return pop, parked


def place_block(slots: int) -> int:
    """Slots ``place`` parks, restores or starts side by side: on a CPU, blocks of at most
    ``CPU_PLACE_BLOCK`` (a divisor of ``slots``), of which only those with work compute;
    elsewhere all slots at once (one launch)."""
    limit = CPU_PLACE_BLOCK if jax.devices()[0].platform == "cpu" else slots
    return max(d for d in range(1, min(limit, slots) + 1) if slots % d == 0)


def _by_block(mask: jax.Array, update: Callable, state: Any) -> Any:
    """``update(start, block, state)`` for each block of ``place_block`` slots that holds a
    True of ``mask`` [slots], in order (the others cost nothing, so a placement costs what its
    members need, not what the population holds); ``state`` unchanged when none does.
    ``update`` reads and writes only its block's slots: a member's numbers are the same in
    any block."""
    slots = mask.shape[0]
    block = place_block(slots)
    if block == slots:  # one block (an accelerator's): a branch, not a loop of one iteration
        return jax.lax.cond(jnp.any(mask), lambda s: update(0, block, s), lambda s: s, state)
    touched = jnp.any(mask.reshape(slots // block, block), axis=1)
    (order,) = jnp.nonzero(touched, size=touched.shape[0], fill_value=0)
    return jax.lax.fori_loop(0, jnp.sum(touched),
                             lambda i, s: update(order[i] * block, block, s), state)


def _take(tree: Any, start: jax.Array, block: int) -> Any:
    """Slots ``[start, start + block)`` of ``tree``'s [slots, ...] leaves."""
    return jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, start, block), tree)


def _put(tree: Any, start: jax.Array, part: Any) -> Any:
    """``tree`` with slots ``[start, start + len(part))`` replaced by ``part``'s."""
    return jax.tree.map(lambda a, b: jax.lax.dynamic_update_slice_in_dim(a, b, start, 0),
                        tree, part)


def _fetch(parked: Population, plan: Plan, pop: Population) -> Population:
    """Inside ``shard_map``: every device's shared rows gathered on every device, and each slot
    that ``plan.fetch`` names takes its member. The gather runs only in a call that moves a member
    on some device (a predicate all devices agree on)."""
    rows = parked.step.shape[0]
    moving = jax.lax.psum(jnp.any(plan.fetch >= 0).astype(jnp.int32), AXIS) > 0

    def move(p: Population) -> Population:
        mine = jax.tree.map(lambda a: a[jnp.clip(plan.share, 0, rows - 1)], parked)
        pool = jax.tree.map(lambda a: jax.lax.all_gather(a, AXIS, tiled=True), mine)
        j = jnp.clip(plan.fetch, 0, pool.step.shape[0] - 1)
        return _select(plan.fetch >= 0, jax.tree.map(lambda a: a[j], pool), p)

    return jax.lax.cond(moving, move, lambda p: p, pop)


def _select(mask: jax.Array, a: Any, b: Any) -> Any:
    """Per slot, ``a`` where ``mask`` [slots] else ``b`` (trees of [slots, ...] leaves)."""
    return jax.tree.map(
        lambda x, y: jnp.where(mask.reshape((-1,) + (1,) * (x.ndim - 1)), x, y), a, b)


def create(spec: TrainSpec, num_slots: int) -> Population:
    """An empty population of ``num_slots`` slots (no trial, nothing to train)."""
    default = hparams_lib.defaults(spec.model.kind)
    sizes = {"hidden": spec.model.hidden, "latent_dim": spec.model.latent_dim}
    hp = jax.tree.map(jnp.asarray, hparams_lib.slot_hparams([{**default, **sizes}] * num_slots,
                                                            [1.0] * num_slots))
    keys = jnp.zeros((num_slots, 2), jnp.uint32)
    # Empty slots never train, so zeros of the right shapes do.
    params, opt_state = jax.tree.map(lambda s: jnp.zeros((num_slots, *s.shape), s.dtype),
                                     _member_shapes(spec))
    return Population(
        params=params,
        opt_state=opt_state,
        stats=_fresh_stats(spec, num_slots),
        hparams=hp,
        # Distinct buffers: the population is donated leaf by leaf.
        init_key=keys,
        data_key=jnp.zeros_like(keys),
        eval_key=jnp.zeros_like(keys),
        step=jnp.zeros((num_slots,), jnp.int32),
        target=jnp.zeros((num_slots,), jnp.int32),
        diverged=jnp.zeros((num_slots,), bool),
        trial=jnp.full((num_slots,), -1, jnp.int32),
    )


@functools.cache
def _member_shapes(spec: TrainSpec) -> tuple[Any, Any]:
    """One member's parameter and optimizer-state shapes (``jax.ShapeDtypeStruct`` leaves):
    traced once per program (eval_shape compiles nothing, but tracing costs ~30 ms)."""
    default = hparams_lib.defaults(spec.model.kind)
    sizes = {"hidden": spec.model.hidden, "latent_dim": spec.model.latent_dim}
    hp = jax.tree.map(lambda a: jnp.asarray(a[0]),
                      hparams_lib.slot_hparams([{**default, **sizes}], [1.0]))
    return jax.eval_shape(functools.partial(init_member, spec),
                          jax.ShapeDtypeStruct((2,), jnp.uint32), hp.model)


def _fresh_stats(spec: TrainSpec, num_slots: int) -> dict:
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (num_slots, *a.shape)),
                        init_stats(spec.model))


@dataclasses.dataclass(frozen=True)
class Member:
    """What ``assign`` needs to start one trial in a slot."""

    trial: int
    config: Mapping[str, Any]  # a full configuration (hparams.resolve / hparams.complete)
    target: int  # train until this many steps
    keys: Mapping[str, np.ndarray]  # trial_keys(...), possibly with a shared data_key
    # The sweep's maximum budget, the learning-rate schedule's horizon (None: ``target``).
    horizon: int | None = None


def assign(spec: TrainSpec, pop: Population, slots: Sequence[int], members: Sequence[Member]
           ) -> Population:
    """Starts ``members`` from scratch in ``slots``; other slots are untouched. Never recompiles:
    it is one ``place`` call, whose arguments have the full slot shape whatever ``len(slots)``."""
    if len(slots) != len(members):
        raise ValueError("one slot per member")
    if not slots:
        return pop
    new = np.zeros(pop.size, bool)
    new[list(slots)] = True
    host = to_host(
        {
            "hparams": pop.hparams,
            "init_key": pop.init_key,
            "data_key": pop.data_key,
            "eval_key": pop.eval_key,
            "target": pop.target,
            "trial": pop.trial,
        }
    )
    fresh = jax.tree.map(np.array, host)
    hparams_lib.set_rows(fresh["hparams"], slots, hparams_lib.slot_hparams(
        [m.config for m in members],
        [m.target if m.horizon is None else m.horizon for m in members]))
    for slot, m in zip(slots, members, strict=True):
        for name in ("init_key", "data_key", "eval_key"):
            fresh[name][slot] = m.keys[name]
        fresh["target"][slot] = m.target
        fresh["trial"][slot] = m.trial
    check_fits(spec, fresh["hparams"], slots)
    none = np.full(pop.size, -1, np.int32)
    plan = Plan(new, none, none, fresh["hparams"], fresh["init_key"], fresh["data_key"],
                fresh["eval_key"], fresh["target"], fresh["trial"])
    # Placed like the population's own slot arrays: a differently placed argument is a jit cache
    # miss, i.e. a second compilation of the same program.
    pop, _ = place(spec, pop, None, jax.device_put(plan.pack(), pop.step.sharding))
    return pop


def check_fits(spec: TrainSpec, hp: hparams_lib.SlotHParams, slots: Sequence[int]) -> None:
    """Refuses hyperparameters ``hp`` ([slots] leaves) that ``spec``'s program cannot train in
    ``slots``: sizes above its padded maximum, dropout in a program built without it."""
    model = hp.model
    for name, cap in (("hidden", spec.model.hidden), ("latent_dim", spec.model.latent_dim)):
        if np.any(np.asarray(getattr(model, name))[list(slots)] > cap):
            raise ValueError(f"{name} exceeds the padded maximum {cap} of this population")
    if not spec.model.dropout and np.any(np.asarray(model.dropout)[list(slots)] > 0):
        raise ValueError("dropout > 0 in a program built without dropout (ModelSpec.dropout)")


def set_targets(pop: Population, slots: Sequence[int], targets: Sequence[int]) -> Population:
    """Lets trials already in ``slots`` train on, up to ``targets`` steps in total."""
    target = to_host(pop.target).copy()
    target[list(slots)] = targets
    return pop.replace(target=jax.device_put(target, pop.target.sharding))
