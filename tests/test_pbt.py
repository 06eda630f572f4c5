"""Population-based training: the policy (searchers.pbt), the on-device exploit and the sweep loop
(jaxae.pbt), the lineage table, determinism and resume."""

import json
import math
import os
import signal
import sqlite3
import subprocess
import time
import tomllib
from pathlib import Path

import jax
import numpy as np
import pytest
from test_sweep import live_rows, rows, sweep_command

from jaxae import config as config_lib
from jaxae import lineage as lineage_lib
from jaxae import pbt as pbt_lib
from jaxae import placement, report, runner
from jaxae import population as P
from jaxae import signals as signals_lib
from jaxae import sweep as sweep_lib
from jaxae.data import load
from jaxae.models import ModelSpec
from jaxae.store import TrialStore
from searchers import PBT, Choice, Float, Int
from searchers.pbt import quantile_size

SPACE = {"learning_rate": Float(1e-4, 1e-1, log=True), "beta": Float(0.0, 4.0),
         "latent_dim": Int(2, 64, log=True), "activation": Choice(["relu", "tanh"])}

# One bucket (activation fixed), tiny shapes: exploit every chunk, three times in all.
SMALL = """
[sweep]
model = "ae"
searcher = "pbt"
population = 6
trials = 6
steps = 40
chunk = 10
{extra}
[space]
learning_rate = {{dist = "float", low = 1e-3, high = 3e-2, log = true}}
weight_decay = {{dist = "float", low = 1e-6, high = 1e-2, log = true}}
latent_dim = {{dist = "int", low = 2, high = 8}}
hidden = 16
activation = "tanh"
batch_size = 32
"""


def settings(extra="pbt_ready = 10"):
    doc = tomllib.loads(SMALL.format(extra=extra))
    return {**doc["sweep"], "space": doc["space"]}


# The trials' started_at / finished_at are never selected: wall-clock times differ between runs.
ALL_TABLES = ("SELECT trial_id, status, params, val_loss, steps FROM trials ORDER BY 1",
              "SELECT * FROM curves ORDER BY 1, 2, 3", "SELECT * FROM rungs ORDER BY 1, 2",
              "SELECT * FROM replicates ORDER BY 1, 2", "SELECT * FROM lineage ORDER BY 1, 2")


# -- the policy ---------------------------------------------------------------------------------

@pytest.mark.parametrize("members, expected", [(1, 0), (2, 1), (3, 1), (4, 1), (5, 2), (8, 2),
                                               (16, 4)])
def test_quantile_size_is_ray_tunes(members, expected):
    # Ray Tune: ceil(n * 0.25), at most floor(n / 2).
    assert quantile_size(members, 0.25) == expected


def test_bottom_members_copy_top_members_and_explore_within_the_range():
    pbt = PBT(SPACE, population_size=8, seed=3, resample_probability=0.0)
    for _ in range(5):
        configs = pbt.ask()
        losses = [float(i * 7 % 8) for i in range(8)]  # member i's rank: its loss
        pbt.tell(configs, losses)
        ranked = sorted(range(8), key=lambda i: losses[i])
        assert sorted(d.dst for d in pbt.decisions) == sorted(ranked[-2:])
        for d in pbt.decisions:
            assert d.src in ranked[:2] and d.before == configs[d.dst]
            assert d.src_loss == losses[d.src] and d.dst_loss == losses[d.dst]
            src = configs[d.src]
            # No resampling: each number scaled by 0.8 or 1.2 then clipped; choices kept.
            for name in ("learning_rate", "beta"):
                dim = SPACE[name]
                options = {min(max(src[name] * f, dim.low), dim.high) for f in (0.8, 1.2)}
                assert any(math.isclose(d.after[name], v) for v in options), (name, d)
            assert d.after["latent_dim"] in {min(max(round(src["latent_dim"] * f), 2), 64)
                                             for f in (0.8, 1.2)}
            assert d.after["activation"] == src["activation"]
            assert all(SPACE[k].contains(v) for k, v in d.after.items())
        after = pbt.ask()
        changed = {i for i in range(8) if after[i] != configs[i]}
        assert changed <= {d.dst for d in pbt.decisions}
        assert all(after[d.dst] == d.after for d in pbt.decisions)


