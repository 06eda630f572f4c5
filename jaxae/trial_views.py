"""Views of every trial, as Optuna's visualisations give them: the optimisation history, parallel
coordinates, and one surrogate contour per pair of important hyperparameters (the page lets the
reader pick the pair).

Each function returns ``(png_bytes, caption)`` (``pair_contours``: a list of named ones), or
None when the sweep has nothing to show for it.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize
from matplotlib.lines import Line2D

from jaxae.analysis import Analysis, losses_by_budget, pair_surface, unit_cube
from jaxae.plotting import (
    BEST,
    COMPLETED,
    DIVERGED,
    display,
    figure,
    log_ticks,
    loss_label,
    mark_trials,
    png,
    style_axis,
)
from jaxae.results import Sweep, ranked
from searchers import Choice, Int, space_to_unit

PAIR_DIMS = 4  # contours for every pair of this many most important hyperparameters
TOP_LINES = 5  # trials drawn on top, thick, in the parallel coordinates


def history(sweep: Sweep) -> tuple[bytes, str] | None:
    """Each trial's loss against its number, with the best so far, at every budget; below it,
    when the store has per-trial times, the same against wall-clock time since the sweep
    started."""
    by_budget = losses_by_budget(sweep)
    if not by_budget:
        return None
    budgets = sorted(by_budget)
    finished = finish_times(sweep)
    fig = figure(11, 8.8 if finished else 5.0)
    axes = fig.subplots(2 if finished else 1, 1, squeeze=False)[:, 0]
    ax = axes[0]
    shades = dict(zip(budgets, colormaps["Blues"](np.linspace(0.4, 0.95, len(budgets))),
                      strict=True))
    finite = [v for rows in by_budget.values() for _, v in rows]
    for budget in budgets:
        rows = sorted(by_budget[budget])
        ids = np.array([t for t, _ in rows])
        losses = np.array([v for _, v in rows])
        label = f"{budget} steps ({len(rows)} trials)" if len(budgets) > 1 else "trials"
        ax.scatter(ids, losses, s=14, color=shades[budget], alpha=0.8, linewidths=0, label=label)
        ax.step(ids, np.minimum.accumulate(losses), where="post", color=shades[budget], lw=1.8,
                label=f"best so far at {budget} steps")
    bad = [t["trial_id"] for t in sweep.trials if t["val_loss"] is None
           and t["status"] in ("diverged", "failed")]
    if bad:
        ax.scatter(bad, [0.96] * len(bad), transform=ax.get_xaxis_transform(), marker="x",
                   color=DIVERGED, s=30, clip_on=False, label=f"diverged ({len(bad)})")
    best = (ranked(sweep) or [None])[0]
    if best is not None:
        ax.scatter([best["trial_id"]], [best["val_loss"]], marker="*", s=200, color=BEST,
                   edgecolors="black", linewidths=0.7, zorder=5,
                   label=f"sweep's best: trial {best['trial_id']}")
    ax.set_xlabel("trial (the order the searcher proposed them)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"Optimisation history: {sweep.title}", fontsize=11)
    drawn = [finite]
    if finished:
        drawn.append(_history_by_time(axes[1], sweep, finished, shades, best) or finite)
    for a, values in zip(axes, drawn, strict=True):
        log = min(values) > 0
        if log:
            a.set_yscale("log")
            log_ticks(a.yaxis, min(values), max(values))
        a.set_ylabel(loss_label(sweep) + (" (log)" if log else ""))
        a.grid(True, which="major", alpha=0.3)
    caption = ("Optimisation history: every trial's validation loss against its number (the "
               "order the searcher proposed it), with the best loss so far as a step line"
               + (", one colour per budget (a multi-fidelity searcher measures every trial at "
                  "the lowest budget and only promoted ones higher up)" if len(budgets) > 1
                  else "")
               + ". A line that keeps falling late means the search had not converged. "
               + ("Below: each completed trial's loss at the wall-clock time it completed, "
                  "counted from the sweep's start (data loading and compilation included, until "
                  "the dotted line where the first chunk's trials were written; the time a "
                  "resumed sweep was stopped counts too), with the best so far: what waiting "
                  "longer bought. Pruned trials are not drawn there (ASHA prunes a trial waiting "
                  "at a rung only when the sweep ends); diverged ones are crosses."
                  if finished else
                  "This sweep's store has no per-trial times (written before jaxae recorded "
                  "them), so there is no history against time."))
    return png(fig), caption


def finish_times(sweep: Sweep) -> dict[int, float]:
    """trial -> seconds from the sweep's start (``Sweep.start_epoch``, else the first trial's
    ``started_at``) to the trial's ``finished_at``, for the trials the store timed."""
    stamped = {t["trial_id"]: t["finished_at"] for t in sweep.trials
               if t.get("finished_at") is not None}
    if not stamped:
        return {}
    origin = _origin(sweep)
    return {trial: at - origin for trial, at in stamped.items()}


