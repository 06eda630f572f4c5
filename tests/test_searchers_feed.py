"""Tests for searchers.feed: when a sampler is asked and told, checked by a recording searcher."""

import json
import math

import pytest

from searchers import CMAES, Float, Searcher, searcher_from_state_dict
from searchers.feed import SamplerFeed

SPACE = {"x": Float(0.0, 1.0), "y": Float(-1.0, 1.0)}


class Recorder(Searcher):
    """Asks batches of ``size`` numbered configs and records every tell (unregistered: no name)."""

    def __init__(self, synchronous: bool, size: int = 2) -> None:
        super().__init__(SPACE)
        self.synchronous = synchronous
        self.size, self.asked, self.told = size, 0, []

    def _ask(self):
        batch = [{"x": (self.asked + i) / 100, "y": 0.0} for i in range(self.size)]
        self.asked += self.size
        return batch

    def _tell(self, configs, losses):
        self.told.append((configs, list(losses)))


def never(trial_id):
    raise AssertionError(f"no provisional loss should be needed (trial {trial_id})")


def test_synchronous_batch_is_told_once_when_all_its_trials_settle():
    feed = SamplerFeed(Recorder(synchronous=True))
    c0, c1 = feed.next_config(0, never), feed.next_config(1, never)
    assert (c0["x"], c1["x"]) == (0.0, 0.01)
    assert feed.next_config(2, lambda t: None) is None  # trial 0 or 1 still running: wait
    feed.settle(1, c1, math.inf)
    assert feed.searcher.told == []
    feed.settle(0, c0, 0.5)
    assert feed.searcher.told == [([c0, c1], [0.5, math.inf])]
    assert feed.next_config(2, never)["x"] == 0.02  # the next generation


def test_used_up_batch_of_paused_trials_is_told_early_with_their_provisional_losses():
    feed = SamplerFeed(Recorder(synchronous=True))
    c0, c1 = feed.next_config(0, never), feed.next_config(1, never)
    feed.settle(0, c0, 0.25)
    provisional = {1: 0.75}
    assert feed.next_config(2, provisional.get)["x"] == 0.02
    assert feed.searcher.told == [([c0, c1], [0.25, 0.75])]
    feed.settle(1, c1, 0.1)  # trial 1 settles later: its batch was already told
    assert len(feed.searcher.told) == 1


def test_asynchronous_sampler_is_told_each_trial_as_it_settles():
    feed = SamplerFeed(Recorder(synchronous=False, size=3))
    configs = [feed.next_config(t, never) for t in range(4)]
    assert [c["x"] for c in configs] == [0.0, 0.01, 0.02, 0.03]  # one ask, then the next
    feed.observe(configs[2], 10, 0.3)  # not learns_per_budget: observing tells nothing
    feed.settle(2, configs[2], 0.3)
    assert feed.searcher.told == [([configs[2]], [0.3])]


def test_state_dict_round_trip_continues_identically():
    def run(feed, start):
        out = []
        for t in range(start, start + 4):
            config = feed.next_config(t, never)
            out.append(config)
            feed.settle(t, config, float(sum(config.values())) ** 2)
        return out

    feed = SamplerFeed(CMAES(SPACE, population_size=3, seed=4))
    first = feed.next_config(0, never)
    feed.settle(0, first, 0.2)
    state = json.loads(json.dumps(feed.state_dict()))
    restored = SamplerFeed(searcher_from_state_dict(SPACE, state["searcher"]))
    restored.load_state_dict(state)
    assert run(restored, 1) == run(feed, 1)
    assert restored.searcher.state_dict() == feed.searcher.state_dict()


def test_refuses_a_sampler_that_is_not_a_searcher():
    with pytest.raises(ValueError, match="must be a Searcher"):
        SamplerFeed(object())
