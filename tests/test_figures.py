"""Every figure renders on the small sweep: PNG bytes of a sane size and a caption; a figure with
nothing to show is None."""

import dataclasses
import datetime
import math
import sqlite3
import struct

import numpy as np
import pytest

from jaxae import analysis as analysis_lib
from jaxae import figures, plotting, trial_views
from jaxae.results import load_sweep
from jaxae.retrain import Downstream

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def parts(sweep_dir):
    sweep = load_sweep(sweep_dir)
    return sweep, analysis_lib.analyse(sweep), analysis_lib.noise(sweep)


def _fake_downstream(sweep) -> Downstream:
    """Made-up scores for three trials: the figure draws what it is given, no retraining."""
    ids = [t["trial_id"] for t in sweep.trials[:3]]
    return Downstream(trial_ids=ids, steps=[60, 60, 20],
                      stored_val_loss=np.array([0.05, 0.06, 0.07]),
                      val_loss=np.array([0.05, 0.06, 0.07]),
                      test_loss=np.array([0.051, 0.062, 0.071]),
                      probe_accuracy=np.array([0.8, 0.7, 0.6]), auc=np.array([0.9, 0.8, 0.7]),
                      scores=None, is_anomaly=None, anomaly_class=0, num_classes=10, notes=[])


def _size(png: bytes) -> tuple[int, int]:
    assert png[:8] == PNG
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk comes first
    return width, height


def _draw_all(sweep, analysis, noise):
    return {
        "hyperparameters": figures.hyperparameters(sweep, analysis),
        "importance": figures.importance(sweep, analysis),
        "interactions": figures.interactions(sweep, analysis),
        "curves": figures.curves(sweep),
        "rungs": figures.rungs(sweep),
        "noise": figures.noise(sweep, noise),
        "downstream": figures.downstream(sweep, _fake_downstream(sweep)),
        "history": trial_views.history(sweep),
        "parallel": trial_views.parallel_coordinates(sweep, analysis),
        **{name: (png, caption) for name, png, caption in
           trial_views.pair_contours(sweep, analysis)},
    }


def test_every_figure_renders_a_png_with_a_caption(parts) -> None:
    sweep, analysis, noise = parts
    assert analysis is not None and noise is not None
    drawn_all = _draw_all(sweep, analysis, noise)
    assert sum(name.startswith("pair-") for name in drawn_all) == 3  # every pair of 3 names
    for name, drawn in drawn_all.items():
        assert drawn is not None, name
        png, caption = drawn
        width, height = _size(png)
        assert 300 <= width <= 2400 and 200 <= height <= 2400, (name, width, height)
        assert 10_000 <= len(png) <= 2_000_000, (name, len(png))
        assert isinstance(caption, str) and len(caption) > 40, name


def test_figures_with_nothing_to_show_are_none(parts) -> None:
    sweep, _, _ = parts
    assert figures.importance(sweep, None) is None
    assert figures.interactions(sweep, None) is None
    assert figures.noise(sweep, None) is None
    assert figures.downstream(sweep, None) is None


def test_pair_contours_need_an_analysis(parts) -> None:
    sweep, _, _ = parts
    assert trial_views.pair_contours(sweep, None) == []


@pytest.mark.parametrize("lo, hi", [(4.3, 11.0), (1.0, 20.0), (0.05, 0.5), (25.0, 300.0),
                                    (0.3, 0.33), (1.1, 1.3), (0.011, 0.0125), (3.2, 11.5),
                                    (25.5, 50.5), (0.564, 12.0)])
def test_log_ticks_are_at_least_four_round_numbers_inside_the_range(lo, hi) -> None:
    ticks = plotting.nice_ticks(lo, hi)
    assert len(ticks) >= 4 and ticks == sorted(set(ticks))
    assert all(lo <= t <= hi for t in ticks)
    # Round: three significant digits say each exactly.
    assert all(abs(float(f"{t:.3g}") - t) <= 1e-9 * t for t in ticks)
    # The low end, where the best losses are, is labelled (within a fifth of the log range).
    assert math.log(ticks[0] / lo) <= 0.2 * math.log(hi / lo)


def test_history_draws_best_so_far_against_time_from_the_stores_times(parts) -> None:
    sweep, _, _ = parts
    start = datetime.datetime.fromisoformat(sweep.info["start_time"]).timestamp()
    with sqlite3.connect(sweep.dir / "trials.db") as db:
        stamped = dict(db.execute("SELECT trial_id, finished_at FROM trials"))
    finished = trial_views.finish_times(sweep)
    assert finished == pytest.approx({t: at - start for t, at in stamped.items()}, abs=1e-9)
    # sweep.json's start is whole seconds; every trial stops after it and before its end.
    end = datetime.datetime.fromisoformat(sweep.info["end_time"]).timestamp()
    assert all(-1 < at <= end - start + 1 for at in finished.values())
    png, caption = trial_views.history(sweep)
    assert _size(png)[1] > 800  # two panels: by trial number, then by time
    assert "wall-clock time" in caption and "no per-trial times" not in caption


def test_history_without_times_is_by_trial_number_only(parts) -> None:
    sweep, _, _ = parts
    untimed = dataclasses.replace(sweep, trials=[{**t, "started_at": None, "finished_at": None}
                                                 for t in sweep.trials])
    assert trial_views.finish_times(untimed) == {}
    png, caption = trial_views.history(untimed)
    assert _size(png)[1] < 600  # one panel
    assert "no per-trial times" in caption
