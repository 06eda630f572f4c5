"""End-to-end tests of ``python -m jaxae.sweep`` through ``main`` (and one real SIGKILL)."""

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jaxae.sweep import main
from searchers import SCHEDULERS

# One bucket, tiny shapes: each sweep compiles one small program.
SMALL = """
[sweep]
model = "ae"
searcher = "{searcher}"
population = {population}
trials = {trials}
steps = {steps}
min_steps = 10
chunk = 10
[space]
learning_rate = {{dist = "float", low = 1e-3, high = 3e-2, log = true}}
latent_dim = {{dist = "int", low = 2, high = 8}}
hidden = 16
activation = "tanh"
batch_size = 32
"""


def write_config(tmp_path, name="sweep.toml", searcher="random", population=4, trials=6,
                 steps=40):
    path = tmp_path / name
    path.write_text(SMALL.format(searcher=searcher, population=population, trials=trials,
                                 steps=steps))
    return path


def sweep(tmp_path, out, *extra, **kw):
    config = write_config(tmp_path, f"{out}.toml", **kw)
    code = main(["--config", str(config), "--out", str(tmp_path / out), "--no-report",
                 "--no-progress", *extra])
    return code, tmp_path / out


# The default columns leave out started_at / finished_at: wall-clock times differ between any two
# runs, so tests that compare stores for bit-identity (determinism, resume) must never select them.
def rows(out, sql="SELECT trial_id, status, params, val_loss, steps FROM trials ORDER BY 1"):
    with sqlite3.connect(out / "trials.db") as db:
        return db.execute(sql).fetchall()


# A sweep in a child process that a test interrupts (SIGKILL, SIGINT, SIGTERM) once it has
# written part of its rows: each chunk starts 0.1 s late, so however fast the chunks run, the sweep
# is still running when the test's poll (every 0.05 s) sees those rows. Its numbers are unchanged.
INTERRUPTIBLE = """
import sys, time
from jaxae import driver, pbt
for cls in (driver.Driver, pbt.PBTDriver):
    def step(self, *args, _step=cls.step, **kwargs):
        time.sleep(0.1)
        return _step(self, *args, **kwargs)
    cls.step = step
from jaxae.sweep import main
raise SystemExit(main(sys.argv[1:]))
"""


def sweep_command(*args):
    """``python -m jaxae.sweep *args``, each chunk delayed (``INTERRUPTIBLE``)."""
    return [sys.executable, "-c", INTERRUPTIBLE, *map(str, args)]


def live_rows(out, sql):
    """``rows`` of a sweep still running: opened read-only, so a poll that comes before the sweep
    has created its store never creates an empty ``trials.db`` for the sweep to refuse.
    Raises sqlite3.OperationalError while there is no store yet."""
    with sqlite3.connect(f"file:{out / 'trials.db'}?mode=ro", uri=True) as db:
        return db.execute(sql).fetchall()


def test_same_seed_gives_bit_identical_results(tmp_path):
    code_a, a = sweep(tmp_path, "a", searcher="asha", trials=9, steps=90)
    code_b, b = sweep(tmp_path, "b", searcher="asha", trials=9, steps=90)
    assert code_a == code_b == 0
    assert rows(a) == rows(b)
    assert rows(a, "SELECT * FROM curves ORDER BY 1, 2, 3") == rows(
        b, "SELECT * FROM curves ORDER BY 1, 2, 3")
    best = json.loads((a / "best.json").read_text())
    finite = [r[3] for r in rows(a) if r[1] == "completed"]
    assert best["val_loss"] == min(finite)
    info = json.loads((a / "sweep.json").read_text())
    assert info["config"]["searcher"] == "asha" and info["versions"]["jax"]
    assert info["device"]["count"] >= 1 and info["end_time"]


def test_trial_loss_does_not_depend_on_population_size(tmp_path):
    _, small = sweep(tmp_path, "p2", population=2, trials=5)
    _, large = sweep(tmp_path, "p5", population=5, trials=5)
    a, b = rows(small), rows(large)
    assert [r[2] for r in a] == [r[2] for r in b]  # the seed names the same configurations
    np.testing.assert_allclose([r[3] for r in a], [r[3] for r in b], rtol=1e-5)