def _origin(sweep: Sweep) -> float:
    start = sweep.start_epoch
    if start is not None:
        return start
    return min(t["started_at"] for t in sweep.trials if t.get("started_at") is not None)


def _history_by_time(ax: Any, sweep: Sweep, finished: dict[int, float],
                     shades: dict[int, Any], best: dict[str, Any] | None) -> list[float]:
    """Best so far against wall-clock time: each completed trial's loss at the moment it
    completed, diverged trials as crosses; returns the losses drawn. Pruned trials are left out:
    ASHA prunes a trial that waits at a rung only when the sweep ends, so their stop time says
    nothing about when their loss was known."""
    origin = _origin(sweep)
    started = [t["started_at"] for t in sweep.trials if t.get("started_at") is not None]
    marks = [(min(started) - origin, "first trials written")] if started else []
    marks += [(at - origin, "resumed") for at in sweep.resume_epochs]
    end = sweep.end_epoch
    span = max([*finished.values(), *(a for a, _ in marks),
                *([end - origin] if end is not None else [])])
    scale, unit = (60.0, "min") if span > 300 else (1.0, "s")
    done = sorted((finished[t["trial_id"]], t["val_loss"]) for t in sweep.trials
                  if t["trial_id"] in finished and t["status"] == "completed"
                  and t["val_loss"] is not None)
    if done:
        at = np.array([a for a, _ in done]) / scale
        losses = np.array([v for _, v in done])
        shade = shades.get(max(shades), COMPLETED)
        ax.scatter(at, losses, s=14, color=shade, alpha=0.8, linewidths=0)
        best_so_far = np.minimum.accumulate(losses)
        if end is not None and (end - origin) / scale > at[-1]:
            at, best_so_far = np.append(at, (end - origin) / scale), np.append(
                best_so_far, best_so_far[-1])
        ax.step(at, best_so_far, where="post", color=shade, lw=1.8)
    if best is not None and best["trial_id"] in finished and best["status"] == "completed":
        ax.scatter([finished[best["trial_id"]] / scale], [best["val_loss"]], marker="*", s=200,
                   color=BEST, edgecolors="black", linewidths=0.7, zorder=5)
    bad = [finished[t["trial_id"]] / scale for t in sweep.trials
           if t["trial_id"] in finished and t["val_loss"] is None]
    if bad:
        ax.scatter(bad, [0.96] * len(bad), transform=ax.get_xaxis_transform(), marker="x",
                   color=DIVERGED, s=30, clip_on=False)
    for at, text in marks:
        ax.axvline(at / scale, color="#555555", lw=0.9, ls=":")
        right = at > 0.6 * span  # late marks are labelled on their left, inside the axes
        ax.text(at / scale, 0.98, f" {text} ", transform=ax.get_xaxis_transform(), fontsize=8,
                va="top", ha="right" if right else "left", color="#555555")
    ax.set_xlim(left=0)
    ax.set_xlabel(f"wall-clock time since the sweep started ({unit}; when each trial completed)")
    ax.set_title("Best so far against time (completed trials)", fontsize=11)
    return [v for _, v in done]


