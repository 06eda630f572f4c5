"""The loop's per-trial records: the loss a scheduler is told for a trial's replicates."""

import math

import numpy as np
import pytest

from jaxae.jobs import aggregate


@pytest.mark.parametrize(("how", "reference"), [("mean", np.mean), ("median", np.median)])
def test_replicates_aggregate_by_mean_or_median(how, reference):
    losses = [0.3, 0.1, 0.8, 0.2]
    assert aggregate(losses, how) == pytest.approx(float(reference(losses)))


@pytest.mark.parametrize("losses", [[], [0.2, math.nan], [math.inf, 0.1]])
def test_a_failed_replicate_or_none_fails_the_trial(losses):
    assert math.isnan(aggregate(losses, "mean")) and math.isnan(aggregate(losses, "median"))
