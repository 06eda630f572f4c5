"""Schedulers: the papers' rung formulas, promotions, slot filling, and runs driven to the end.

A simulated driver with P slots asks for jobs to fill its free slots, then finishes one outstanding
job (chosen pseudo-randomly from the step number, so jobs complete out of order) and tells its
loss. Losses are a function of (trial, budget) only, so a run is a function of the driver's
choices and the scheduler, and two schedulers fed the same way must hand out the same jobs.
"""

import json
import math
from collections import defaultdict

import numpy as np
import pytest

from searchers import (
    ASHA,
    CMAES,
    SCHEDULERS,
    Choice,
    Float,
    FullBudget,
    Hyperband,
    Int,
    Job,
    RandomSearch,
    SuccessiveHalving,
    make_scheduler,
    restore_scheduler,
)
from searchers.rungs import hyperband_brackets, rung_budgets, s_max

SPACE = {
    "learning_rate": Float(1e-5, 1e-1, log=True),
    "beta": Float(0.0, 4.0),
    "latent_dim": Int(2, 64, log=True),
    "activation": Choice(["relu", "tanh"]),
}
STATUSES = {"running", "paused", "completed", "stopped"}


def loss_of(job: Job, seed: int = 0, fail_rate: float = 0.1) -> float:
    """A noisy loss that depends on the config and decreases with budget; NaN at random."""
    rng = np.random.default_rng([seed, job.trial_id, job.budget])
    if rng.random() < fail_rate:
        return math.nan
    base = abs(math.log10(job.config["learning_rate"]) + 3) + job.config["beta"] / 4
    return base + 1.0 / math.sqrt(job.budget) + 0.3 * rng.random()


class Driver:
    """Fills P slots, finishes one job per step, records everything."""

    def __init__(self, scheduler, slots: int, seed: int = 0, fail_rate: float = 0.1):
        self.scheduler, self.slots, self.seed, self.fail_rate = scheduler, slots, seed, fail_rate
        self.outstanding: list[Job] = []
        self.step = 0
        self.log: list = []
        self.told: dict[tuple[int, int], float] = {}  # (trial, budget) -> loss
        self.jobs: list[Job] = []

    def fork(self, scheduler) -> "Driver":
        other = Driver(scheduler, self.slots, self.seed, self.fail_rate)
        other.outstanding, other.step = list(self.outstanding), self.step
        other.told, other.jobs = dict(self.told), list(self.jobs)
        return other

    def refill(self) -> list[Job]:
        free = self.slots - len(self.outstanding)
        jobs = self.scheduler.ask(free)
        assert len(jobs) <= free
        for job in jobs:
            assert self.scheduler.status(job.trial_id) == "running"
            assert all(dim.contains(job.config[k]) for k, dim in SPACE.items())
        self.outstanding += jobs
        self.jobs += jobs
        self.log.append(("ask", [(j.trial_id, j.budget, j.config) for j in jobs]))
        return jobs

    def finish_one(self) -> None:
        assert self.outstanding, "deadlock: nothing outstanding but the scheduler is not finished"
        i = int(np.random.default_rng([self.seed, 999, self.step]).integers(len(self.outstanding)))
        job = self.outstanding.pop(i)
        loss = loss_of(job, self.seed, self.fail_rate)
        self.scheduler.tell(job.trial_id, job.budget, loss)
        self.told[(job.trial_id, job.budget)] = loss
        self.log.append(("tell", job.trial_id, job.budget, self.scheduler.status(job.trial_id)))
        self.step += 1

    def run(self, max_steps: int = 100_000, before_ask=None) -> None:
        while not self.scheduler.finished and self.step < max_steps:
            if before_ask is not None:
                before_ask(self)
            self.refill()
            if self.scheduler.finished:
                break
            self.finish_one()


def make(name: str, sampler: str = "random", **kwargs):
    settings = {"max_trials": 40, "max_budget": 270, "min_budget": 10, "eta": 3,
                "population": 6, "seed": 1, "sampler": sampler}
    settings.update(kwargs)
    return make_scheduler(name, SPACE, **settings)


RUNS = [(name, "random") for name in SCHEDULERS] + [
    (name, sampler) for sampler in ("cmaes", "tpe", "grid", "gp")
    for name in ("sha", "hyperband", "asha")]