def parallel_coordinates(sweep: Sweep, analysis: Analysis | None
                         ) -> tuple[bytes, str] | None:
    """One vertical axis per varying hyperparameter and one for the loss; a line per trial."""
    done = ranked(sweep)
    if not sweep.space or len(done) < 2:
        return None
    names = list(sweep.space)
    if analysis is not None:
        names = [analysis.importance.names[i] for i in analysis.order()]
    # Unit-cube coordinates (the search prior's scale: log axes stay log) in importance order.
    cube = unit_cube(sweep.space, [t["params"] for t in done])
    cols = [list(sweep.space).index(n) for n in names]
    u = cube[:, cols]
    losses = np.array([t["val_loss"] for t in done])
    positive = bool(np.all(losses > 0))
    norm = (LogNorm(losses.min(), max(losses.max(), losses.min() * 1.001)) if positive
            else Normalize(losses.min(), max(losses.max(), losses.min() + 1e-12)))
    loss_axis = np.clip(norm(losses), 0, 1)
    points = np.column_stack([u, loss_axis])  # [n, d + 1]
    cmap = colormaps["viridis_r"]
    top_steps = max(t["steps"] for t in done)

    d = len(names)
    fig = figure(max(1.6 * (d + 1) + 2.5, 8.0), 5.2)
    ax = fig.subplots()
    x = np.arange(d + 1)
    # Worst first, so the best lines are drawn last, on top.
    for i in np.argsort(-losses, kind="stable"):
        full = done[i]["steps"] == top_steps
        ax.plot(x, points[i], color=cmap(norm(losses[i])), lw=1.2 if full else 0.7,
                alpha=0.85 if full else 0.35, zorder=2)
    for i in range(min(TOP_LINES, len(done))):
        ax.plot(x, points[i], color="black", lw=3.0, alpha=0.9, zorder=3)
        ax.plot(x, points[i], color=cmap(norm(losses[i])), lw=1.8, zorder=4)
    for j, name in enumerate(names):
        ax.axvline(j, color="#555555", lw=0.8, zorder=1)
        for v, label in _axis_labels(sweep.space[name]):
            ax.text(j + 0.03, v, label, fontsize=7, va="center", ha="left",
                    bbox={"facecolor": "white", "alpha": 0.7, "lw": 0, "pad": 0.5}, zorder=5)
    ax.axvline(d, color="#555555", lw=0.8, zorder=1)
    for v in np.linspace(0, 1, 5):
        value = norm.inverse(v)
        ax.text(d + 0.03, v, f"{float(value):.3g}", fontsize=7, va="center", ha="left")
    ax.set_xticks(x, [*names, f"val_loss\n({sweep.loss_name})"], fontsize=8)
    ax.set_yticks([])
    ax.set_xlim(-0.2, d + 0.45)
    ax.set_ylim(-0.04, 1.04)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    stopped = sum(t["steps"] != top_steps for t in done)
    fig.legend(handles=[
        Line2D([], [], color="black", lw=3, label=f"top {min(TOP_LINES, len(done))} trials"),
        Line2D([], [], color="#888888", lw=1.2,
               label=f"trained {top_steps} steps ({len(done) - stopped})"),
        *([Line2D([], [], color="#888888", lw=0.7, alpha=0.4,
                  label=f"stopped earlier ({stopped})")] if stopped else []),
    ], fontsize=8, loc="outside lower center", ncols=3, frameon=False)
    bar = fig.colorbar(ScalarMappable(norm, cmap), ax=ax, label=loss_label(sweep), shrink=0.8,
                       pad=0.02)
    if positive:
        log_ticks(bar.ax.yaxis, float(losses.min()), float(losses.max()))
    ax.set_title(f"Parallel coordinates of {len(done)} trials: {sweep.title}\n(val_loss at the "
                 f"last budget each trial reached; {top_steps} steps for the full ones)",
                 fontsize=11)
    caption = ("Parallel coordinates: one line per trial with a finite loss, through its value of "
               "each hyperparameter (axes in importance order, on the search prior's scale: log "
               "where the space is log) to its validation loss at the last budget it reached; "
               "colour and the last axis give the loss (yellow: lower). Thick outlined lines: "
               "the top trials; faint thin lines: trials stopped early. Where the top lines "
               "bunch on an axis, that hyperparameter matters; where they spread, it does not.")
    return png(fig), caption


