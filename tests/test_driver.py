"""The driver's program specs: what each bucket's compiled program is built with."""

import pytest

from jaxae import config as config_lib
from jaxae import hparams
from jaxae.buckets import train_spec


def bucket_of(config):
    values = {**hparams.defaults(config.model), **{k: v for k, v in config.space.items()
                                                  if not isinstance(v, dict)}}
    return tuple(values[name] for name in hparams.BUCKET_NAMES)


@pytest.mark.parametrize(("space", "clips"), [
    ({}, False),                                                         # grad_clip unnamed: 0
    ({"grad_clip": 0.0}, False),                                         # fixed off
    ({"grad_clip": 1.0}, True),                                          # fixed on
    ({"grad_clip": {"dist": "float", "low": 0.1, "high": 10.0, "log": True}}, True),
])
def test_the_gradient_norm_pass_is_compiled_only_where_a_trial_can_clip(space, clips):
    config = config_lib.build({"searcher": "random", "space": space})
    spec = train_spec(config, 64, bucket_of(config))
    assert spec.clip_gradients is clips


def test_the_padded_shape_is_the_largest_the_space_allows():
    config = config_lib.build({"space": {
        "hidden": {"dist": "int", "low": 8, "high": 48},
        "latent_dim": {"dist": "int", "low": 2, "high": 12, "log": True}}})
    spec = train_spec(config, 64, bucket_of(config))
    assert (spec.model.hidden, spec.model.latent_dim, spec.model.features) == (48, 12, 64)


# -- the loop, through a fake scheduler ----------------------------------------------------------

import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxae import buckets as buckets_lib  # noqa: E402
from jaxae import data as data_lib  # noqa: E402
from jaxae import driver as driver_lib  # noqa: E402
from jaxae import memory, placement  # noqa: E402
from jaxae import population as pop_lib  # noqa: E402
from searchers import Job  # noqa: E402


@pytest.mark.parametrize("seed", range(5))
def test_chunk_length_maximises_member_steps_per_unit_of_time(seed):
    rng = np.random.default_rng(seed)
    remaining = rng.integers(1, 120, size=rng.integers(1, 20))
    longest, overhead = 50, float(rng.uniform(0, 30))
    n = driver_lib.chunk_length(remaining, longest, overhead)
    # Brute force over every length 1..longest: none trains more per unit of time.
    rate = lambda k: sum(min(r, k) for r in remaining) / (overhead + k)  # noqa: E731
    assert 1 <= n <= longest
    assert rate(n) >= max(rate(k) for k in range(1, longest + 1)) * (1 - 1e-9)


def test_chunks_end_where_a_job_ends_when_the_host_is_cheap():
    assert driver_lib.chunk_length(np.array([14, 14, 40]), 50, 0.1) == 14
    assert driver_lib.chunk_length(np.array([3, 200, 200]), 50, 0.1) == 3
    # A costly chunk (an accelerator's host round trip): the short job's slot idles instead.
    assert driver_lib.chunk_length(np.array([3, 200, 200]), 50, 100.0) == 50
    assert driver_lib.chunk_length(np.array([]), 50, 1.0) == 50


class FakeScheduler:
    """Hands out a fixed list of jobs, one per ask while the population has room; a job whose
    budget is below ``final[trial]`` pauses its trial, which comes back with its next job."""

    def __init__(self, jobs, final):
        self.jobs, self.final = list(jobs), final
        self.told, self.statuses = [], {}

    @property
    def finished(self):
        return not self.jobs and all(s != "running" for s in self.statuses.values())

    def ask(self, n):
        out = []
        while self.jobs and len(out) < n:
            job = self.jobs[0]
            if self.statuses.get(job.trial_id) == "running":
                break  # its earlier job is still out
            self.jobs.pop(0)
            self.statuses[job.trial_id] = "running"
            out.append(job)
        return out

    def tell(self, trial, budget, loss):
        self.told.append((trial, budget, loss))
        self.statuses[trial] = "completed" if budget >= self.final[trial] else "paused"

    def status(self, trial):
        return self.statuses[trial]

    def state_dict(self):
        return {}


