"""The Searcher protocol, run alike over every registered searcher; then random search."""

import json
import math

import numpy as np
import pytest

from searchers import SEARCHERS, Choice, Float, Int, RandomSearch, searcher_from_state_dict

SPACE = {
    "learning_rate": Float(1e-5, 1e-1, log=True),
    "beta": Float(0.0, 4.0),
    "latent_dim": Int(2, 64, log=True),
    "activation": Choice(["relu", "tanh"]),
}


def loss_fn(config: dict) -> float:
    """A smooth test loss over SPACE; NaN for one corner so failures occur."""
    if config["beta"] > 3.8:
        return math.nan
    return ((math.log10(config["learning_rate"]) + 3) ** 2 + (config["beta"] - 1) ** 2
            + 0.01 * config["latent_dim"] + (config["activation"] == "tanh"))


def make(name: str, seed: int = 0):
    kwargs = {"population_size": 6} if name in ("cmaes", "pbt") else {"batch_size": 5}
    if name == "grid":
        # Capped below the grid's 250 points, so the seed picks the subset (uncapped, a grid
        # ignores its seed: tests/test_searchers_grid.py).
        kwargs["max_configs"] = 60
    return SEARCHERS[name](SPACE, seed=seed, **kwargs)


def run(searcher, generations: int) -> list[list[dict]]:
    asked = []
    for _ in range(generations):
        configs = searcher.ask()
        asked.append(configs)
        searcher.tell(configs, [loss_fn(c) for c in configs])
    return asked


def test_registry_holds_the_builtin_searchers():
    assert set(SEARCHERS) >= {"random", "grid", "cmaes", "tpe", "gp", "pbt"}


@pytest.mark.parametrize("name", sorted(SEARCHERS))
def test_asks_are_inside_the_space_and_plain_python(name):
    for configs in run(make(name), 4):
        for config in configs:
            assert list(config) == list(SPACE)
            assert all(dim.contains(config[k]) for k, dim in SPACE.items())
            assert type(config["beta"]) is float and type(config["latent_dim"]) is int
        json.dumps(configs, allow_nan=False)


@pytest.mark.parametrize("name", sorted(SEARCHERS))
def test_failed_losses_rank_last_and_best_so_far_is_tracked(name):
    searcher = make(name)
    configs = searcher.ask()
    losses = [math.nan, math.inf, 2.0, -math.inf, 1.5, 3.0][:len(configs)]
    searcher.tell(configs, losses)
    assert searcher.best_loss == 1.5 and searcher.best_config == configs[4]
    configs = searcher.ask()
    searcher.tell(configs, [math.nan] * len(configs))
    assert searcher.best_loss == 1.5  # failures never become the best


@pytest.mark.parametrize("name", sorted(SEARCHERS))
def test_same_seed_same_asks_other_seed_other_asks(name):
    assert run(make(name, seed=3), 3) == run(make(name, seed=3), 3)
    assert run(make(name, seed=3), 1) != run(make(name, seed=4), 1)


@pytest.mark.parametrize("name", sorted(SEARCHERS))
def test_state_dict_round_trip_mid_run_continues_identically(name):
    original = make(name, seed=1)
    run(original, 3)
    original.ask()  # saved between an ask and its tell
    state = json.loads(json.dumps(original.state_dict(), allow_nan=False))
    restored = searcher_from_state_dict(SPACE, state)
    assert type(restored) is type(original)
    pending = original.ask()  # CMA-ES: the same generation again; random search: the next batch
    assert restored.ask() == pending
    for searcher in (original, restored):
        searcher.tell(pending, [loss_fn(c) for c in pending])
    assert run(restored, 4) == run(original, 4)
    assert restored.best_loss == original.best_loss
    assert restored.best_config == original.best_config
    assert restored.state_dict() == original.state_dict()


@pytest.mark.parametrize("name", sorted(SEARCHERS))
def test_restoring_over_another_space_is_refused(name):
    state = make(name).state_dict()
    with pytest.raises(ValueError, match="different search space"):
        SEARCHERS[name].from_state_dict({**SPACE, "beta": Float(0.0, 5.0)}, state)
    with pytest.raises(ValueError, match="different search space"):  # same dims, other order
        SEARCHERS[name].from_state_dict(dict(reversed(SPACE.items())), state)
    other = next(n for n in SEARCHERS if n != name)
    with pytest.raises(ValueError, match="not"):
        SEARCHERS[other].from_state_dict(SPACE, state)


@pytest.mark.parametrize("name", sorted(SEARCHERS))
def test_tell_refuses_mismatched_lengths_and_non_numbers(name):
    searcher = make(name)
    configs = searcher.ask()
    with pytest.raises(ValueError, match="losses"):
        searcher.tell(configs, [1.0])
    with pytest.raises(ValueError, match="number"):
        searcher.tell(configs, ["x"] * len(configs))


@pytest.mark.parametrize("seed", [-1, 1.5, True, "0"])
@pytest.mark.parametrize("name", sorted(SEARCHERS))
def test_bad_seed_is_refused(name, seed):
    with pytest.raises(ValueError, match="seed"):
        SEARCHERS[name](SPACE, seed=seed)


# -- random search --------------------------------------------------------------------------------


def test_random_kth_config_is_independent_of_batch_sizes():
    ones = RandomSearch(SPACE, batch_size=1, seed=5)
    flat_ones = [c for _ in range(24) for c in ones.ask()]
    mixed = RandomSearch(SPACE, batch_size=7, seed=5)
    flat_mixed = [c for _ in range(4) for c in mixed.ask()][:24]
    assert flat_ones == flat_mixed
    # ... and is exactly the draw of np.random.default_rng([seed, k]).
    for k in (0, 13, 23):
        u = np.random.default_rng([5, k]).random(len(SPACE))
        expected = {name: dim.from_unit(x) for (name, dim), x in zip(SPACE.items(), u, strict=True)}
        assert flat_ones[k] == expected == ones.config_at(k)


def test_random_restore_continues_identically_with_another_batch_size_history():
    searcher = RandomSearch(SPACE, batch_size=3, seed=2)
    first = searcher.ask() + searcher.ask()
    state = json.loads(json.dumps(searcher.state_dict()))
    restored = RandomSearch.from_state_dict(SPACE, state)
    assert restored.ask() == searcher.ask() == [searcher.config_at(k) for k in range(6, 9)]
    assert first == [searcher.config_at(k) for k in range(6)]


def test_random_prior_respects_log_scales():
    searcher = RandomSearch({"lr": Float(1e-6, 1.0, log=True)}, batch_size=2000, seed=0)
    logs = np.log10([c["lr"] for c in searcher.ask()])
    assert np.mean(logs < -3) == pytest.approx(0.5, abs=0.04)  # half the mass below 1e-3


def test_random_accepts_tells_in_any_grouping():
    searcher = RandomSearch(SPACE, batch_size=4, seed=0)
    configs = searcher.ask()
    searcher.tell(configs[2:3], [0.5])
    searcher.tell([configs[0], configs[3]], [0.25, 1.0])
    assert searcher.best_config == configs[0] and searcher.num_told == 3


def test_random_search_over_an_empty_space_gives_empty_configs():
    assert RandomSearch({}, batch_size=2).ask() == [{}, {}]
