"""The report's figures (matplotlib, headless): each function returns ``(png_bytes, caption)``,
or None when the sweep has nothing to show for it.

Figures are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas directly, never
through ``pyplot``: no global backend or figure registry is touched, so a report can run inside a
notebook or a long sweep process without leaking figures or opening windows.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize
from matplotlib.lines import Line2D
from matplotlib.ticker import NullFormatter

from jaxae import hparams
from jaxae import lineage as lineage_lib
from jaxae.analysis import Analysis, Noise, pair_surface
from jaxae.plotting import (
    BEST,
    COMPLETED,
    DIVERGED,
    PAIR,
    TOP_CURVES,
    TOP_MARKED,
    display,
    figure,
    finite_groups,
    log_ticks,
    loss_label,
    mark_trials,
    png,
    position,
    style_axis,
)
from jaxae.results import Sweep, ranked
from searchers import Choice
from searchers.space import Dimension

if TYPE_CHECKING:
    from jaxae.retrain import Downstream

# -- 1. each hyperparameter against the loss ------------------------------------------------------


def hyperparameters(sweep: Sweep, analysis: Analysis | None) -> tuple[bytes, str] | None:
    """One panel per varying hyperparameter: final validation loss against its value."""
    names = list(sweep.space)
    if not names:
        return None
    share = {}
    if analysis is not None:
        names = [analysis.importance.names[i] for i in analysis.order()]
        share = dict(zip(analysis.importance.names, analysis.importance.main, strict=True))
    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = figure(4.4 * ncols, 3.4 * nrows + 1.1)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    groups = finite_groups(sweep)
    finite = [t["val_loss"] for t in sweep.trials if t["val_loss"] is not None]
    positive = bool(finite) and min(finite) > 0
    top = ranked(sweep)[:TOP_MARKED]
    # Colour is the trial's order (when a searcher learns, late trials gather near the optimum);
    # the marker says how far it trained.
    order_norm = Normalize(0, max(max(t["trial_id"] for t in sweep.trials), 1))
    cmap = colormaps["viridis"]
    stopped = sorted({t["steps"] for t in groups.get("pruned", [])})
    handles: dict[str, Any] = {}
    mappable = None

    for ax, name in zip(axes, names, strict=False):
        dim = sweep.space[name]
        rng = np.random.default_rng(0)
        pos = {t["trial_id"]: position(dim, t["params"][name], rng) for t in sweep.trials
               if name in t["params"]}

        def scatter(trials: list[dict[str, Any]], label: str, legend: dict[str, Any],
                    ax: Any = ax, pos: dict = pos, **style: Any) -> Any:
            if not trials:
                return None
            drawn = ax.scatter([pos[t["trial_id"]] for t in trials],
                               [t["val_loss"] for t in trials], **style)
            handles[label] = Line2D([], [], ls="", label=label, **legend)
            return drawn

        for k, steps in enumerate(stopped):
            trials = [t for t in groups.get("pruned", []) if t["steps"] == steps]
            size = 8 + 10 * (k + 1) / (len(stopped) + 1)
            scatter(trials, f"stopped at {steps} steps ({len(trials)})",
                    {"marker": "o", "markersize": math.sqrt(size), "color": "#888888",
                     "alpha": 0.6},
                    s=size, c=[t["trial_id"] for t in trials], cmap=cmap, norm=order_norm,
                    alpha=0.6, linewidths=0)
        running = [t for t in groups.get("running", []) if t["val_loss"] is not None]
        scatter(running, f"still running ({len(running)})",
                {"marker": "^", "color": "#888888"}, marker="^", s=18,
                c=[t["trial_id"] for t in running], cmap=cmap, norm=order_norm)
        done = groups.get("completed", [])
        drawn = scatter(done, f"completed, {sweep.config.steps} steps ({len(done)})",
                        {"marker": "o", "markersize": 6, "color": "#444444",
                         "markeredgecolor": "black"},
                        s=30, c=[t["trial_id"] for t in done], cmap=cmap, norm=order_norm,
                        edgecolors="black", linewidths=0.5, zorder=3)
        mappable = drawn or mappable
        ringed = [t for t in top if name in t["params"]]
        if ringed:
            ax.scatter([pos[t["trial_id"]] for t in ringed], [t["val_loss"] for t in ringed],
                       s=90, facecolors="none", edgecolors=BEST, linewidths=1.6, zorder=4)
            handles["top"] = Line2D([], [], ls="", marker="o", markersize=9, markerfacecolor="none",
                                    markeredgecolor=BEST, markeredgewidth=1.6,
                                    label=f"top {len(ringed)} trials")
        if top:
            best = top[0]
            ax.scatter([pos[best["trial_id"]]], [best["val_loss"]], marker="*", s=180,
                       color=BEST, edgecolors="black", linewidths=0.6, zorder=5)
            handles["best"] = Line2D([], [], ls="", marker="*", markersize=13, color=BEST,
                                     markeredgecolor="black",
                                     label=f"best (trial {best['trial_id']})")
            # The best loss written on the y axis, where the eye looks for it.
            ax.axhline(best["val_loss"], color=BEST, lw=0.8, ls="--", alpha=0.8, zorder=1)
            ax.annotate(f"{best['val_loss']:.3g}", (0, best["val_loss"]),
                        xycoords=("axes fraction", "data"), xytext=(2, 2),
                        textcoords="offset points", fontsize=7, color="#a35c00", va="bottom")
        bad = groups.get("diverged", [])
        if bad:
            # Diverged trials have no loss: pinned to the top edge (axes coordinates) in red.
            ax.scatter([pos[t["trial_id"]] for t in bad], [0.96] * len(bad),
                       transform=ax.get_xaxis_transform(), marker="x", color=DIVERGED, s=30,
                       clip_on=False)
            handles["diverged"] = Line2D([], [], ls="", marker="x", color=DIVERGED,
                                         label=f"diverged, no loss ({len(bad)})")
        style_axis(ax, dim, name)
        if positive:
            ax.set_yscale("log")
        if finite:
            lo, hi = min(finite), max(finite)
            # Headroom above the worst finite loss keeps the diverged row apart from it.
            room = 0.3 if groups.get("diverged") else 0.08
            if positive:
                hi = max(hi, lo * 1.1)
                top_y = hi * (hi / lo) ** room
                ax.set_ylim(lo / (hi / lo) ** 0.05, top_y)
                log_ticks(ax.yaxis, lo / (hi / lo) ** 0.05, top_y)
            else:
                ax.set_ylim(lo - 0.05 * (hi - lo + 1e-12), hi + room * (hi - lo + 1e-12))
        ax.grid(True, which="major", alpha=0.3)
        title = name if name not in share else f"{name}: {analysis.shares_text(name)}"
        ax.set_title(title, fontsize=10)
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel(loss_label(sweep) + (" (log)" if positive else ""), fontsize=9)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    where = (f"fANOVA importance at {analysis.fit.budget} steps" if analysis is not None
             else "the search space")
    fig.suptitle(f"Final validation loss against each hyperparameter: {sweep.title}\n"
                 f"(panels ordered by {where}; a trial's loss at the last budget it reached)",
                 fontsize=11)
    fig.legend(handles=list(handles.values()), loc="outside lower center",
               ncols=min(4, len(handles)), fontsize=8, frameon=False)
    if mappable is None:
        mappable = ScalarMappable(order_norm, cmap)
    fig.colorbar(mappable, ax=list(axes[:len(names)]), label="trial (order started)",
                 shrink=0.6, pad=0.01)
    caption = ("Final validation loss of every trial against each varying hyperparameter (log "
               "axes where the search space is log; categorical values as jittered strips). "
               "Colour: the trial's order (dark: early, yellow: late). Large black-edged dots: "
               "trials trained to the full budget; small dots: trials a multi-fidelity searcher "
               "stopped early (their loss at that budget, larger the later); red x on the top "
               "edge: diverged trials; orange rings: the top trials, star and dashed line: the "
               "best and its loss.")
    if share:
        caption += " Panels are ordered by fANOVA importance."
    return png(fig), caption


# -- 3. importances -------------------------------------------------------------------------------


def importance(sweep: Sweep, analysis: Analysis | None) -> tuple[bytes, str] | None:
    """Bars of main effects and top pair interactions, the synthetic cross-check and, for
    multi-fidelity sweeps, the main effects at every budget."""
    if analysis is None:
        return None
    imp, fit = analysis.importance, analysis.fit
    order = analysis.order()
    pairs = sorted(imp.pairs, key=lambda p: -imp.pairs[p])[:3]
    labels = [imp.names[i] for i in order] + [f"{a} × {b}" for a, b in pairs]
    values = [100 * imp.main[i] for i in order] + [100 * imp.pairs[p] for p in pairs]
    errors = [100 * imp.main_std[i] for i in order] + [0.0] * len(pairs)
    colours = [COMPLETED] * len(order) + [PAIR] * len(pairs)
    rungs_panel = len(analysis.by_budget) >= 2

    n = len(labels)
    ratios = [3, 2, 2] if rungs_panel else [3, 2]
    fig = figure(15.5 if rungs_panel else 12, 2.0 + 0.42 * max(n, len(order) + 1))
    axes = fig.subplots(1, len(ratios), width_ratios=ratios)
    left, right = axes[0], axes[1]
    y = np.arange(n)[::-1]
    left.barh(y, values, xerr=errors, color=colours, capsize=3, error_kw={"alpha": 0.5})
    for yi, v, err in zip(y, values, errors, strict=True):
        left.text(min(v + err, 100) + 1.5, yi, f"{v:.1f}%", va="center", fontsize=8)
    left.set_yticks(y, labels)
    left.set_xlim(0, 112)
    target = "log val loss" if fit.logged else "val loss"
    left.set_xlabel(f"% of the variance of {target} explained\n(bar: mean over "
                    f"{len(analysis.forest.estimators_)} trees, whisker: std over trees)")
    explained = 100 * (imp.main.sum() + sum(imp.pairs.values()))
    left.set_title(f"fANOVA importance, {len(fit.trial_ids)} trials at {fit.budget} steps\n"
                   f"surrogate out-of-bag R² = {analysis.r2:.2f}; main effects + pairs explain "
                   f"{explained:.0f}%", fontsize=10)
    if pairs:
        left.legend(handles=[Line2D([], [], color=COMPLETED, lw=6, label="main effect"),
                             Line2D([], [], color=PAIR, lw=6, label="pair interaction")],
                    loc="lower right", fontsize=8)
    left.grid(True, axis="x", alpha=0.3)

    d = len(imp.names)
    yy = np.arange(d)[::-1]
    right.barh(yy + 0.2, 100 * analysis.synthetic_true, height=0.38, color="#bbbbbb",
               label="true share")
    right.barh(yy - 0.2, 100 * analysis.synthetic_est, height=0.38, color=COMPLETED,
               label="fANOVA estimate")
    right.set_yticks(yy, list(imp.names))
    right.set_xlim(0, 100)
    right.set_xlabel("% of variance of the synthetic objective")
    recovered = _same_order(analysis.synthetic_true, analysis.synthetic_est)
    right.set_title(f"Cross-check: linear objective with known\nshares at the same "
                    f"{len(fit.trial_ids)} configurations:\norder "
                    f"{'recovered' if recovered else 'NOT recovered (too few trials?)'}",
                    fontsize=10)
    right.legend(loc="upper right", fontsize=8)
    right.grid(True, axis="x", alpha=0.3)

    if rungs_panel:
        ax = axes[2]
        budgets = sorted(analysis.by_budget)
        shades = colormaps["Blues"](np.linspace(0.35, 0.95, len(budgets)))
        height = 0.8 / len(budgets)
        for k, (budget, shade) in enumerate(zip(budgets, shades, strict=True)):
            count, main = analysis.by_budget[budget]
            ys = yy + 0.4 - (k + 0.5) * height
            ax.barh(ys, 100 * main[order], height=height, color=shade,
                    label=f"{budget} steps ({count} trials)")
            for yi, v in zip(ys, 100 * main[order], strict=True):
                ax.text(v + 1, yi, f"{v:.0f}%", va="center", fontsize=7)
        # Rows in the left panel's order, so a name sits at the same height in both.
        ax.set_yticks(yy, [imp.names[i] for i in order])
        ax.set_xlim(0, 108)
        ax.set_xlabel(f"% of the variance of {target} explained")
        ax.set_title("Main effects at each budget\n(higher budgets: promoted trials only)",
                     fontsize=10)
        ax.legend(loc="upper right", fontsize=8)
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(f"Which hyperparameters matter: {sweep.title}", fontsize=11)
    caption = (f"Hyperparameter importance by functional ANOVA (Hutter et al. 2014) of a random "
               f"forest fitted to the {target} of {len(fit.trial_ids)} trials measured at "
               f"{fit.budget} steps: the share of the loss's variance over the search space that "
               f"each hyperparameter explains alone, and the largest pairwise interactions. The "
               f"out-of-bag R² says how well the forest predicts trials it did not see (near 0: "
               f"the shares describe noise). Middle: the same method on a synthetic linear "
               f"objective of known importances at the same configurations; if it cannot recover "
               f"their order, the sweep has too few or too clustered trials to trust the left.")
    if rungs_panel:
        caption += (" Right: main effects at every budget with enough trials. The lowest budget "
                    "holds every trial, drawn from the search prior; higher budgets hold only "
                    "the trials the searcher promoted, so their shares describe the promising "
                    "region (and are extrapolated outside it).")
    return png(fig), caption


def _same_order(true: np.ndarray, est: np.ndarray) -> bool:
    return list(np.argsort(-true, kind="stable")) == list(np.argsort(-est, kind="stable"))


# -- 2. pairwise interactions ---------------------------------------------------------------------


def interactions(sweep: Sweep, analysis: Analysis | None) -> tuple[bytes, str] | None:
    """Heat maps of the surrogate over the most important pairs, with the trials on top."""
    if analysis is None or not analysis.top_pairs:
        return None
    imp, fit = analysis.importance, analysis.fit
    main = dict(zip(imp.names, imp.main, strict=True))
    params = {t["trial_id"]: t["params"] for t in sweep.trials}
    # The sweep's best trial (``ranked``: the one best.json names), not the lowest loss at the
    # fitted budget, which on a multi-fidelity sweep is often a different trial.
    best = (ranked(sweep) or [None])[0]
    surfaces = [pair_surface(analysis.forest, sweep.space, p, seed=sweep.config.seed)
                for p in analysis.top_pairs]
    values = [np.exp(z) if fit.logged else z for *_, z in surfaces]
    lo = min(float(v.min()) for v in values)
    hi = max(float(v.max()) for v in values)
    norm = LogNorm(lo, hi) if fit.logged and lo < hi else Normalize(lo, max(hi, lo + 1e-12))

    k = len(analysis.top_pairs)
    fig = figure(4.6 * k + 0.8, 4.6)
    axes = np.atleast_1d(fig.subplots(1, k, squeeze=False)).ravel()
    mesh = None
    for ax, (a, b), (ua, ub, _), z in zip(axes, analysis.top_pairs, surfaces, values,
                                          strict=True):
        da, db = sweep.space[a], sweep.space[b]
        ea = display(da, _edges(da, ua))
        eb = display(db, _edges(db, ub))
        mesh = ax.pcolormesh(ea, eb, z.T, norm=norm, cmap="viridis_r", shading="flat")
        mark_trials(ax, (da, db), (a, b), params, fit.trial_ids, fit.budget, best, star=200,
                    wrap=True)
        style_axis(ax, da, a, "x")
        style_axis(ax, db, b, "y")
        share = main[a] + main[b] + imp.pairs.get((a, b), imp.pairs.get((b, a), 0.0))
        pair = imp.pairs.get((a, b), imp.pairs.get((b, a), 0.0))
        ax.set_title(f"{a} × {b}\n{100 * share:.0f}% of variance "
                     f"({100 * pair:.1f}% interaction)", fontsize=10)
    # One legend under the panels, off the data (every panel has the same two entries).
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=2,
               fontsize=8, frameon=False)
    target = "val loss" if not fit.logged else "val loss (geometric mean)"
    bar = fig.colorbar(mesh, ax=list(axes), label=f"surrogate {target}; lighter is better",
                       shrink=0.9)
    if isinstance(norm, LogNorm):
        log_ticks(bar.ax.yaxis, lo, hi)
    fig.suptitle(f"Pairwise effects of the most important pairs: {sweep.title}\n"
                 f"random-forest surrogate of {len(fit.trial_ids)} trials at {fit.budget} steps,"
                 f" other hyperparameters averaged over the search space", fontsize=10)
    caption = ("Predicted validation loss of the random-forest surrogate over the pairs with the "
               "largest combined importance (both main effects plus their interaction), the "
               "other hyperparameters averaged over the search prior; dots are the trials it was "
               "fitted on, the star the sweep's best trial (the one best.json names). Parallel "
               "colour bands mean the two act independently; bands that bend or tilt mean an "
               "interaction (e.g. the best learning rate depending on the other "
               "hyperparameter).")
    return png(fig), caption


def _edges(dim: Dimension, centres: np.ndarray) -> np.ndarray:
    if isinstance(dim, Choice):
        return np.arange(len(dim.options) + 1) / len(dim.options)
    return np.linspace(0.0, 1.0, len(centres) + 1)


# -- 4. learning curves and rungs -----------------------------------------------------------------


def curves(sweep: Sweep) -> tuple[bytes, str] | None:
    """Validation loss against step: the top trials in colour, every other trial in grey."""
    drawn = [t for t in ranked(sweep) if len(sweep.curves.get(t["trial_id"], ([],))[0])]
    if not drawn:
        return None
    top = drawn[:TOP_CURVES]
    top_ids = {t["trial_id"] for t in top}
    fig = figure(11, 5.2)
    ax = fig.subplots()
    all_values = []
    for trial, (steps, vals) in sweep.curves.items():
        if trial in top_ids or not len(steps):
            continue
        ax.plot(steps, vals, color="#b0b0b0", lw=0.7, alpha=0.6)
        all_values.append(vals)
    colours = colormaps["tab10"](np.arange(len(top)))
    for rank, (t, colour) in enumerate(zip(top, colours, strict=True)):
        steps, vals = sweep.curves[t["trial_id"]]
        ax.plot(steps, vals, color=colour, lw=1.8,
                label=f"#{rank + 1} trial {t['trial_id']}: {t['val_loss']:.4g} "
                      f"({t['status']}, {t['steps']} steps)")
        all_values.append(vals)
        train_steps, train = sweep.train_curves.get(t["trial_id"], ((), ()))
        if len(train_steps):
            ax.plot(train_steps, train, color=colour, lw=1.0, ls="--", alpha=0.8)
            all_values.append(train)
    flat = np.concatenate(all_values)
    has_train = any(len(sweep.train_curves.get(t["trial_id"], ((),))[0]) for t in top)
    if np.all(flat > 0):
        ax.set_yscale("log")
        log_ticks(ax.yaxis, flat.min(), flat.max())
    if sweep.multi_fidelity:
        budgets = sorted({b for rows in sweep.rungs.values() for b, _ in rows})
        for b in budgets:
            ax.axvline(b, color="black", ls=":", lw=0.8, alpha=0.6)
        if budgets:
            ax.plot([], [], color="black", ls=":", lw=0.8, label="rung budgets")
    ax.plot([], [], color="#b0b0b0", lw=0.7, label="other trials (validation)")
    if has_train:
        ax.plot([], [], color="black", lw=1.0, ls="--", label="training loss (dashed)")
    ax.set_xlabel("training step")
    ax.set_ylabel(("validation (solid) and training (dashed) loss" if has_train
                   else loss_label(sweep)) + (" (log)" if np.all(flat > 0) else ""))
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    repl = f", mean of {sweep.config.repeats} seeds" if sweep.config.repeats > 1 else ""
    ax.set_title(f"Learning curves of the top {len(top)} trials{repl}: {sweep.title}",
                 fontsize=11)
    caption = (f"Validation loss during training of the {len(top)} best trials (solid; legend: "
               f"final loss) and their training loss (dashed: the mean training objective of "
               f"each chunk, with any noise, dropout or penalty the model kind trains with), "
               f"every other trial's validation loss in grey"
               + (", dotted lines at the multi-fidelity rung budgets" if sweep.multi_fidelity
                  else "") + ". Curves still falling at the end mean more steps would help.")
    return png(fig), caption


def rungs(sweep: Sweep) -> tuple[bytes, str] | None:
    """Multi-fidelity rungs: each trial's loss at each budget it reached, and where it stopped."""
    budgets = sorted({b for rows in sweep.rungs.values() for b, _ in rows})
    if not sweep.multi_fidelity or len(budgets) < 2:
        return None
    status = {t["trial_id"]: t["status"] for t in sweep.trials}
    finite = [v for rows in sweep.rungs.values() for _, v in rows if v is not None]
    positive = bool(finite) and min(finite) > 0
    fig = figure(11, 5.4)
    ax = fig.subplots()
    top_budget = max(budgets)
    for trial, rows in sweep.rungs.items():
        xs = [b for b, v in rows if v is not None]
        ys = [v for _, v in rows if v is not None]
        reached_top = bool(xs) and xs[-1] == top_budget
        colour = COMPLETED if reached_top else "#9a9a9a"
        if xs:
            ax.plot(xs, ys, color=colour, lw=1.0 if reached_top else 0.6,
                    alpha=0.9 if reached_top else 0.5)
            if status.get(trial) == "pruned":
                ax.scatter(xs[-1:], ys[-1:], marker="x", color="#555555", s=18, lw=0.8)
            elif status.get(trial) == "completed":
                ax.scatter(xs[-1:], ys[-1:], marker="o", color=COMPLETED, s=26, zorder=3)
        for b, v in rows:
            if v is None:
                ax.scatter([b], [0.96], transform=ax.get_xaxis_transform(), marker="x",
                           color=DIVERGED, s=30, clip_on=False)
    counts = {b: sum(1 for rows in sweep.rungs.values() for bb, _ in rows if bb == b)
              for b in budgets}
    for b in budgets:
        ax.text(b, 1.01, f"{counts[b]} trials", transform=ax.get_xaxis_transform(),
                ha="center", va="bottom", fontsize=8)
    ax.set_xscale("log")
    if positive:
        ax.set_yscale("log")
        log_ticks(ax.yaxis, min(finite), max(finite))
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("budget (training steps, log scale)")
    ax.set_ylabel(loss_label(sweep) + " at the rung" + (" (log)" if positive else ""))
    ax.grid(True, alpha=0.25)
    reached = [rows for rows in sweep.rungs.values()
               if any(v is not None for _, v in rows) and max(
                   b for b, v in rows if v is not None) == top_budget]
    entries = [
        (len(reached), Line2D([], [], color=COMPLETED, marker="o",
                              label=f"reached the top rung ({len(reached)})")),
        (sum(s == "pruned" for s in status.values()),
         Line2D([], [], color="#9a9a9a", marker="x", markeredgecolor="#555555", lw=0.6,
                label="stopped at its last rung")),
        (sum(v is None for rows in sweep.rungs.values() for _, v in rows),
         Line2D([], [], color=DIVERGED, marker="x", lw=0, label="diverged at that rung")),
    ]
    # Only classes that occur, beside the axes so no line hides under the legend.
    ax.legend(handles=[h for n, h in entries if n], fontsize=8, loc="upper left",
              bbox_to_anchor=(1.01, 1.0))
    eta = f", eta = {sweep.config.eta}"
    ax.set_title(f"Rungs of {sweep.config.searcher}{eta}: validation loss at each budget\n"
                 f"{sweep.title}", fontsize=11, pad=16)
    caption = ("Multi-fidelity rungs: each line is one trial's validation loss at the budgets it "
               "reached; x marks where the searcher stopped it, dots the trials trained to the "
               "full budget; the counts on top give the trials evaluated at each rung. Lines "
               "that cross show where low-budget rankings mislead.")
    return png(fig), caption


