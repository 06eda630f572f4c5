"""The shared initial design, CMA-ES's start from it, and the ModelBased history of TPE and GP."""

import json
import math

import numpy as np
import pytest
from scipy.stats import qmc

from searchers import CMAES, GP, TPE, Float, Int, RandomSearch, make_sampler
from searchers.base import ModelBased
from searchers.design import sobol_design
from searchers.space import space_from_unit, space_to_unit

SPACE3 = {"a": Float(0.0, 1.0), "b": Float(0.0, 1.0), "c": Float(0.0, 1.0)}


@pytest.mark.parametrize(("n", "dims", "seed"), [(16, 3, 0), (16, 3, 1), (8, 5, 4), (32, 2, 9)])
def test_design_covers_the_cube_one_point_per_stratum(n, dims, seed):
    points = sobol_design(n, dims, seed)
    assert points.shape == (n, dims) and (points >= 0).all() and (points < 1).all()
    for j in range(dims):  # every 1-D projection: exactly one point in each [i/n, (i+1)/n)
        assert sorted(np.floor(points[:, j] * n).astype(int).tolist()) == list(range(n))
    # 2-D balance of a (t, m, s)-net: no quarter of a face holds more than its share + n/8.
    quarters = np.floor(points[:, :2] * 2).astype(int) @ [1, 2]
    assert np.bincount(quarters, minlength=4).max() <= n // 4 + n // 8


def test_design_is_a_prefix_and_a_function_of_the_seed():
    assert np.array_equal(sobol_design(5, 3, 2), sobol_design(16, 3, 2)[:5])
    assert np.array_equal(sobol_design(16, 3, 2), sobol_design(16, 3, 2))
    assert not np.allclose(sobol_design(16, 3, 2), sobol_design(16, 3, 3))
    # Independent computation: scipy's generator with the documented stream.
    reference = qmc.Sobol(3, scramble=True, rng=np.random.default_rng([2, 0x5AB01])).random(16)
    assert np.array_equal(sobol_design(16, 3, 2), reference)
    # Discrepancy well below that of uniform random points (measured 0.0066 against 0.035).
    uniform = np.random.default_rng(0).random((16, 3))
    assert qmc.discrepancy(sobol_design(16, 3, 0)) < 0.5 * qmc.discrepancy(uniform)


@pytest.mark.parametrize("bad", [(0, 3), (4, 0)])
def test_design_refuses_empty_shapes(bad):
    with pytest.raises(ValueError, match="design needs"):
        sobol_design(*bad, seed=0)


# -- CMA-ES's first generation ---------------------------------------------------------------------


def test_cmaes_first_generation_is_the_design_and_starts_from_its_best_points():
    cma = CMAES(SPACE3, population_size=16, seed=3)
    design = sobol_design(16, 3, seed=3)
    first = cma.ask()
    assert first == [space_from_unit(SPACE3, u) for u in design] and cma.generation == 0
    losses = [((space_to_unit(SPACE3, c) - [0.8, 0.2, 0.6]) ** 2).sum() for c in first]
    cma.tell(first[::-1], losses[::-1])  # any order
    assert cma.generation == 1 and not cma.design_pending
    # Independent computation of the start: recombination weights of Hansen's tutorial, Eq. (49).
    mu = 8
    w = math.log(17 / 2) - np.log(np.arange(1, mu + 1))
    w /= w.sum()
    best = design[np.argsort(losses)[:mu]]
    mean = w @ best
    var = np.maximum(w @ (best - mean) ** 2, 0.05**2)
    sigma = min(max(math.sqrt(var.mean()), 0.05), 0.3)
    np.testing.assert_allclose(cma.core.mean, mean, rtol=1e-12)
    assert cma.core.sigma == pytest.approx(sigma, rel=1e-12)
    np.testing.assert_allclose(sigma**2 * cma.core.C, np.diag(var), rtol=1e-12, atol=1e-15)
    assert np.linalg.norm(mean - [0.8, 0.2, 0.6]) < 0.25  # the design's good corner


def test_cmaes_refuses_a_tell_of_other_configs_during_the_design():
    cma = CMAES(SPACE3, population_size=4, seed=0)
    configs = cma.ask()
    with pytest.raises(ValueError, match="configs of the last ask"):
        cma.tell(configs[:3] + [{"a": 0.5, "b": 0.5, "c": 0.5}], [1.0] * 4)


@pytest.mark.parametrize("told", [0, 1, 3])
def test_cmaes_state_round_trip_in_and_after_the_design(told):
    def loss(c):
        return (c["a"] - 0.9) ** 2 + (c["b"] - 0.1) ** 2 + c["c"]

    original = CMAES(SPACE3, population_size=6, seed=1)
    for _ in range(told):
        configs = original.ask()
        original.tell(configs, [loss(c) for c in configs])
    restored = CMAES.from_state_dict(SPACE3, json.loads(json.dumps(original.state_dict())))
    assert restored.state_dict() == original.state_dict()
    for _ in range(3):
        a, b = original.ask(), restored.ask()
        assert a == b
        original.tell(a, [loss(c) for c in a])
        restored.tell(b, [loss(c) for c in b])
    assert restored.state_dict() == original.state_dict()


