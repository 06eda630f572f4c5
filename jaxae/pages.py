"""The report's pages: the plain-text terminal summary and the self-contained ``index.html``."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxae.analysis import Analysis, Noise
from jaxae.results import Sweep, ranked
from jaxae.retrain import Downstream


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _config_text(sweep: Sweep, params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt(params[k])}" for k in sweep.space if k in params)


def _status_text(sweep: Sweep) -> str:
    return ", ".join(f"{n} {s}" for s, n in sorted(sweep.status_counts().items()))


def text_summary(sweep: Sweep, analysis: Analysis | None, noise_: Noise | None,
                 down: Downstream | None, index: Path, notes: Sequence[str] = ()) -> str:
    """The terminal summary: best configuration, importances, downstream scores, where to look."""
    lines = [f"sweep {sweep.dir}: {sweep.title} ({_status_text(sweep)})"]
    best = ranked(sweep)
    if best:
        b = best[0]
        lines.append(f"best: trial {b['trial_id']}, val_loss {b['val_loss']:.5g} after "
                     f"{b['steps']} steps ({b['status']})")
        lines.append(f"  {_config_text(sweep, b['params']) or '(nothing varies)'}")
    else:
        lines.append("best: no trial has a finite validation loss")
    if analysis is not None:
        imp, fit = analysis.importance, analysis.fit
        imp, fit = analysis.importance, analysis.fit
        others = analysis.other_budgets()
        lines.append(f"importance at {fit.budget} steps (fANOVA of "
                     f"{'log ' if fit.logged else ''}val_loss over {len(fit.trial_ids)} trials "
                     f"measured at {fit.budget} steps, surrogate OOB R^2 {analysis.r2:.2f})"
                     + (", beside the other budgets:" if others else ":"))
        width = max(len(n) for n in imp.names)
        if others:
            lines.append(f"  {'':<{width}}  {f'{fit.budget} steps':>10}  "
                         + "  ".join(f"{f'{b} steps':>10}" for b in others))
        for i in analysis.order():
            row = f"  {imp.names[i]:<{width}}  {100 * imp.main[i]:9.1f}%"
            row += "".join(f"  {100 * analysis.by_budget[b][1][i]:9.1f}%" for b in others)
            lines.append(row + f"  (+/- {100 * imp.main_std[i]:.1f} at {fit.budget} steps)")
        if others:
            lines.append(f"  {'trials':<{width}}  {len(fit.trial_ids):>10}  "
                         + "  ".join(f"{analysis.by_budget[b][0]:>10}" for b in others))
        for a, b_ in sorted(imp.pairs, key=lambda p: -imp.pairs[p])[:3]:
            lines.append(f"  {a} x {b_} interaction  {100 * imp.pairs[(a, b_)]:.1f}% at "
                         f"{fit.budget} steps")
    elif sweep.space:
        lines.append("importance: too few trials with a finite loss at one budget")
    if noise_ is not None:
        lines.append(f"noise (log10 val_loss at {noise_.steps} steps): seed std "
                     f"{noise_.seed_std:.3g} vs std across configurations {noise_.config_std:.3g}")
    if down is not None:
        for i, t in enumerate(down.trial_ids):
            parts = [f"trial {t}: {down.test_name} {down.test_loss[i]:.4g}"]
            if down.auc is not None:
                parts.append(f"anomaly AUC (class {down.anomaly_class}) {down.auc[i]:.3f}")
            if down.probe_accuracy is not None:
                parts.append(f"probe accuracy {down.probe_accuracy[i]:.3f}")
            lines.append("downstream " + ", ".join(parts))
        base = down.baselines
        if base is not None:
            parts = [f"probe accuracy: raw pixels {base.raw_probe:.3f}, PCA "
                     + ", ".join(f"{k} components {a:.3f}" for k, a in
                                 sorted(dict(zip(base.code_sizes, base.pca_probe,
                                                 strict=True)).items()))]
            if base.raw_auc is not None and base.pca_auc is not None:
                parts.append(f"anomaly AUC: raw pixels {base.raw_auc:.3f}, PCA "
                             + ", ".join(f"{k} components {a:.3f}" for k, a in
                                         sorted(dict(zip(base.code_sizes, base.pca_auc,
                                                         strict=True)).items())))
            lines.append("baselines " + "; ".join(parts))
        lines.append(f"downstream: {down.reproduction()}")
    lines.extend(f"note: {n}" for n in notes)
    lines.append(f"report: {index}")
    return "\n".join(lines)


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1750px; margin: 2em auto; color: #222;
       padding: 0 1em; }
p, figcaption, h1, h2, h3 { max-width: 1100px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 2em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #444; margin-top: 0.4em; }
.note { color: #a40; }
#trials th { cursor: pointer; background: #f4f4f4; position: sticky; top: 0; }
#trials th.asc::after { content: " \\25B2"; } #trials th.desc::after { content: " \\25BC"; }
#trials-box { max-height: 40em; overflow: auto; }
.controls { margin: 0.5em 0; }
"""

