"""What the sweep loop tracks about a trial: a job in its slots, a paused member in the parking
lot, and the events a chunk reports to the store and the progress display."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from searchers import Job


@dataclasses.dataclass
class Running:
    """A job being trained: one slot per replicate."""

    job: Job
    config: dict[str, Any]  # the resolved configuration (defaults filled in)
    bucket: tuple
    slots: list[int]


@dataclasses.dataclass
class Paused:
    """A trial waiting for a scheduler's decision, its members parked on the device."""

    config: dict[str, Any]
    bucket: tuple
    rows: list[int]  # parking rows, one per replicate
    step: int
    budget: int
    loss: float  # what the scheduler was told at `budget`
    replicate_losses: list[float]


@dataclasses.dataclass
class Event:
    """What happened to a trial during a chunk, for the store and the progress display."""

    trial: int
    status: str  # running, completed, pruned, diverged
    config: dict[str, Any]
    val_loss: float
    steps: int
    budget: int
    bucket: tuple
    replicate_losses: list[float]
    told: bool  # whether the scheduler was told a loss at `budget` this chunk
    keys: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (init, data) hex


def aggregate(losses: list[float], how: str) -> float:
    """The loss a scheduler is told for a trial's replicates (NaN if any failed)."""
    if not losses or any(not math.isfinite(v) for v in losses):
        return math.nan
    if len(losses) == 1:
        return float(losses[0])  # what the mean and median of one give, without numpy's cost
    return float(np.mean(losses) if how == "mean" else np.median(losses))