def test_resampling_draws_from_the_prior_and_keep_and_group_by_never_change():
    pbt = PBT(SPACE, population_size=12, seed=0, resample_probability=1.0,
              keep=["latent_dim"], group_by=["activation"])
    configs = pbt.ask()
    pbt.tell(configs, list(range(12)))
    assert pbt.decisions
    resampled = 0
    for d in pbt.decisions:
        src = configs[d.src]
        assert src["activation"] == configs[d.dst]["activation"]  # only within a group
        assert d.after["activation"] == src["activation"]
        assert d.after["latent_dim"] == src["latent_dim"]  # inherited, never perturbed
        resampled += d.after["learning_rate"] not in (src["learning_rate"] * 0.8,
                                                      src["learning_rate"] * 1.2)
        assert all(SPACE[k].contains(v) for k, v in d.after.items())
    assert resampled == len(pbt.decisions)
    # Each group of n members has quantile_size(n) exploiting members.
    sizes = {a: sum(c["activation"] == a for c in configs) for a in ("relu", "tanh")}
    assert len(pbt.decisions) == sum(quantile_size(n, 0.25) for n in sizes.values())


def test_the_first_population_is_the_one_random_search_draws():
    from searchers import RandomSearch

    assert PBT(SPACE, population_size=5, seed=7).ask() == RandomSearch(SPACE, 5, seed=7).ask()


def test_failed_members_rank_last_and_a_wrong_tell_is_refused():
    pbt = PBT(SPACE, population_size=4, seed=0)
    configs = pbt.ask()
    pbt.tell(configs, [1.0, math.nan, 0.5, 2.0])
    assert [(d.dst, d.src, d.dst_loss) for d in pbt.decisions] == [(1, 2, math.inf)]
    with pytest.raises(ValueError, match="current config"):
        pbt.tell(configs, [1.0] * 4)  # configs of before the decisions


@pytest.mark.parametrize("kwargs, needle", [
    ({"fraction": 0.6}, "fraction"), ({"fraction": 0.0}, "fraction"),
    ({"resample_probability": 1.5}, "resample_probability"), ({"factors": []}, "factors"),
    ({"keep": ["nope"]}, "keep"), ({"population_size": 0}, "population_size")])