# Sorting by a header click and filtering by words and status, inline: the page must work from
# a file with no network (no CDN, no external scripts).
_TABLE_JS = """
(function () {
  var table = document.getElementById("trials");
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var text = document.getElementById("trials-filter");
  var status = document.getElementById("trials-status");
  var count = document.getElementById("trials-count");
  function key(row, col) {
    var cell = row.cells[col];
    var v = cell.getAttribute("data-v");
    if (v === null) { return cell.textContent; }
    return v === "" ? Infinity : parseFloat(v);
  }
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
    th.addEventListener("click", function () {
      var asc = !th.classList.contains("asc");
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) {
        h.classList.remove("asc", "desc");
      });
      th.classList.add(asc ? "asc" : "desc");
      rows.sort(function (a, b) {
        var x = key(a, col), y = key(b, col);
        var c = (typeof x === "number" && typeof y === "number") ? x - y
          : String(x).localeCompare(String(y));
        if (isNaN(c)) { c = 0; }
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
  function filter() {
    var words = text.value.toLowerCase().split(/\\s+/).filter(Boolean);
    var want = status.value, shown = 0;
    rows.forEach(function (r) {
      var t = r.textContent.toLowerCase();
      var ok = (!want || r.getAttribute("data-status") === want)
        && words.every(function (w) { return t.indexOf(w) >= 0; });
      r.style.display = ok ? "" : "none";
      if (ok) { shown += 1; }
    });
    count.textContent = shown + " of " + rows.length + " trials";
  }
  text.addEventListener("input", filter);
  status.addEventListener("change", filter);
  filter();
})();
"""

_PAIR_JS = """
(function () {
  var select = document.getElementById("pair-select");
  var img = document.getElementById("pair-img");
  var link = document.getElementById("pair-link");
  var caption = document.getElementById("pair-caption");
  select.addEventListener("change", function () {
    var o = select.options[select.selectedIndex];
    img.src = o.value; link.href = o.value;
    img.alt = o.getAttribute("data-caption");
    caption.textContent = o.getAttribute("data-caption");
  });
})();
"""


