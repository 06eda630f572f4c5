"""The bench scripts run and print well-formed JSON lines whose fields keep their invariants (no
timing asserts).

Most run in this process through their ``main(argv)`` with tiny shapes and the fewest cases that
check their fields, so each compiles one or two programs and costs no interpreter start. Those
that must start processes (throughput's child cases, time_to_quality, whose module registers a
JAX listener and clears JAX's caches) run as subprocesses; the long ones are marked ``slow``.
"""

import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
REQUIRED = ("case", "population", "steps", "member_steps_per_s", "model_gflops_per_s", "device",
            "compile_s", "ratio_vs_sequential", "ratio_vs_loop")
ROOFLINE = ("bytes_per_member_step", "peak_flops", "bandwidth_bytes_per_s",
            "roofline_us_per_member_step", "measured_us_per_member_step", "roofline_ratio",
            "fraction_of_matmul_peak")
# The smallest shapes every script takes: two members, two steps, an 8-4 autoencoder.
TINY = ["--population", "2", "--steps", "2", "--hidden", "8", "--latent", "4", "--repeats", "1"]


@pytest.fixture
def bench(monkeypatch, capsys):
    """``bench(script, *args)``: runs ``bench/<script>.py``'s ``main(args)`` in this process and
    returns its JSON lines. The scripts import their siblings from ``bench/`` and may set
    ``XLA_FLAGS`` (``runtime.use_cpu_cores``): both are undone after the test, so no later
    subprocess inherits a device count. JAX's backends start before the script runs, so its
    flags never change this process's devices either: a bench test that ran first would
    otherwise leave one device per core to every later in-process test (test_sweep's resume
    after SIGKILL, whose child runs on one device, then failed on an indivisible sharding)."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
    jax.devices()

    def run(script: str, *args: str) -> list[dict]:
        capsys.readouterr()
        assert importlib.import_module(script).main(list(args)) == 0
        out = capsys.readouterr().out
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    return run


def _json_lines(script, *args):
    out = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def _check_throughput_rows(rows, population, steps, batch):
    for r in rows:
        assert all(key in r for key in REQUIRED), sorted(set(REQUIRED) - set(r))
        assert r["population"] == population and r["steps"] == steps
        assert isinstance(r["device"], str) and r["device"]
        for key in ("member_steps_per_s", "model_gflops_per_s", *ROOFLINE):
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
        assert math.isclose(r["fraction_of_matmul_peak"],
                            r["member_steps_per_s"] * r["flops_per_member_step"] / r["peak_flops"],
                            rel_tol=1e-9)
    # Adam, hidden 8, latent 4, digits (64 features): 9 parameter passes + 4 activation passes.
    n_params = 64 * 8 + 8 + 8 * 4 + 4 + 4 * 8 + 8 + 8 * 64 + 64
    expected = 9 * 4 * n_params + 16 * batch * (64 + 8 + 4 + 8 + 64)
    assert all(r["bytes_per_member_step"] == expected for r in rows)
    # Analytic FLOPs: 3 x forward, a dense layer 2 * batch * in * out.
    flops = 3 * 2 * batch * (64 * 8 + 8 * 4 + 4 * 8 + 8 * 64)
    assert all(r["flops_per_member_step"] == flops for r in rows)


def test_throughput_rows_keep_their_roofline(bench):
    # vmap and loop: the per-step program the loop calls is compiled in every run anyway.
    rows = bench("throughput", *TINY, "--batch", "16", "--cases", "vmap,loop", "--peak-flops",
                 "1e12", "--bandwidth", "1e11")
    assert [r["case"] for r in rows] == ["vmap", "loop"]
    _check_throughput_rows(rows, population=2, steps=2, batch=16)
    # The flags replace the measured peaks, and nothing is measured.
    for r in rows:
        assert r["peak_flops"] == 1e12 and r["bandwidth_bytes_per_s"] == 1e11
        assert r["peak_source"] == "flag" and r["measured_matmul_flops_per_s"] is None
        # Only the baselines that ran have a ratio.
        assert r["ratio_vs_sequential"] is None and r["ratio_vs_best_fair_sequential"] is None
    assert rows[1]["ratio_vs_loop"] == 1.0
    assert math.isclose(rows[0]["ratio_vs_loop"],
                        rows[0]["member_steps_per_s"] / rows[1]["member_steps_per_s"])


@pytest.mark.slow  # six cases, two of them in child processes (one per core), peaks measured
def test_throughput_prints_one_json_line_per_case():
    rows = _json_lines("throughput.py", *TINY, "--batch", "16", "--matmul-size", "128",
                       "--bandwidth-mb", "4")
    cases = ["vmap", "sequential", "loop", "reference", "sequential-xla", "procs"]
    assert [r["case"] for r in rows] == cases
    _check_throughput_rows(rows, population=2, steps=2, batch=16)
    for r in rows:
        for base in ("sequential", "loop", "reference", "sequential-xla", "procs"):
            assert math.isclose(r[f"ratio_vs_{base}"], r["member_steps_per_s"] / next(
                b["member_steps_per_s"] for b in rows if b["case"] == base))
    assert rows[1]["ratio_vs_sequential"] == 1.0 and rows[2]["ratio_vs_loop"] == 1.0
    assert rows[3]["ratio_vs_reference"] == 1.0
    assert all(r["peak_source"].startswith("measured:") for r in rows)
    # The fair baselines: the best of the three sequential ways is the yardstick.
    rates = {r["case"]: r["member_steps_per_s"] for r in rows}
    best = max(rates["sequential"], rates["sequential-xla"], rates["procs"])
    assert math.isclose(rows[0]["ratio_vs_best_fair_sequential"], rates["vmap"] / best)
    assert rows[5]["processes"] == 2 or rows[5]["processes"] == len(os.sched_getaffinity(0))


def test_time_to_quality_prints_one_json_line_per_case():
    rows = _json_lines("time_to_quality.py", "--cases", "jaxae-random", "--trials", "2",
                       "--steps", "10", "--population", "2", "--target", "100")
    (r,) = rows
    assert r["case"] == "jaxae-random" and r["trials"] == 2 and r["steps"] == 10
    assert r["wall_s"] > 0 and r["compile_s"] >= 0
    assert r["member_steps"] == 2 * 10 and r["trials_completed"] == 2
    assert math.isfinite(r["best_val_loss"]) and r["best_val_loss"] < 100
    assert r["time_to_target_s"] is not None and r["time_to_target_s"] <= r["wall_s"]
    # The best-so-far curve never rises and ends at the best loss.
    losses = [loss for _, loss in r["best_so_far"]]
    assert losses == sorted(losses, reverse=True) and losses[-1] == r["best_val_loss"]
    assert r["common_target"] == round(r["best_val_loss"] * 1.05, 6)


@pytest.mark.slow  # ASHA, and (when installed) Optuna's per-trial loop
def test_time_to_quality_runs_every_kind_of_case():
    cases = "jaxae-asha"
    try:
        import optuna  # noqa: F401

        cases += ",optuna-tpe"
    except ImportError:  # optional: the bench extra
        pass
    rows = _json_lines("time_to_quality.py", "--cases", cases, "--trials", "4", "--steps", "20",
                       "--population", "2", "--target", "100")
    assert [r["case"] for r in rows] == cases.split(",")
    for r in rows:
        assert r["trials"] == 4 and r["steps"] == 20 and r["wall_s"] > 0
        if r["case"] == "jaxae-asha":  # 4 trials may all stop before the top rung
            continue
        assert math.isfinite(r["best_val_loss"])
        assert r["time_to_target_s"] is not None and r["time_to_target_s"] <= r["wall_s"]


def test_masking_rows_count_useful_and_padded_flops(bench):
    rows = bench("masking", *TINY, "--batch", "16", "--pads", "1,2", "--pad-axes", "both",
                 "--no-mixed")
    assert [(r["case"], r["pad"]) for r in rows] == [("fixed", 1), ("pad-both", 2)]
    fixed, padded = rows
    assert fixed["ratio_vs_fixed"] == 1.0
    assert math.isclose(padded["ratio_vs_fixed"],
                        padded["member_steps_per_s"] / fixed["member_steps_per_s"])
    assert (padded["padded_hidden"], padded["padded_latent"]) == (16, 8)
    assert (padded["hidden"], padded["latent"]) == (8, 4)  # the members' true sizes

    def flops(h, z):  # 3 x forward of 64-h-z-h-64 at batch 16
        return 3 * 2 * 16 * (64 * h + h * z + z * h + h * 64)

    assert fixed["useful_flops_per_member_step"] == fixed["padded_flops_per_member_step"]
    assert padded["useful_flops_per_member_step"] == flops(8, 4)
    assert padded["padded_flops_per_member_step"] == flops(16, 8)
    assert math.isclose(padded["useful_fraction"], flops(8, 4) / flops(16, 8))
    for r in rows:
        assert r["member_steps_per_s"] > 0 and math.isfinite(r["final_loss_median"])
        assert math.isclose(r["useful_gflops_per_s"],
                            r["member_steps_per_s"] * r["useful_flops_per_member_step"] / 1e9)


def test_crn_prints_a_row_per_arm(bench):
    rows = bench("crn", "--configs", "2", "--replicates", "2", "--budgets", "4", "--seeds", "0",
                 "--hidden", "8")
    assert [r["crn"] for r in rows] == [False, True]
    for r in rows:
        assert r["steps"] == 4 and r["configs"] == 2 and r["replicates"] == 2
        assert r["var_loss"] >= 0 and r["var_diff"] >= 0 and 0 <= r["flip_prob"] <= 1
        assert -1 <= r["kendall_tau"] <= 1
    assert rows[1]["learning_rates"] is not None and len(rows[1]["learning_rates"]) == 2


def test_hparams_cost_prints_one_json_line_per_case(bench):
    rows = bench("hparams_cost", *TINY, "--batch", "8", "--cases", "plain,cosine")
    assert [r["case"] for r in rows] == ["plain", "cosine"]
    for r in rows:
        assert r["population"] == 2 and r["steps"] == 2 and r["device"]
        assert math.isfinite(r["member_steps_per_s"]) and r["member_steps_per_s"] > 0
        assert math.isclose(r["us_per_member_step"], 1e6 / r["member_steps_per_s"])
        assert r["compile_s"] >= 0
    assert rows[0]["ratio_vs_plain"] == 1.0
    assert math.isclose(rows[1]["ratio_vs_plain"],
                        rows[1]["member_steps_per_s"] / rows[0]["member_steps_per_s"])


@pytest.mark.slow  # three sweeps (PBT, random, ASHA) in a subprocess
def test_pbt_bench_compares_searchers_at_equal_member_steps():
    rows = _json_lines("pbt.py", "--kinds", "ae", "--seeds", "0", "--population", "4", "--steps",
                       "20", "--ready", "10", "--chunk", "10")
    runs = {r["searcher"]: r for r in rows if not r.get("summary")}
    assert set(runs) == {"pbt", "random", "asha"}
    assert runs["pbt"]["member_steps"] == runs["random"]["member_steps"] == 4 * 20
    assert math.isfinite(runs["pbt"]["best_val_loss"])
    assert math.isfinite(runs["random"]["best_val_loss"])
    summary = {r["searcher"]: r for r in rows if r.get("summary")}
    assert summary["random"]["vs_random"] == 0.0


def test_sweep_bench_reports_the_sweep_against_the_trainer(bench):
    rows = bench("sweep", "--tiny", "--searchers", "random,asha", "--population", "4",
                 "--trials", "6", "--steps", "30", "--chunk", "10", "--ref-steps", "10",
                 "--ref-repeats", "1")
    assert [r["searcher"] for r in rows] == ["random", "asha"]
    for r in rows:
        assert r["finished_trials"] == 6 and r["first_trial_s"] > 0 and r["cold_wall_s"] > 0
        assert 0 < r["busy_slot_fraction"] <= 1 and r["member_steps"] <= r["slot_steps"]
        assert 0 < r["packing_bound"] <= r["busy_slot_fraction"]
        assert 0 < r["occupancy"] <= 1 and r["slots_per_bucket"] >= 4
        assert r["efficiency_of_bound"] == pytest.approx(r["sweep_efficiency"]
                                                         / r["packing_bound"])
        assert r["sweep_efficiency"] == pytest.approx(
            r["member_steps_per_s"] / r["trainer_member_steps_per_s"])
        assert r["member_steps_per_s"] == pytest.approx(
            r["member_steps"] / (r["wall_s"] - r["compile_s"]))
    # Random search trains every trial to the full budget; ASHA stops most of them early.
    assert rows[0]["member_steps"] == 6 * 30 > rows[1]["member_steps"]
    # Two programs (depth 1 and 2), each holding the whole population or half of it.
    split = [bench("sweep", "--tiny", "--searchers", "random", "--population", "4", "--trials",
                   "6", "--steps", "20", "--chunk", "10", "--ref-steps", "10", "--ref-repeats",
                   "1", "--vary", "depth=1,2", "--capacity", capacity)[0]
             for capacity in ("population", "share")]
    assert [r["buckets"] for r in split] == [2, 2] and [r["vary"] for r in split] == [
        ["depth=1,2"]] * 2
    d = split[0]["devices"]  # slots are a multiple of the devices
    assert [r["slots_per_bucket"] for r in split] == [-(-4 // d) * d, -(-2 // d) * d]
    assert split[0]["member_steps"] == split[1]["member_steps"] == 6 * 20


def test_searchers_autoencoders_traces_each_sweep_and_scans_a_grid(bench):
    # Optuna's GPSampler joins where PyTorch is installed (its first trials are its random startup).
    torch = importlib.util.find_spec("torch") is not None
    searchers = "grid" + (",optuna-gp" if torch else "")
    rows = bench("searchers_autoencoders", "--kinds", "vae", "--searchers", searchers,
                 "--seeds", "0", "--trials", "4", "--population", "2", "--steps", "2",
                 "--chunk", "2", "--grid-num", "2", "--trace", "--space", '{"hidden": 8}')
    runs = {r["searcher"]: r for r in rows if not r.get("summary")}
    assert list(runs) == searchers.split(",")
    for r in runs.values():
        losses = [t["val_loss"] for t in r["trace"]]
        assert r["completed"] == len(losses) == 4 and sorted(t["trial"] for t in r["trace"]) == [
            0, 1, 2, 3]
        best = min(r["trace"], key=lambda t: t["val_loss"])
        assert r["best_val_loss"] == best["val_loss"] and r["best_trial"] == best["trial"]
        assert r["best_params"] == {k: best[k] for k in ("learning_rate", "weight_decay", "beta")}
    # --grid-num 2: every searched value is an end of its range (4 of the grid's 8 points).
    ends = {"learning_rate": (1e-4, 3e-2), "weight_decay": (1e-6, 1e-2), "beta": (0.1, 4.0)}
    points = set()
    for t in runs["grid"]["trace"]:
        assert all(any(math.isclose(t[k], e) for e in ends[k]) for k in ends)
        points.add(tuple(t[k] for k in ends))
    assert len(points) == 4
    summary = {r["searcher"]: r for r in rows if r.get("summary")}
    assert summary["grid"]["median_best"] == runs["grid"]["best_val_loss"]


@pytest.mark.parametrize(("script", "flag", "name"), [
    ("searchers_autoencoders", "--searchers", "optuna-gp"),
    ("searchers_gp", "--methods", "optuna-gp"),
])
def test_searcher_benches_refuse_an_optuna_gp_run_without_torch(monkeypatch, capsys, script,
                                                                flag, name):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    module = importlib.import_module(script)
    assert module.main([flag, f"random,{name}", "--seeds", "0"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.count("\n") == 1 and out.err.startswith(f"{name} cannot run")
    # Left to its default list, the GP bench says it skips the method and runs the others.
    if script == "searchers_gp":
        assert module.main(["--problems", "branin", "--evaluations", "2", "--seeds", "0"]) == 0
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert rows[0]["method"] == name and "PyTorch" in rows[0]["skipped"]
        assert name not in {r["method"] for r in rows[1:]}


def test_schedulers_bench_drives_each_scheduler_to_its_end(bench):
    rows = bench("schedulers", "--trials", "30,90", "--population", "4")
    assert [(r["searcher"], r["trials"]) for r in rows] == [
        (name, n) for name in ("sha", "hyperband", "asha") for n in (30, 90)]
    for r in rows:
        assert r["tells"] >= r["trials"] and r["us_per_tell"] > 0