# -- 5. noise -------------------------------------------------------------------------------------


def noise(sweep: Sweep, noise_: Noise | None) -> tuple[bytes, str] | None:
    """Replicates: spread across seeds next to the spread across configurations."""
    if noise_ is None:
        return None
    c, r = noise_.losses.shape
    fig = figure(11.5, 4.8)
    left, right = fig.subplots(1, 2, width_ratios=[3, 1.3])
    x = np.arange(c)
    for j in range(r):
        left.scatter(x, noise_.losses[:, j], s=14, color=COMPLETED, alpha=0.6,
                     label="one seed" if j == 0 else None)
    means = 10 ** np.log10(noise_.losses).mean(axis=1)
    left.scatter(x, means, marker="_", s=160, color="black", label="geometric mean")
    left.vlines(x, noise_.losses.min(axis=1), noise_.losses.max(axis=1), color=COMPLETED,
                alpha=0.4, lw=1)
    left.set_yscale("log")
    log_ticks(left.yaxis, float(noise_.losses.min()), float(noise_.losses.max()))
    if c <= 30:
        left.set_xticks(x, [str(t) for t in noise_.trial_ids], fontsize=7,
                        rotation=90 if c > 12 else 0)
        left.set_xlabel("trial (configurations ranked by mean loss)")
    else:
        left.set_xlabel("configurations ranked by mean loss")
    left.set_ylabel(loss_label(sweep) + " (log)")
    left.legend(fontsize=8)
    left.grid(True, alpha=0.25)
    left.set_title(f"{c} configurations × {r} seeds at {noise_.steps} steps", fontsize=10)

    per_config = np.std(np.log10(noise_.losses), axis=1, ddof=1)
    right.bar([0, 1], [noise_.seed_std, noise_.config_std], color=["#9ecae1", COMPLETED],
              width=0.6)
    rng = np.random.default_rng(0)
    right.scatter(rng.uniform(-0.15, 0.15, c), per_config, s=10, color="black", alpha=0.5,
                  label="each configuration")
    right.set_xticks([0, 1], ["across seeds\n(pooled)", "across\nconfigurations"])
    right.set_ylabel("std of log10 val loss")
    right.legend(fontsize=8)
    ratio = noise_.config_std / noise_.seed_std if noise_.seed_std > 0 else math.inf
    right.set_title(f"configurations differ {ratio:.1f}× more\nthan seeds do", fontsize=10)
    fig.suptitle(f"Noise: seed-to-seed spread against configuration-to-configuration spread: "
                 f"{sweep.title}", fontsize=11)
    caption = ("Left: every configuration's replicate losses (one dot per seed, bar: geometric "
               "mean), ranked. Right: the pooled standard deviation of log10 loss across seeds "
               "of one configuration against the standard deviation of the configurations' mean "
               "log10 loss. When the two are close, differences between configurations (and the "
               "importances) are mostly seed noise.")
    return png(fig), caption


