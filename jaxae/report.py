"""``python -m jaxae.report DIR``: which hyperparameters matter for this autoencoder, and how much.

Reads a finished (or still running) sweep's ``DIR/sweep.json`` and ``DIR/trials.db`` (opened
read-only) and writes ``DIR/report/``: PNG figures and one self-contained ``index.html`` that shows
them under a summary table, then prints a plain-text summary. The analysis:

* every varying hyperparameter against the final validation loss (diverged trials shown, pruned
  trials lighter, the best marked);
* functional ANOVA importances (Hutter et al. 2014) on a random-forest surrogate of the log loss,
  with its out-of-bag R^2, a cross-check on a synthetic objective of known importances at the same
  configurations, and heat maps of the surrogate over the most important pairs;
* learning curves of the top trials and, for multi-fidelity searchers, the rungs; for
  population-based training, the hyperparameter schedule the best trial's weights followed;
* seed noise against the spread across configurations when the sweep has replicates;
* downstream quality of the top-k configurations, retrained exactly as the sweep trained them:
  anomaly-detection ROC AUC with one class held out, and linear-probe accuracy of the codes.

The sweep runs this automatically at its end unless ``--no-report``. The parts live in their own
modules: ``results`` (reading a sweep), ``analysis`` (importances, pair surfaces, noise),
``retrain`` (the downstream scores), ``figures`` and ``pages``; this one builds the directory and
holds the command line.
"""


from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from jaxae import analysis as analysis_lib
from jaxae import pages
from jaxae import results as results_lib
from jaxae import retrain as retrain_lib
from jaxae.analysis import Analysis, Noise
from jaxae.errors import UserError
from jaxae.retrain import Downstream

REPORT_DIR = "report"
# Every figure name the report may write; a figure not produced this time is removed so the
# directory never shows a stale picture next to a new index.html.
FIGURES = ("hyperparameters.png", "importance.png", "interactions.png", "history.png",
           "parallel.png", "curves.png", "rungs.png", "schedule.png", "noise.png",
           "downstream.png")
PAIR_PREFIX = "pair-"  # one contour image per pair: pair-<a>--<b>.png


@dataclasses.dataclass(frozen=True)
class Report:
    """What ``build`` made.

    Attributes:
        dir: ``DIR/report``.
        index: the HTML page.
        figures: file name -> caption, in page order.
        pairs: file name -> caption of the per-pair contour images the page lets one pick.
        analysis: importances (None when too few trials finished).
        noise: seed noise (None without replicates).
        downstream: downstream scores (None when skipped).
        summary: the plain-text summary.
    """

    dir: Path
    index: Path
    figures: dict[str, str]
    pairs: dict[str, str]
    analysis: Analysis | None
    noise: Noise | None
    downstream: Downstream | None
    summary: str