def trials_table(sweep: Sweep) -> str:
    """Every trial in one sortable, filterable table (numbers sort by their exact value)."""
    e = html.escape
    rank = {t["trial_id"]: i + 1 for i, t in enumerate(ranked(sweep))}
    names = list(sweep.space)
    header = ["trial", "rank", "status", "steps", f"val_loss ({sweep.loss_name})", *names]
    statuses = sorted({t["status"] for t in sweep.trials})
    out = ['<div class="controls"><label>filter <input id="trials-filter" type="search" '
           'placeholder="words, e.g. completed relu" size="30"></label> '
           '<label>status <select id="trials-status"><option value="">all</option>'
           + "".join(f'<option value="{e(st)}">{e(st)}</option>' for st in statuses)
           + '</select></label> <span id="trials-count"></span> (click a header to sort)</div>',
           '<div id="trials-box"><table id="trials"><thead><tr>'
           + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr></thead><tbody>"]

    def cell(v: Any) -> str:
        if isinstance(v, bool) or not isinstance(v, int | float | type(None)):
            return f"<td>{e(str(v))}</td>"
        shown = "" if v is None else _fmt(v)
        exact = "" if v is None else repr(v)
        return f'<td class="num" data-v="{e(exact)}">{e(shown)}</td>'

    for t in sweep.trials:
        values = [t["trial_id"], rank.get(t["trial_id"]), t["status"], t["steps"],
                  t["val_loss"], *[t["params"].get(n) for n in names]]
        out.append(f'<tr data-status="{e(t["status"])}">' + "".join(cell(v) for v in values)
                   + "</tr>")
    out.append(f"</tbody></table></div><script>{_TABLE_JS}</script>")
    return "\n".join(out)


def pair_picker(pairs: Mapping[str, str]) -> str:
    """A select box over the per-pair contour images, one shown at a time."""
    if not pairs:
        return ""
    e = html.escape
    first, caption = next(iter(pairs.items()))
    options = "".join(
        f'<option value="{e(name)}" data-caption="{e(cap)}">'
        f'{e(name.removeprefix("pair-").removesuffix(".png").replace("--", " × "))}</option>'
        for name, cap in pairs.items())
    return (f'<figure><div class="controls"><label>pair <select id="pair-select">{options}'
            f'</select></label></div><a id="pair-link" href="{e(first)}">'
            f'<img id="pair-img" src="{e(first)}" alt="{e(caption)}"></a>'
            f'<figcaption id="pair-caption">{e(caption)}</figcaption></figure>'
            f"<script>{_PAIR_JS}</script>")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any, tag: str) -> str:
        cls = ' class="num"' if isinstance(v, int | float) and tag == "td" else ""
        return f"<{tag}{cls}>{html.escape(_fmt(v))}</{tag}>"

    head = "".join(cell(h, "th") for h in header)
    body = "".join("<tr>" + "".join(cell(v, "td") for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def index_html(sweep: Sweep, analysis: Analysis | None, noise_: Noise | None,
               down: Downstream | None, figures: Mapping[str, str],
               notes: Sequence[str] = (), pairs: Mapping[str, str] | None = None) -> str:
    """The self-contained page (inline scripts only, no external resources); every string that
    came from the user's config or data is escaped. Each figure links to its full-size image."""
    e = html.escape
    c = sweep.config
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<title>jaxae report: {e(sweep.title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>Sweep report: {e(sweep.title)}</h1>",
             f"<p>{e(str(sweep.dir))}</p>"]
    parts.append("<h2>Summary</h2>")
    settings = [("model", c.model), ("searcher", c.searcher), ("data", c.data),
                ("trials", f"{len(sweep.trials)} ({_status_text(sweep)})"),
                ("steps (max budget)", c.steps), ("population", c.population),
                ("replicates per configuration", c.repeats), ("seed", c.seed),
                ("varying hyperparameters", ", ".join(sweep.space) or "none")]
    if c.searcher == "pbt":
        from jaxae.pbt import DEFAULT_FRACTION, DEFAULT_RESAMPLE, ready_steps

        copies = sum(r["parent"] is not None for r in sweep.lineage)
        settings += [("pbt: steps between exploits", ready_steps(c)),
                     ("pbt: bottom / top fraction",
                      DEFAULT_FRACTION if c.pbt_fraction is None else c.pbt_fraction),
                     ("pbt: resample probability",
                      DEFAULT_RESAMPLE if c.pbt_resample is None else c.pbt_resample),
                     ("pbt: weights copied", copies)]
    parts.append(_table(["setting", "value"], settings))
    best = ranked(sweep)
    if best:
        b = best[0]
        parts.append(f"<h3>Best configuration: trial {b['trial_id']}, val_loss "
                     f"{b['val_loss']:.5g} after {b['steps']} steps ({e(b['status'])})</h3>")
        rows = [(k, b["params"][k]) for k in sweep.space]
        rows += [(k, v) for k, v in sorted(b["params"].items()) if k not in sweep.space]
        parts.append(_table(["hyperparameter", "value"], rows))
        top = best[:5]
        parts.append("<h3>Top trials</h3>")
        parts.append(_table(["trial", "status", "steps", f"val_loss ({sweep.loss_name})",
                             *sweep.space],
                            [(t["trial_id"], t["status"], t["steps"], t["val_loss"],
                              *[t["params"].get(k) for k in sweep.space]) for t in top]))
    if analysis is not None:
        imp, fit = analysis.importance, analysis.fit
        others = analysis.other_budgets()
        parts.append(f"<h3>Importance at {fit.budget} steps (fANOVA on a random forest of "
                     f"{'log ' if fit.logged else ''}val_loss; {len(fit.trial_ids)} trials "
                     f"measured at {fit.budget} steps; surrogate out-of-bag R² "
                     f"{analysis.r2:.2f})</h3>")
        if others:
            parts.append("<p>Multi-fidelity: each budget holds different trials (higher budgets "
                         "only the promoted ones), so the shares at every budget with enough "
                         "trials stand side by side.</p>")
        header = ["hyperparameter", f"% of variance at {fit.budget} steps",
                  "std over trees (pp)"]
        header += [f"at {b} steps ({analysis.by_budget[b][0]} trials)" for b in others]
        rows = [(imp.names[i], f"{100 * imp.main[i]:.1f}%", f"{100 * imp.main_std[i]:.1f}",
                 *[f"{100 * analysis.by_budget[b][1][i]:.1f}%" for b in others])
                for i in analysis.order()]
        for p in sorted(imp.pairs, key=lambda p: -imp.pairs[p])[:3]:
            rows.append((f"{p[0]} × {p[1]} (interaction)", f"{100 * imp.pairs[p]:.1f}%", "",
                         *[""] * len(others)))
        explained = imp.main.sum() + sum(imp.pairs.values())
        rows.append(("all main effects + pairs", f"{100 * explained:.1f}%", "",
                     *[""] * len(others)))
        parts.append(_table(header, rows))
    if noise_ is not None:
        parts.append(_table(["noise (log10 val_loss)", "std"], [
            (f"across seeds, within a configuration ({noise_.losses.shape[1]} seeds)",
             noise_.seed_std),
            (f"across {len(noise_.trial_ids)} configurations (their means)", noise_.config_std)]))
    if down is not None:
        objective = sweep.loss_name
        header = ["trial / baseline", "steps", f"stored val_loss ({objective})",
                  f"retrained val_loss ({objective})", down.test_name]
        if down.auc is not None:
            header.append(f"anomaly ROC AUC (class {down.anomaly_class} held out)")
        if down.probe_accuracy is not None:
            header.append(f"linear-probe accuracy ({down.num_classes} classes)")
        rows = []
        for i, t in enumerate(down.trial_ids):
            row = [f"trial {t}", down.steps[i], float(down.stored_val_loss[i]),
                   float(down.val_loss[i]), float(down.test_loss[i])]
            if down.auc is not None:
                row.append(float(down.auc[i]))
            if down.probe_accuracy is not None:
                row.append(float(down.probe_accuracy[i]))
            rows.append(row)
        base = down.baselines
        if base is not None:
            for i, k in enumerate(base.code_sizes):
                if k in base.code_sizes[:i]:
                    continue
                row = [f"PCA, {k} components (code size of trial "
                       f"{down.trial_ids[i]})", "", "", "", ""]
                if down.auc is not None:
                    row.append(float(base.pca_auc[i]) if base.pca_auc is not None else "")
                if down.probe_accuracy is not None:
                    row.append(float(base.pca_probe[i]))
                rows.append(row)
            row = ["raw pixels (AUC: distance to the mean normal example)", "", "", "", ""]
            if down.auc is not None:
                row.append(base.raw_auc if base.raw_auc is not None else "")
            if down.probe_accuracy is not None:
                row.append(base.raw_probe)
            rows.append(row)
        parts.append("<h3>Downstream quality of the top configurations (retrained)</h3>")
        parts.append(f"<p>{e(down.reproduction())}</p>")
        parts.append(_table(header, rows))
    parts.extend(f'<p class="note">{e(n)}</p>' for n in notes)
    parts.append("<h2>Figures</h2>")
    for name, caption in figures.items():
        parts.append(f'<figure><a href="{e(name)}"><img src="{e(name)}" alt="{e(caption)}"></a>'
                     f"<figcaption>{e(caption)} (Click for full size.)</figcaption></figure>")
        if name == "interactions.png" and pairs:
            parts.append("<h3>Any pair of the most important hyperparameters</h3>")
            parts.append(pair_picker(pairs))
    if pairs and "interactions.png" not in figures:
        parts.append(pair_picker(pairs))
    parts.append(f"<h2>All {len(sweep.trials)} trials</h2>")
    parts.append(trials_table(sweep))
    parts.append("</body></html>\n")
    return "\n".join(parts)
