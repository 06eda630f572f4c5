"""The hyperparameter schedules a population-based-training sweep found, from its ``lineage``
rows (``store.TrialStore.put_lineage``).

A member's own schedule is its configuration between its lineage rows. Its *ancestry* follows
its weights back in time: from the last row before ``end`` the weights are its own; before that
step they were its parent's, so the parent's ancestry up to that step comes first. The ancestry
of the final best member is the schedule its weights were actually trained under.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any


@dataclasses.dataclass(frozen=True)
class Segment:
    """Steps ``[start, end)`` trained by ``trial``'s weights under ``params``."""

    start: int
    end: int
    trial: int
    params: Mapping[str, Any]


def _by_trial(lineage: Sequence[Mapping[str, Any]]) -> dict[int, list[Mapping[str, Any]]]:
    rows: dict[int, list[Mapping[str, Any]]] = {}
    for row in sorted(lineage, key=lambda r: (r["trial_id"], r["step"])):
        rows.setdefault(row["trial_id"], []).append(row)
    return rows


def own_schedule(lineage: Sequence[Mapping[str, Any]], trial: int, end: int) -> list[Segment]:
    """``trial``'s configurations over ``[0, end)``, whatever weights it held."""
    rows = _by_trial(lineage).get(trial, [])
    return [Segment(r["step"], nxt["step"] if nxt is not None else end, trial, r["params_after"])
            for r, nxt in zip(rows, [*rows[1:], None], strict=True)]


def ancestry(lineage: Sequence[Mapping[str, Any]], trial: int, end: int) -> list[Segment]:
    """The configurations ``trial``'s final weights were trained under over ``[0, end)``, oldest
    first, each segment naming the member that trained them then.

    Raises:
        ValueError: a member on the way has no lineage row at or before the step needed (the
            rows are incomplete).
    """
    rows = _by_trial(lineage)
    segments = []
    member, until = trial, end
    while True:
        before = [r for r in rows.get(member, []) if r["step"] < until]
        if not before:
            raise ValueError(f"trial {member} has no lineage row before step {until}")
        last = before[-1]
        segments.append(Segment(last["step"], until, member, last["params_after"]))
        if last["parent"] is None:
            break
        member, until = last["parent"], last["step"]
    return segments[::-1]