def assert_plain(obj) -> None:
    """Only JSON / msgpack-native Python types (no numpy scalars, tuples or non-str keys)."""
    if isinstance(obj, dict):
        assert all(isinstance(k, str) for k in obj), list(obj)
        for v in obj.values():
            assert_plain(v)
    elif isinstance(obj, list):
        for v in obj:
            assert_plain(v)
    else:
        assert type(obj) in (str, int, float, bool, type(None)), (type(obj), obj)


def check_end_state(scheduler, driver):
    assert scheduler.finished
    assert not driver.outstanding
    assert scheduler.num_trials == scheduler.max_trials
    statuses = [scheduler.status(t) for t in range(scheduler.num_trials)]
    assert set(statuses) <= {"completed", "stopped"}
    if driver.fail_rate == 0:
        assert "completed" in statuses
    for t, status in enumerate(statuses):
        final = driver.told.get((t, scheduler.max_budget))
        # Completed exactly when told a finite loss at the maximum budget.
        assert (status == "completed") == (final is not None and math.isfinite(final))
    assert scheduler.ask(5) == []
    json.dumps(scheduler.state_dict(), allow_nan=False)
    assert_plain(scheduler.state_dict())


@pytest.mark.parametrize(("name", "sampler"), RUNS)
@pytest.mark.parametrize("slots", [1, 7])
def test_driven_to_the_end(name, sampler, slots):
    scheduler = make(name, sampler)
    driver = Driver(scheduler, slots)
    driver.run()
    check_end_state(scheduler, driver)
    assert len({j.trial_id for j in driver.jobs}) == 40
    # A trial's jobs all carry its config and strictly increasing budgets.
    by_trial = defaultdict(list)
    for job in driver.jobs:
        by_trial[job.trial_id].append(job)
    for jobs in by_trial.values():
        assert all(j.config == jobs[0].config for j in jobs)
        assert all(a.budget < b.budget for a, b in zip(jobs, jobs[1:], strict=False))
    if sampler == "cmaes":
        assert scheduler.sampler.generation >= 1  # settled trials reached the CMA-ES


# GP asks cost milliseconds, not microseconds: its runs are saved mid-way only.
ROUND_TRIPS = [(name, sampler, fraction) for name, sampler in RUNS for fraction in (0.1, 0.5, 0.9)
               if "gp" not in (name, sampler) or fraction == 0.5]


@pytest.mark.parametrize(("name", "sampler", "fraction"), ROUND_TRIPS)
def test_state_dict_round_trip_mid_run_continues_identically(name, sampler, fraction):
    full = Driver(make(name, sampler), slots=5)
    full.run()
    original = make(name, sampler)
    driver = Driver(original, slots=5)
    driver.run(max_steps=int(fraction * full.step))
    assert not original.finished
    assert_plain(original.state_dict())
    state = json.loads(json.dumps(original.state_dict(), allow_nan=False))
    restored = restore_scheduler(SPACE, state)
    assert type(restored) is type(original) and restored.name == original.name
    assert restored.state_dict() == original.state_dict()
    twin = driver.fork(restored)
    driver.log, twin.log = [], []
    driver.run()
    twin.run()
    assert twin.log == driver.log
    assert restored.state_dict() == original.state_dict()
    check_end_state(restored, twin)


def test_make_scheduler_names_and_errors():
    assert SCHEDULERS == ("random", "grid", "cmaes", "tpe", "gp", "sha", "hyperband", "asha")
    assert isinstance(make("random"), FullBudget) and make("random").name == "random"
    assert isinstance(make("cmaes"), FullBudget) and make("cmaes").name == "cmaes"
    assert isinstance(make("sha"), SuccessiveHalving)
    assert isinstance(make("hyperband"), Hyperband)
    assert isinstance(make("asha"), ASHA)
    assert make("cmaes").sampler.population_size == 6
    assert isinstance(make("asha", "cmaes").sampler, CMAES)
    with pytest.raises(ValueError, match="unknown scheduler"):
        make("pbt")
    with pytest.raises(ValueError, match="sampler"):
        make("sha", "bayes")
    with pytest.raises(ValueError, match="eta"):
        make("sha", eta=1)
    with pytest.raises(ValueError, match="min_budget"):
        make("asha", min_budget=300)
    with pytest.raises(ValueError, match="max_trials"):
        make("random", max_trials=0)
    with pytest.raises(ValueError, match="unknown scheduler kind"):
        restore_scheduler(SPACE, {"kind": "nope"})
    with pytest.raises(ValueError, match="different search space"):
        restore_scheduler({"x": Float(0.0, 1.0)}, make("asha").state_dict())


