"""``--searcher grid`` and ``--sampler gp`` end to end through ``python -m jaxae.sweep``'s main."""

import itertools
import json
import sqlite3

import pytest

from jaxae.sweep import main

# One bucket, tiny shapes (tests/test_sweep.py's SMALL), with `num` points per range for the grid.
CONFIG = """
[sweep]
model = "ae"
searcher = "{searcher}"
population = 4
trials = {trials}
steps = 40
min_steps = 10
chunk = 10
[space]
learning_rate = {{dist = "float", low = 1e-3, high = 3e-2, log = true, num = 3}}
latent_dim = {{dist = "int", low = 2, high = 8, num = 2}}
hidden = 16
activation = "tanh"
batch_size = 32
"""


def sweep(tmp_path, name, *extra, searcher, trials):
    path = tmp_path / f"{name}.toml"
    path.write_text(CONFIG.format(searcher=searcher, trials=trials))
    out = tmp_path / name
    code = main(["--config", str(path), "--out", str(out), "--no-report", "--no-progress",
                 *extra])
    with sqlite3.connect(out / "trials.db") as db:
        rows = db.execute("SELECT trial_id, status, params, steps FROM trials ORDER BY 1")
        return code, [(t, s, json.loads(p), n) for t, s, p, n in rows.fetchall()]


def test_grid_smaller_than_trials_runs_each_grid_point_once(tmp_path):
    with pytest.warns(UserWarning, match="grid search has 6 configurations"):
        code, rows = sweep(tmp_path, "grid", searcher="grid", trials=9)
    assert code == 0
    assert [s for _, s, _, _ in rows] == ["completed"] * 6
    grid = itertools.product([0.001, 0.00547722557505, 0.03], [2, 8])  # sqrt(3e-5), 12 digits
    assert [(p["learning_rate"], p["latent_dim"]) for _, _, p, _ in rows] == list(grid)


def test_gp_samples_for_asha(tmp_path):
    code, rows = sweep(tmp_path, "gp", "--sampler", "gp", searcher="asha", trials=14)
    assert code == 0 and len(rows) == 14
    assert {s for _, s, _, _ in rows} <= {"completed", "pruned"}
    assert any(s == "completed" for _, s, _, _ in rows)
    info = json.loads((tmp_path / "gp" / "sweep.json").read_text())
    assert info["config"]["sampler"] == "gp"
    # Past the 10-point initial design the GP proposes: still inside the space, never repeated.
    params = [(p["learning_rate"], p["latent_dim"]) for _, _, p, _ in rows]
    assert len(set(params)) == 14
    assert all(1e-3 <= lr <= 3e-2 and 2 <= k <= 8 for lr, k in params)