@pytest.mark.parametrize(("searcher", "population", "trials", "steps", "repeats"), [
    ("random", 3, 7, 40, 1), ("random", 4, 5, 40, 2), ("sha", 4, 9, 90, 1)])
def test_asking_while_a_chunk_trains_changes_no_trial(tmp_path, monkeypatch, searcher,
                                                      population, trials, steps, repeats):
    from jaxae import driver as driver_lib

    asked = []
    ask_ahead = driver_lib.Driver._ask_ahead

    def counting(self):
        before = len(self.queue)
        ask_ahead(self)
        asked.append(len(self.queue) - before)

    monkeypatch.setattr(driver_lib.Driver, "_ask_ahead", counting)
    kw = {"searcher": searcher, "population": population, "trials": trials, "steps": steps}
    code, ahead = sweep(tmp_path, "ahead", "--repeats", str(repeats), **kw)
    assert code == 0 and len(rows(ahead)) == trials
    assert sum(asked) > 0  # some jobs really were asked for while a chunk trained
    monkeypatch.setattr(driver_lib.Driver, "_ask_ahead", lambda self: None)
    code, after = sweep(tmp_path, "after", "--repeats", str(repeats), **kw)
    assert code == 0
    assert rows(ahead) == rows(after)
    assert rows(ahead, "SELECT trial_id, budget, val_loss FROM rungs ORDER BY 1, 2") == rows(
        after, "SELECT trial_id, budget, val_loss FROM rungs ORDER BY 1, 2")
    # The same jobs in the same slots at the same chunks: the same curves.
    assert rows(ahead, "SELECT * FROM curves ORDER BY 1, 2, 3") == rows(
        after, "SELECT * FROM curves ORDER BY 1, 2, 3")


def test_diverging_trial_is_recorded_and_the_sweep_goes_on(tmp_path, capsys):
    config = tmp_path / "div.toml"
    config.write_text("""
[sweep]
model = "vae"
searcher = "random"
population = 4
trials = 4
steps = 30
chunk = 10
[space]
learning_rate = {dist = "choice", options = [0.001, 10.0]}
hidden = 16
latent_dim = 4
activation = "relu"
""")
    assert main(["--config", str(config), "--out", str(tmp_path / "o"), "--no-report",
                 "--no-progress"]) == 0
    result = rows(tmp_path / "o")
    statuses = {json.loads(p)["learning_rate"]: s for _, s, p, _, _ in result}
    assert statuses == {10.0: "diverged", 0.001: "completed"}
    assert all(v is None for _, s, _, v, _ in result if s == "diverged")
    best = json.loads((tmp_path / "o" / "best.json").read_text())
    assert np.isfinite(best["val_loss"]) and best["params"]["learning_rate"] == 0.001
    assert "diverged" in capsys.readouterr().out


@pytest.mark.parametrize("searcher", SCHEDULERS)
def test_every_searcher_runs_end_to_end(tmp_path, searcher):
    code, out = sweep(tmp_path, searcher, searcher=searcher, trials=9, steps=90)
    assert code == 0
    result = rows(out)
    assert 1 <= len(result) <= 9
    assert {s for _, s, _, _, _ in result} <= {"completed", "pruned"}
    assert any(s == "completed" for _, s, _, _, _ in result)
    for _, status, _, _, steps in result:
        assert steps == 90 if status == "completed" else steps < 90
    budgets = sorted({b for (b,) in rows(out, "SELECT budget FROM rungs")})
    if searcher in ("sha", "hyperband", "asha"):
        assert len(budgets) > 1 and budgets[-1] == 90
    else:
        assert budgets == [90]


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    kw = dict(searcher="asha", trials=12, steps=270, population=3)
    _, straight = sweep(tmp_path, "straight", **kw)
    total_points = rows(straight, "SELECT count(*) FROM curves")[0][0]
    config = write_config(tmp_path, "killed.toml", **kw)
    out = tmp_path / "killed"
    cmd = sweep_command("--config", config, "--out", out, "--no-report", "--no-progress",
                        "--checkpoint-every", "0")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]),
                                 # one device, as the in-process resume: bit-identical numbers
                                 "JAXAE_CPU_DEVICES": "1"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            done = live_rows(out, "SELECT count(*) FROM curves")[0][0]
        except sqlite3.OperationalError:
            done = 0
        if done >= total_points // 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert rows(out, "SELECT count(*) FROM curves")[0][0] < total_points, "killed too late"
    assert main(["--config", str(config), "--out", str(out), "--no-report", "--no-progress",
                 "--resume"]) == 0
    assert rows(out) == rows(straight)
    assert rows(out, "SELECT * FROM curves ORDER BY 1, 2, 3") == rows(
        straight, "SELECT * FROM curves ORDER BY 1, 2, 3")
    assert rows(out, "SELECT * FROM rungs ORDER BY 1, 2") == rows(
        straight, "SELECT * FROM rungs ORDER BY 1, 2")


