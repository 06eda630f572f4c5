"""``python -m jaxae.export``: the small sweep written into an Optuna storage reads back, through
``optuna.load_study`` and through optuna-dashboard's HTTP API, as the very trials of the jaxae
store, with their times; bad input is one line, exit 2."""

import datetime
import json
import shutil
import sqlite3
import sys
import threading
import urllib.request
from wsgiref.simple_server import WSGIRequestHandler, make_server

import numpy as np
import pytest

from jaxae import export

optuna = pytest.importorskip("optuna")


@pytest.fixture(scope="module")
def exported(sweep_dir, tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('optuna') / 'x.db'}"
    assert export.main([str(sweep_dir), "--optuna-storage", url, "--study-name", "small"]) == 0
    return url, optuna.load_study(study_name="small", storage=url)


def _store(sweep_dir):
    """The jaxae store read with plain SQL: trials (id, status, params, val_loss), and the
    replicate-mean learning curves."""
    with sqlite3.connect(sweep_dir / "trials.db") as db:
        trials = db.execute("SELECT trial_id, status, params, val_loss FROM trials "
                            "ORDER BY trial_id").fetchall()
        points = db.execute("SELECT trial_id, step, val_loss FROM curves").fetchall()
        repeats = db.execute("SELECT MAX(replicate) + 1 FROM replicates").fetchone()[0]
    curves: dict[int, dict[int, list]] = {}
    for trial, step, val in points:
        curves.setdefault(trial, {}).setdefault(step, []).append(val)
    means = {t: {s: float(np.mean(v)) for s, v in c.items()
                 if len(v) == repeats and None not in v} for t, c in curves.items()}
    return trials, means


def test_every_trial_reads_back_as_stored(sweep_dir, exported) -> None:
    _, study = exported
    trials, curves = _store(sweep_dir)
    got = sorted(study.get_trials(deepcopy=False), key=lambda t: t.user_attrs["jaxae_trial_id"])
    assert len(got) == len(trials) and study.direction == optuna.study.StudyDirection.MINIMIZE
    states = {"completed": "COMPLETE", "pruned": "PRUNED", "diverged": "FAIL", "failed": "FAIL"}
    varying = ("learning_rate", "latent_dim", "weight_decay")
    for ot, (trial_id, status, params, val_loss) in zip(got, trials, strict=True):
        assert ot.user_attrs["jaxae_trial_id"] == trial_id
        assert ot.state.name == states[status]
        params = json.loads(params)
        assert ot.params == {k: params[k] for k in varying}
        if status in ("completed", "pruned"):
            assert ot.value == pytest.approx(val_loss, rel=1e-12)
        else:
            assert ot.value is None
        assert ot.intermediate_values == pytest.approx(curves.get(trial_id, {}), rel=1e-12)
        assert len(ot.intermediate_values) > 0
    dists = got[0].distributions
    assert dists["learning_rate"] == optuna.distributions.FloatDistribution(1e-3, 3e-2, log=True)
    assert dists["latent_dim"] == optuna.distributions.IntDistribution(2, 8)
    assert study.user_attrs["fixed_params"]["hidden"] == 16


def test_optunas_importance_evaluator_runs_on_the_export(exported) -> None:
    _, study = exported
    shares = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    assert set(shares) == {"learning_rate", "latent_dim", "weight_decay"}
    assert sum(shares.values()) == pytest.approx(1.0)


