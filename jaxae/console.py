"""What a sweep prints: its progress bar while it trains and its summary at the end."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from jaxae import config as config_lib
from jaxae.store import ranked


class Progress:
    """A tqdm bar over trials that have reported at least once (multi-fidelity trials report at
    their first rung long before they settle). It says when the first programs are compiling,
    shows the best completed loss (before any trial completes, the best loss at the highest
    budget reached, with that budget), the trials still training once all have reported, and
    member-steps per second. On ``--resume`` it starts from the trials already reported."""

    def __init__(self, config: config_lib.SweepConfig, driver: Any, enabled: bool) -> None:
        self.bar = None
        self.label = f"{config.model}/{config.searcher}"
        self.best = math.inf
        self.best_at: dict[int, float] = {}  # budget -> best loss told at it
        self.shown_best = ""
        self.reported: set[int] = driver.reported()
        self.t0 = time.perf_counter()
        self.steps0 = driver.member_steps
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=config.trials, initial=len(self.reported), desc=self.label,
                            unit="trial", file=sys.stderr, dynamic_ncols=True)
            self.bar.set_postfix_str("compiling the first programs (a warm cache skips this)")

    def best_text(self) -> str:
        if math.isfinite(self.best) or not self.best_at:
            return f"{self.best:.4g}"
        budget = max(self.best_at)
        return f"{self.best_at[budget]:.4g}@{budget}steps"

    def update(self, driver: Any, events: list) -> None:
        new = {e.trial for e in events if e.told or e.status != "running"} - self.reported
        self.reported |= new
        for e in events:
            if not math.isfinite(e.val_loss):
                continue
            if e.status == "completed":
                self.best = min(self.best, e.val_loss)
            if e.told:
                self.best_at[e.budget] = min(self.best_at.get(e.budget, math.inf), e.val_loss)
        if self.bar is not None:
            rate = (driver.member_steps - self.steps0) / max(time.perf_counter() - self.t0, 1e-9)
            finishing = len(self.reported) >= (self.bar.total or 0) and driver.running
            self.bar.set_description(f"{self.label} (finishing)" if finishing else self.label,
                                     refresh=False)
            best = self.best_text()
            self.bar.set_postfix({"best": best, "training": len(driver.running),
                                  "member-steps/s": f"{rate:,.0f}"}, refresh=False)
            if best != self.shown_best:  # a new best is shown at once, however fast chunks go
                self.shown_best = best
                self.bar.refresh()
            self.bar.update(len(new))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def print_summary(store: Any, out: Path, best: dict | None, elapsed: float) -> None:
    trials = store.trials()
    counts: dict[str, int] = {}
    for t in trials:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    print(f"\n{len(trials)} trials in {elapsed:.1f} s: "
          + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    done = [t for t in ranked(trials) if t["status"] == "completed"][:5]
    if done:
        names = sorted({k for t in done for k in t["params"]
                        if len({json.dumps(u["params"].get(k)) for u in trials}) > 1})
        header = ["trial", "val_loss", *names]
        rows = [[str(t["trial_id"]), f"{t['val_loss']:.5g}",
                 *[_fmt(t["params"].get(k)) for k in names]] for t in done]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        print("top configurations:")
        for r in [header, *rows]:
            print("  " + "  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
    if best is None:
        print("no trial completed with a finite validation loss")
    print(f"results: {out / 'trials.db'}\n         {out / 'best.json'}\n         "
          f"{out / 'sweep.json'}")
    sys.stdout.flush()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)
