"""Durability of ``python -m jaxae.sweep``: ownership of DIR, signals, kills, damaged files,
resuming from ``sweep.json`` alone, and refusals made before anything is written."""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from sklearn.datasets import load_digits
from test_sweep import live_rows, rows, sweep, sweep_command, write_config

from jaxae import checkpoint as checkpoint_lib
from jaxae import memory
from jaxae.sweep import main

ROOT = Path(__file__).parents[1]
QUIET = ["--no-report", "--no-progress"]
# Several rungs (ASHA at 10, 30, 90 steps) and chunks: a signal sent at a third of the curve points
# lands mid-sweep (the child's chunks start late: test_sweep.INTERRUPTIBLE).
LONG = dict(searcher="asha", trials=9, steps=810, population=3)


def env():
    # One device, as the in-process runs: bit-identical numbers.
    return {**os.environ, "PYTHONPATH": str(ROOT), "JAXAE_CPU_DEVICES": "1"}


def start(config, out, *extra):
    cmd = sweep_command("--config", config, "--out", out, *QUIET, *extra)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env(),
                            text=True)


def curve_points(out):
    try:
        return live_rows(out, "SELECT count(*) FROM curves")[0][0]
    except sqlite3.OperationalError:
        return 0


def recorded_points(out):
    """Learning-curve points the last checkpoint recorded (read without opening the store: a
    reader closing its connection may fold the write-ahead log into the database)."""
    try:
        blob = (out / "checkpoint.msgpack").read_bytes()
    except FileNotFoundError:
        return 0
    start = len(checkpoint_lib.MAGIC) + 32
    size = int.from_bytes(blob[start:start + 8], "big")
    return json.loads(blob[start + 8:start + 8 + size])["store"]["rows"]["curves"]