def test_cmaes_state_saved_before_the_design_existed_resumes_as_the_plain_start():
    plain = CMAES(SPACE3, population_size=6, seed=1, initial_design=False)
    state = plain.state_dict()
    for key in ("initial_design", "design_pending", "sigma_min"):
        del state[key]
    assert CMAES.from_state_dict(SPACE3, state).ask() == plain.ask()


def shifted_sphere(c):
    return sum((c[k] - t) ** 2 for k, t in zip("abc", (0.87, 0.13, 0.71), strict=True))


def rosenbrock(c):
    x, y = 4 * c["a"] - 2, 4 * c["b"] - 2  # minimum 0 at (1, 1): unit (0.75, 0.75)
    return 100 * (y - x**2) ** 2 + (1 - x) ** 2


def best_of(searcher, loss, generations):
    for _ in range(generations):
        configs = searcher.ask()
        searcher.tell(configs, [loss(c) for c in configs])
    return searcher.best_loss


def test_cmaes_from_the_design_converges_on_a_shifted_sphere():
    finals = [best_of(CMAES(SPACE3, population_size=8, seed=s), shifted_sphere, 60)
              for s in range(3)]
    # Measured 2.6e-13, 1.9e-10, 6.9e-9 (the plain start: 9.3e-12, 3.5e-10, 2.0e-10).
    assert max(finals) < 1e-7, finals


def test_cmaes_from_the_design_solves_rosenbrock():
    space = {"a": Float(0.0, 1.0), "b": Float(0.0, 1.0)}
    finals = [best_of(CMAES(space, population_size=8, seed=s), rosenbrock, 80) for s in range(3)]
    assert max(finals) < 1e-8, finals  # measured ~1e-19


def test_design_start_beats_the_plain_start_and_random_at_few_generations():
    # Three generations of 16 on a sphere whose optimum is near a face, as the learning rate's
    # is on the autoencoder bench: the design start is closer than the centre start.
    def run(make):
        return np.median([best_of(make(s), shifted_sphere, 3) for s in range(8)])

    design = run(lambda s: CMAES(SPACE3, population_size=16, seed=s))
    plain = run(lambda s: CMAES(SPACE3, population_size=16, seed=s, initial_design=False))
    rnd = run(lambda s: RandomSearch(SPACE3, batch_size=16, seed=s))
    # Measured: design 0.0085, plain 0.0166, random 0.0328 (median of 8 seeds).
    assert design < 0.7 * plain and design < 0.5 * rnd, (design, plain, rnd)


# -- ModelBased: what TPE and GP share -------------------------------------------------------------


MODEL_BASED = [
    lambda: TPE({"x": Float(0.0, 1.0), "k": Int(1, 8)}, batch_size=3, seed=4, n_design=5),
    lambda: GP({"x": Float(0.0, 1.0), "k": Int(1, 8)}, batch_size=3, seed=4, n_initial=5),
]


@pytest.mark.parametrize("make", MODEL_BASED, ids=["tpe", "gp"])
def test_model_based_history_and_pending(make):
    searcher = make()
    assert isinstance(searcher, ModelBased) and not searcher.synchronous
    first = searcher.ask()
    assert searcher.pending == first and searcher.num_asked == 3
    # The first configs are the seed's design, whichever model-based searcher asks them.
    assert first == [space_from_unit(searcher.space, u)
                     for u in sobol_design(3, 2, seed=4)]
    searcher.tell(first[1:2], [0.5])
    assert searcher.pending == [first[0], first[2]] and searcher.losses == [0.5]
    assert searcher.points == [space_to_unit(searcher.space, first[1]).tolist()]
    stranger = {"x": 0.25, "k": 3}
    searcher.tell([stranger], [math.nan])  # never asked: accepted, failure stored as inf
    assert searcher.losses == [0.5, math.inf] and searcher.num_finite() == 1
    searcher.set_pending([stranger])
    assert searcher.pending == [stranger]
    with pytest.raises(ValueError, match="lacks"):
        searcher.tell([stranger, {"x": 0.5}], [1.0, 2.0])  # one bad config: nothing recorded
    assert len(searcher.points) == 2
    state = json.loads(json.dumps(searcher.state_dict(), allow_nan=False))
    restored = type(searcher).from_state_dict(searcher.space, state)
    assert restored.state_dict() == searcher.state_dict()
    for _ in range(3):
        a, b = searcher.ask(), restored.ask()
        assert a == b
        searcher.tell(a, [c["x"] for c in a])
        restored.tell(b, [c["x"] for c in b])


def test_the_registry_gives_a_population_one_design():
    space = {"lr": Float(1e-4, 1e-1, log=True), "wd": Float(1e-6, 1e-2, log=True),
             "beta": Float(0.1, 4.0, log=True)}
    cma = make_sampler("cmaes", space, population=16, seed=2).ask()
    tpe = make_sampler("tpe", space, population=16, seed=2)
    gp = make_sampler("gp", space, population=16, seed=2)
    assert [tpe.ask()[0] for _ in range(16)] == cma == [gp.ask()[0] for _ in range(16)]
