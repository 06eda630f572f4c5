"""The sweep's output folder: empty or resumable, locked, and a resumed sweep's sweep.json."""

import json

import pytest

from jaxae import outdir
from jaxae.errors import UserError
from jaxae.lock import LOCK


def test_a_new_sweep_takes_an_empty_or_missing_folder_and_locks_it(tmp_path):
    out = tmp_path / "a" / "b"
    lock = outdir.own(out, resume=False)
    try:
        assert out.is_dir() and (out / LOCK).exists()
        assert [p.name for p in out.iterdir()] == [LOCK]  # its write probe left nothing
    finally:
        lock.release()
    (out / "trials.db").write_text("x")
    with pytest.raises(UserError, match="is not empty"):
        outdir.own(out, resume=False)


def test_resuming_needs_a_sweep_json_with_a_config(tmp_path):
    with pytest.raises(UserError, match="holds no sweep"):
        outdir.read_info(tmp_path)
    (tmp_path / "sweep.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="not a sweep's sweep.json"):
        outdir.read_info(tmp_path)
    (tmp_path / "sweep.json").write_text(json.dumps({"config": {"trials": 3}}))
    assert outdir.read_info(tmp_path)["config"] == {"trials": 3}


def test_a_resumed_configuration_refuses_changed_settings_naming_them(tmp_path):
    info = {"config": {"trials": 3, "steps": 20}}
    config = outdir.resumed_config(tmp_path, info, {}, {})
    assert (config.trials, config.steps) == (3, 20)
    assert outdir.resumed_config(tmp_path, info, {"trials": 3}, {}).trials == 3
    with pytest.raises(UserError, match="'trials' was 3, now 4"):
        outdir.resumed_config(tmp_path, info, {"trials": 4}, {})


def test_changed_data_are_refused(tmp_path):
    info = {"config": {"data": "x.npy"}, "fingerprint": {"data": "aa"}}
    outdir.check_data(tmp_path, info, {"data": "aa"})
    with pytest.raises(UserError, match="the data differ"):
        outdir.check_data(tmp_path, info, {"data": "bb"})
