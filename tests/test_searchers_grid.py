"""Grid search: per-dimension values, product order, the capped subset, the end of the grid."""

import itertools
import json
import math
from collections import Counter

import numpy as np
import pytest

from searchers import (
    Choice,
    Float,
    FullBudget,
    GridSearch,
    Int,
    grid_values,
    make_scheduler,
    restore_scheduler,
    space_from_dict,
    space_to_dict,
)

SPACE = {
    "learning_rate": Float(1e-4, 1e-1, log=True, num=4),
    "beta": Float(0.0, 4.0, num=3),
    "latent_dim": Int(2, 64, log=True),
    "activation": Choice(["relu", "tanh"]),
}  # 4 * 3 * 5 * 2 = 120 points


def test_values_along_each_kind_of_dimension():
    assert grid_values(Float(1e-4, 1e-1, log=True, num=4)) == [1e-4, 1e-3, 1e-2, 1e-1]
    assert grid_values(Float(0.0, 4.0)) == [0.0, 1.0, 2.0, 3.0, 4.0]  # default num = 5
    assert grid_values(Float(2.0, 8.0, num=1)) == [5.0]
    assert grid_values(Float(1.0, 100.0, log=True, num=1)) == [10.0]
    assert grid_values(Int(1, 3)) == [1, 2, 3]  # min(5, range size)
    assert grid_values(Int(0, 100)) == [0, 25, 50, 75, 100]
    assert grid_values(Int(1, 4, num=10)) == [1, 2, 3, 4]  # deduplicated
    assert grid_values(Int(2, 64, log=True)) == [2, 5, 11, 27, 64]  # round(2 * 32 ** (i / 4))
    assert grid_values(Choice(["a", 1, None])) == ["a", 1, None]
    for dim in (Float(1e-4, 1e-1, log=True, num=7), Int(2, 64, log=True, num=9)):
        values = grid_values(dim)
        assert all(dim.contains(v) for v in values) and values == sorted(set(values))
        assert type(values[0]) is type(dim.low)


def test_whole_grid_is_the_product_in_order_and_ignores_the_seed():
    expected = [dict(zip(SPACE, combo, strict=True))
                for combo in itertools.product(*(grid_values(d) for d in SPACE.values()))]
    searcher = GridSearch(SPACE, batch_size=7, seed=3)
    assert searcher.size == searcher.grid_size == len(expected) == 120
    asked = [c for _ in range(math.ceil(120 / 7)) for c in searcher.ask()]
    assert asked == expected
    assert GridSearch(SPACE, batch_size=120, seed=9).ask() == expected
    assert GridSearch(SPACE, batch_size=120, max_configs=500).ask() == expected  # cap > size


def test_past_the_end_the_last_ask_is_short_then_asking_is_refused():
    searcher = GridSearch({"activation": Choice(["relu", "tanh", "gelu"])}, batch_size=2)
    assert len(searcher.ask()) == 2
    assert searcher.ask() == [{"activation": "gelu"}]
    with pytest.raises(ValueError, match="exhausted: all 3 configs"):
        searcher.ask()


def test_a_cap_keeps_a_seeded_uniform_subset():
    whole = GridSearch(SPACE, batch_size=120).ask()
    keys = [json.dumps(c, sort_keys=True) for c in whole]
    capped = GridSearch(SPACE, batch_size=60, seed=1, max_configs=60).ask()
    subset = [json.dumps(c, sort_keys=True) for c in capped]
    assert len(set(subset)) == 60 and set(subset) <= set(keys)
    assert capped == GridSearch(SPACE, batch_size=60, seed=1, max_configs=60).ask()
    assert capped != GridSearch(SPACE, batch_size=60, seed=2, max_configs=60).ask()
    # The first 60 in product order would hold only two of the four learning rates.
    counts = Counter(c["learning_rate"] for c in capped)
    assert set(counts) == set(grid_values(SPACE["learning_rate"]))
    assert min(counts.values()) >= 8  # 15 expected of each; measured 13 .. 17
    # ... and it is exactly the seed's permutation of the flat product index.
    order = np.random.default_rng(1).permutation(120)[:60]
    assert capped == [whole[i] for i in order]


