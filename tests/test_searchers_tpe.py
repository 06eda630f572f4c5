"""TPE: beats random search, is random search without history; densities, state, schedulers."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from searchers import (
    TPE,
    Choice,
    Float,
    FullBudget,
    Int,
    RandomSearch,
    make_scheduler,
    restore_scheduler,
)
from searchers.base import clean_loss
from searchers.design import sobol_design
from searchers.space import space_from_unit
from searchers.tpe import _bandwidths, _Categorical, _TruncatedMixture

SPACE = {
    "x": Float(-5.0, 5.0),
    "y": Float(0.0, 1.0),
    "learning_rate": Float(1e-5, 1e-1, log=True),
    "depth": Int(1, 16),
    "activation": Choice(["relu", "tanh", "gelu"]),
}


def loss_fn(config: dict) -> float:
    """Smooth in every dimension, 0 at x=1, y=0.3, lr=1e-3, depth=6, tanh; other options +1."""
    return (4 * ((config["x"] - 1.0) / 5) ** 2 + 4 * (config["y"] - 0.3) ** 2
            + (math.log10(config["learning_rate"]) + 3) ** 2 / 4
            + ((config["depth"] - 6) / 8) ** 2 + (config["activation"] != "tanh"))


def run(searcher, rounds: int) -> tuple[float, list[dict]]:
    """Asks and tells ``rounds`` batches; returns the best loss and every asked config."""
    asked = []
    for _ in range(rounds):
        configs = searcher.ask()
        searcher.tell(configs, [loss_fn(c) for c in configs])
        asked += configs
    return searcher.best_loss, asked


def test_beats_random_search_on_a_smooth_mixed_space():
    seeds = range(8)
    tpe = [run(TPE(SPACE, batch_size=4, seed=s), rounds=15) for s in seeds]  # 60 evaluations
    rnd = [run(RandomSearch(SPACE, batch_size=4, seed=s), rounds=15) for s in seeds]
    tpe_median = np.median([best for best, _ in tpe])
    rnd_median = np.median([best for best, _ in rnd])
    # Measured: TPE 0.060, random 0.655.
    assert tpe_median < 0.3 * rnd_median, (tpe_median, rnd_median)
    late = [c["activation"] == "tanh" for _, asked in tpe for c in asked[-20:]]
    assert np.mean(late) > 0.75  # measured 1.0; the prior gives 1/3


def test_without_enough_finite_losses_it_asks_the_design_then_random_search():
    tpe = TPE(SPACE, batch_size=4, seed=5, n_design=6)
    design = sobol_design(6, len(SPACE), seed=5)
    first = tpe.ask() + tpe.ask()
    reference = RandomSearch(SPACE, seed=5)
    # Configs 0-5: the Sobol design; 6, 7: random search's, still short of n_startup losses.
    assert first == ([space_from_unit(SPACE, u) for u in design]
                     + [reference.config_at(6), reference.config_at(7)])


def test_without_a_design_it_asks_what_random_search_asks():
    tpe = TPE(SPACE, batch_size=3, seed=7, n_design=0)
    reference = RandomSearch(SPACE, seed=7)
    first = tpe.ask() + tpe.ask()
    assert first == [reference.config_at(k) for k in range(6)]
    # 9 finite losses and some failures: still short of n_startup = 10 finite ones.
    tpe.tell(first + tpe.ask(), [1.0, 2.0, math.nan, 3.0, math.inf, 4.0, 5.0, 6.0, 7.0])
    tpe.tell([reference.config_at(50), reference.config_at(51)], [8.0, 9.0])  # never asked
    assert tpe.ask() == [reference.config_at(k) for k in range(9, 12)]
    tpe.tell([reference.config_at(52)], [10.0])  # the 10th finite loss: the model takes over
    assert tpe.ask() != [reference.config_at(k) for k in range(12, 15)]


def test_state_round_trip_gives_identical_asks():
    original = TPE(SPACE, batch_size=4, seed=3, n_startup=5, n_candidates=16, gamma=0.2)
    run(original, rounds=3)
    failed = original.ask()
    original.tell(failed, [math.nan, math.inf, -math.inf, 0.5])
    original.ask()  # saved with configs pending (the constant liar's)
    text = json.dumps(original.state_dict(), allow_nan=False)
    restored = TPE.from_state_dict(SPACE, json.loads(text))
    assert restored.state_dict() == original.state_dict()
    assert run(restored, rounds=4) == run(original, rounds=4)
    assert restored.ask() == original.ask()


def test_failed_losses_are_accepted_never_good_and_avoided():
    space = {"x": Float(0.0, 1.0)}
    tpe = TPE(space, batch_size=8, seed=0, n_startup=8, gamma=1.0)
    good = [{"x": x} for x in (0.1, 0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7, 0.9)]
    failed = [{"x": float(x)} for x in np.random.default_rng(0).uniform(0.45, 0.55, 30)]
    tpe.tell(failed, [math.nan, math.inf, -math.inf] * 10)
    tpe.tell(good, [1.0] * len(good))
    assert tpe.best_loss == 1.0 and tpe.best_config in good
    # gamma = 1 makes every finite loss good, and l(x) peaks at 0.5; the failures alone model
    # g(x), and l(x) / g(x) steers away from them. Counted as good, they would draw asks there.
    xs = np.array([c["x"] for _ in range(4) for c in tpe.ask()])
    assert not np.any((xs > 0.45) & (xs < 0.55)), xs
    json.dumps(tpe.state_dict(), allow_nan=False)


def test_good_set_is_the_lowest_gamma_fraction_capped_at_25():
    tpe = TPE({"x": Float(0.0, 1.0)}, seed=0)
    xs = np.linspace(0.0, 1.0, 300)
    tpe.tell([{"x": float(x)} for x in xs], [float(x) for x in xs])  # loss = x
    good, bad = tpe._split(np.array(tpe.losses))
    assert len(good) == 25 and np.allclose(np.sort(good[:, 0]), xs[:25])
    tpe = TPE({"x": Float(0.0, 1.0)}, seed=0, gamma=0.25)
    tpe.tell([{"x": 0.1 * i} for i in range(8)], [math.nan] * 5 + [3.0, 2.0, 1.0])
    good, bad = tpe._split(np.array(tpe.losses))
    assert good[:, 0].tolist() == pytest.approx([0.7, 0.6])  # ceil(0.25 * 8) = 2, best first
    assert len(bad) == 6
    pending = tpe.ask()  # asked, not told: the constant liar counts them as bad
    good, bad = tpe._split(np.array(tpe.losses))
    assert len(good) == 2 and len(bad) == 7 and bad[-1, 0] == pending[0]["x"]
    tpe.tell(pending, [0.5])
    good, bad = tpe._split(np.array(tpe.losses))
    assert good[0, 0] == pending[0]["x"] and (len(good), len(bad)) == (3, 6)  # 9 told


def test_bandwidths_follow_the_neighbour_rule_and_the_magic_clip():
    # Sorted 0.05, 0.3, 0.5, 0.95: the ends look inwards, the others take the wider gap.
    assert _bandwidths(np.array([0.5, 0.05, 0.3, 0.95])) == pytest.approx([0.45, 0.25, 0.25, 0.45])
    assert _bandwidths(np.array([0.4, 0.4])) == pytest.approx([0.25, 0.25])  # 1 / (2 + 1 + 1)
    assert _bandwidths(np.array([0.2])) == pytest.approx([0.8])  # the farther end
    assert _bandwidths(np.full(500, 0.5)) == pytest.approx(np.full(500, 0.01))  # 1 / 100


def test_truncated_mixture_matches_scipy_and_samples_its_density():
    observations = np.array([0.02, 0.3, 0.35, 0.9])
    mixture = _TruncatedMixture(observations)
    mus, sigmas = np.append(observations, 0.5), np.append(_bandwidths(observations), 1.0)
    kernels = stats.truncnorm((0 - mus) / sigmas, (1 - mus) / sigmas, loc=mus, scale=sigmas)
    x = np.linspace(0.0, 1.0, 101)
    expected = kernels.pdf(x[:, None]).mean(axis=1)
    np.testing.assert_allclose(np.exp(mixture.log_pdf(x)), expected, rtol=1e-10)
    draws = mixture.sample(np.random.default_rng(0), 20_000)
    assert draws.min() >= 0.0 and draws.max() <= 1.0
    empirical = (draws[:, None] <= x).mean(axis=0)
    np.testing.assert_allclose(empirical, kernels.cdf(x[:, None]).mean(axis=1), atol=0.015)


def test_categorical_is_counts_plus_the_prior_spread_evenly():
    dim = Choice(["a", "b", "c", "d"])
    units = np.array([dim.to_unit(v) for v in ["b", "b", "d"]])
    model = _Categorical(units, 4)
    expected = np.array([0.25, 2.25, 0.25, 1.25]) / 4.0
    np.testing.assert_allclose(np.exp(model.log_pdf((np.arange(4) + 0.5) / 4)), expected)
    draws = model.sample(np.random.default_rng(0), 8000)
    assert set(np.unique(draws)) <= {(i + 0.5) / 4 for i in range(4)}
    np.testing.assert_allclose(np.bincount((draws * 4).astype(int)) / 8000, expected, atol=0.02)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": 1.5}, "batch_size"),
    ({"n_startup": 0}, "n_startup"),
    ({"n_startup": True}, "n_startup"),
    ({"n_candidates": 0}, "n_candidates"),
    ({"n_candidates": "24"}, "n_candidates"),
    ({"gamma": 0.0}, "gamma"),
    ({"gamma": 1.5}, "gamma"),
    ({"gamma": math.nan}, "gamma"),
    ({"seed": -1}, "seed"),
])
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TPE(SPACE, **kwargs)


def test_tell_refuses_configs_outside_the_space_and_records_nothing():
    tpe = TPE(SPACE, seed=0)
    config = tpe.ask()[0]
    with pytest.raises(ValueError, match="options"):
        tpe.tell([config, {**config, "activation": "sigmoid"}], [1.0, 2.0])
    assert tpe.num_told == 0 and tpe.losses == [] and tpe.pending == [config]


def drive(scheduler, slots: int, outstanding: list, max_steps: int = 10_000) -> list:
    """Fills ``slots``, tells the oldest job's loss each step; returns the jobs handed out.

    ``outstanding`` holds the jobs out (kept across calls, so a run can stop and go on).
    """
    jobs = []
    for _ in range(max_steps):
        if scheduler.finished:
            break
        new = scheduler.ask(slots - len(outstanding))
        outstanding += new
        jobs += new
        job = outstanding.pop(0)
        scheduler.tell(job.trial_id, job.budget, loss_fn(job.config) + 1 / math.sqrt(job.budget))
    return jobs


def test_full_budget_tpe_runs_to_the_end_and_uses_its_model():
    scheduler = make_scheduler("tpe", SPACE, max_trials=30, max_budget=50, seed=2)
    assert isinstance(scheduler, FullBudget) and scheduler.name == "tpe"
    jobs = drive(scheduler, slots=3, outstanding=[])
    assert scheduler.finished and len(jobs) == 30 and {j.budget for j in jobs} == {50}
    assert isinstance(scheduler.sampler, TPE) and scheduler.sampler.num_told == 30
    # No population given: the design is the first n_startup = 10 configs, then the model.
    design = [space_from_unit(SPACE, u) for u in sobol_design(30, len(SPACE), seed=2)]
    same = [j.config == design[j.trial_id] for j in jobs]
    assert all(same[:10]) and not any(same[15:])


def test_asha_with_a_tpe_sampler_runs_and_restores():
    def make():
        return make_scheduler("asha", SPACE, max_trials=30, max_budget=27, min_budget=1, eta=3,
                              seed=1, sampler="tpe")

    original, outstanding = make(), []
    first = drive(original, slots=4, outstanding=outstanding, max_steps=25)
    state = json.loads(json.dumps(original.state_dict(), allow_nan=False))
    restored = restore_scheduler(SPACE, state)
    assert isinstance(restored.sampler, TPE) and outstanding
    twin_outstanding = list(outstanding)
    rest = drive(original, slots=4, outstanding=outstanding)
    assert drive(restored, slots=4, outstanding=twin_outstanding) == rest
    assert original.finished and restored.finished and original.num_trials == 30
    assert {j.budget for j in first + rest} == {1, 3, 9, 27}
    # The sampler learns from one budget's results (BOHB): the largest with enough of them.
    feed = original._feed
    assert original.sampler.num_told == len(feed.observed[feed.model_budget])
    assert restored.state_dict() == original.state_dict()


def test_under_asha_tpe_learns_from_rung_results_while_the_sweep_runs():
    scheduler = make_scheduler("asha", SPACE, max_trials=120, max_budget=81, min_budget=1,
                               eta=3, seed=0, sampler="tpe")
    outstanding, told_at, budgets = [], {}, set()
    while not scheduler.finished:
        outstanding += scheduler.ask(4 - len(outstanding))
        job = outstanding.pop(0)
        scheduler.tell(job.trial_id, job.budget, loss_fn(job.config) + 1 / math.sqrt(job.budget))
        told_at[scheduler.num_trials] = scheduler.sampler.num_told
        budgets.add(scheduler._feed.model_budget)
    # Told from the first reports on (not only when trials settle at the end) ...
    assert told_at[20] >= 10
    # ... and moving up the rungs as they fill (the top rung never holds dims + 1 = 6 losses
    # here, so the model stays below it).
    assert 1 in budgets and max(budgets) >= 9


def multi_fidelity_best(sampler, seed):
    scheduler = make_scheduler("asha", SPACE, max_trials=90, max_budget=27, min_budget=1,
                               eta=3, seed=seed, sampler=sampler)
    outstanding, best = [], math.inf
    while not scheduler.finished:
        outstanding += scheduler.ask(4 - len(outstanding))
        job = outstanding.pop(0)
        loss = loss_fn(job.config) + 1 / math.sqrt(job.budget)
        scheduler.tell(job.trial_id, job.budget, loss)
        if job.budget == 27:
            best = min(best, loss)
    return best


def test_asha_with_tpe_beats_asha_with_random_sampling():
    tpe = [multi_fidelity_best("tpe", seed) for seed in range(6)]
    rand = [multi_fidelity_best("random", seed) for seed in range(6)]
    assert np.median(tpe) < np.median(rand) - 0.1, (tpe, rand)


def bohb_budget(told: dict[tuple[int, int], float], need: int) -> int | None:
    """The budget TPE must learn from: the largest with ``need`` finite losses, else the lowest
    reported (None before any report)."""
    budgets = {b for _, b in told}
    enough = [b for b in budgets if sum(math.isfinite(x) for (_, c), x in told.items() if c == b)
              >= need]
    return max(enough) if enough else min(budgets, default=None)


def as_multiset(configs) -> list[str]:
    return sorted(json.dumps(c, sort_keys=True) for c in configs)


# The two with budgets that move under a running model get ~300 trials; the others are shorter.
@pytest.mark.parametrize(("name", "trials"), [("asha", 300), ("hyperband", 300), ("sha", 60),
                                              ("tpe", 60)])
def test_pending_configs_are_exactly_the_trials_in_flight(name, trials):
    """The constant liar's configs are the running trials without a loss at the model's budget,
    after every ask and tell; the model holds exactly that budget's losses (BOHB)."""
    slots, need = 6, max(len(SPACE) + 1, 10)
    scheduler = make_scheduler(name, SPACE, max_trials=trials, max_budget=81, min_budget=1, eta=3,
                               seed=0, sampler="tpe")
    configs: dict[int, dict] = {}  # trial -> config, from the jobs handed out
    told: dict[tuple[int, int], float] = {}  # (trial, budget) -> loss, as told
    outstanding, step, longest = [], 0, 0

    def check() -> None:
        nonlocal longest
        budget = bohb_budget(told, need)
        in_flight = [configs[t] for t in range(scheduler.num_trials)
                     if scheduler.status(t) == "running" and (t, budget) not in told]
        sampler = scheduler.sampler
        assert as_multiset(sampler.pending) == as_multiset(in_flight), (step, budget)
        assert len(sampler.pending) <= slots
        longest = max(longest, len(sampler.pending))
        at_budget = [x for (_, b), x in told.items() if b == budget]
        assert sorted(sampler.losses) == sorted(at_budget)
        assert as_multiset(space_from_unit(SPACE, np.array(p)) for p in sampler.points) == \
            as_multiset(configs[t] for t, b in told if b == budget)

    while not scheduler.finished:
        jobs = scheduler.ask(slots - len(outstanding))
        for job in jobs:
            configs.setdefault(job.trial_id, job.config)
        outstanding += jobs
        check()
        rng = np.random.default_rng([step])
        job = outstanding.pop(int(rng.integers(len(outstanding))))  # finish out of order
        loss = math.nan if rng.random() < 0.05 else (
            loss_fn(job.config) + 1 / math.sqrt(job.budget) + 0.1 * rng.random())
        scheduler.tell(job.trial_id, job.budget, loss)
        told[(job.trial_id, job.budget)] = clean_loss(loss)
        check()
        step += 1
    assert scheduler.num_trials == trials and scheduler.sampler.pending == []
    assert longest == slots  # every slot's trial, right after an ask


def test_a_state_saved_with_stale_liars_resumes_as_if_they_were_never_there():
    """States saved before the scheduler set TPE's pending configs held liars that never left."""
    def make():
        return make_scheduler("asha", SPACE, max_trials=60, max_budget=27, min_budget=1, eta=3,
                              seed=4, sampler="tpe")

    original, outstanding = make(), []
    drive(original, slots=4, outstanding=outstanding, max_steps=40)
    state = json.loads(json.dumps(original.state_dict(), allow_nan=False))
    stale = [RandomSearch(SPACE, seed=9).config_at(k) for k in range(30)]
    state["feed"]["searcher"]["pending"] += stale
    restored = restore_scheduler(SPACE, state)
    twin_outstanding = list(outstanding)
    assert drive(restored, slots=4, outstanding=twin_outstanding) == \
        drive(original, slots=4, outstanding=outstanding)
    assert restored.state_dict() == original.state_dict()
