"""``python -m jaxae.report``: it builds from a small sweep, every figure is a PNG the page shows,
stale figures go, and bad input is one line with exit status 2."""

import shutil
import sqlite3

import pytest

from jaxae import analysis as analysis_lib
from jaxae import importance, pages, report, results

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="session")
def built(sweep_dir):
    """The report written by the command line, with the terminal summary it printed."""
    import contextlib
    import io

    buf, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
        # Four members fill a population as large as the sweep's (4 slots), so the retraining
        # reuses the programs the sweep compiled in this process.
        code = report.main([str(sweep_dir), "--top-k", "4"])
    assert code == 0
    return sweep_dir / "report", buf.getvalue(), err.getvalue()


def test_the_report_says_what_it_is_doing_and_how_long_it_took(built) -> None:
    _, _, err = built
    for part in ("importances", "retraining the top 4 configurations", "figures"):
        assert f"report: {part}" in err
        assert any(line.startswith(f"report: {part}") and line.endswith(" s")
                   for line in err.splitlines()), (part, err)


def test_report_writes_every_figure_and_the_page_shows_them(built) -> None:
    out, summary, _ = built
    figures = sorted(p.name for p in out.glob("*.png") if not p.name.startswith("pair-"))
    # ASHA with replicates and labels: every figure the report knows has something to show,
    # but population-based training's schedule.
    assert figures == sorted(set(report.FIGURES) - {"schedule.png"})
    page = (out / "index.html").read_text()
    for name in figures:
        assert (out / name).read_bytes()[:8] == PNG
        # Shown, and linked to the full-size image.
        assert f'<a href="{name}"><img src="{name}"' in page
    # Self-contained: inline scripts only, nothing fetched from anywhere.
    assert "http" not in page and "<script src" not in page and "<link" not in page
    assert "learning_rate" in page and "% of variance at" in page
    # The terminal summary: best configuration, importances as percentages, the page's path.
    assert "best: trial" in summary and "learning_rate=" in summary
    assert summary.count("%") >= 3
    assert str(out / "index.html") in summary


def test_every_pair_of_the_top_hyperparameters_can_be_picked(built) -> None:
    out, _, _ = built
    page = (out / "index.html").read_text()
    pairs = sorted(p.name for p in out.glob("pair-*.png"))
    # Three varying hyperparameters: all three pairs.
    assert len(pairs) == 3
    for name in pairs:
        assert (out / name).read_bytes()[:8] == PNG
        assert f'<option value="{name}"' in page
    assert 'id="pair-select"' in page and 'id="pair-img"' in page


def test_the_page_lists_every_trial_in_a_sortable_table(built, sweep_dir) -> None:
    out, _, _ = built
    page = (out / "index.html").read_text()
    table = page[page.index('<table id="trials">'):]
    table = table[:table.index("</table>")]
    with sqlite3.connect(sweep_dir / "trials.db") as db:
        rows = db.execute("SELECT trial_id, status, val_loss FROM trials").fetchall()
    assert table.count("<tr data-status=") == len(rows)
    for trial_id, status, val_loss in rows:
        assert f'<tr data-status="{status}"><td class="num" data-v="{trial_id}">' in table
        if val_loss is not None:
            assert f'data-v="{val_loss!r}"' in table  # sorts by the exact stored value
    assert 'id="trials-filter"' in page and "addEventListener" in page


def test_importance_is_given_at_every_budget_it_was_computed(sweep_dir, monkeypatch) -> None:
    # Few enough trials needed that more than one rung of the small sweep qualifies.
    monkeypatch.setattr(analysis_lib, "min_fit_trials", lambda d: 4)
    sweep = results.load_sweep(sweep_dir)
    analysis = analysis_lib.analyse(sweep)
    others = analysis.other_budgets()
    assert others, "the small sweep should have importances at two budgets"
    summary = pages.text_summary(sweep, analysis, None, None, sweep_dir / "index.html")
    page = pages.index_html(sweep, analysis, None, None, {})
    head = summary[summary.index("importance at"):].splitlines()
    assert f"importance at {analysis.fit.budget} steps" in head[0]
    assert all(f"{b} steps" in head[1] for b in others)
    for b in others:
        assert f"at {b} steps ({analysis.by_budget[b][0]} trials)" in page
        for name, share in zip(analysis.importance.names, analysis.by_budget[b][1], strict=True):
            line = next(x for x in head if x.strip().startswith(name))
            assert f"{100 * share:.1f}%" in line, (b, name)
            # The same numbers as fANOVA at that budget's own trials.
            fit = analysis_lib.fit_set(sweep, budget=b)
            want = importance.fanova(fit.X, fit.y, analysis.importance.names,
                                     n_trees=analysis_lib.N_TREES, seed=sweep.config.seed,
                                     pairs=False).main
            assert share == pytest.approx(want[analysis.importance.names.index(name)])


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