# -- 6. downstream --------------------------------------------------------------------------------


def downstream(sweep: Sweep, down: Downstream | None) -> tuple[bytes, str] | None:
    """Bars of anomaly AUC, linear-probe accuracy and test loss of the retrained top trials,
    with the PCA (same code size) and raw-pixel baselines beside them."""
    if down is None:
        return None
    labels = [f"trial {t}\n{steps} steps\nval {v:.3g}"
              for t, steps, v in zip(down.trial_ids, down.steps, down.stored_val_loss,
                                     strict=True)]
    base = down.baselines
    # (title, values, chance, y label, PCA baseline per trial, raw-pixel baseline)
    panels: list[tuple[str, np.ndarray, float, str, Any, Any]] = []
    if down.auc is not None:
        panels.append((f"anomaly detection ROC AUC\n(class {down.anomaly_class} held out, "
                       f"score = reconstruction error)", down.auc, 0.5, "ROC AUC",
                       None if base is None else base.pca_auc,
                       None if base is None else base.raw_auc))
    if down.probe_accuracy is not None:
        panels.append((f"linear-probe accuracy of the codes\n({down.num_classes} classes, "
                       f"test split)", down.probe_accuracy, 1.0 / max(down.num_classes, 1),
                       "accuracy", None if base is None else base.pca_probe,
                       None if base is None else base.raw_probe))
    panels.append((f"{down.test_name}\n(model trained on all classes)", down.test_loss,
                   math.nan, "test reconstruction error", None, None))
    # Wide enough for the title even with one panel (unlabelled data).
    fig = figure(max(4.6 * len(panels), 9.0), 4.8)
    axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False)).ravel()
    x = np.arange(len(labels))
    handles: dict[str, Any] = {}
    for ax, (title, values, chance, ylabel, pca, raw) in zip(axes, panels, strict=True):
        ax.bar(x, values, color=COMPLETED, width=0.6)
        for xi, v in zip(x, values, strict=True):
            # At the bar's foot, in white: the baseline marks sit near its top.
            ax.annotate(f"{v:.3g}", (xi, 0), xytext=(0, 4), textcoords="offset points",
                        ha="center", va="bottom", fontsize=9, color="white", fontweight="bold")
        if pca is not None:
            handles["pca"] = ax.scatter(x, pca, marker="_", s=700, color=BEST, linewidths=2.5,
                                        zorder=3, label="PCA, same code size")
        if raw is not None:
            handles["raw"] = ax.axhline(raw, color="#2ca02c", ls="-.", lw=1.2,
                                        label="raw pixels")
        if math.isfinite(chance):
            handles["chance"] = ax.axhline(chance, color="black", ls="--", lw=0.8,
                                           label="chance")
            ax.set_ylim(0, 1.08)
        else:
            ax.set_ylim(0, float(np.nanmax(values)) * 1.15 if np.isfinite(values).any() else 1)
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(True, axis="y", alpha=0.25)
    if handles:
        fig.legend(handles=list(handles.values()), loc="outside lower center",
                   ncols=len(handles), fontsize=8, frameon=False)
    fig.suptitle(f"Downstream quality of the top {len(labels)} configurations, retrained\n"
                 f"{sweep.title}", fontsize=11)
    caption = (f"The {len(labels)} best configurations retrained from their trial keys. "
               f"{down.reproduction()} Anomaly detection: each configuration retrained on the "
               f"training examples of every class but {down.anomaly_class}, test examples scored "
               f"by reconstruction error, class {down.anomaly_class} as the anomaly. Linear "
               f"probe: logistic regression on the codes (VAE: posterior means) of the training "
               f"split, accuracy on the test split. Baselines: PCA with each trial's code size "
               f"(anomaly score: its reconstruction error), and the raw pixels (anomaly score: "
               f"squared distance to the mean normal training example). Dashed lines: chance.")
    return png(fig), caption


