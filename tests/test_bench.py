"""bench/throughput.py runs and prints well-formed JSON lines (no timing asserts)."""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # subprocesses running bench scripts end to end

ROOT = pathlib.Path(__file__).resolve().parents[1]
REQUIRED = ("case", "population", "steps", "member_steps_per_s", "model_gflops_per_s", "device",
            "compile_s", "ratio_vs_sequential", "ratio_vs_loop")
ROOFLINE = ("bytes_per_member_step", "peak_flops", "bandwidth_bytes_per_s",
            "roofline_us_per_member_step", "measured_us_per_member_step", "roofline_ratio",
            "fraction_of_matmul_peak")


def test_throughput_prints_one_json_line_per_case():
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "throughput.py"), "--population", "2", "--steps",
         "5", "--hidden", "8", "--latent", "4", "--batch", "16", "--repeats", "1",
         "--matmul-size", "128", "--bandwidth-mb", "4"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=True,
    )
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    cases = ["vmap", "sequential", "loop", "reference", "sequential-xla", "procs"]
    assert [r["case"] for r in rows] == cases
    for r in rows:
        assert all(key in r for key in REQUIRED), sorted(set(REQUIRED) - set(r))
        assert r["population"] == 2 and r["steps"] == 5
        assert isinstance(r["device"], str) and r["device"]
        for key in ("member_steps_per_s", "model_gflops_per_s", "ratio_vs_sequential",
                    "ratio_vs_loop", *ROOFLINE):
            assert math.isfinite(r[key]) and r[key] > 0, (key, r[key])
        assert r["compile_s"] >= 0
        # The roofline bound is max(compute, memory); the ratio is measured / bound.
        bound = max(r["flops_per_member_step"] / r["peak_flops"],
                    r["bytes_per_member_step"] / r["bandwidth_bytes_per_s"]) * 1e6
        assert math.isclose(r["roofline_us_per_member_step"], bound, rel_tol=1e-9)
        assert math.isclose(r["roofline_ratio"], r["measured_us_per_member_step"] / bound,
                            rel_tol=1e-9)
        assert math.isclose(r["measured_us_per_member_step"], 1e6 / r["member_steps_per_s"],
                            rel_tol=1e-9)
    assert rows[1]["ratio_vs_sequential"] == 1.0 and rows[2]["ratio_vs_loop"] == 1.0
    assert rows[3]["ratio_vs_reference"] == 1.0
    # The fair baselines: the best of the three sequential ways is the yardstick.
    rates = {r["case"]: r["member_steps_per_s"] for r in rows}
    best = max(rates["sequential"], rates["sequential-xla"], rates["procs"])
    assert math.isclose(rows[0]["ratio_vs_best_fair_sequential"], rates["vmap"] / best)
    assert rows[5]["processes"] == 2 or rows[5]["processes"] == len(os.sched_getaffinity(0))
    # Adam, hidden 8, latent 4, digits (64 features), batch 16: 9 parameter passes + activations.
    n_params = 64 * 8 + 8 + 8 * 4 + 4 + 4 * 8 + 8 + 8 * 64 + 64
    expected = 9 * 4 * n_params + 16 * 16 * (64 + 8 + 4 + 8 + 64)
    assert all(r["bytes_per_member_step"] == expected for r in rows)


def test_throughput_peak_flags_override_the_measured_peaks():
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "throughput.py"), "--population", "1", "--steps",
         "2", "--hidden", "8", "--latent", "4", "--batch", "8", "--repeats", "1", "--cases",
         "vmap", "--peak-flops", "1e12", "--bandwidth", "1e11"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=True,
    )
    (row,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert row["peak_flops"] == 1e12 and row["bandwidth_bytes_per_s"] == 1e11
    assert row["peak_source"] == "flag" and row["measured_matmul_flops_per_s"] is None


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


def _json_lines(args, script):
    out = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, check=True)
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def test_masking_and_crn_benches_print_json_lines():
    rows = _json_lines(["--population", "2", "--steps", "5", "--hidden", "8", "--latent", "4",
                        "--batch", "16", "--repeats", "1", "--pads", "1,2", "--pad-axes", "both",
                        "--no-mixed"], "masking.py")
    assert [r["case"] for r in rows][0] == "fixed" and len(rows) >= 2
    assert all(r["member_steps_per_s"] > 0 and r["ratio_vs_fixed"] > 0 for r in rows)
    rows = _json_lines(["--configs", "3", "--replicates", "2", "--budgets", "10", "--seeds", "0",
                        "--hidden", "8"], "crn.py")
    assert {r["crn"] for r in rows} == {False, True}


def test_hparams_cost_prints_one_json_line_per_case():
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "hparams_cost.py"), "--population", "2",
         "--steps", "3", "--hidden", "8", "--latent", "4", "--batch", "8", "--repeats", "1",
         "--cases", "plain,no-schedule,batch-norm"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=True,
    )
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["case"] for r in rows] == ["plain", "no-schedule", "batch-norm"]
    for r in rows:
        assert r["population"] == 2 and r["steps"] == 3 and r["device"]
        assert math.isfinite(r["member_steps_per_s"]) and r["member_steps_per_s"] > 0
        assert math.isclose(r["us_per_member_step"], 1e6 / r["member_steps_per_s"])
    assert rows[0]["ratio_vs_plain"] == 1.0


def test_pbt_bench_compares_searchers_at_equal_member_steps():
    rows = _json_lines(["--kinds", "ae", "--seeds", "0", "--population", "4", "--steps", "20",
                        "--ready", "10", "--chunk", "10"], "pbt.py")
    runs = {r["searcher"]: r for r in rows if not r.get("summary")}
    assert set(runs) == {"pbt", "random", "asha"}
    assert runs["pbt"]["member_steps"] == runs["random"]["member_steps"] == 4 * 20
    assert math.isfinite(runs["pbt"]["best_val_loss"])
    assert math.isfinite(runs["random"]["best_val_loss"])
    summary = {r["searcher"]: r for r in rows if r.get("summary")}
    assert summary["random"]["vs_random"] == 0.0