def test_bad_policy_settings_are_refused(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        PBT(SPACE, **kwargs)


# -- the on-device exploit ----------------------------------------------------------------------

def test_exploit_equals_a_numpy_copy_of_the_source_members():
    spec = P.TrainSpec(ModelSpec("ae", features=64, hidden=16, latent_dim=4, norm="batch"),
                       "adam", 16)
    # Every slot's state distinct (random values stand in for trained ones; no training needed).
    rng = np.random.default_rng(0)
    pop = placement.create(spec, 4)
    fill = lambda a: jax.numpy.asarray(rng.normal(size=a.shape).astype(a.dtype))  # noqa: E731
    pop = pop.replace(params=jax.tree.map(fill, pop.params),
                      opt_state=jax.tree.map(fill, pop.opt_state),
                      stats=jax.tree.map(fill, pop.stats),
                      step=jax.numpy.asarray([3, 5, 7, 9], jax.numpy.int32),
                      diverged=jax.numpy.asarray([False, True, False, False]))
    before = jax.tree.map(np.array, pop)  # copies: exploit donates the population's buffers
    src = np.array([2, 1, 2, 0], np.int32)
    after = jax.tree.map(np.asarray, pbt_lib.exploit(pop, jax.numpy.asarray(src)))
    for field in ("params", "opt_state", "stats", "step", "diverged"):
        expected = jax.tree.map(lambda a: a[src], getattr(before, field))
        jax.tree.map(np.testing.assert_array_equal, getattr(after, field), expected)
    assert jax.tree.leaves(before.stats)  # batch statistics really were copied
    for field in ("hparams", "init_key", "data_key", "eval_key", "target", "trial"):
        jax.tree.map(np.testing.assert_array_equal, getattr(after, field),
                     getattr(before, field))


# -- the sweep loop -----------------------------------------------------------------------------

def make_driver(extra="pbt_ready = 10"):
    config = config_lib.build(settings(extra))
    return pbt_lib.PBTDriver(config, load("digits", seed=config.seed))


def test_exploited_members_hold_their_parents_weights_and_new_hparams(tmp_path):
    d = make_driver()
    store = TrialStore(tmp_path / "trials.db")
    decisions = []
    space = config_lib.searched(d.config)
    while not d.done:
        events, curves = d.step()
        d.record(store, events, curves)
        if any(row["parent"] is not None for row in d.lineage):
            decisions.append((d.chunk * d.config.chunk, list(d.policy.decisions)))
            (bucket,) = d.buckets.values()
            host = jax.tree.map(np.asarray, bucket.pop)
            for dec in d.policy.decisions:
                dst, src = d.where[dec.dst][1], d.where[dec.src][1]
                for leaf in jax.tree.leaves(host.params):
                    np.testing.assert_array_equal(leaf[dst], leaf[src])
                after = d.configs[dec.dst]
                assert all(space[k].contains(after[k]) for k in space)
                opt = host.hparams.opt
                assert opt.learning_rate[dst] == np.float32(after["learning_rate"])
                assert opt.weight_decay[dst] == np.float32(after["weight_decay"])
                assert after["latent_dim"] == d.configs[dec.src]["latent_dim"]
    assert [step for step, _ in decisions] == [10, 20, 30]  # every ready step, not at the end
    lineage = store.lineage()
    assert [r for r in lineage if r["step"] == 0] and all(
        r["parent"] is None and r["params_before"] is None for r in lineage if r["step"] == 0)
    made = [(r["step"], r["trial_id"], r["parent"], r["params_after"]["learning_rate"],
             r["parent_loss"], r["val_loss"]) for r in lineage if r["step"] > 0]
    expected = sorted((step, x.dst, x.src, x.after["learning_rate"], x.src_loss, x.dst_loss)
                      for step, xs in decisions for x in xs)
    assert sorted(made) == expected
    trials = store.trials()
    assert len(trials) == 6 and {t["status"] for t in trials} == {"completed"}
    assert all(t["steps"] == 40 for t in trials)
    # A trial's stored params are its last configuration.
    assert [t["params"] for t in trials] == d.configs
    store.close()


def test_a_diverged_member_is_revived_by_exploiting(tmp_path):
    d = make_driver()
    (bucket,) = d.buckets.values()
    # Member 0 diverges at once: an absurd learning rate in its slot.
    hp = bucket.pop.hparams
    lr = hp.opt.learning_rate.at[d.where[0][1]].set(1e30)
    bucket.pop = bucket.pop.replace(hparams=hp._replace(opt=hp.opt._replace(learning_rate=lr)))
    d.step()
    assert [x.dst for x in d.policy.decisions if x.dst == 0] == [0]
    host = jax.tree.map(np.asarray, bucket.pop)
    assert not host.diverged[d.where[0][1]] and host.step[d.where[0][1]] == 10
    while not d.done:
        events, _ = d.step()
    assert {e.status for e in events} == {"completed"}


def cli(tmp_path, name, *extra, toml="pbt_ready = 10"):
    path = tmp_path / f"{name}.toml"
    path.write_text(SMALL.format(extra=toml))
    code = sweep_lib.main(["--config", str(path), "--out", str(tmp_path / name), "--no-report",
                           "--no-progress", *extra])
    return code, tmp_path / name


def test_same_seed_gives_an_identical_store_and_a_stop_then_resume_matches(tmp_path,
                                                                         monkeypatch):
    code, a = cli(tmp_path, "a")
    assert code == 0
    code, b = cli(tmp_path, "b")
    assert code == 0
    for sql in ALL_TABLES:
        assert rows(a, sql) == rows(b, sql), sql
    # 6 members: 2 exploit at each of steps 10, 20, 30.
    assert rows(a, "SELECT count(*) FROM lineage WHERE step > 0")[0][0] == 3 * 2
    info = json.loads((a / "sweep.json").read_text())
    assert info["config"]["pbt_ready"] == 10 and all(v > 0 for v in info["first_chunk_s"].values())
    best = json.loads((a / "best.json").read_text())
    assert best["val_loss"] == min(v for (v,) in rows(a, "SELECT val_loss FROM trials"))
    # Stopped after its second chunk (as SIGTERM would), then resumed from the checkpoint.
    calls = {"n": 0}

    def requested(self):
        calls["n"] += 1
        if calls["n"] == 2:
            self.signum = signal.SIGTERM
        return self.signum is not None

    monkeypatch.setattr(signals_lib.StopOnSignal, "requested", requested)
    code, c = cli(tmp_path, "c", "--checkpoint-every", "3600")
    assert code == 128 + signal.SIGTERM
    assert rows(c, "SELECT max(step) FROM curves")[0][0] == 20
    monkeypatch.undo()
    assert sweep_lib.main(["--resume", "--out", str(c), "--no-report", "--no-progress"]) == 0
    for sql in ALL_TABLES:
        assert rows(c, sql) == rows(a, sql), sql
    # The report draws the schedule PBT found (and skips retraining, which cannot reproduce it).
    built = report.build(a, with_downstream=True)
    assert "schedule.png" in built.figures
    assert (built.dir / "schedule.png").read_bytes()[:4] == b"\x89PNG"
    assert built.downstream is None and "population-based" in built.summary
    page = built.index.read_text()
    assert '<td>pbt: weights copied</td><td class="num">6</td>' in page


def test_ancestry_follows_the_weights_back_through_their_parents():
    def row(trial, step, parent, lr):
        return {"trial_id": trial, "step": step, "parent": parent,
                "params_after": {"learning_rate": lr}}

    # Member 1 copies member 0 at step 10; member 0 copies member 1 back at step 20.
    rows_ = [row(0, 0, None, 1.0), row(1, 0, None, 2.0), row(1, 10, 0, 3.0), row(0, 20, 1, 4.0)]
    S = lineage_lib.Segment
    assert lineage_lib.ancestry(rows_, 0, 30) == [
        S(0, 10, 0, {"learning_rate": 1.0}), S(10, 20, 1, {"learning_rate": 3.0}),
        S(20, 30, 0, {"learning_rate": 4.0})]
    assert lineage_lib.own_schedule(rows_, 0, 30) == [
        S(0, 20, 0, {"learning_rate": 1.0}), S(20, 30, 0, {"learning_rate": 4.0})]
    assert lineage_lib.ancestry(rows_, 1, 30) == [
        S(0, 10, 0, {"learning_rate": 1.0}), S(10, 30, 1, {"learning_rate": 3.0})]


def test_a_kill_after_a_checkpoint_replays_to_the_same_store(tmp_path):
    straight = make_driver()
    store_a = TrialStore(tmp_path / "a.db")
    runner.run(straight, store_a, None)
    killed = make_driver()
    store_b = TrialStore(tmp_path / "b.db")
    saved = None
    while killed.chunk < 3:  # a checkpoint after chunk 2, then one chunk more is written
        events, curves = killed.step()
        killed.record(store_b, events, curves)
        if killed.chunk == 2:
            saved = killed.state_bytes()
    resumed = make_driver()
    resumed.restore(saved)
    runner.run(resumed, store_b, None)
    for sql in ALL_TABLES:
        assert store_a.query(sql) == store_b.query(sql), sql


@pytest.mark.parametrize("extra, flags, needle", [
    ("pbt_ready = 15", [], "multiple of chunk"),
    ("pbt_ready = 40", [], "less than steps"),
    ("pbt_fraction = 0.75", [], "pbt_fraction"),
    ("pbt_resample = -0.1", [], "pbt_resample"),
    ("", ["--trials", "7"], "exceeds population"),
    ("", ["--repeats", "2"], "repeats"),
    ("pbt_ready = 10", ["--searcher", "random"], "applies only to searcher"),
    ("pbt_fraction = true", [], "pbt_fraction"),
])
def test_bad_settings_exit_2_with_one_line(tmp_path, capsys, extra, flags, needle):
    code, out = cli(tmp_path, "bad", *flags, toml=extra)
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and needle in err, err
    assert not (out / "trials.db").exists()


def test_members_exploit_only_their_bucket_and_inherit_masked_sizes():
    space = {"learning_rate": {"dist": "float", "low": 1e-3, "high": 1e-1, "log": True},
             "hidden": {"dist": "int", "low": 8, "high": 32},
             "activation": {"dist": "choice", "options": ["relu", "tanh"]},
             "depth": {"dist": "choice", "options": [1, 2]}}
    policy = pbt_lib.make_policy(config_lib.build({"searcher": "pbt", "trials": 8,
                                                   "population": 8, "space": space}))
    assert policy.group_by == ["depth"] and policy.keep == ["hidden", "activation"]


def test_default_ready_is_a_tenth_of_the_steps_in_whole_chunks():
    build = lambda **kw: config_lib.build({"searcher": "pbt", "trials": 8, "population": 8,  # noqa: E731
                                           **kw})
    assert pbt_lib.ready_steps(build(steps=1200, chunk=50)) == 100
    assert pbt_lib.ready_steps(build(steps=100, chunk=50)) == 50
    assert pbt_lib.ready_steps(build(steps=1000, chunk=10, pbt_ready=30)) == 30
    # Unset pbt settings leave a sweep's stored configuration (and fingerprint) as it was.
    assert "pbt_ready" not in config_lib.build({}).to_dict()


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    longer = "pbt_ready = 20\n" + "steps = 200"
    toml = SMALL.format(extra=longer).replace("steps = 40\n", "")
    (tmp_path / "s.toml").write_text(toml)
    args = ["--config", str(tmp_path / "s.toml"), "--no-report", "--no-progress"]
    assert sweep_lib.main([*args, "--out", str(tmp_path / "straight")]) == 0
    total = rows(tmp_path / "straight", "SELECT count(*) FROM curves")[0][0]
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        sweep_command(*args, "--out", out, "--checkpoint-every", "0"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]),
             "JAXAE_CPU_DEVICES": "1"})  # one device, as in this process: identical numbers
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if live_rows(out, "SELECT count(*) FROM curves")[0][0] >= total // 3:
                break
        except sqlite3.OperationalError:
            pass
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert rows(out, "SELECT count(*) FROM curves")[0][0] < total, "killed too late"
    assert sweep_lib.main(["--resume", "--out", str(out), "--no-report", "--no-progress"]) == 0
    for sql in ALL_TABLES:
        assert rows(out, sql) == rows(tmp_path / "straight", sql), sql