def test_resume_refuses_a_different_configuration(tmp_path, capsys):
    code, out = sweep(tmp_path, "r", trials=2, steps=20)
    assert code == 0
    other = write_config(tmp_path, "other.toml", trials=3, steps=20)
    assert main(["--config", str(other), "--out", str(out), "--resume", "--no-report"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'trials'" in err


def test_resume_from_a_damaged_checkpoint_exits_2_and_keeps_the_results(tmp_path, capsys):
    code, out = sweep(tmp_path, "d", "--checkpoint-every", "1", trials=2, steps=20)
    assert code == 0 and (out / "checkpoint.msgpack").exists()
    before = rows(out)
    (out / "checkpoint.msgpack").write_bytes(b"\x93not a checkpoint")
    capsys.readouterr()
    assert main(["--config", str(tmp_path / "d.toml"), "--out", str(out), "--resume",
                 "--no-report", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot be restored" in err and "checkpoint" in err
    assert rows(out) == before


# -- bad input: exit status 2, one line naming the problem, nothing written -------------------

BAD_CONFIGS = {
    "unknown_name": ('[space]\nlearningrate = 0.1\n', "learningrate"),
    "not_for_model": ('[space]\nbeta = 2.0\n', "beta"),
    "low_above_high": ('[space]\nlearning_rate = {dist = "float", low = 0.1, high = 0.01}\n',
                       "learning_rate"),
    "log_of_zero": ('[space]\nweight_decay = {dist = "float", low = 0.0, high = 0.1, log = true}\n',
                    "weight_decay"),
    "bad_choice": ('[space]\nactivation = {dist = "choice", options = ["relu", "swish"]}\n',
                   "swish"),
    "empty_choice": ('[space]\nactivation = {dist = "choice", options = []}\n', "activation"),
    "float_for_int": ('[space]\nlatent_dim = {dist = "float", low = 2, high = 8}\n',
                      "latent_dim"),
    "malformed_toml": ('[sweep\nmodel = "ae"\n', "not valid TOML"),
    "unknown_setting": ('[sweep]\npopulaton = 4\n', "populaton"),
    "bad_model": ('[sweep]\nmodel = "gan"\n', "gan"),
    "negative_trials": ('[sweep]\ntrials = -3\n', "trials"),
    "contractive_batch_norm": ('[sweep]\nmodel = "contractive"\n[space]\n'
                               'norm = {dist = "choice", options = ["none", "batch"]}\n', "norm"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_exits_2_with_one_line(tmp_path, capsys, case):
    text, needle = BAD_CONFIGS[case]
    config = tmp_path / "bad.toml"
    config.write_text(text)
    out = tmp_path / "out"
    assert main(["--config", str(config), "--out", str(out), "--no-report"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and needle in err
    assert not out.exists()


def test_bad_data_and_paths_exit_2(tmp_path, capsys):
    empty = tmp_path / "empty.npy"
    np.save(empty, np.zeros((0, 4), np.float32))
    flat = tmp_path / "flat.npy"
    np.save(flat, np.zeros((50,), np.float32))
    a_file = tmp_path / "file"
    a_file.write_text("x")
    full = tmp_path / "full"
    full.mkdir()
    (full / "something").write_text("x")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    cases = [
        (["--data", str(tmp_path / "missing.npy")], "missing.npy"),
        (["--data", str(empty)], "empty.npy"),
        (["--data", str(flat)], "flat.npy"),
        (["--config", str(tmp_path / "nope.toml")], "nope.toml"),
        (["--out", str(a_file)], "not a directory"),
        (["--out", str(full)], "not empty"),
        (["--out", str(tmp_path / "fresh"), "--resume"], "no sweep"),
    ]
    if os.geteuid() != 0:  # root writes anywhere
        cases.append((["--out", str(locked / "sub")], "not writable"))
    for args, needle in cases:
        assert main([*args, "--no-report", "--no-progress"]) == 2, args
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and needle in err, (args, err)
    assert not (tmp_path / "fresh").exists()
    assert list(full.iterdir()) == [full / "something"]


def test_unwritable_out_exits_2(tmp_path, capsys):
    out = "/proc/jaxae-cannot-write-here"
    assert main(["--out", out, "--no-report", "--no-progress"]) == 2
    assert "not writable" in capsys.readouterr().err


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--model", "--searcher", "--population", "--trials", "--steps", "--seed",
                 "--data", "--out", "--config", "--resume", "--repeats"):
        assert flag in text


# -- structural hyperparameters and replicates (buckets, masks, repeats) ------------------------

STRUCTURAL = """
[sweep]
model = "ae"
searcher = "{searcher}"
population = 8
trials = {trials}
steps = 40
min_steps = 10
chunk = 10
[space]
learning_rate = {{dist = "float", low = 1e-3, high = 3e-2, log = true}}
latent_dim = {{dist = "int", low = 2, high = 8}}
hidden = {{dist = "int", low = 8, high = 24}}
depth = {{dist = "choice", options = [1, 2]}}
activation = {{dist = "choice", options = ["relu", "tanh"]}}
optimizer = {{dist = "choice", options = ["adam", "sgd"]}}
batch_size = {{dist = "choice", options = [16, 32]}}
"""


def test_structural_sweep_compiles_one_program_per_bucket(tmp_path, monkeypatch):
    from jaxae import population as P
    from jaxae import programs

    monkeypatch.setattr(programs, "_directory", lambda: None)  # traced here, not loaded

    config = tmp_path / "s.toml"
    config.write_text(STRUCTURAL.format(searcher="random", trials=10))
    before = {k: v for k, v in P.TRACES.items() if isinstance(k, tuple)}
    assert main(["--config", str(config), "--out", str(tmp_path / "o"), "--no-report",
                 "--no-progress"]) == 0
    traced = {k[1]: v - before.get(k, 0) for k, v in P.TRACES.items()
              if isinstance(k, tuple) and v - before.get(k, 0) > 0}
    buckets = {b for (b,) in rows(tmp_path / "o", "SELECT DISTINCT bucket FROM trials")}
    assert len(buckets) > 4  # the space really spread over several programs
    assert len(traced) == len(buckets) and set(traced.values()) == {1}
    for spec in traced:  # masked sizes never add a program: one padded shape per sweep
        assert (spec.model.hidden, spec.model.latent_dim) == (24, 8)
    info = json.loads((tmp_path / "o" / "sweep.json").read_text())
    assert len(info["first_chunk_s"]) == len(buckets)
    assert all(s > 0 for s in info["first_chunk_s"].values())


@pytest.mark.parametrize("searcher", SCHEDULERS)
def test_structural_space_runs_with_every_searcher(tmp_path, searcher):
    config = tmp_path / "s.toml"
    config.write_text(STRUCTURAL.format(searcher=searcher, trials=6))
    assert main(["--config", str(config), "--out", str(tmp_path / "o"), "--no-report",
                 "--no-progress"]) == 0
    result = rows(tmp_path / "o")
    assert any(s == "completed" for _, s, _, _, _ in result)
    for _, _, params, _, _ in result:
        p = json.loads(params)
        assert 2 <= p["latent_dim"] <= 8 and p["depth"] in (1, 2) and p["batch_size"] in (16, 32)


@pytest.mark.parametrize("aggregate", ["mean", "median"])
def test_replicates_are_stored_and_their_aggregate_is_told(tmp_path, aggregate):
    code, out = sweep(tmp_path, "rep", "--repeats", "3", "--aggregate", aggregate,
                      searcher="asha", trials=9, steps=90, population=6)
    assert code == 0
    reps = rows(out, "SELECT trial_id, replicate, val_loss, init_key, data_key FROM replicates "
                     "ORDER BY 1, 2")
    by_trial: dict[int, list] = {}
    for trial, r, v, init_key, data_key in reps:
        by_trial.setdefault(trial, []).append((r, v, init_key, data_key))
    assert len(by_trial) == 9
    told = dict(rows(out, "SELECT trial_id, val_loss FROM rungs WHERE budget = 10"))
    agg = np.mean if aggregate == "mean" else np.median
    for trial, members in by_trial.items():
        assert [r for r, *_ in members] == [0, 1, 2]
        assert len({k for *_, k, _ in members}) == 3 and len({d for *_, d in members}) == 3
        if trial in told and all(v is not None for _, v, _, _ in members) and \
                rows(out, f"SELECT steps FROM trials WHERE trial_id = {trial}")[0][0] == 10:
            assert told[trial] == pytest.approx(agg([v for _, v, _, _ in members]), rel=1e-6)
    final = rows(out, "SELECT trial_id, val_loss FROM trials WHERE status = 'completed'")
    for trial, v in final:
        assert v == pytest.approx(agg([m[1] for m in by_trial[trial]]), rel=1e-6)


def test_common_random_numbers_share_data_order_per_replicate(tmp_path):
    code, out = sweep(tmp_path, "crn", "--repeats", "2", "--crn", trials=3, steps=20,
                      population=6)
    assert code == 0
    reps = rows(out, "SELECT trial_id, replicate, data_key, init_key FROM replicates")
    by_replicate = {}
    for _, r, data_key, _ in reps:
        by_replicate.setdefault(r, set()).add(data_key)
    assert all(len(keys) == 1 for keys in by_replicate.values()) and len(by_replicate) == 2
    assert len({k for *_, k in reps}) == 6  # initialisations stay distinct


REGULARISED = SMALL.replace('activation = "tanh"', """activation = "leaky_relu"
norm = {{dist = "choice", options = ["layer", "batch"]}}
dropout = {{dist = "float", low = 0.0, high = 0.3}}
schedule = {{dist = "choice", options = ["constant", "cosine", "exponential"]}}
warmup = {{dist = "int", low = 0, high = 5}}""")


def test_schedule_dropout_norm_and_leaky_relu_sweep_end_to_end(tmp_path):
    config = tmp_path / "r.toml"
    config.write_text(REGULARISED.format(searcher="asha", population=4, trials=6, steps=30))
    assert main(["--config", str(config), "--out", str(tmp_path / "o"), "--no-report",
                 "--no-progress"]) == 0
    result = rows(tmp_path / "o")
    assert any(s == "completed" for _, s, _, _, _ in result)
    params = [json.loads(p) for _, _, p, _, _ in result]
    assert {p["norm"] for p in params} <= {"layer", "batch"}
    assert all(p["activation"] == "leaky_relu" and 0 <= p["dropout"] <= 0.3 for p in params)
    assert all(np.isfinite(v) for _, _, _, v, _ in result)


def test_progress_bar_says_what_it_waits_for_and_resumes_where_it_was(tmp_path, capsys):
    """The bar names compilation before the first chunk, the best loss with its budget before
    any trial completes, member-steps/s by that name, and on --resume starts from the trials
    already reported instead of 0."""
    config = write_config(tmp_path, searcher="asha", trials=9, steps=90)
    out = tmp_path / "p"
    args = ["--config", str(config), "--out", str(out), "--no-report"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "compiling the first programs" in err
    assert "member-steps/s" in err and "steps_per_s" not in err
    assert re.search(r"best=[0-9.]+@[0-9]+steps", err)  # a rung result with its budget
    before = rows(out, "SELECT COUNT(*) FROM trials")[0][0]
    assert main([*args, "--resume"]) == 0  # nothing left to do: the bar starts full
    err = capsys.readouterr().err
    assert f"{before}/9" in err and "0/9" not in err