def test_bad_input_is_one_line_and_exit_2(sweep_dir, exported, tmp_path, capsys,
                                          monkeypatch) -> None:
    url, _ = exported
    assert export.main([str(tmp_path), "--optuna-storage", url]) == 2  # no sweep there
    assert export.main([str(sweep_dir), "--optuna-storage", url, "--study-name", "small"]) == 2
    assert export.main([str(sweep_dir), "--optuna-storage", "nosuchdb://x"]) == 2
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if it were not installed
    assert export.main([str(sweep_dir), "--optuna-storage", url, "--study-name", "other"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 4 and all(line.startswith("error: ") for line in err)
    assert "sweep.json" in err[0] and "already exists" in err[1]
    assert "nosuchdb" in err[2] and "optuna is not installed" in err[3]
    # A refused export leaves the storage as it was: one study, all its trials.
    assert [s.study_name for s in optuna.get_all_study_summaries(url)] == ["small"]


def test_running_and_diverged_trials_keep_their_state(sweep_dir, tmp_path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(sweep_dir, copy, ignore=shutil.ignore_patterns("report"))
    with sqlite3.connect(copy / "trials.db") as db:
        db.execute("UPDATE trials SET status = 'running' WHERE trial_id = 0")
        db.execute("UPDATE trials SET status = 'diverged', val_loss = NULL WHERE trial_id = 1")
    url = f"sqlite:///{tmp_path / 'y.db'}"
    name, n = export.export(copy, url)
    assert name == "jaxae-copy"
    got = {t.user_attrs["jaxae_trial_id"]: t for t in optuna.load_study(
        study_name=name, storage=url).trials}
    assert len(got) == n
    assert got[0].state == optuna.trial.TrialState.RUNNING and got[0].value is None
    assert got[0].datetime_complete is None
    assert got[1].state == optuna.trial.TrialState.FAIL and got[1].value is None


def test_a_storage_password_never_reaches_the_message(sweep_dir, capsys) -> None:
    url = "postgresql://bob:hunter2@127.0.0.1:1/nowhere"
    assert export.main([str(sweep_dir), "--optuna-storage", url]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "hunter2" not in err and "bob:***@" in err


def _times(sweep_dir):
    """trial -> (started_at, finished_at) by plain SQL, as naive local times (Optuna's kind)."""
    with sqlite3.connect(sweep_dir / "trials.db") as db:
        rows = db.execute("SELECT trial_id, started_at, finished_at FROM trials").fetchall()
    return {t: tuple(datetime.datetime.fromtimestamp(v) for v in (a, b)) for t, a, b in rows}


def test_each_trial_keeps_its_own_times(sweep_dir, exported) -> None:
    _, study = exported
    times = _times(sweep_dir)
    assert len({start for start, _ in times.values()}) > 1  # trials started at different times
    for ot in study.trials:
        start, end = times[ot.user_attrs["jaxae_trial_id"]]
        assert abs((ot.datetime_start - start).total_seconds()) < 1e-3
        assert abs((ot.datetime_complete - end).total_seconds()) < 1e-3
        assert ot.datetime_start <= ot.datetime_complete


def test_a_store_without_times_exports_the_sweeps_start_and_end(sweep_dir, tmp_path) -> None:
    copy = tmp_path / "old"
    shutil.copytree(sweep_dir, copy, ignore=shutil.ignore_patterns("report"))
    with sqlite3.connect(copy / "trials.db") as db:  # the trials table as older stores had it
        db.execute("ALTER TABLE trials DROP COLUMN finished_at")
        db.execute("ALTER TABLE trials DROP COLUMN started_at")
    info = json.loads((copy / "sweep.json").read_text())
    start, end = (datetime.datetime.fromisoformat(info[k]).astimezone().replace(tzinfo=None)
                  for k in ("start_time", "end_time"))
    url = f"sqlite:///{tmp_path / 'old.db'}"
    name, n = export.export(copy, url)
    trials = optuna.load_study(study_name=name, storage=url).trials
    assert len(trials) == n and n > 0
    assert all(t.datetime_start == start and t.datetime_complete == end for t in trials)


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:  # no request lines in the test output
        pass


def test_optuna_dashboard_serves_the_export(sweep_dir, exported) -> None:
    dashboard = pytest.importorskip("optuna_dashboard")
    url, study = exported
    server = make_server("127.0.0.1", 0, dashboard.wsgi(url), handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    # No proxy: the request must reach this very server on the loopback interface.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def get(path):
        with opener.open(f"http://127.0.0.1:{server.server_port}{path}", timeout=60) as r:
            assert r.status == 200
            return json.loads(r.read())

    try:
        (summary,) = get("/api/studies")["study_summaries"]
        assert summary["study_name"] == "small" and summary["directions"] == ["minimize"]
        detail = get(f"/api/studies/{summary['study_id']}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    trials, curves = _store(sweep_dir)
    times = _times(sweep_dir)
    got = {int(next(a["value"] for a in t["user_attrs"] if a["key"] == "jaxae_trial_id")): t
           for t in detail["trials"]}
    assert sorted(got) == [t for t, *_ in trials]
    states = {"completed": "Complete", "pruned": "Pruned", "diverged": "Fail", "failed": "Fail"}
    for trial_id, status, params, val_loss in trials:
        t = got[trial_id]
        assert t["state"] == states[status]
        if status in ("completed", "pruned"):
            assert t["values"] == [pytest.approx(val_loss, rel=1e-12)]
        shown = {p["name"]: p["param_external_value"] for p in t["params"]}
        assert shown == {k: str(v) for k, v in json.loads(params).items()
                         if k in ("learning_rate", "latent_dim", "weight_decay")}
        assert {v["step"]: v["value"] for v in t["intermediate_values"]} == pytest.approx(
            curves[trial_id], rel=1e-12)
        start, end = times[trial_id]
        assert abs((datetime.datetime.fromisoformat(t["datetime_start"]) - start
                    ).total_seconds()) < 1e-3
        assert abs((datetime.datetime.fromisoformat(t["datetime_complete"]) - end
                    ).total_seconds()) < 1e-3
    assert detail["has_intermediate_values"] is True
    best = min((v, t) for t, s, _, v in trials if s == "completed")
    assert [b["number"] for b in detail["best_trials"]] == [got[best[1]]["number"]]
