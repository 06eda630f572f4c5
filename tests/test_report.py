"""``python -m jaxae.report``: it builds from a small sweep, every figure is a PNG the page shows,
stale figures go, and bad input is one line with exit status 2."""

import shutil
import sqlite3

import pytest

from jaxae import report, results

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="session")
def built(sweep_dir):
    """The report written by the command line, with the terminal summary it printed."""
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        # Four members fill a population as large as the sweep's (4 slots), so the retraining
        # reuses the programs the sweep compiled in this process.
        code = report.main([str(sweep_dir), "--top-k", "4"])
    assert code == 0
    return sweep_dir / "report", buf.getvalue()


def test_report_writes_every_figure_and_the_page_shows_them(built) -> None:
    out, summary = built
    pngs = sorted(p.name for p in out.glob("*.png"))
    # ASHA with replicates and labels: every figure the report knows has something to show.
    assert pngs == sorted(report.FIGURES)
    page = (out / "index.html").read_text()
    for name in pngs:
        assert (out / name).read_bytes()[:8] == PNG
        assert f'<img src="{name}"' in page
    assert "<script" not in page and "http" not in page  # self-contained
    assert "learning_rate" in page and "variance explained" in page
    # The terminal summary: best configuration, importances as percentages, the page's path.
    assert "best: trial" in summary and "learning_rate=" in summary
    assert summary.count("%") >= 3
    assert str(out / "index.html") in summary


def test_diverged_trials_are_drawn_not_dropped(sweep_dir, tmp_path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(sweep_dir, copy, ignore=shutil.ignore_patterns("report"))
    with sqlite3.connect(copy / "trials.db") as db:
        db.execute("UPDATE trials SET status = 'diverged', val_loss = NULL WHERE trial_id = 0")
    built = report.build(copy, with_downstream=False)
    assert "hyperparameters.png" in built.figures
    assert "downstream.png" not in built.figures
    assert not (copy / "report" / "downstream.png").exists()
    sweep = results.load_sweep(copy)
    assert sweep.status_counts()["diverged"] >= 1
    assert 0 not in [t["trial_id"] for t in results.ranked(sweep)]


def test_a_directory_that_is_not_a_sweep_exits_2(tmp_path, capsys) -> None:
    assert report.main([str(tmp_path)]) == 2
    (tmp_path / "sweep.json").write_text("{not json")
    (tmp_path / "trials.db").write_bytes(b"not a database")
    assert report.main([str(tmp_path)]) == 2
    (tmp_path / "sweep.json").write_text('{"config": {"model": "ae"}}')
    assert report.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
    assert "no sweep.json" in err[0] and "sweep.json" in err[1] and "trials.db" in err[2]
    assert not (tmp_path / "report").exists()