def test_min_budget_default():
    scheduler = make_scheduler("sha", SPACE, max_trials=27, max_budget=2000)
    assert scheduler.budgets == [74, 222, 666, 2000]
    assert make_scheduler("asha", SPACE, max_trials=9, max_budget=10).budgets == [1, 3, 10]


def test_tell_validation():
    scheduler = make("asha")
    job = scheduler.ask(1)[0]
    with pytest.raises(ValueError, match="no job out at budget"):
        scheduler.tell(job.trial_id, job.budget + 1, 0.5)
    with pytest.raises(ValueError, match="unknown trial"):
        scheduler.tell(7, job.budget, 0.5)
    with pytest.raises(ValueError, match="number"):
        scheduler.tell(job.trial_id, job.budget, "0.5")
    scheduler.tell(job.trial_id, job.budget, 0.5)
    with pytest.raises(ValueError, match="no job out"):
        scheduler.tell(job.trial_id, job.budget, 0.5)  # told twice
    with pytest.raises(ValueError, match="non-negative"):
        scheduler.ask(-1)


# -- the papers' formulas ------------------------------------------------------------------------

# Li et al. (2017), Table 1: R = 81, eta = 3, as (n_i, r_i) per bracket s = 4 .. 0.
HYPERBAND_TABLE_1 = [
    [(81, 1), (27, 3), (9, 9), (3, 27), (1, 81)],
    [(34, 3), (11, 9), (3, 27), (1, 81)],
    [(15, 9), (5, 27), (1, 81)],
    [(8, 27), (2, 81)],
    [(5, 81)],
]


def paper_brackets(r: int, R: int, eta: int) -> list[list[tuple[int, int]]]:
    """Hyperband's brackets straight from the paper's pseudo-code (R / r a power of eta)."""
    top = round(math.log(R / r) / math.log(eta))
    out = []
    for s in range(top, -1, -1):
        n = math.ceil((top + 1) / (s + 1) * eta**s)
        out.append([(math.floor(n * eta**-i), round(R * eta ** (i - s))) for i in range(s + 1)])
    return out


def test_hyperband_brackets_match_the_paper():
    assert hyperband_brackets(1, 81, 3) == HYPERBAND_TABLE_1
    for r, R, eta in [(1, 16, 2), (5, 405, 3), (2, 128, 4), (10, 10, 3), (3, 375, 5)]:
        assert hyperband_brackets(r, R, eta) == paper_brackets(r, R, eta), (r, R, eta)


def test_ladder_when_the_ratio_is_not_a_power_of_eta():
    assert s_max(1, 10, 3) == 2 and rung_budgets(1, 10, 3) == [1, 3, 10]
    assert rung_budgets(74, 2000, 3) == [74, 222, 666, 2000]
    assert rung_budgets(5, 5, 2) == [5]


def jobs_per_budget(jobs: list[Job]) -> dict[int, int]:
    counts: dict[int, int] = defaultdict(int)
    for job in jobs:
        counts[job.budget] += 1
    return dict(counts)


@pytest.mark.parametrize(("n", "eta", "r", "R"),
                         [(27, 3, 1, 27), (81, 3, 10, 810), (16, 2, 1, 16), (20, 2, 5, 80),
                          (100, 4, 3, 192), (50, 3, 2, 54)])
def test_successive_halving_rungs_follow_the_paper(n, eta, r, R):
    scheduler = SuccessiveHalving(SPACE, max_trials=n, max_budget=R, min_budget=r, eta=eta)
    driver = Driver(scheduler, slots=6, fail_rate=0.0)
    driver.run()
    check_end_state(scheduler, driver)
    K = round(math.log(R / r) / math.log(eta))  # R / r is a power of eta in these cases
    expected = {r * eta**k: math.floor(n / eta**k) for k in range(K + 1)}
    assert jobs_per_budget(driver.jobs) == expected


