"""CMA-ES: as sample-efficient as pycma (the reference implementation), and resumable.

The evaluation bounds are not hard-coded: every test runs pycma (``import cma``, a test-only
dependency) on the same problem, dimension, population size, start point and initial step size
for a few seeds and requires our median evaluations-to-target to be within 1.5x of pycma's median.
Both are stopped by the same rule: the first generation whose best loss is <= the target.
"""

import json

import numpy as np
import pytest

from searchers import CMAES, Choice, CMAESCore, Float, Int
from searchers.cma_es import mirror_unit

cma = pytest.importorskip("cma")

N = 10
POPSIZE = 10  # pycma's default for n = 10: 4 + floor(3 ln 10)
SEEDS = range(5)
TARGET = 1e-8
MAX_EVALS = 20_000
SLACK = 1.5


def sphere(x: np.ndarray) -> np.ndarray:
    return (x**2).sum(axis=-1)


def ellipsoid(x: np.ndarray) -> np.ndarray:
    """Axis-parallel ellipsoid with condition number 1e6."""
    return (10.0 ** (6 * np.arange(x.shape[-1]) / (x.shape[-1] - 1)) * x**2).sum(axis=-1)


def rosenbrock(x: np.ndarray) -> np.ndarray:
    return (100 * (x[..., 1:] - x[..., :-1] ** 2) ** 2 + (1 - x[..., :-1]) ** 2).sum(axis=-1)


FUNCTIONS = {"sphere": sphere, "ellipsoid": ellipsoid, "rosenbrock": rosenbrock}
# The test functions are defined in BOX's original coordinates.
BOX = {f"x{i}": Float(-5.0, 5.0) for i in range(N)}


def to_box(u: np.ndarray) -> np.ndarray:
    """Unit-cube coordinates -> BOX's coordinates."""
    return -5.0 + 10.0 * np.asarray(u)


def pycma_evals(f, seed: int, bounds=None) -> float:
    """pycma's evaluations until a generation's best loss <= TARGET, on f over the unit cube."""
    options = {"popsize": POPSIZE, "seed": seed + 1, "verbose": -9, "maxfevals": MAX_EVALS,
               "tolfun": 0, "tolx": 0, "tolfunhist": 0, "tolflatfitness": 10**9,
               "tolstagnation": 10**9}
    if bounds is not None:
        options["bounds"] = bounds
    es = cma.CMAEvolutionStrategy(np.full(N, 0.5), 0.3, options)
    evals = 0
    while evals < MAX_EVALS:
        x = es.ask()
        losses = f(to_box(np.array(x)))
        evals += len(x)
        es.tell(x, losses.tolist())
        if losses.min() <= TARGET:
            return evals
    return np.inf


def ours_evals(f, seed: int) -> float:
    searcher = CMAES(BOX, population_size=POPSIZE, seed=seed, sigma0=0.3)
    evals = 0
    while evals < MAX_EVALS:
        configs = searcher.ask()
        losses = f(np.array([[c[k] for k in BOX] for c in configs]))
        evals += len(configs)
        searcher.tell(configs, losses.tolist())
        if losses.min() <= TARGET:
            return evals
    return np.inf


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_cmaes_as_sample_efficient_as_pycma_on_the_bounded_box(name):
    f = FUNCTIONS[name]
    # Reference: pycma on the same box, with its default boundary handling (bounds=[0, 1]).
    reference = np.median([pycma_evals(f, seed, bounds=[0, 1]) for seed in SEEDS])
    ours = np.median([ours_evals(f, seed) for seed in SEEDS])
    assert np.isfinite(reference), "pycma itself did not reach the target: the test is broken"
    assert ours <= SLACK * reference, (name, ours, reference)


def test_core_as_sample_efficient_as_pycma_on_the_ellipsoid_in_rn():
    def core_evals(seed):
        core = CMAESCore(np.full(N, 0.5), 0.3, POPSIZE, seed)
        evals = 0
        while evals < MAX_EVALS:
            losses = ellipsoid(to_box(core.ask()))
            evals += POPSIZE
            core.tell(losses)
            if losses.min() <= TARGET:
                return evals
        return np.inf

    reference = np.median([pycma_evals(ellipsoid, seed) for seed in SEEDS])
    assert np.median([core_evals(seed) for seed in SEEDS]) <= SLACK * reference


def test_core_default_parameters_match_pycma():
    """Population size, weights, mu_eff and covariance learning rates agree with pycma's."""
    core = CMAESCore(np.zeros(N), 1.0)
    es = cma.CMAEvolutionStrategy(np.zeros(N), 1.0, {"verbose": -9})
    assert core.population_size == es.sp.popsize and core.mu == es.sp.weights.mu
    assert core.mueff == pytest.approx(es.sp.weights.mueff, rel=1e-12)
    # All lambda weights, the negative (active) ones included.
    np.testing.assert_allclose(core.weights, list(es.sp.weights), rtol=1e-12)
    # c_sigma and d_sigma are not compared: pycma uses (mueff + 2) / (n + mueff + 3), the
    # tutorial's Eq. (55) (which we follow) has + 5.
    assert core.c_c == pytest.approx(es.sp.cc, rel=1e-12)
    assert core.c_1 == pytest.approx(es.sp.c1, rel=1e-12)
    assert core.c_mu == pytest.approx(es.sp.cmu, rel=1e-12)
    assert core.weights.sum() == pytest.approx(1 + core.weights[core.mu:].sum())