def test_a_cap_far_below_a_huge_grid_draws_distinct_points():
    huge = {f"x{i}": Float(0.0, 1.0, num=5) for i in range(40)}  # 5**40 points
    searcher = GridSearch(huge, batch_size=50, seed=0, max_configs=50)
    assert searcher.grid_size == 5**40 and searcher.size == 50
    configs = searcher.ask()
    assert len({json.dumps(c, sort_keys=True) for c in configs}) == 50
    assert all(c[k] in (0.0, 0.25, 0.5, 0.75, 1.0) for c in configs for k in huge)


def test_state_round_trip_resumes_exactly():
    original = GridSearch(SPACE, batch_size=4, seed=5, max_configs=30)
    first = original.ask()
    original.tell(first, [1.0, math.nan, 0.5, 2.0])
    original.ask()
    state = json.loads(json.dumps(original.state_dict(), allow_nan=False))
    restored = GridSearch.from_state_dict(SPACE, state)
    assert restored.state_dict() == original.state_dict()
    assert restored.best_loss == 0.5 and restored.best_config == first[2]
    while original.num_asked < original.size:
        assert restored.ask() == original.ask()
    with pytest.raises(ValueError, match="exhausted"):
        restored.ask()


def test_num_is_validated_and_round_trips_through_json():
    for bad in (0, -1, 2.5, True, "5"):
        with pytest.raises(ValueError, match="num"):
            Float(0.0, 1.0, num=bad)
        with pytest.raises(ValueError, match="num"):
            Int(0, 9, num=bad)
    assert Float(0.0, 1.0, num=4.0).num == 4  # TOML may write 4.0
    d = space_to_dict(SPACE)
    assert d["learning_rate"] == {"dist": "float", "low": 1e-4, "high": 1e-1, "log": True,
                                  "num": 4}
    assert "num" not in d["latent_dim"]  # unset: the JSON form of older spaces is unchanged
    assert space_from_dict(json.loads(json.dumps(d))) == SPACE
    with pytest.raises(ValueError, match="num"):
        space_from_dict({"x": {"dist": "choice", "options": [1, 2], "num": 2}})


def test_scheduler_runs_the_whole_grid_once_when_trials_exceed_it():
    space = {"lr": Float(1e-3, 1e-1, log=True, num=3), "act": Choice(["relu", "tanh"])}
    with pytest.warns(UserWarning, match="grid search has 6 configurations, fewer than "
                                         "max_trials=50"):
        scheduler = make_scheduler("grid", space, max_trials=50, max_budget=10)
    assert isinstance(scheduler, FullBudget) and scheduler.max_trials == 6
    jobs = scheduler.ask(100)
    assert len(jobs) == 6 and scheduler.ask(1) == []
    for job in jobs:
        scheduler.tell(job.trial_id, job.budget, job.config["lr"])
    assert scheduler.finished
    assert [j.config for j in jobs] == GridSearch(space, batch_size=6).ask()
    assert scheduler.sampler.best_config == {"lr": 1e-3, "act": "relu"}


@pytest.mark.parametrize("name", ["sha", "hyperband", "asha"])
def test_grid_as_a_sampler_of_multi_fidelity_schedulers_finishes_cleanly(name):
    space = {"lr": Float(1e-3, 1e-1, log=True, num=5), "act": Choice(["relu", "tanh"])}
    with pytest.warns(UserWarning, match="tries 10"):
        scheduler = make_scheduler(name, space, max_trials=40, max_budget=27, min_budget=3,
                                   eta=3, sampler="grid", seed=0)
    seen, outstanding, step = {}, [], 0
    while not scheduler.finished:
        jobs = scheduler.ask(4 - len(outstanding))
        seen.update({j.trial_id: j.config for j in jobs})
        outstanding += jobs
        assert outstanding, "deadlock"
        job = outstanding.pop(step % len(outstanding))
        scheduler.tell(job.trial_id, job.budget, job.config["lr"] * 27 / job.budget)
        step += 1
        if step == 5:  # a save and restore on the way changes nothing
            scheduler = restore_scheduler(space, json.loads(json.dumps(scheduler.state_dict())))
    assert scheduler.num_trials == 10 and len(seen) == 10
    assert sorted(map(str, seen.values())) == sorted(map(str, GridSearch(space,
                                                                          batch_size=10).ask()))
    assert {scheduler.status(t) for t in range(10)} <= {"completed", "stopped"}
    assert "completed" in {scheduler.status(t) for t in range(10)}