def wait_until(proc, ready, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None and not ready():
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep ended before it could be interrupted"


def one_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def same_results(a, b):
    # The trials' started_at / finished_at are never selected: wall-clock times differ between runs.
    for sql in ("SELECT trial_id, status, params, val_loss, steps FROM trials ORDER BY 1",
                "SELECT * FROM curves ORDER BY 1, 2, 3", "SELECT * FROM rungs ORDER BY 1, 2"):
        assert rows(a, sql) == rows(b, sql), sql


@pytest.fixture(scope="module")
def digits_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "digits.npy"
    np.save(path, (load_digits().data / 16.0).astype(np.float32))
    return path


@pytest.fixture(scope="module")
def straight(tmp_path_factory, digits_file):
    """The LONG sweep run uninterrupted: what every interrupted one must end with."""
    tmp = tmp_path_factory.mktemp("straight")
    code, out = sweep(tmp, "straight", "--data", str(digits_file), **LONG)
    assert code == 0
    return out


@pytest.fixture
def finished(tmp_path):
    """A tiny completed sweep, checkpointed."""
    code, out = sweep(tmp_path, "done", "--checkpoint-every", "0", trials=2, steps=20)
    assert code == 0 and (out / "checkpoint.msgpack").exists()
    return out


# -- 11: SIGINT / SIGTERM stop cleanly; 12: --resume needs only --out ---------------------------

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_checkpoints_says_how_to_continue_and_resumes(tmp_path, capsys, straight,
                                                             digits_file, signum):
    total = rows(straight, "SELECT count(*) FROM curves")[0][0]
    config = write_config(tmp_path, "s.toml", **LONG)
    out = tmp_path / "signalled"
    # No periodic checkpoint: the only one is the one the signal makes.
    proc = start(config, out, "--data", str(digits_file), "--checkpoint-every", "3600")
    wait_until(proc, lambda: curve_points(out) >= total // 3)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and signal.Signals(signum).name in lines[0], err
    assert f"--resume --out {out}" in lines[0]
    assert (out / "checkpoint.msgpack").exists()
    assert curve_points(out) < total
    info = json.loads((out / "sweep.json").read_text())
    assert info["end_time"] is None
    # Only --out: the configuration (and the data path) come from sweep.json.
    assert main(["--resume", "--out", str(out), *QUIET]) == 0
    same_results(out, straight)


# -- 4, 5, 7: a killed sweep whose files were damaged is refused, never reported complete ------

def test_damaged_stores_and_checkpoints_are_refused(tmp_path, capsys, straight, digits_file):
    total = rows(straight, "SELECT count(*) FROM curves")[0][0]
    data = tmp_path / "digits.npy"
    shutil.copy(digits_file, data)
    config = write_config(tmp_path, "k.toml", **LONG)
    killed = tmp_path / "killed"
    proc = start(config, killed, "--data", str(data), "--checkpoint-every", "0")
    wait_until(proc, lambda: recorded_points(killed) >= total // 3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # The rows of a killed sweep sit in SQLite's write-ahead log (SQLite folds it into the
    # database only past 1000 pages, or when a last connection closes).
    assert (killed / "trials.db-wal").stat().st_size > 0
    _, other = sweep(tmp_path, "other", "--seed", "1", "--checkpoint-every", "0", trials=2,
                     steps=20)

    def drop(d, *names):
        for name in names:
            (d / name).unlink(missing_ok=True)

    def flip(d):
        blob = bytearray((d / "checkpoint.msgpack").read_bytes())
        blob[len(blob) // 2] ^= 0x01
        (d / "checkpoint.msgpack").write_bytes(bytes(blob))

    def garbage_db(d):
        drop(d, "trials.db-wal", "trials.db-shm")
        (d / "trials.db").write_bytes(os.urandom(4096))

    def directory_db(d):
        drop(d, "trials.db", "trials.db-wal", "trials.db-shm")
        (d / "trials.db").mkdir()

    def truncate_db(d):
        drop(d, "trials.db-wal", "trials.db-shm")
        os.truncate(d / "trials.db", 0)

    damages = {
        "wal deleted": (lambda d: drop(d, "trials.db-wal", "trials.db-shm"),
                        "holds less than the checkpoint recorded"),
        "store deleted": (lambda d: drop(d, "trials.db", "trials.db-wal", "trials.db-shm"),
                          "is missing"),
        "store truncated": (truncate_db, "trial(s) missing"),
        "store garbage": (garbage_db, "not a usable SQLite database"),
        "store a directory": (directory_db, "not a regular file"),
        "flipped byte": (flip, "damaged (its sha256"),
        "another sweep's checkpoint": (
            lambda d: shutil.copy(other / "checkpoint.msgpack", d / "checkpoint.msgpack"),
            "belongs to another sweep"),
        "sweep.json a list": (lambda d: (d / "sweep.json").write_text("[]"),
                              "not a sweep's sweep.json"),
        "sweep.json config a string": (
            lambda d: (d / "sweep.json").write_text('{"config": "ae"}'),
            "not a sweep's sweep.json"),
        "sweep.json garbage": (lambda d: (d / "sweep.json").write_bytes(b"\xff{"),
                               "is unreadable"),
    }
    for i, (name, (damage, needle)) in enumerate(damages.items()):
        case = tmp_path / f"case{i}"
        shutil.copytree(killed, case)
        damage(case)
        capsys.readouterr()
        assert main(["--resume", "--out", str(case), *QUIET]) == 2, name
        one_error(capsys, needle)
    # The data file replaced between the kill and the resume.
    saved = data.read_bytes()
    x = np.load(data)
    x[0, 0] = 1.0 - x[0, 0]
    np.save(data, x)
    assert main(["--resume", "--out", str(killed), *QUIET]) == 2
    one_error(capsys, "data differ")
    data.write_bytes(saved)
    # Intact, it completes as if never killed.
    assert main(["--resume", "--out", str(killed), *QUIET]) == 0
    same_results(killed, straight)


# -- 3: one sweep per directory ------------------------------------------------------------------

def test_two_sweeps_started_at_once_on_one_directory(tmp_path):
    config = write_config(tmp_path, "c.toml", trials=2, steps=20)
    out = tmp_path / "shared"
    procs = [start(config, out) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    (err,) = [e for code, e in results if code == 2]
    assert "in use by another sweep (pid " in err or "is not empty" in err
    assert len(rows(out)) == 2  # one sweep's trials, not two merged


def test_a_locked_directory_is_refused_and_freed_when_its_holder_dies(tmp_path, capsys,
                                                                      finished):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from jaxae.lock import DirectoryLock; "
         "lock = DirectoryLock(sys.argv[1]); print('locked', flush=True); time.sleep(300)",
         str(finished)], stdout=subprocess.PIPE, env=env(), text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        capsys.readouterr()
        assert main(["--resume", "--out", str(finished), *QUIET]) == 2
        one_error(capsys, f"is in use by another sweep (pid {holder.pid})")
    finally:
        holder.kill()
        holder.wait()
    assert main(["--resume", "--out", str(finished), *QUIET]) == 0


# -- 6: interrupted atomic writes neither block a run nor pile up -------------------------------

def test_stray_temporaries_are_ignored_and_removed(tmp_path, capsys, finished):
    out = tmp_path / "interrupted"
    out.mkdir()
    (out / ".sweep.json.k2j3x9.tmp").write_text('{"config": ')  # killed during the first write
    (out / ".lock").write_text("12345\n")  # its lock file, unlocked since its holder died
    assert main(["--resume", "--out", str(out), *QUIET]) == 2
    one_error(capsys, "holds no sweep")
    config = write_config(tmp_path, "t.toml", trials=2, steps=20)
    assert main(["--config", str(config), "--out", str(out), *QUIET]) == 0
    assert not (out / ".sweep.json.k2j3x9.tmp").exists() and (out / "sweep.json").exists()
    (finished / ".checkpoint.msgpack.abcd.tmp").write_bytes(b"\x00" * 10)
    assert main(["--resume", "--out", str(finished), *QUIET]) == 0
    assert not list(finished.glob(".*.tmp"))


# -- 12: flags given with --resume must match sweep.json -----------------------------------------

def test_resume_names_every_differing_setting(tmp_path, capsys, finished):
    assert main(["--resume", "--out", str(finished), "--trials", "5", "--steps", "30", "--seed",
                 "3", "--population", "4", *QUIET]) == 2
    err = one_error(capsys)
    for name in ("'trials' was 2, now 5", "'steps' was 20, now 30", "'seed' was 0, now 3"):
        assert name in err
    assert "'population'" not in err  # given, but equal
    other = write_config(tmp_path, "o.toml", trials=2, steps=20)
    text = other.read_text().replace("hidden = 16", "hidden = 24")
    other.write_text(text)
    assert main(["--resume", "--out", str(finished), "--config", str(other), *QUIET]) == 2
    one_error(capsys, "'space' differs in hidden")
    assert main(["--resume", "--out", str(finished), "--trials", "2", *QUIET]) == 0


# -- 13: output files honour the umask ------------------------------------------------------------

def test_output_files_honour_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        code, out = sweep(tmp_path, "masked", "--checkpoint-every", "0", trials=2, steps=20)
    finally:
        os.umask(old)
    assert code == 0
    for name in ("sweep.json", "best.json", "checkpoint.msgpack", "trials.db", ".lock"):
        assert (out / name).stat().st_mode & 0o777 == 0o640, name


# -- 7, 8, 9, 10: refused with one line before anything is written --------------------------------

@pytest.mark.parametrize("flags, needle", [
    (["--seed", str(2**64)], "seed = 18446744073709551616"),
    (["--steps", str(2**31)], "steps = 2147483648"),
    (["--chunk", str(10**10)], "chunk = 10000000000"),
    (["--min-steps", str(10**12)], "min_steps = 1000000000000"),
    (["--checkpoint-every", "nan"], "--checkpoint-every nan"),
    (["--checkpoint-every", "-1"], "--checkpoint-every -1"),
    (["--population", "1000000"], "memory"),
])
def test_out_of_range_settings_exit_2_before_writing(tmp_path, capsys, flags, needle):
    out = tmp_path / "never"
    assert main(["--out", str(out), *flags, *QUIET]) == 2
    one_error(capsys, needle)
    assert not out.exists()


def test_a_model_too_large_for_memory_is_refused_naming_the_numbers(tmp_path, capsys,
                                                                    monkeypatch):
    monkeypatch.setattr(memory, "host_available", lambda: 8 * 2**30)
    config = tmp_path / "big.toml"
    config.write_text('[sweep]\nsearcher = "random"\npopulation = 4\ntrials = 4\nsteps = 10\n'
                      '[space]\nhidden = 16384\nlatent_dim = 4096\nactivation = "tanh"\n')
    out = tmp_path / "never"
    assert main(["--config", str(config), "--out", str(out), *QUIET]) == 2
    # 64 -> 16384 -> 4096 and back: 136 M parameters, 12 bytes each with Adam's two moments.
    params = 2 * (64 * 16384 + 16384 + 16384 * 4096 + 4096)
    one_error(capsys, "4 slots x", f"{12 * params / 2**30:.1f} GiB of parameters",
              "8.0 GiB is available")
    assert not out.exists()


def test_the_state_estimate_bounds_a_real_population():
    from jaxae import buckets as buckets_lib
    from jaxae import config as config_lib
    from jaxae import hparams, placement

    config = config_lib.build({"population": 4, "space": {"hidden": 32, "latent_dim": 8}})
    key = tuple(config_lib.value_range(config, n)[0] for n in hparams.BUCKET_NAMES)
    spec = buckets_lib.train_spec(config, 64, key)
    e = memory.estimate(config, 64, 100, 20, slots=4)
    pop = placement.create(spec, 4)
    real = sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(pop))
    # Every array of every slot is counted, with a small margin (at most 4 KiB per member).
    assert real <= e.state <= real + 4 * 4096


@pytest.mark.parametrize("resume", [False, True])
def test_an_out_name_too_long_for_the_file_system_exits_2(tmp_path, capsys, resume):
    out = tmp_path / ("x" * 300)
    assert main(["--out", str(out), *(["--resume"] if resume else []), *QUIET]) == 2
    one_error(capsys, "File name too long")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_resume_in_a_read_only_directory_exits_2(capsys, finished):
    finished.chmod(0o500)
    try:
        assert main(["--resume", "--out", str(finished), *QUIET]) == 2
        one_error(capsys, "not writable")
    finally:
        finished.chmod(0o700)


# -- issue 18: --help prints each default once ---------------------------------------------------

def test_help_prints_each_default_once(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default:" not in text
    assert text.count("[default:") >= 12
    assert "[default: 30]" in text  # --checkpoint-every


def test_a_signal_before_training_exits_143_with_one_line(tmp_path, capsys, monkeypatch):
    from jaxae import data as data_lib

    def load(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("the signal should have interrupted the load")

    monkeypatch.setattr(data_lib, "load", load)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "never"
    assert main(["--out", str(out), *QUIET]) == 128 + signal.SIGTERM
    err = capsys.readouterr().err.strip()
    assert err == "error: interrupted by SIGTERM" and not out.exists()
    assert signal.getsignal(signal.SIGTERM) is before  # the handlers are put back
