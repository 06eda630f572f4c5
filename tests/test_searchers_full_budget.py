"""Tests for searchers.full_budget: each trial is one job at the full budget, in sampler order."""

import json
import math

import pytest

from searchers import CMAES, Float, FullBudget, Int, RandomSearch, restore_scheduler

SPACE = {"x": Float(0.0, 1.0), "n": Int(1, 8)}


def loss_of(config):
    return (config["x"] - 0.3) ** 2 + config["n"] / 100


def test_random_search_fills_every_slot_with_full_budget_jobs_in_the_samplers_order():
    scheduler = FullBudget(RandomSearch(SPACE, seed=3), max_budget=50, max_trials=5)
    reference = RandomSearch(SPACE, seed=3)
    jobs = scheduler.ask(4)
    assert [j.trial_id for j in jobs] == [0, 1, 2, 3] and {j.budget for j in jobs} == {50}
    expected = [reference.ask()[0] for _ in range(4)]
    assert [j.config for j in jobs] == expected
    scheduler.tell(0, 50, 0.5)
    scheduler.tell(1, 50, math.nan)
    assert scheduler.status(0) == "completed" and scheduler.status(1) == "stopped"
    assert [j.trial_id for j in scheduler.ask(9)] == [4]  # max_trials caps it
    assert not scheduler.finished
    for t in (2, 3, 4):
        scheduler.tell(t, 50, 1.0)
    assert scheduler.finished and scheduler.ask(3) == [] and scheduler.name == "random"


def test_cmaes_waits_for_its_generation_and_is_told_it_whole():
    scheduler = FullBudget(CMAES(SPACE, population_size=3, seed=1), max_budget=20, max_trials=9)
    jobs = scheduler.ask(8)
    assert len(jobs) == 3  # one generation; the next waits for its losses
    assert scheduler.ask(8) == []
    for job in jobs:
        scheduler.tell(job.trial_id, job.budget, loss_of(job.config))
    assert scheduler.sampler.num_told == 3 and len(scheduler.ask(8)) == 3


def test_restored_mid_run_hands_out_the_same_jobs():
    def finish(scheduler):
        out = []
        while not scheduler.finished:
            for job in scheduler.ask(2):
                out.append((job.trial_id, job.config))
                scheduler.tell(job.trial_id, job.budget, loss_of(job.config))
        return out

    scheduler = FullBudget(CMAES(SPACE, population_size=4, seed=2), max_budget=10, max_trials=12)
    for job in scheduler.ask(3):
        scheduler.tell(job.trial_id, job.budget, loss_of(job.config))
    state = json.loads(json.dumps(scheduler.state_dict()))
    restored = restore_scheduler(SPACE, state)
    assert isinstance(restored, FullBudget) and restored.name == "cmaes"
    assert finish(restored) == finish(scheduler)


def test_refuses_a_sampler_that_is_not_a_searcher():
    with pytest.raises(ValueError, match="needs a Searcher"):
        FullBudget({"x": 1}, max_budget=10, max_trials=2)
