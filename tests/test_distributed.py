"""Two local CPU processes run one sweep through jax.distributed; process 0 alone writes it, and
the results equal a single-process run."""

import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxae.sweep import main

pytestmark = pytest.mark.slow  # two JAX processes joined by gloo

ROOT = Path(__file__).parents[1]
ARGS = ["--searcher", "random", "--trials", "6", "--population", "4", "--steps", "20",
        "--chunk", "10", "--no-report", "--no-progress"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rows(out):
    with sqlite3.connect(out / "trials.db") as db:
        return db.execute("SELECT trial_id, status, params, val_loss, steps FROM trials "
                          "ORDER BY 1").fetchall()


def test_two_processes_run_one_sweep(tmp_path):
    assert main([*ARGS, "--out", str(tmp_path / "single")]) == 0
    port = free_port()
    procs = []
    for pid in range(2):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_COORDINATOR_ADDRESS":
               f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(pid),
               "JAXAE_COMPILATION_CACHE": "off", "JAXAE_CPU_DEVICES": "1"}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "jaxae.sweep", *ARGS, "--out", str(tmp_path / "multi")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert "trials.db" in outputs[0][0] and "trials.db" not in outputs[1][0]  # process 0 writes
    single, multi = rows(tmp_path / "single"), rows(tmp_path / "multi")
    assert [r[:3] for r in multi] == [r[:3] for r in single]
    assert [r[4] for r in multi] == [r[4] for r in single]
    np.testing.assert_allclose([r[3] or np.nan for r in multi], [r[3] or np.nan for r in single],
                               rtol=1e-4)
    info = (tmp_path / "multi" / "sweep.json").read_text()
    assert '"count": 2' in info
