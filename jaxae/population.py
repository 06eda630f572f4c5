"""The population trainer: many autoencoders trained by one jitted program.

Every leaf of a ``Population`` has the slot axis first. ``train_chunk`` trains all slots for K
steps in one call (``vmap`` over slots, ``lax.scan`` over steps); ``evaluate`` gives per-slot
validation metrics; ``run_chunk`` is a sweep's chunk of both. Putting trials into slots without
recompiling (their hyperparameters are array leaves, not Python constants) is
``jaxae.placement``.

A slot trains while ``step < target`` and it has not diverged. A step whose loss or new parameters
are not finite is discarded and the slot is frozen and flagged ``diverged``: nothing a slot computes
reaches another slot, so the others go on exactly as if it were not there.

Randomness comes from the trial, never the slot: a member's init key, data-order key and
evaluation key are derived from ``(sweep seed, trial id[, replicate])``.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization, struct
from jax.sharding import Mesh, PartitionSpec

from jaxae import hparams as hparams_lib
from jaxae import keys as keys_lib
from jaxae import optimizers
from jaxae.grouping import group_size
from jaxae.models import ModelSpec
from jaxae.objectives import make_metrics, make_objective
from jaxae.schedules import learning_rate_at
from jaxae.sharding import AXIS

# How many times each jitted program was traced (a trace precedes every compilation), by name and
# by (name, spec): tests use it to prove that assigning new hyperparameters does not recompile and
# that each bucket compiles once.
TRACES: collections.Counter = collections.Counter()

EVAL_BLOCK = 1024  # validation examples per block: bounds eval memory at [slots, block, hidden].
# Validation examples of a sweep's learning-curve points (``run_chunk``'s ``curve``): the first
# this many of the split (a random permutation, so a uniform subset). A job's result is always
# measured on the whole split.
CURVE_EXAMPLES = 1024


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """The static part of a population: one compiled program per distinct value (a bucket).

    Attributes:
        model: the model's shape and kind.
        optimizer: the optimizer family, one of ``hparams.OPTIMIZERS``.
        batch_size: training mini-batch size.
        clip_gradients: whether any slot may clip its gradient (``grad_clip`` > 0). When no slot
            can, the step skips the gradient's global norm, a pass over every gradient
            (bench/RESULTS.md, "GPU trainer"); the numbers are the same.
    """

    model: ModelSpec
    optimizer: str = "adam"
    batch_size: int = 64
    clip_gradients: bool = True


@struct.dataclass
class Population:
    """The state of every slot. Shapes are per leaf, slot axis first."""

    params: dict  # leaves [slots, ...]
    opt_state: Any  # leaves [slots, ...]
    # Batch-norm running statistics (models.init_stats), leaves [slots, hidden]; {} without.
    stats: dict
    # Leaves [slots] float32 (hparams.slot_hparams); a checkpoint holds them by name.
    hparams: hparams_lib.SlotHParams
    init_key: jax.Array  # [slots, 2] uint32
    data_key: jax.Array  # [slots, 2] uint32: batch order and step noise
    eval_key: jax.Array  # [slots, 2] uint32: VAE posterior samples in evaluation
    step: jax.Array  # [slots] int32, steps trained so far
    target: jax.Array  # [slots] int32, the slot trains while step < target
    diverged: jax.Array  # [slots] bool
    trial: jax.Array  # [slots] int32, the trial in the slot, -1 when empty

    @property
    def size(self) -> int:
        return int(self.step.shape[0])

    @property
    def active(self) -> jax.Array:
        """[slots] bool: the slots that the next step will train."""
        return (self.step < self.target) & ~self.diverged & (self.trial >= 0)


def _population_state(pop: Population) -> dict[str, Any]:
    state = {f.name: serialization.to_state_dict(getattr(pop, f.name))
             for f in dataclasses.fields(pop)}
    state["hparams"] = serialization.to_state_dict(hparams_lib.by_name(pop.hparams))
    return state


def _population_from_state(pop: Population, state: dict[str, Any]) -> Population:
    named = serialization.from_state_dict(hparams_lib.by_name(pop.hparams), state["hparams"],
                                          name="hparams")
    rest = {f.name: serialization.from_state_dict(getattr(pop, f.name), state[f.name],
                                                  name=f.name)
            for f in dataclasses.fields(pop) if f.name != "hparams"}
    return pop.replace(hparams=hparams_lib.from_names(named), **rest)


# A checkpoint (checkpoint.FORMAT 2) holds a population's hyperparameters as name -> [slots], the
# form they had before they were grouped: checkpoints written before still load.
serialization.register_serialization_state(Population, _population_state, _population_from_state,
                                           override=True)


def trial_keys(seed: int, trial: int, replicate: int = 0) -> dict[str, np.ndarray]:
    """The PRNG keys of one member, from ``(seed, trial, replicate)`` only (not slot, not size):
    ``fold_in(fold_in(fold_in(PRNGKey(seed), trial), replicate), i)`` for i = 0, 1, 2, computed
    on the host (``jaxae.keys``: no device program per trial)."""
    fold_in = keys_lib.fold_in if keys_lib.default_impl() else _jax_fold_in
    key = fold_in(fold_in(keys_lib.prng_key(seed), trial), replicate)
    return {"init_key": fold_in(key, 0), "data_key": fold_in(key, 1), "eval_key": fold_in(key, 2)}


def shared_data_key(seed: int, replicate: int) -> np.ndarray:
    """A data-order key shared by all members of one replicate index (common random numbers)."""
    # Trial ids are non-negative, so this stream can never coincide with a trial's.
    fold_in = keys_lib.fold_in if keys_lib.default_impl() else _jax_fold_in
    return fold_in(fold_in(fold_in(keys_lib.prng_key(seed), 2**32 - 1), replicate), 1)


def _jax_fold_in(key: np.ndarray, data: int) -> np.ndarray:
    return np.asarray(jax.random.fold_in(jnp.asarray(key), np.uint32(data)))


def draw_batch(spec: TrainSpec, num_examples: int, data_key: jax.Array, step: jax.Array
               ) -> tuple[jax.Array, jax.Array]:
    """The example indices [batch] and the noise key of one member's training step ``step``:
    a function of the data key and the step alone, so a chunk can draw all its steps at once."""
    k_batch, k_noise = jax.random.split(jax.random.fold_in(data_key, step))
    return jax.random.randint(k_batch, (spec.batch_size,), 0, num_examples), k_noise


def member_step(spec: TrainSpec, train_x: jax.Array, m: Population,
                draw: tuple[jax.Array, jax.Array] | None = None) -> tuple[Population, jax.Array]:
    """One training step of one member (no slot axis). Returns the new member and its loss (NaN
    when the member did not train). ``draw``: this step's ``draw_batch`` if already drawn."""
    objective = make_objective(spec.model)
    active = (m.step < m.target) & ~m.diverged & (m.trial >= 0)
    idx, k_noise = draw_batch(spec, train_x.shape[0], m.data_key, m.step) if draw is None else draw
    hp = m.hparams
    (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(
        m.params, train_x[idx], k_noise, hp.model, hp.penalty, m.stats
    )
    if spec.clip_gradients:
        # One reduction serves both the divergence check and global-norm clipping: finite loss
        # and gradients give finite updates, and parameters that still overflow make the next
        # loss non-finite, which freezes the slot there. (Checking the new parameters instead
        # costs a full extra pass over them every step.)
        g_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(g_norm)
        clip = hp.opt.grad_clip
        scale = jnp.where(g_norm > clip, clip / g_norm, 1.0)
    else:
        # Nothing clips, so no pass over the gradient for its norm: a non-finite gradient behind a
        # finite loss (rare) shows one step later as a non-finite loss, which freezes the slot.
        finite = jnp.isfinite(loss)
        scale = 1.0
    ok = active & finite
    # Zero where the slot does not train: the optimizer blends old and new state arithmetically.
    grads = jax.tree.map(lambda g: jnp.where(ok, g * scale, 0.0), grads)
    opt = hp.opt._replace(learning_rate=learning_rate_at(hp.opt.learning_rate, hp.schedule, m.step))
    params, opt_state = optimizers.update(spec.optimizer, grads, m.opt_state, m.params, opt, ok)
    m = m.replace(
        params=params,
        opt_state=opt_state,
        stats=jax.tree.map(lambda new, old: jnp.where(ok, new, old), aux["stats"], m.stats),
        step=m.step + ok.astype(jnp.int32),
        diverged=m.diverged | (active & ~finite),
    )
    return m, jnp.where(active, loss, jnp.nan)


@functools.partial(jax.jit, static_argnums=(0, 3), static_argnames=("mesh", "group"),
                   donate_argnums=(1,))
def train_chunk(
    spec: TrainSpec, pop: Population, train_x: jax.Array, num_steps: int, mesh: Mesh | None = None,
    steps: jax.Array | None = None, group: int | None = None,
) -> tuple[Population, jax.Array]:
    """Trains every slot for ``num_steps`` steps in one call.

    Args:
        spec: the static program settings.
        pop: the population; its buffers are donated (do not reuse the argument).
        train_x: training data [n, features], on device, shared by all slots.
        num_steps: the most steps in this chunk (static: one compilation per distinct value).
        mesh: when the slots are sharded over this mesh's ``"pop"`` axis, each device trains its
            own slots (``shard_map``), in cache-sized groups on CPU devices. Without it a sharded
            population is partitioned by XLA, ungrouped.
        steps: int32 scalar <= ``num_steps``: the steps this call really runs (a loop of that many
            iterations, so a shorter chunk costs only what it runs and compiles nothing new).
            None: ``num_steps``.
        group: slots trained side by side (per device), a divisor of their number; None:
            ``grouping.group_size``'s. A member's numbers depend on the size of its group (XLA
            batches the group's matmuls), not on which slots share it.

    Returns:
        The new population and the training losses [slots, num_steps] (NaN where a slot did not
        train at that step, and beyond ``steps``).
    """
    TRACES["train_chunk"] += 1
    TRACES["train_chunk", spec] += 1
    if mesh is not None and mesh.size > 1:
        local = functools.partial(_train_slots, spec, num_steps=num_steps, per_device=True,
                                  group=group)
        spmd = jax.shard_map(
            local, mesh=mesh, in_specs=(PartitionSpec(AXIS), PartitionSpec(), PartitionSpec()),
            out_specs=(PartitionSpec(AXIS), PartitionSpec(AXIS)))
        return spmd(pop, train_x, steps)
    return _train_slots(spec, pop, train_x, steps, num_steps=num_steps, group=group)


def _member_chunk(spec: TrainSpec, train_x: jax.Array, m: Population, num_steps: int,
                  steps: jax.Array | None = None) -> tuple[Population, jax.Array]:
    """One member (no slot axis) through a chunk of at most ``num_steps`` steps (``steps`` of
    them, a dynamic count; None: all): the new member and its losses [num_steps]."""
    # All the chunk's batches are drawn up front, in one vectorised call: a member takes at most
    # one step per iteration, so steps [step, step + num_steps) cover every one it can take.
    # (Drawn step by step, the PRNG's small kernels cost more than the matmuls.)
    first = m.step
    draws = jax.vmap(lambda s: draw_batch(spec, train_x.shape[0], m.data_key, first + s))(
        jnp.arange(num_steps))

    def step(c: Population, _):
        i = jnp.minimum(c.step - first, num_steps - 1)
        return member_step(spec, train_x, c, jax.tree.map(lambda a: a[i], draws))

    if steps is None:
        return jax.lax.scan(step, m, None, length=num_steps)

    # A loop of ``steps`` iterations (not batched: every slot runs the same count).
    def body(i, carry):
        c, losses = carry
        c, loss = step(c, None)
        return c, jax.lax.dynamic_update_index_in_dim(losses, loss, i, 0)

    # Derived from the member, so that inside shard_map the buffer varies over the slot axis like
    # the losses written into it (a while loop's carry must keep its type).
    losses = jnp.full((num_steps,), jnp.nan, jnp.float32) + jnp.zeros_like(first, jnp.float32)
    return jax.lax.fori_loop(0, steps, body, (m, losses))


def _train_slots(spec: TrainSpec, pop: Population, train_x: jax.Array,
                 steps: jax.Array | None = None, *, num_steps: int, per_device: bool = False,
                 group: int | None = None) -> tuple[Population, jax.Array]:
    member_chunk = functools.partial(_member_chunk, spec, train_x, num_steps=num_steps,
                                     steps=steps)
    slots = pop.size
    group = group_size(spec, slots, per_device=per_device) if group is None else group
    if group == slots:
        return jax.vmap(member_chunk)(pop)
    # Groups of slots one after another, each vmapped through all the chunk's steps: a group's
    # parameters and optimizer moments stay in cache for the whole chunk instead of streaming the
    # whole population's state from memory at every step.
    split = lambda a: a.reshape((slots // group, group, *a.shape[1:]))  # noqa: E731
    merge = lambda a: a.reshape((slots, *a.shape[2:]))  # noqa: E731
    pop, losses = jax.lax.map(jax.vmap(member_chunk), jax.tree.map(split, pop))
    return jax.tree.map(merge, pop), merge(losses)


@functools.partial(jax.jit, static_argnums=(0,))
def evaluate(spec: TrainSpec, pop: Population, x: jax.Array) -> dict[str, jax.Array]:
    """Mean validation metrics of every slot: ``{"recon": [slots], "val_loss": [slots]}``.

    The data is processed in blocks of ``EVAL_BLOCK`` examples so memory stays bounded on large
    validation sets. Non-finite results stay non-finite (the caller marks them diverged).
    """
    TRACES["evaluate"] += 1
    return jax.vmap(functools.partial(_evaluate_member, spec, _blocks(x)))(pop)


def _blocks(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``x`` [n, features] as ``EVAL_BLOCK``-sized blocks [blocks, block, features] and their
    example weights [blocks, block] (0 on the padding)."""
    n = x.shape[0]
    block = min(n, EVAL_BLOCK)
    num_blocks = -(-n // block)
    pad = num_blocks * block - n
    xb = jnp.pad(x, ((0, pad), (0, 0))).reshape(num_blocks, block, x.shape[1])
    weight = (jnp.arange(num_blocks * block) < n).astype(jnp.float32).reshape(num_blocks, block)
    return xb, weight


def _evaluate_member(spec: TrainSpec, blocks: tuple[jax.Array, jax.Array], m: Population
                     ) -> dict[str, jax.Array]:
    """One member's (no slot axis) mean validation metrics over ``_blocks``' data."""
    metrics_fn = make_metrics(spec.model)
    xb, weight = blocks

    def one_block(args):
        i, xi, wi = args
        out = metrics_fn(m.params, xi, jax.random.fold_in(m.eval_key, i), m.hparams.model,
                         m.stats)
        return {k: jnp.sum(v * wi) for k, v in out.items()}

    sums = jax.lax.map(one_block, (jnp.arange(xb.shape[0]), xb, weight))
    total = jnp.sum(weight)
    return {k: jnp.sum(v) / total for k, v in sums.items()}


@functools.partial(jax.jit, static_argnums=(0, 5, 6), static_argnames=("mesh", "group", "curve"),
                   donate_argnums=(1,))
def run_chunk(spec: TrainSpec, pop: Population, train_x: jax.Array, val_x: jax.Array,
              groups: jax.Array, length: int, rounds: int, steps: jax.Array,
              mesh: Mesh | None = None, group: int | None = None, curve: int | None = None
              ) -> tuple[Population, dict[str, jax.Array]]:
    """A sweep's chunk: up to ``rounds`` rounds of ``length`` steps, each followed by an
    evaluation, in one program call (``steps`` of them in all, a dynamic count: the last round
    may be shorter and rounds past ``steps`` do not run).

    One call of several rounds keeps learning curves at every ``length`` steps while the host's
    fixed cost of a call (dispatch, reading results back) is paid once per ``rounds`` rounds.
    Only the groups named in ``groups`` compute: capacity follows demand (a thinning
    multi-fidelity tail pays for its busy groups only) with one program for any number of them,
    and each member still computes in a group of the usual size, so its numbers never depend on
    how many groups ran.

    Args:
        spec: the static program settings.
        pop: the population; its buffers are donated.
        train_x, val_x: training and validation data, on device.
        groups: int32 [slots // group], sharded like the slots: each device's share lists the
            device's groups to train (local indices, group ``g`` is its slots
            ``[g * group, (g + 1) * group)``), in order, then -1 for the rest.
        length: steps per round (static), the sweep's curve interval.
        rounds: the most rounds per call (static).
        steps: int32 scalar, the steps this call trains, at most ``length * rounds``.
        mesh: when the slots are sharded over this mesh's ``"pop"`` axis, each device runs its
            own groups (``shard_map``).
        group: slots per group on each device, a divisor of the device's slots; None:
            ``grouping.group_size``'s.
        curve: validation examples of each round's evaluation (the first ``curve`` of
            ``val_x``); None, or at least ``val_x``'s: all of them. When fewer, a group any of
            whose members' job ends in the chunk (its target reached, or diverged) is also
            evaluated on the whole split once, after its last round: a job's result is the same
            whatever ``curve`` is, and curve points cost ``curve`` examples, not the split.

    Returns:
        The new population and, per round and slot, ``{"train": [rounds, slots] mean training
        loss (NaN: none), "val": [rounds, slots], "step": [rounds, slots], "diverged": [rounds,
        slots]}``, and with a ``curve`` below the split's size ``"final": [slots]``, the whole
        split's loss where the group was evaluated on it (NaN elsewhere); slots of groups that
        did not run, and rounds past the last one run, keep NaN losses and the slot's step and
        divergence as the chunk found them. Every member's numbers are those of ``train_chunk``
        alone.
    """
    TRACES["run_chunk"] += 1
    TRACES["run_chunk", spec] += 1
    curve = curve_subset(curve, val_x.shape[0])
    local = functools.partial(_run_groups, spec, length=length, rounds=rounds, group=group,
                              per_device=mesh is not None and mesh.size > 1, curve=curve)
    if mesh is not None and mesh.size > 1:
        per_round = PartitionSpec(None, AXIS)
        outs = {name: per_round for name in ("train", "val", "step", "diverged")}
        if curve is not None:
            outs["final"] = PartitionSpec(AXIS)
        local = jax.shard_map(
            local, mesh=mesh,
            in_specs=(PartitionSpec(AXIS), PartitionSpec(), PartitionSpec(), PartitionSpec(AXIS),
                      PartitionSpec()),
            out_specs=(PartitionSpec(AXIS), outs))
    return local(pop, train_x, val_x, groups, steps)


def curve_subset(curve: int | None, n_val: int) -> int | None:
    """Validation examples of a curve point: ``curve`` where it is below the split's size
    ``n_val``, else None (all of it)."""
    if curve is None or curve >= n_val:
        return None
    if curve < 1:
        raise ValueError(f"curve must be a positive number of examples, got {curve}")
    return curve


@functools.partial(jax.jit, static_argnums=(0, 5, 6), static_argnames=("mesh", "group", "curve"),
                   donate_argnums=(1,))
def run_chunk_packed(spec: TrainSpec, pop: Population, train_x: jax.Array, val_x: jax.Array,
                     groups: jax.Array, length: int, rounds: int, steps: jax.Array,
                     mesh: Mesh | None = None, group: int | None = None, curve: int | None = None
                     ) -> tuple[Population, jax.Array]:
    """``run_chunk`` whose results come as one float32 array [4, rounds, slots] (train, val,
    steps, divergence; the last two bit for bit as int32 in float32's bits), and a fifth row of
    ``final`` (the same in every round) where it has one: a sweep reads a chunk back in one
    device-to-host transfer (``unpack_results``)."""
    pop, out = run_chunk(spec, pop, train_x, val_x, groups, length, rounds, steps, mesh=mesh,
                         group=group, curve=curve)
    as_float = lambda a: jax.lax.bitcast_convert_type(a.astype(jnp.int32), jnp.float32)  # noqa: E731
    rows = [out["train"], out["val"], as_float(out["step"]), as_float(out["diverged"])]
    if "final" in out:
        rows.append(jnp.broadcast_to(out["final"], out["val"].shape))
    return pop, jnp.stack(rows)


def unpack_results(packed: np.ndarray) -> dict[str, np.ndarray]:
    """``run_chunk``'s results from ``run_chunk_packed``'s array, on the host."""
    packed = np.asarray(packed, np.float32)
    ints = packed[2:4].view(np.int32)
    out = {"train": packed[0], "val": packed[1], "step": ints[0], "diverged": ints[1] != 0}
    if len(packed) > 4:
        out["final"] = packed[4, 0]
    return out


def _run_groups(spec: TrainSpec, pop: Population, train_x: jax.Array, val_x: jax.Array,
                groups: jax.Array, steps: jax.Array, *, length: int, rounds: int,
                group: int | None, per_device: bool, curve: int | None = None
                ) -> tuple[Population, dict[str, jax.Array]]:
    """``run_chunk`` on one device's slots: a loop over the listed groups, each through every
    round (its state stays in cache for the whole chunk)."""
    slots = pop.size
    group = group_size(spec, slots, per_device=per_device) if group is None else group
    num_groups = slots // group
    split = lambda a: a.reshape((num_groups, group, *a.shape[1:]))  # noqa: E731
    by_group = jax.tree.map(split, pop)
    blocks = _blocks(val_x)
    # Each round's curve point on the split's first ``curve`` examples (all: None).
    curve_blocks = blocks if curve is None else _blocks(val_x[:curve])
    as_rounds = lambda a: jnp.broadcast_to(split(a), (rounds, num_groups, group))  # noqa: E731
    # NaN derived from the slots' steps, so that inside shard_map it varies over the slot axis
    # like the losses written into it (a while loop's carry must keep its type).
    nan = jnp.full((rounds, num_groups, group), jnp.nan, jnp.float32) + jnp.zeros_like(
        as_rounds(pop.step), jnp.float32)
    out = {"train": nan, "val": nan, "step": as_rounds(pop.step),
           "diverged": as_rounds(pop.diverged)}
    if curve is not None:
        out["final"] = nan[0]
    num_rounds = (steps + length - 1) // length

    def one_group(i, carry):
        by_group, out = carry
        g = groups[i]
        members = jax.tree.map(lambda a: a[g], by_group)

        def one_round(r, carry):
            members, out = carry
            n = jnp.clip(steps - r * length, 0, length).astype(jnp.int32)
            members, losses = jax.vmap(
                functools.partial(_member_chunk, spec, train_x, num_steps=length, steps=n)
            )(members)
            finite = jnp.isfinite(losses)
            count = finite.sum(axis=1)
            train = jnp.where(finite, losses, 0.0).sum(axis=1) / jnp.where(count > 0, count,
                                                                            jnp.nan)
            val = jax.vmap(functools.partial(_evaluate_member, spec, curve_blocks))(members)
            new = {"train": train, "val": val["val_loss"], "step": members.step,
                   "diverged": members.diverged}
            return members, {k: out[k].at[r, g].set(new[k]) if k != "final" else out[k]
                             for k in out}

        members, out = jax.lax.fori_loop(0, num_rounds, one_round, (members, out))
        if curve is not None:
            # A stopped member's parameters no longer change, so this is its loss where it
            # stopped, as a round's evaluation on the whole split would have given it.
            stopped = (members.trial >= 0) & ((members.step >= members.target)
                                              | members.diverged)
            skipped = jnp.zeros_like(members.step, jnp.float32) + jnp.nan
            final = jax.lax.cond(
                stopped.any(),
                lambda m: jax.vmap(functools.partial(_evaluate_member, spec, blocks))(m)[
                    "val_loss"],
                lambda m: skipped, members)
            out = {**out, "final": out["final"].at[g].set(final)}
        return jax.tree.map(lambda a, b: a.at[g].set(b), by_group, members), out

    count = jnp.sum(groups >= 0)
    by_group, out = jax.lax.fori_loop(0, count, one_group, (by_group, out))
    merge = lambda a: a.reshape((slots, *a.shape[2:]))  # noqa: E731
    return (jax.tree.map(merge, by_group),
            {k: v.reshape((slots,) if k == "final" else (rounds, slots)) for k, v in out.items()})