def test_successive_halving_keeps_one_trial_per_rung_when_n_is_small():
    scheduler = SuccessiveHalving(SPACE, max_trials=4, max_budget=81, min_budget=1, eta=3)
    driver = Driver(scheduler, slots=2, fail_rate=0.0)
    driver.run()
    assert jobs_per_budget(driver.jobs) == {1: 4, 3: 1, 9: 1, 27: 1, 81: 1}


@pytest.mark.parametrize(("r", "R", "eta"), [(1, 81, 3), (1, 16, 2), (5, 405, 3)])
def test_hyperband_runs_the_papers_brackets(r, R, eta):
    plan = paper_brackets(r, R, eta)
    n_total = sum(b[0][0] for b in plan)
    scheduler = Hyperband(SPACE, max_trials=n_total, max_budget=R, min_budget=r, eta=eta)
    driver = Driver(scheduler, slots=9, fail_rate=0.0)
    driver.run()
    check_end_state(scheduler, driver)
    per_bracket: dict[int, list[Job]] = defaultdict(list)
    for job in driver.jobs:
        per_bracket[scheduler.bracket_of(job.trial_id)].append(job)
    assert len(per_bracket) == len(plan)
    for j, bracket in enumerate(plan):
        assert jobs_per_budget(per_bracket[j]) == {r_i: n_i for n_i, r_i in bracket}


def test_hyperband_repeats_brackets_until_max_trials():
    # One loop of (r, R, eta) = (1, 9, 3) creates 9 + 5 + 3 = 17 configurations; 40 needs a
    # second loop and a cut third one.
    assert [b[0][0] for b in hyperband_brackets(1, 9, 3)] == [9, 5, 3]
    scheduler = Hyperband(SPACE, max_trials=40, max_budget=9, min_budget=1, eta=3)
    driver = Driver(scheduler, slots=4)
    driver.run()
    check_end_state(scheduler, driver)
    assert [b.sizes[0] for b in scheduler.brackets] == [9, 5, 3, 9, 5, 3, 6]
    assert scheduler.brackets[-1].sizes == [6, 2, 1]


def rung_members(driver, scheduler, group_of) -> dict[tuple, list[int]]:
    """(group, budget) -> trials told at that budget."""
    members = defaultdict(list)
    for (t, b), _ in driver.told.items():
        members[(group_of(t), b)].append(t)
    return members


