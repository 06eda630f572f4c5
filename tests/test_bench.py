"""bench/throughput.py runs and prints well-formed JSON lines (no timing asserts)."""

import json
import math
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
REQUIRED = ("case", "population", "steps", "member_steps_per_s", "model_gflops_per_s", "device",
            "compile_s", "ratio_vs_sequential", "ratio_vs_loop")


def test_throughput_prints_one_json_line_per_case():
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "throughput.py"), "--population", "2", "--steps",
         "5", "--hidden", "8", "--latent", "4", "--batch", "16", "--repeats", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=True,
    )
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["case"] for r in rows] == ["vmap", "sequential", "loop"]
    for r in rows:
        assert all(key in r for key in REQUIRED), sorted(set(REQUIRED) - set(r))
        assert r["population"] == 2 and r["steps"] == 5
        assert isinstance(r["device"], str) and r["device"]
        for key in ("member_steps_per_s", "model_gflops_per_s", "ratio_vs_sequential",
                    "ratio_vs_loop"):
            assert math.isfinite(r[key]) and r[key] > 0, (key, r[key])
        assert r["compile_s"] >= 0
    assert rows[1]["ratio_vs_sequential"] == 1.0 and rows[2]["ratio_vs_loop"] == 1.0


def test_time_to_quality_prints_one_json_line_per_case():
    cases = "jaxae-random,jaxae-asha"
    try:
        import optuna  # noqa: F401

        cases += ",optuna-tpe"
    except ImportError:  # optional: the bench extra
        pass
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "time_to_quality.py"), "--cases", cases,
         "--trials", "4", "--steps", "20", "--population", "2", "--target", "100"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=True,
    )
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [r["case"] for r in rows] == cases.split(",")
    for r in rows:
        assert r["trials"] == 4 and r["steps"] == 20 and r["wall_s"] > 0
        if r["case"] == "jaxae-asha":  # 4 trials may all stop before the top rung
            continue
        assert math.isfinite(r["best_val_loss"])
        assert r["time_to_target_s"] is not None and r["time_to_target_s"] <= r["wall_s"]