def _axis_labels(dim: Any) -> list[tuple[float, str]]:
    """(unit-cube height, label) marks for one parallel axis: the options, or five values."""
    if isinstance(dim, Choice):
        k = len(dim.options)
        return [((i + 0.5) / k, str(o)) for i, o in enumerate(dim.options)]
    if isinstance(dim, Int):
        # Whole numbers at the centres of their cells, not the cells' half-integer edges.
        grid = (np.geomspace(dim.low, dim.high, 5) if dim.log
                else np.linspace(dim.low, dim.high, 5))
        ints = sorted({int(round(v)) for v in grid})
        return [(float(space_to_unit({"v": dim}, {"v": k})[0]), str(k)) for k in ints]
    us = np.linspace(0.0, 1.0, 5)
    values = display(dim, us)
    return [(float(u), f"{v:.3g}") for u, v in zip(us, values, strict=True)]


def pair_names(analysis: Analysis) -> list[tuple[str, str]]:
    """Every pair of the ``PAIR_DIMS`` most important hyperparameters, most important first."""
    top = [analysis.importance.names[i] for i in analysis.order()[:PAIR_DIMS]]
    return list(itertools.combinations(top, 2))


def pair_contours(sweep: Sweep, analysis: Analysis | None
                  ) -> list[tuple[str, bytes, str]]:
    """One contour plot of the surrogate per pair of ``pair_names``.

    Returns:
        ``(file name, png, caption)`` per pair; empty without an analysis or with one dimension.
    """
    if analysis is None or len(analysis.importance.names) < 2:
        return []
    fit = analysis.fit
    params = {t["trial_id"]: t["params"] for t in sweep.trials}
    best = (ranked(sweep) or [None])[0]
    out = []
    for a, b in pair_names(analysis):
        ua, ub, z = pair_surface(analysis.forest, sweep.space, (a, b), seed=sweep.config.seed)
        z = np.exp(z) if fit.logged else z
        da, db = sweep.space[a], sweep.space[b]
        lo, hi = float(z.min()), float(z.max())
        norm = LogNorm(lo, hi) if fit.logged and lo < hi else Normalize(lo, max(hi, lo + 1e-12))
        fig = figure(7.0, 5.6)
        ax = fig.subplots()
        xa, xb = display(da, ua), display(db, ub)
        if isinstance(da, Choice) or isinstance(db, Choice):
            # Options are not ordered: cells, not contours interpolated between them.
            mesh = ax.pcolormesh(xa, xb, z.T, norm=norm, cmap="viridis_r", shading="nearest")
        else:
            mesh = ax.contourf(xa, xb, z.T, levels=_levels(norm, lo, hi), norm=norm,
                               cmap="viridis_r")
            lines = ax.contour(xa, xb, z.T, levels=_levels(norm, lo, hi)[1:-1:2],
                               colors="white", linewidths=0.6, alpha=0.8)
            ax.clabel(lines, fontsize=7, fmt=lambda v: f"{v:.3g}")
        mark_trials(ax, (da, db), (a, b), params, fit.trial_ids, fit.budget, best, star=220,
                    wrap=False)
        style_axis(ax, da, a, "x")
        style_axis(ax, db, b, "y")
        bar = fig.colorbar(mesh, ax=ax, label="surrogate val loss; lighter is better")
        if isinstance(norm, LogNorm):
            log_ticks(bar.ax.yaxis, lo, hi)
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=2,
                   fontsize=8, frameon=False)
        ax.set_title(f"{a} × {b} at {fit.budget} steps\n{sweep.title}", fontsize=10)
        caption = (f"Surrogate validation loss over {a} and {b} (random forest of "
                   f"{len(fit.trial_ids)} trials at {fit.budget} steps, the other "
                   f"hyperparameters averaged over the search prior), the trials it was fitted "
                   f"on, and the sweep's best trial.")
        out.append((f"pair-{a}--{b}.png", png(fig), caption))
    return out


def _levels(norm: Any, lo: float, hi: float) -> np.ndarray:
    if isinstance(norm, LogNorm):
        return np.geomspace(lo, hi * (1 + 1e-9), 12)
    return np.linspace(lo, hi + 1e-12 * max(abs(hi), 1), 12)