def test_curve_points_between_exploits_use_the_first_examples_and_decisions_all_of_them():
    runs = {}
    for examples in (0, 100):  # 0: all 270 validation examples
        d = make_driver(f"pbt_ready = 10\ncurve_examples = {examples}")
        events, curves = [], []
        while not d.done:
            e, c = d.step()
            events += e
            curves += c
        runs[examples] = d, events, curves
    (whole, events, curves), (part, events_100, curves_100) = runs[0], runs[100]
    # The same exploits, configurations and results to the bit: only curve points differ.
    assert part.configs == whole.configs
    assert [(e.trial, e.status, e.val_loss, e.steps) for e in events_100] == [
        (e.trial, e.status, e.val_loss, e.steps) for e in events]
    assert [c[:4] for c in curves_100] == [c[:4] for c in curves]
    # Each point is the population's loss on the split's first 100 examples, at every chunk
    # (exploit points included): the first chunk's, before any exploit, from a fresh driver.
    fresh = make_driver("pbt_ready = 10\ncurve_examples = 100")
    (bucket,) = fresh.buckets.values()
    bucket.pop, _ = P.train_chunk(bucket.spec, bucket.pop, fresh.train_x,
                                  fresh.config.chunk)
    expected = np.asarray(P.evaluate(bucket.spec, bucket.pop,
                                     fresh.val_x[:100])["val_loss"])
    first = {t: v for t, _, step, _, v in curves_100 if step == fresh.config.chunk}
    for trial, (_, slot) in enumerate(fresh.where):
        np.testing.assert_allclose(first[trial], expected[slot], rtol=2e-6)
    assert all(a[4] != b[4] for a, b in zip(curves, curves_100, strict=True))