# -- 7. the schedule population-based training found ---------------------------------------------


def _schedule_line(segments: list[lineage_lib.Segment], name: str) -> tuple[list, list]:
    xs = [s.start for s in segments] + [segments[-1].end]
    ys = [s.params[name] for s in segments] + [segments[-1].params[name]]
    return xs, ys


def schedule(sweep: Sweep) -> tuple[bytes, str] | None:
    """Population-based training: each perturbed hyperparameter against the training step, for
    every member (faint) and along the final best trial's ancestry (bold)."""
    best = ranked(sweep)
    if sweep.config.searcher != "pbt" or not sweep.lineage or not best:
        return None
    names = [n for n, d in sweep.space.items()
             if not isinstance(d, Choice) and hparams.HPARAMS[n].kind == "array"][:4]
    if not names:
        return None
    end = sweep.config.steps
    trial = best[0]["trial_id"]
    path = lineage_lib.ancestry(sweep.lineage, trial, end)
    members = sorted({r["trial_id"] for r in sweep.lineage})
    fig = figure(max(5.0 * len(names), 8.0), 4.6)
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names, strict=True):
        for member in members:
            xs, ys = _schedule_line(lineage_lib.own_schedule(sweep.lineage, member, end), name)
            ax.plot(xs, ys, color="#9a9a9a", lw=0.7, alpha=0.5, drawstyle="steps-post")
        xs, ys = _schedule_line(path, name)
        ax.plot(xs, ys, color=BEST, lw=2.2, drawstyle="steps-post", zorder=3)
        copied = [s for s in path if s.start > 0]
        ax.scatter([s.start for s in copied], [s.params[name] for s in copied], color=BEST,
                   edgecolor="black", s=28, zorder=4)
        if getattr(sweep.space[name], "log", False):
            ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.25)
    axes[-1].legend(handles=[
        Line2D([], [], color=BEST, lw=2.2, marker="o", markeredgecolor="black",
               label=f"best trial {trial}'s weights"),
        Line2D([], [], color="#9a9a9a", lw=0.7, label="each member's own values")],
        fontsize=8, loc="best")
    hops = " -> ".join(str(s.trial) for s in path)
    fig.suptitle(f"Schedule found by population-based training (members {hops})\n{sweep.title}",
                 fontsize=11)
    caption = ("Population-based training: each panel is one perturbed hyperparameter against "
               "the training step. Grey: every member's own values over time. Orange: the "
               "schedule the best trial's final weights were trained under, following them back "
               "through the members they were copied from (dots: where they were copied and "
               "the copy's values perturbed).")
    return png(fig), caption