def test_state_dict_round_trip_mid_run_continues_identically():
    searcher = CMAES(BOX, population_size=8, seed=3)
    for _ in range(15):
        configs = searcher.ask()
        searcher.tell(configs, rosenbrock(np.array([[c[k] for k in BOX] for c in configs])))
    state = json.loads(json.dumps(searcher.state_dict(), allow_nan=False))
    restored = CMAES.from_state_dict(BOX, state)
    for _ in range(15):
        configs = searcher.ask()
        assert restored.ask() == configs
        losses = rosenbrock(np.array([[c[k] for k in BOX] for c in configs])).tolist()
        searcher.tell(configs, losses)
        restored.tell(configs, losses)
    assert restored.state_dict() == searcher.state_dict()


def test_ask_returns_population_size_configs_and_repeats_until_told():
    searcher = CMAES(BOX, population_size=7, seed=0)
    configs = searcher.ask()
    assert len(configs) == 7
    assert searcher.ask() == configs
    assert CMAES(BOX, seed=0).population_size == POPSIZE


def test_tell_must_receive_the_asked_configs():
    searcher = CMAES(BOX, population_size=6, seed=0)
    configs = searcher.ask()
    with pytest.raises(ValueError, match="configs of the last ask"):
        searcher.tell(configs[:5], [1.0] * 5)
    other = [dict(c, x0=0.0) for c in configs]
    with pytest.raises(ValueError, match="configs of the last ask"):
        searcher.tell(other, [1.0] * 6)
    # Any order is accepted and means the same thing.
    losses = list(range(6))
    in_order = CMAES(BOX, population_size=6, seed=0)
    in_order.tell(configs, losses)
    searcher.tell(configs[::-1], losses[::-1])
    assert searcher.ask() == in_order.ask()


def test_failed_losses_rank_last():
    searcher = CMAES({"x": Float(0.0, 1.0)}, population_size=6, seed=0)
    configs = searcher.ask()
    losses = [np.nan if c["x"] < 0.5 else abs(c["x"] - 0.7) for c in configs]
    reference = CMAES({"x": Float(0.0, 1.0)}, population_size=6, seed=0)
    reference.tell(configs, [np.inf if np.isnan(x) else x for x in losses])
    searcher.tell(configs, losses)
    assert searcher.ask() == reference.ask()


def test_optimum_on_the_boundary_is_found():
    # Loss decreasing towards the upper bound of every coordinate: the mirror keeps it there.
    space = {f"x{i}": Float(0.0, 1.0) for i in range(4)}
    searcher = CMAES(space, population_size=8, seed=0)
    for _ in range(150):
        configs = searcher.ask()
        searcher.tell(configs, [sum(1 - c[k] for k in space) for c in configs])
    assert searcher.best_loss < 1e-4


def test_mixed_space_with_integers_and_choices():
    space = {"lr": Float(1e-5, 1e-1, log=True), "width": Int(1, 64, log=True),
             "act": Choice(["relu", "tanh", "gelu", "elu"])}

    def loss(c):
        return ((np.log10(c["lr"]) + 2) ** 2 + (np.log2(c["width"]) - 4) ** 2
                + (c["act"] != "gelu"))

    searcher = CMAES(space, seed=1)
    for _ in range(40):
        configs = searcher.ask()
        assert all(isinstance(c["width"], int) and c["act"] in space["act"].options
                   for c in configs)
        searcher.tell(configs, [loss(c) for c in configs])
    assert searcher.best_config["width"] == 16 and searcher.best_config["act"] == "gelu"
    assert searcher.best_loss < 0.01


def test_mirror_is_a_continuous_period_two_reflection():
    x = np.array([-2.3, -1.0, -0.1, 0.0, 0.4, 1.0, 1.2, 2.0, 3.7])
    np.testing.assert_allclose(mirror_unit(x), [0.3, 1.0, 0.1, 0.0, 0.4, 1.0, 0.8, 0.0, 0.3],
                               atol=1e-12)
    np.testing.assert_allclose(mirror_unit(x + 2.0), mirror_unit(x), atol=1e-12)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="population_size"):
        CMAES(BOX, population_size=1)
    with pytest.raises(ValueError, match="sigma0"):
        CMAES(BOX, sigma0=0.0)
    with pytest.raises(ValueError, match="at least one dimension"):
        CMAES({})
