"""Shared drawing for the report's figures: a headless canvas, how a search-space dimension
sits on an axis, readable log ticks, the colours.

Figures are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas directly, never
through ``pyplot``: no global backend or figure registry is touched, so a report can run inside a
notebook or a long sweep process without leaking figures or opening windows.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullFormatter

from jaxae.results import Sweep
from searchers import Choice, Float, Int
from searchers.space import Dimension

DPI = 110
TOP_CURVES = 8  # learning curves drawn in colour
TOP_MARKED = 5  # trials ringed in the per-hyperparameter panels
COMPLETED = "#1f4e9c"
DIVERGED = "#d62728"
BEST = "#ff9f1c"
PAIR = "#8e6bbf"
JITTER = 0.12  # half-width of the strip a categorical value's trials spread over


def figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


# -- how a dimension is drawn ---------------------------------------------------------------------


def is_log(dim: Dimension) -> bool:
    return isinstance(dim, Float | Int) and dim.log


def position(dim: Dimension, value: Any, rng: np.random.Generator) -> float:
    """Where a trial's value sits on an axis: the value itself, or a choice's index jittered so
    that trials with the same option do not hide each other."""
    if isinstance(dim, Choice):
        return dim.index(value) + rng.uniform(-JITTER, JITTER)
    return float(value)


def display(dim: Dimension, u: np.ndarray) -> np.ndarray:
    """Axis coordinates of unit-cube coordinates ``u``: the continuous inverse of the searchers'
    map (an integer k owns the cell around k; option k spans [k - 0.5, k + 0.5])."""
    u = np.asarray(u, dtype=np.float64)
    if isinstance(dim, Choice):
        return u * len(dim.options) - 0.5
    if isinstance(dim, Int):
        if dim.log:
            lo, hi = math.log(dim.low - 0.5), math.log(dim.high + 0.5)
            return np.exp(lo + u * (hi - lo))
        return dim.low - 0.5 + u * (dim.high - dim.low + 1)
    if dim.log:
        lo, hi = math.log(dim.low), math.log(dim.high)
        return np.exp(lo + u * (hi - lo))
    return dim.low + u * (dim.high - dim.low)


def mark_trials(ax: Any, dims: tuple[Dimension, Dimension], names: tuple[str, str],
                params: dict[int, dict[str, Any]], trial_ids: Any, budget: int,
                best: dict[str, Any] | None, *, star: float, wrap: bool) -> None:
    """Draws a pair plot's fitted trials (white dots) and the sweep's best trial (a star) over a
    surrogate surface, jittered like ``position``; ``wrap`` breaks the star's label in two."""
    (da, db), (a, b) = dims, names
    rng = np.random.default_rng(1)
    ax.scatter([position(da, params[t][a], rng) for t in trial_ids],
               [position(db, params[t][b], rng) for t in trial_ids], s=14, c="white",
               edgecolors="black", linewidths=0.6,
               label=f"trials fitted ({len(trial_ids)}, at {budget} steps)")
    if best is not None:
        sep = "\n" if wrap else " "
        ax.scatter([position(da, best["params"][a], rng)], [position(db, best["params"][b], rng)],
                   marker="*", s=star, color=BEST, edgecolors="black", linewidths=0.7,
                   label=f"sweep's best: trial {best['trial_id']}{sep}({best['val_loss']:.4g} "
                         f"at {best['steps']} steps)")


def style_axis(ax: Any, dim: Dimension, name: str, which: str = "x") -> None:
    """Log scale where the space is log, option names for a choice, the space's bounds as limits."""
    set_label = ax.set_xlabel if which == "x" else ax.set_ylabel
    set_scale = ax.set_xscale if which == "x" else ax.set_yscale
    set_lim = ax.set_xlim if which == "x" else ax.set_ylim
    if isinstance(dim, Choice):
        set_ticks = ax.set_xticks if which == "x" else ax.set_yticks
        set_ticks(range(len(dim.options)), [str(o) for o in dim.options])
        set_lim(-0.5, len(dim.options) - 0.5)
        set_label(name)
        return
    edges = display(dim, np.array([0.0, 1.0]))
    if dim.log:
        set_scale("log")
        log_ticks(ax.xaxis if which == "x" else ax.yaxis, *edges)
    set_lim(*edges)
    set_label(f"{name} (log scale)" if dim.log else name)


def log_ticks(axis: Any, lo: float, hi: float) -> None:
    """Plain numbers on a log axis that spans under two decades, at least four of them, where
    matplotlib's default would label one or two ticks as powers of ten."""
    if not (0 < lo < hi and hi / lo < 100):
        return
    ticks = nice_ticks(lo, hi)
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    axis.set_minor_formatter(NullFormatter())


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """At least ``min(n, 4)`` round numbers (1, 2, 5 times a power of ten, or finer) inside
    ``[lo, hi]``, spread evenly on a log scale, with the low end (the best losses) labelled."""
    for steps in ((1, 2, 5), (1, 2, 3, 5), (1, 1.5, 2, 3, 4, 5, 6, 8),
                  (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9)):
        grid = [m * 10.0**e for e in range(math.floor(math.log10(lo)) - 1,
                                           math.ceil(math.log10(hi)) + 1) for m in steps]
        inside = [v for v in grid if lo <= v <= hi]
        if len(inside) >= min(n, 4):
            break
    if len(inside) < min(n, 4):
        # A range too narrow for round multiples of powers of ten: evenly spaced round numbers.
        ticks = [float(v) for v in MaxNLocator(n).tick_values(lo, hi) if lo <= v <= hi]
    else:
        # Thin to about n by a fixed stride, so the labels stay evenly spaced.
        ticks = inside[::math.ceil(len(inside) / (n + 1))]
    # The low end is where the best trials are: label it when the first round tick is far above.
    if ticks and math.log(ticks[0] / lo) > 0.12 * math.log(hi / lo):
        unit = 10.0 ** (math.floor(math.log10(lo)) - 1)
        low = math.ceil(lo / unit - 1e-9) * unit
        if lo <= low < ticks[0] and math.log(ticks[0] / low) > 0.06 * math.log(hi / lo):
            ticks.insert(0, low)
    return ticks


def loss_label(sweep: Sweep) -> str:
    return f"validation loss ({sweep.loss_name})"


def finite_groups(sweep: Sweep) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for t in sweep.trials:
        if t["val_loss"] is None:
            key = "running" if t["status"] == "running" else "diverged"
        else:
            key = t["status"]
        groups.setdefault(key, []).append(t)
    return groups