def _small_config(searcher="asha", **space):
    return config_lib.build({
        "searcher": searcher, "population": 4, "trials": 4, "steps": 30, "chunk": 10,
        "space": {"hidden": 16, "latent_dim": 4, "batch_size": 16,
                  "learning_rate": {"dist": "float", "low": 1e-3, "high": 1e-2, "log": True},
                  **space}})


def _straight(config, dataset, job_config, trial, steps, examples=None):
    """``trial`` trained alone, in one program call, straight to ``steps``: its final val loss
    (on the split's first ``examples``; None: all)."""
    resolved = hparams.resolve(config.model, {**config_lib.fixed(config), **job_config})
    spec = train_spec(config, dataset.features, tuple(resolved[n] for n in hparams.BUCKET_NAMES))
    member = placement.Member(trial, resolved, steps, buckets_lib.member_keys(config, trial, 0),
                              horizon=config.steps)
    pop = placement.assign(spec, placement.create(spec, 1), [0], [member])
    pop, _ = pop_lib.train_chunk(spec, pop, jax.numpy.asarray(dataset.train.x), steps)
    val = jax.numpy.asarray(dataset.val.x[:examples])
    return float(pop_lib.evaluate(spec, pop, val)["val_loss"][0])


def test_curve_points_use_the_first_examples_and_every_result_the_whole_split():
    dataset = data_lib.load("digits")  # 270 validation examples
    runs = {}
    for examples in (0, 100):  # 0: all of them
        config = config_lib.build({**_small_config().to_dict(), "trials": 6, "min_steps": 3,
                                   "curve_examples": examples})
        driver = driver_lib.Driver(config, dataset)
        events, curves = [], []
        while not driver.done:
            e, c = driver.step()
            events += e
            curves += c
        runs[examples] = (config, driver, events, curves)
    (_, whole, events, curves), (config, part, events_100, curves_100) = runs[0], runs[100]
    # The same jobs and results, to the bit: only the curves' validation points differ.
    assert whole.scheduler.state_dict() == part.scheduler.state_dict()
    assert [(e.trial, e.status, e.val_loss, e.steps) for e in events] == [
        (e.trial, e.status, e.val_loss, e.steps) for e in events_100]
    assert [c[:4] for c in curves] == [c[:4] for c in curves_100]
    assert any(a[4] != b[4] for a, b in zip(curves, curves_100, strict=True))
    # Each point is the trial's loss on the split's first 100 examples (a solo run's; at one
    # step, so the solo runs share one program).
    configs = {e.trial: e.config for e in events_100}
    step = max(c[2] for c in curves_100 if c[2] < config.steps)
    points = [(t, v) for t, _, s, _, v in curves_100 if s == step][:3]
    assert points
    for trial, val in points:
        expected = _straight(config, dataset, configs[trial], trial, step, examples=100)
        np.testing.assert_allclose(val, expected, rtol=2e-6)
    # A job's result (told, stored) is the whole split's, as a solo run measures it.
    budget = max(e.budget for e in events_100 if e.told)
    told = [(e.trial, e.val_loss) for e in events_100 if e.told and e.budget == budget]
    assert budget > config.min_steps and told
    for trial, loss in told[:2]:
        np.testing.assert_allclose(loss, _straight(config, dataset, configs[trial], trial,
                                                   budget), rtol=2e-6)