class _Steps:
    """Says on stderr what the report is doing and how long each part took (retraining the top
    configurations can take minutes), when ``enabled``."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    @contextlib.contextmanager
    def __call__(self, what: str) -> Iterator[None]:
        t0 = time.perf_counter()
        if self.enabled:
            print(f"report: {what} ...", file=sys.stderr, flush=True)
        yield
        if self.enabled:
            print(f"report: {what}: {time.perf_counter() - t0:.1f} s", file=sys.stderr,
                  flush=True)


def build(sweep_dir: str | os.PathLike[str], *, top_k: int = 3, anomaly_class: int = 0,
          with_downstream: bool = True, progress: bool = False) -> Report:
    """Reads the sweep in ``sweep_dir`` and writes ``sweep_dir/report/``; with ``progress``, says
    on stderr what it is doing and how long each part took.

    Raises:
        UserError: ``sweep_dir`` is not a readable sweep, or the report directory is not writable.
    """
    from jaxae.store import atomic_write_bytes

    step = _Steps(progress)
    sweep = results_lib.load_sweep(sweep_dir)
    with step("importances (random-forest surrogate, fANOVA)"):
        analysis = analysis_lib.analyse(sweep)
        noise_ = analysis_lib.noise(sweep)
    notes: list[str] = []
    down = None
    if with_downstream and top_k > 0 and sweep.config.searcher == "pbt":
        notes.append("downstream skipped: a population-based-training trial's weights were "
                     "trained under its ancestors' changing hyperparameters, which retraining one "
                     "configuration from scratch does not reproduce")
    elif with_downstream and top_k > 0:
        try:
            with step(f"retraining the top {top_k} configurations for the downstream scores"):
                down = retrain_lib.downstream(sweep, top_k=top_k, anomaly_class=anomaly_class)
        except UserError as e:
            notes.append(f"downstream skipped: {e}")
        if down is not None:
            notes.extend(down.notes)
    out = sweep.dir / REPORT_DIR
    try:
        out.mkdir(exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {str(out)!r}: {e.strerror or e}") from None

    with step("figures"):
        made, pairs = _draw(sweep, analysis, noise_, down, out)
    summary = pages.text_summary(sweep, analysis, noise_, down, out / "index.html", notes)
    page = pages.index_html(sweep, analysis, noise_, down, made, notes, pairs)
    atomic_write_bytes(out / "index.html", page.encode())
    return Report(out, out / "index.html", made, pairs, analysis, noise_, down, summary)


def _draw(sweep: Any, analysis: Analysis | None, noise_: Noise | None,
          down: Downstream | None, out: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Writes every figure that has something to show into ``out`` (removing stale ones).

    Returns the figures' and the pair contours' file names with their captions.
    """
    from jaxae import figures, trial_views
    from jaxae.store import atomic_write_bytes

    made: dict[str, str] = {}
    for name, draw in (
        ("hyperparameters.png", lambda: figures.hyperparameters(sweep, analysis)),
        ("importance.png", lambda: figures.importance(sweep, analysis)),
        ("interactions.png", lambda: figures.interactions(sweep, analysis)),
        ("history.png", lambda: trial_views.history(sweep)),
        ("parallel.png", lambda: trial_views.parallel_coordinates(sweep, analysis)),
        ("curves.png", lambda: figures.curves(sweep)),
        ("rungs.png", lambda: figures.rungs(sweep)),
        ("schedule.png", lambda: figures.schedule(sweep)),
        ("noise.png", lambda: figures.noise(sweep, noise_)),
        ("downstream.png", lambda: figures.downstream(sweep, down)),
    ):
        drawn = draw()
        if drawn is None:
            with_stale = out / name
            if with_stale.exists():
                with_stale.unlink()
            continue
        png, caption = drawn
        atomic_write_bytes(out / name, png)
        made[name] = caption
    pairs: dict[str, str] = {}
    for name, png, caption in trial_views.pair_contours(sweep, analysis):
        atomic_write_bytes(out / name, png)
        pairs[name] = caption
    for stale in out.glob(f"{PAIR_PREFIX}*.png"):
        if stale.name not in pairs:
            stale.unlink()
    return made, pairs


# -- command line ---------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jaxae.report",
        description="Write DIR/report/ (PNG figures and index.html) for the sweep in DIR and "
        "print a summary: best configuration, hyperparameter importances, downstream quality.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("dir", metavar="DIR", help="a sweep's output directory (--out of the sweep)")
    p.add_argument("--top-k", type=int, default=3, metavar="K",
                   help="configurations to retrain for the downstream scores")
    p.add_argument("--anomaly-class", type=int, default=0, metavar="C",
                   help="the label held out as the anomaly in anomaly detection")
    p.add_argument("--no-downstream", action="store_true",
                   help="skip retraining the top configurations (anomaly AUC, linear probe)")
    p.add_argument("--quiet", action="store_true",
                   help="do not say on stderr what the report is doing")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.top_k < 0:
            raise UserError(f"--top-k {args.top_k} must be >= 0")
        from jaxae import runtime

        runtime.enable_compilation_cache()
        report = build(args.dir, top_k=args.top_k, anomaly_class=args.anomaly_class,
                       with_downstream=not args.no_downstream, progress=not args.quiet)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.summary)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    from jaxae import runtime

    # The sweep's device layout (one JAX device per core), before anything starts JAX: the
    # retrained members then run the programs their trials ran.
    try:
        runtime.use_cpu_cores()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(main())