@pytest.mark.parametrize("name", ["sha", "hyperband", "asha"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_best_of_a_rung_is_always_promoted(name, seed):
    scheduler = make(name, max_trials=60, seed=seed)
    driver = Driver(scheduler, slots=5, seed=seed, fail_rate=0.2)
    driver.run()
    check_end_state(scheduler, driver)
    group_of = scheduler.bracket_of if name != "asha" else (lambda t: 0)
    budgets = scheduler.budgets
    promoted_any = False
    for (group, b), trials in rung_members(driver, scheduler, group_of).items():
        if b == budgets[-1]:
            continue
        finite = [t for t in trials if math.isfinite(driver.told[(t, b)])]
        if not finite or (name == "asha" and len(trials) < scheduler.eta):
            continue  # ASHA promotes from a rung once it has eta members
        best = min(finite, key=lambda t: (driver.told[(t, b)], t))
        next_budget = budgets[budgets.index(b) + 1]
        assert (best, next_budget) in driver.told, (group, b, best)
        promoted_any = True
        # Failed trials never continue.
        for t in trials:
            if not math.isfinite(driver.told[(t, b)]):
                assert scheduler.status(t) == "stopped"
                assert (t, next_budget) not in driver.told
    assert promoted_any


@pytest.mark.parametrize("slots", [1, 4, 16])
@pytest.mark.parametrize("eta", [2, 3])
def test_asha_fills_every_slot_and_promotes_only_the_top_fraction(slots, eta):
    scheduler = ASHA(SPACE, max_trials=80, max_budget=10 * eta**3, min_budget=10, eta=eta)
    budgets = scheduler.budgets
    driver = Driver(scheduler, slots=slots, fail_rate=0.1)
    promotions = 0

    def before_ask(d):
        nonlocal promotions
        free = d.slots - len(d.outstanding)
        remaining = scheduler.max_trials - scheduler.num_trials
        rungs = defaultdict(list)  # the rungs as they stand before this ask
        for (t, b), loss in d.told.items():
            rungs[b].append((loss if math.isfinite(loss) else math.inf, t))  # failures rank last
        jobs = d.refill()
        if remaining >= free:
            assert len(jobs) == free  # no slot idles while configurations remain
        for job in jobs:
            k = budgets.index(job.budget)
            if k == 0:
                continue
            ranked = sorted(rungs[budgets[k - 1]])
            rank = [t for _, t in ranked].index(job.trial_id)
            assert rank < len(ranked) // eta  # top 1/eta of the rung below
            assert math.isfinite(ranked[rank][0])
            promotions += 1

    while not scheduler.finished:
        before_ask(driver)
        if scheduler.finished:
            break
        driver.finish_one()
    check_end_state(scheduler, driver)
    assert promotions > 0


class SortingASHA(ASHA):
    """ASHA's promotion rule as Li et al. state it, with no index: sort rung k, take its top
    ``floor(|rung| / eta)``, promote the best of them not yet promoted and still paused."""

    def _promotable(self, k):
        rung = self.rungs[k]
        top = sorted(rung, key=lambda t: (rung[t], t))[:len(rung) // self.eta]
        return next((t for t in top if math.isfinite(rung[t]) and t not in self.promoted[k]
                     and self.trials[t].status == "paused"), None)


@pytest.mark.parametrize(("slots", "eta", "fail_rate"), [(1, 3, 0.1), (7, 2, 0.3), (16, 3, 0.0)])
def test_asha_promotes_what_sorting_each_rung_would(slots, eta, fail_rate):
    def run(cls):
        scheduler = cls(SPACE, max_trials=150, max_budget=5 * eta**3, min_budget=5, eta=eta)
        driver = Driver(scheduler, slots=slots, fail_rate=fail_rate)
        driver.run()
        return driver.log, [scheduler.status(t) for t in range(scheduler.num_trials)]

    (log, statuses), sorting = run(ASHA), run(SortingASHA)
    assert (log, statuses) == sorting
    asked = [budget for entry in log if entry[0] == "ask" for _, budget, _ in entry[1]]
    assert asked.count(5 * eta**3) > 0  # promotions up to the top rung happened


def test_synchronous_rungs_wait_for_the_whole_rung():
    scheduler = SuccessiveHalving(SPACE, max_trials=9, max_budget=9, min_budget=1, eta=3)
    jobs = scheduler.ask(20)
    assert [j.budget for j in jobs] == [1] * 9 and [j.trial_id for j in jobs] == list(range(9))
    for job, loss in zip(jobs[:8], [5, 4, 3, 2, 1, 0.5, math.nan, 7], strict=True):
        scheduler.tell(job.trial_id, job.budget, loss)
        assert scheduler.ask(3) == []
    assert scheduler.status(6) == "stopped" and scheduler.status(0) == "paused"
    scheduler.tell(8, 1, 6.0)
    promoted = scheduler.ask(5)
    assert [(j.trial_id, j.budget) for j in promoted] == [(5, 3), (4, 3), (3, 3)]
    assert [scheduler.status(t) for t in range(9)] == (
        ["stopped"] * 3 + ["running"] * 3 + ["stopped"] * 3)
    for job, loss in zip(promoted, [0.3, 0.1, 0.2], strict=True):
        scheduler.tell(job.trial_id, job.budget, loss)
    (last,) = scheduler.ask(5)
    assert (last.trial_id, last.budget) == (4, 9)
    assert not scheduler.finished
    scheduler.tell(4, 9, 0.05)
    assert scheduler.finished and scheduler.status(4) == "completed"
    assert scheduler.sampler.best_loss == 0.05  # settled losses reach the sampler


def test_full_budget_cmaes_hands_out_generations():
    scheduler = make_scheduler("cmaes", SPACE, max_trials=10, max_budget=100, population=4,
                               seed=3)
    reference = CMAES(SPACE, population_size=4, seed=3)
    first = scheduler.ask(10)
    assert [j.config for j in first] == reference.ask()
    assert [j.budget for j in first] == [100] * 4
    assert scheduler.ask(10) == []
    losses = [0.4, math.nan, 0.1, 0.3]
    for job, loss in list(zip(first, losses, strict=True))[:3]:
        scheduler.tell(job.trial_id, job.budget, loss)
        assert scheduler.ask(10) == []
    scheduler.tell(first[3].trial_id, 100, losses[3])
    assert scheduler.sampler.generation == 1
    second = scheduler.ask(3)
    reference.tell([j.config for j in first], losses)
    assert [j.config for j in second] == reference.ask()[:3]
    assert [j.trial_id for j in second] == [4, 5, 6]
    assert [scheduler.status(t) for t in range(4)] == ["completed", "stopped"] + ["completed"] * 2


def test_random_full_budget_trial_t_is_the_t_th_random_config():
    scheduler = make_scheduler("random", SPACE, max_trials=12, max_budget=50, seed=4)
    driver = Driver(scheduler, slots=5)
    driver.run()
    reference = RandomSearch(SPACE, seed=4)
    assert all(job.config == reference.config_at(job.trial_id) for job in driver.jobs)


def test_custom_searcher_as_sampler():
    sampler = RandomSearch(SPACE, batch_size=4, seed=9)
    scheduler = ASHA(SPACE, max_trials=10, max_budget=27, min_budget=1, eta=3, sampler=sampler)
    driver = Driver(scheduler, slots=3)
    driver.run(max_steps=4)
    state = json.loads(json.dumps(scheduler.state_dict(), allow_nan=False))
    twin = driver.fork(restore_scheduler(SPACE, state))
    driver.log, twin.log = [], []
    driver.run()
    twin.run()
    assert twin.log == driver.log
    check_end_state(scheduler, driver)
    with pytest.raises(ValueError, match="different space"):
        ASHA({"x": Float(0.0, 1.0)}, max_trials=5, max_budget=9, sampler=sampler)


def run_in_rounds(scheduler, slots: int, ahead: bool, seed: int = 0) -> tuple[list, list]:
    """Drives ``scheduler`` in rounds: each round a random subset of the jobs out ends and is
    told. With ``ahead``, the slots of the ending jobs are asked for before their losses are told
    (as a driver does while they train), the rest after. Returns the jobs in the order they were
    handed out and every trial's final record."""
    out: list[Job] = []
    handed: list[Job] = []
    rounds = 0

    def ask() -> None:
        jobs = scheduler.ask(slots - len(out))
        out.extend(jobs)
        handed.extend(jobs)

    while not scheduler.finished:
        ask()
        assert out, "deadlock"
        ending = [job for job in out if np.random.default_rng(
            [seed, job.trial_id, job.budget, rounds]).random() < 0.5] or out[:1]
        out[:] = [job for job in out if job not in ending]
        rounds += 1
        if ahead:
            ask()
        for job in ending:
            scheduler.tell(job.trial_id, job.budget, loss_of(job, seed))
    return handed, [(t.config, t.status, t.losses) for t in scheduler.trials]


@pytest.mark.parametrize(("name", "sampler"), RUNS)
def test_asking_ahead_hands_out_the_same_jobs_where_the_scheduler_says_so(name, sampler):
    scheduler = make(name, sampler)
    expected = name in ("random", "grid", "sha") and sampler in ("random", "grid")
    assert scheduler.asks_ahead == expected
    if not scheduler.asks_ahead:
        return
    after = run_in_rounds(make(name, sampler), slots=7, ahead=False)
    assert run_in_rounds(make(name, sampler), slots=7, ahead=True) == after
    jobs, trials = after
    assert any(status == "completed" for _, status, _ in trials)
    if name == "sha":
        assert len(jobs) > len(trials)  # promotions happened


@pytest.mark.parametrize("name", ["asha", "tpe", "hyperband"])
def test_asking_ahead_would_change_what_other_schedulers_hand_out(name):
    # Why ``asks_ahead`` is False for them: ASHA promotes, and TPE models, from the losses told;
    # Hyperband would hand a new bracket's trials out before the promotions a loss completes.
    slots = 5 if name == "hyperband" else 12
    after = run_in_rounds(make(name), slots=slots, ahead=False)
    assert run_in_rounds(make(name), slots=slots, ahead=True)[0] != after[0]