@pytest.mark.parametrize("parking_bytes", [buckets_lib.PARKING_BYTES, 1])
def test_a_paused_trial_continues_from_its_parking_row_as_if_never_paused(parking_bytes,
                                                                          monkeypatch):
    # 1 byte: the lot starts with a row per slot and grows (copying its rows) when it must.
    monkeypatch.setattr(buckets_lib, "PARKING_BYTES", parking_bytes)
    config = _small_config()
    dataset = data_lib.load("digits")
    configs = [{"learning_rate": lr} for lr in (2e-3, 5e-3, 8e-3)]
    # Trial 0 pauses at 10 steps and comes back for 30 while trials 1 and 2 (new) run.
    jobs = [Job(0, configs[0], 10), Job(1, configs[1], 30), Job(2, configs[2], 20),
            Job(0, configs[0], 30)]
    driver = driver_lib.Driver(config, dataset)
    driver.scheduler = FakeScheduler(jobs, final={0: 30, 1: 30, 2: 20})
    events = []
    while not driver.done:
        events += driver.step()[0]
    told = {(t, b): loss for t, b, loss in driver.scheduler.told}
    assert set(told) == {(0, 10), (0, 30), (1, 30), (2, 20)}
    for (trial, budget), loss in told.items():
        expected = _straight(config, dataset, configs[trial], trial, budget)
        np.testing.assert_allclose(loss, expected, rtol=2e-6)
    assert [e.status for e in events if e.trial == 0] == ["running", "running", "running",
                                                          "completed"]
    assert not driver.paused and all(b.free_rows for b in driver.buckets.values())
    rows = {b.rows for b in driver.buckets.values()}
    assert rows == ({driver.capacity} if parking_bytes == 1 else  # one row per slot
                    {driver_lib.sharding_lib.round_up(config.trials, driver.mesh)})  # per trial


def test_the_memory_estimate_bounds_the_parking_lots_of_a_real_sweep(monkeypatch):
    # 1 byte: each lot starts with a row per slot and doubles when a device lacks a row.
    monkeypatch.setattr(buckets_lib, "PARKING_BYTES", 1)
    config = config_lib.build({**_small_config().to_dict(), "trials": 16, "min_steps": 5})
    dataset = data_lib.load("digits")
    driver = driver_lib.Driver(config, dataset)
    most, peak_paused = 0, 0
    while not driver.done:
        driver.step()
        lots = [b.parked for b in driver.buckets.values() if b.parked is not None]
        most = max(most, sum(leaf.nbytes for lot in lots for leaf in jax.tree.leaves(lot)))
        peak_paused = max(peak_paused, len(driver.paused))
        for b in driver.buckets.values():  # a lot never outgrows every trial's members
            assert b.rows_per_device <= buckets_lib.most_parked(config)
    assert peak_paused > driver.capacity  # the lot grew
    e = memory.estimate(config, dataset.features, len(dataset.train), len(dataset.val),
                        driver.capacity, driver.mesh.size)
    assert 0 < most <= e.parking
    assert e.device == e.state + e.parking + e.activations + e.data
    # Schedulers that never pause hold no lot, and the estimate counts none.
    full = config_lib.build({**config.to_dict(), "searcher": "random"})
    assert memory.estimate(full, dataset.features, len(dataset.train), len(dataset.val),
                           driver.capacity, driver.mesh.size).parking == 0


def test_a_sweep_whose_paused_members_cannot_fit_is_refused_naming_them(monkeypatch):
    from jaxae.errors import UserError

    config = config_lib.build({**_small_config().to_dict(), "trials": 5000, "steps": 2000,
                               "space": {"hidden": 512, "latent_dim": 32}})
    full = config_lib.build({**config.to_dict(), "searcher": "random"})
    shape = (64, 1000, 200, 4)  # features, train, val, slots
    paused, plain = memory.estimate(config, *shape), memory.estimate(full, *shape)
    assert paused.parking > 10 * plain.state and plain.parking == 0
    # Host memory for the black-box sweep (and its checkpoints) but not for its paused members.
    need = memory._CHECKPOINT_COPIES * plain.state + plain.device + memory._RUNTIME
    monkeypatch.setattr(memory, "host_available", lambda: need + plain.parking + 2**20)
    memory.check(full, *shape, host_data=0)
    with pytest.raises(UserError, match=r"for paused members.*lower --population, --trials"):
        memory.check(config, *shape, host_data=0)


def test_the_parking_lot_grows_past_its_first_size_keeping_every_paused_member(monkeypatch):
    monkeypatch.setattr(buckets_lib, "PARKING_BYTES", 1)  # starts with a row per slot
    config = config_lib.build({**_small_config().to_dict(), "trials": 8})
    dataset = data_lib.load("digits")
    configs = [{"learning_rate": float(lr)} for lr in np.geomspace(1e-3, 1e-2, 8)]
    # Eight trials pause at 10 steps in 4 slots, then all continue to 20.
    jobs = [Job(t, configs[t], 10) for t in range(8)] + [Job(t, configs[t], 20)
                                                         for t in range(8)]
    driver = driver_lib.Driver(config, dataset)
    driver.scheduler = FakeScheduler(jobs, final=dict.fromkeys(range(8), 20))
    while not driver.done:
        driver.step()
    (bucket,) = driver.buckets.values()
    assert bucket.rows > driver.capacity  # it grew
    told = {(t, b): loss for t, b, loss in driver.scheduler.told}
    assert len(told) == 16
    for t in range(8):
        np.testing.assert_allclose(told[t, 20], _straight(config, dataset, configs[t], t, 20),
                                   rtol=2e-6)


def test_a_paused_member_moves_to_another_device_and_continues_exactly(monkeypatch):
    if jax.device_count() == 1:  # JAX fixes the device count at start-up: rerun on two
        env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
        test = f"{__file__}::test_a_paused_member_moves_to_another_device_and_continues_exactly"
        done = subprocess.run([sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-p",
                               "no:cacheprovider", test], env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout + done.stderr
        return
    config = config_lib.build({**_small_config().to_dict(), "steps": 120})
    dataset = data_lib.load("digits")
    configs = [{"learning_rate": float(lr)} for lr in np.geomspace(2e-3, 8e-3, 5)]
    # 4 slots, a group of 2 on each of 2 devices: trials 0, 1 on device 0, 2, 3 on device 1.
    # After 10 steps 0 pauses and 2 completes; new trial 4 takes 0's slot (device 0, beside 1),
    # so 0 continues in 2's slot, on the other device.
    budgets = {0: 10, 1: 120, 2: 10, 3: 120, 4: 120}
    jobs = [Job(t, configs[t], b) for t, b in budgets.items()] + [Job(0, configs[0], 30)]
    driver = driver_lib.Driver(config, dataset)
    assert driver.mesh.size == 2 and driver.capacity == 4
    driver.scheduler = FakeScheduler(jobs, final={**budgets, 0: 30})
    moves = []
    share_row = buckets_lib.Bucket.share_row
    monkeypatch.setattr(buckets_lib.Bucket, "share_row",
                        lambda self, row: moves.append(row) or share_row(self, row))
    while not driver.done:
        driver.step()
    assert len(moves) == 1  # trial 0 changed devices
    told = {(t, b): loss for t, b, loss in driver.scheduler.told}
    assert set(told) == {(0, 10), (0, 30), (1, 120), (2, 10), (3, 120), (4, 120)}
    for (trial, budget), loss in told.items():
        np.testing.assert_allclose(loss, _straight(config, dataset, configs[trial], trial, budget),
                                   rtol=2e-6)


@pytest.mark.parametrize("devices", [1, 2])
def test_running_members_leave_sparse_groups_and_continue_exactly(devices, monkeypatch):
    if jax.device_count() != devices:  # JAX fixes the device count at start-up: rerun
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
        test = (f"{__file__}::test_running_members_leave_sparse_groups_and_continue_exactly"
                f"[{devices}]")
        done = subprocess.run([sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-p",
                               "no:cacheprovider", test], env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout + done.stderr
        return
    monkeypatch.setattr(driver_lib.buckets_lib, "group", lambda config, spec, slots, mesh: 2)
    monkeypatch.setattr(driver_lib.Driver, "_overhead", lambda self, busy, to_run: 0.0)
    config = config_lib.build({**_small_config().to_dict(), "population": 8, "trials": 8,
                               "steps": 40})
    dataset = data_lib.load("digits")
    configs = [{"learning_rate": float(lr)} for lr in np.geomspace(2e-3, 8e-3, 8)]
    # Slots 0-7 in groups of 2 (on two devices: 0-3 and 4-7). After 10 steps only trials 1 and
    # 5 train on, one per group: trial 1 joins trial 5's group (across devices on two), so the
    # last 30 steps compute one group instead of two.
    budgets = {t: 40 if t in (1, 5) else 10 for t in range(8)}
    driver = driver_lib.Driver(config, dataset)
    assert driver.capacity == 8 and driver.mesh.size == devices
    driver.scheduler = FakeScheduler([Job(t, configs[t], b) for t, b in budgets.items()],
                                     final=budgets)
    while not driver.done:
        driver.step()
    (bucket,) = driver.buckets.values()
    assert driver.running == {} and driver.slot_steps == 8 * 10 + 2 * 30
    # On two devices the last 30 steps' one group leaves the other device idle: as slow as two.
    assert driver.critical_slot_steps == 8 * 10 + 2 * 30 * devices
    assert sorted(bucket.free_rows) == list(range(bucket.rows))  # every row handed back
    for trial, budget, loss in driver.scheduler.told:
        np.testing.assert_allclose(loss, _straight(config, dataset, configs[trial], trial, budget),
                                   rtol=2e-6)


def test_a_thinning_tail_computes_only_its_busy_groups_with_the_same_numbers():
    config = config_lib.build({**_small_config().to_dict(), "population": 64, "trials": 64})
    dataset = data_lib.load("digits")
    configs = [{"learning_rate": float(lr)} for lr in np.geomspace(1e-3, 1e-2, 3)]
    # Three trials, one of them long, in 64 slots: they share one group, the only one computed.
    jobs = [Job(t, configs[t], b) for t, b in zip(range(3), (10, 20, 30), strict=True)]
    driver = driver_lib.Driver(config, dataset)
    driver.scheduler = FakeScheduler(jobs, final={0: 10, 1: 20, 2: 30})
    while not driver.done:
        driver.step()
    (bucket,) = driver.buckets.values()
    assert bucket.group < 64 and driver.slot_steps == bucket.group * 30  # never the whole bucket
    for trial, budget, loss in driver.scheduler.told:
        np.testing.assert_allclose(loss, _straight(config, dataset, configs[trial], trial, budget),
                                   rtol=2e-6)


def test_only_the_listed_groups_train_and_the_rest_keep_their_state():
    config = _small_config("random")
    dataset = data_lib.load("digits")
    spec = train_spec(config, dataset.features, bucket_of(config))
    members = [placement.Member(t, hparams.resolve("ae", {"hidden": 16, "latent_dim": 4,
                                                          "batch_size": 16,
                                                          "learning_rate": 3e-3}),
                                20, pop_lib.trial_keys(0, t), horizon=30) for t in range(4)]
    x, val = jax.numpy.asarray(dataset.train.x), jax.numpy.asarray(dataset.val.x)
    start = placement.assign(spec, placement.create(spec, 4), range(4), members)
    before = jax.device_get(start)
    # Groups of two slots; only group 1 (slots 2, 3) runs, 12 steps in rounds of 5.
    pop, out = pop_lib.run_chunk(spec, start, x, val, np.array([1, -1], np.int32), 5, 3,
                                 np.int32(12), group=2)
    out = jax.device_get(out)
    np.testing.assert_array_equal(out["step"][:, :2], 0)
    assert np.isnan(out["val"][:, :2]).all() and np.isnan(out["train"][:, :2]).all()
    np.testing.assert_array_equal(out["step"][:, 2:], [[5, 5], [10, 10], [12, 12]])
    for a, b in zip(jax.tree.leaves(jax.device_get(pop.params)), jax.tree.leaves(before.params),
                    strict=True):
        np.testing.assert_array_equal(a[:2], b[:2])
    # The trained slots: as train_chunk alone, and evaluated as evaluate alone.
    alone = placement.assign(spec, placement.create(spec, 4), range(4), members)
    alone, _ = pop_lib.train_chunk(spec, alone, x, 12, group=2)
    want = jax.device_get(pop_lib.evaluate(spec, alone, val)["val_loss"])
    np.testing.assert_allclose(out["val"][2, 2:], want[2:], rtol=2e-6)
    # The sweep's form: the same results in one array (one transfer), exactly.
    again = placement.assign(spec, placement.create(spec, 4), range(4), members)
    _, packed = pop_lib.run_chunk_packed(spec, again, x, val, np.array([1, -1], np.int32), 5, 3,
                                         np.int32(12), group=2)
    unpacked = pop_lib.unpack_results(jax.device_get(packed))
    assert sorted(unpacked) == sorted(out)
    for name in out:
        assert unpacked[name].dtype == out[name].dtype
        np.testing.assert_array_equal(unpacked[name], out[name])


def test_curve_points_on_the_first_examples_and_a_stopped_groups_loss_on_all_of_them():
    config = _small_config("random")
    dataset = data_lib.load("digits")
    spec = train_spec(config, dataset.features, bucket_of(config))
    # Slot 2 stops at 7 steps (its group's loss on the whole split is its result); slot 3 and
    # the group of slots 4, 5 train on (no whole-split evaluation); slots 0, 1 do not run.
    targets = [20, 20, 7, 20, 20, 20]
    members = [placement.Member(t, hparams.resolve("ae", {"hidden": 16, "latent_dim": 4,
                                                          "batch_size": 16,
                                                          "learning_rate": 3e-3}),
                                targets[t], pop_lib.trial_keys(0, t), horizon=30)
               for t in range(6)]
    x, val = jax.numpy.asarray(dataset.train.x), jax.numpy.asarray(dataset.val.x)
    make = lambda: placement.assign(spec, placement.create(spec, 6), range(6), members)  # noqa: E731
    _, packed = pop_lib.run_chunk_packed(spec, make(), x, val, np.array([1, 2, -1], np.int32),
                                         5, 3, np.int32(12), group=2, curve=100)
    out = pop_lib.unpack_results(jax.device_get(packed))  # the sweep's form: one array
    # Solo runs of 5, 10 and 12 steps (one program: the step count is dynamic).
    alone = [pop_lib.train_chunk(spec, make(), x, 12, steps=np.int32(n), group=2)[0]
             for n in (5, 10, 12)]
    for r, pop in enumerate(alone):  # each round's point: the first 100 examples
        want = jax.device_get(pop_lib.evaluate(spec, pop, val[:100])["val_loss"])
        np.testing.assert_allclose(out["val"][r, 2:], want[2:], rtol=2e-6)
    whole = jax.device_get(pop_lib.evaluate(spec, alone[-1], val)["val_loss"])
    np.testing.assert_allclose(out["final"][2:4], whole[2:4], rtol=2e-6)
    assert np.isnan(out["final"][[0, 1, 4, 5]]).all()
    # A subset of all of the split (or more) is the split: the program without "final".
    assert pop_lib.curve_subset(len(dataset.val), len(dataset.val)) is None
    assert pop_lib.curve_subset(100, len(dataset.val)) == 100


def test_activations_are_a_per_slot_choice_with_each_activations_own_numbers():
    config = _small_config("random", activation={"dist": "choice", "options": ["relu", "tanh"]})
    dataset = data_lib.load("digits")
    spec = train_spec(config, dataset.features, bucket_of(config))
    assert spec.model.activation == ("relu", "tanh") and config_lib.count_buckets(config) == 1
    x, val = jax.numpy.asarray(dataset.train.x), jax.numpy.asarray(dataset.val.x)
    for t, act in enumerate(itertools.islice(itertools.cycle(["tanh", "relu"]), 4)):
        resolved = hparams.resolve("ae", {"hidden": 16, "latent_dim": 4, "batch_size": 16,
                                          "activation": act, "learning_rate": 3e-3})
        member = placement.Member(t, resolved, 20, pop_lib.trial_keys(0, t), horizon=30)
        both = placement.assign(spec, placement.create(spec, 4), [t], [member])
        both, _ = pop_lib.train_chunk(spec, both, x, 20)
        alone_spec = train_spec(config_lib.build({**config.to_dict(), "space": {
            **config.space, "activation": act}}), dataset.features, bucket_of(config))
        assert alone_spec.model.activation == act
        alone = placement.assign(alone_spec, placement.create(alone_spec, 1), [0], [member])
        alone, _ = pop_lib.train_chunk(alone_spec, alone, x, 20)
        got = pop_lib.evaluate(spec, both, val)["val_loss"][t]
        want = pop_lib.evaluate(alone_spec, alone, val)["val_loss"][0]
        np.testing.assert_allclose(got, want, rtol=2e-6)


def test_bucket_capacity_is_the_population_on_accelerators_and_an_even_share_on_cpus(
        monkeypatch):
    mesh = __import__("jaxae.sharding", fromlist=["slot_mesh"]).slot_mesh()
    two = config_lib.build({"population": 10, "repeats": 3, "space": {
        "depth": {"dist": "choice", "options": [1, 2]}}})
    # A CPU: 10 members over 2 buckets, 5 each, rounded up to whole groups of 3 replicates.
    assert mesh.devices.flat[0].platform == "cpu"
    assert buckets_lib.capacity(two, mesh, 64) == sharding_round(6, mesh)
    one = config_lib.build({"population": 7})
    assert buckets_lib.capacity(one, mesh, 64) == sharding_round(7, mesh)
    assert json.loads(buckets_lib.bucket_json(bucket_of(one))) == {
        n: hparams.defaults("ae")[n] for n in hparams.BUCKET_NAMES}
    # An accelerator's rule: each bucket holds the whole population (10, in groups of 3) ...
    monkeypatch.setattr(buckets_lib, "SHARED_BUCKETS", frozenset())
    assert buckets_lib.capacity(two, mesh, 64) == sharding_round(12, mesh)
    assert buckets_lib.capacity(one, mesh, 64) == sharding_round(7, mesh)
    # ... while both buckets' state stays under the cap: else as many as fit, at least the share.
    member = memory.member_bytes(two, 64)
    monkeypatch.setattr(buckets_lib, "DEMAND_STATE_BYTES", 2 * 9 * member)
    assert buckets_lib.capacity(two, mesh, 64) == sharding_round(9, mesh)
    monkeypatch.setattr(buckets_lib, "DEMAND_STATE_BYTES", 2 * member)
    assert buckets_lib.capacity(two, mesh, 64) == sharding_round(6, mesh)


def test_jobs_of_one_bucket_fill_the_population_while_others_are_empty():
    space = {"depth": {"dist": "choice", "options": [1, 2]}, "hidden": 16, "latent_dim": 4}
    config = config_lib.build({"searcher": "random", "population": 6, "trials": 12, "steps": 20,
                               "seed": 1, "space": space})
    dataset = data_lib.load("digits")
    running = {}
    for whole in (False, True):
        driver = driver_lib.Driver(config, dataset)
        driver.capacity = buckets_lib.capacity(config, driver.mesh, dataset.features, whole)
        driver._fill()
        running[whole] = len(driver.running)
        jobs = [r.job for r in driver.running.values()] + driver.queue
        depths = [job.config["depth"] for job in jobs]
        # More in one bucket than the population shared out evenly gives it (3, on a mesh).
        assert max(depths.count(1), depths.count(2)) > sharding_round(3, driver.mesh)
        while not driver.done:
            driver.step()
        assert driver.member_steps == 12 * 20
    assert running[True] == 6 > running[False]  # with the even share, jobs wait


def sharding_round(n, mesh):
    return -(-n // mesh.size) * mesh.size


def _bucket_with(owned, group, devices):
    n = len(owned)
    return buckets_lib.Bucket(
        ("k",), None, None, [(i, 0) if o else None for i, o in enumerate(owned)], hparams={},
        keys={}, target=np.full(n, 10, np.int32), trial=np.where(owned, 0, -1).astype(np.int32),
        step=np.zeros(n, np.int32), diverged=np.zeros(n, bool), devices=devices, group=group)


def test_new_members_fill_occupied_groups_before_opening_one_on_the_idler_device():
    # 2 devices x 2 groups of 4. Device 0: group 0 has 3 members, group 1 is empty; device 1:
    # group 2 has 1 member, group 3 is empty.
    owned = [1, 1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
    bucket = _bucket_with(np.array(owned, bool), group=4, devices=2)
    free = bucket.free_slots()
    assert free[:4] == [3, 9, 10, 11]  # the fullest occupied group first, then the other
    # Then empty groups, both devices running one: the lowest slot first.
    assert free[4:] == [4, 5, 6, 7, 12, 13, 14, 15]
    assert bucket.free_slots(device=1)[:3] == [9, 10, 11]
    # Groups of 2, every occupied one full: device 0 runs two, device 1 one, so a new group
    # opens on device 1.
    owned = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0], bool)
    assert _bucket_with(owned, group=2, devices=2).free_slots()[:3] == [10, 11, 12]


def test_the_groups_to_run_are_each_devices_busy_groups_in_order():
    owned = np.array([0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1], bool)
    bucket = _bucket_with(owned, group=2, devices=2)
    np.testing.assert_array_equal(bucket.groups_to_run(2), [2, -1, -1, -1, 0, 3, -1, -1])
    np.testing.assert_array_equal(bucket.groups_to_run(1), [2, 4, 7, -1, -1, -1, -1, -1])
    bucket.step[5] = 10  # its job has ended: not busy
    np.testing.assert_array_equal(bucket.groups_to_run(2), [-1, -1, -1, -1, 0, 3, -1, -1])


def test_new_buckets_compile_side_by_side_before_their_first_chunk(monkeypatch):
    from jaxae import programs

    monkeypatch.setattr(programs, "_directory", lambda: None)  # traced here, not loaded
    config = config_lib.build({**_small_config("random").to_dict(), "population": 8,
                               "trials": 8})
    config = config_lib.build({**config.to_dict(), "space": {
        **config.to_dict()["space"], "depth": {"dist": "choice", "options": [1, 2]}}})
    driver = driver_lib.Driver(config, data_lib.load("digits"))
    before = {k: v for k, v in pop_lib.TRACES.items() if isinstance(k, tuple)}
    submitted = []
    submit = driver_lib.concurrent.futures.ThreadPoolExecutor.submit
    monkeypatch.setattr(driver_lib.concurrent.futures.ThreadPoolExecutor, "submit",
                        lambda self, fn: submitted.append(fn) or submit(self, fn))
    driver.step()
    assert len(driver.buckets) == 2
    assert len(submitted) == 4  # each bucket's placement and chunk programs, in one pool
    traced = {k: v - before.get(k, 0) for k, v in pop_lib.TRACES.items() if isinstance(k, tuple)}
    # The calls use the programs compiled ahead: none traced twice (an earlier test in this
    # process may have traced them already).
    assert all(n <= 1 for (name, _), n in traced.items() if name == "run_chunk")
    for bucket in driver.buckets.values():
        assert 0 < bucket.compile_s <= bucket.first_chunk_s
    driver.step()
    assert len(submitted) == 4  # compiled once
