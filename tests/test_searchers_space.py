"""Search space: validation, unit-cube mapping, prior sampling, JSON round trip."""

import json
import math

import numpy as np
import pytest

from searchers import (
    Choice,
    Float,
    Int,
    dimension_from_dict,
    space_from_dict,
    space_from_unit,
    space_sample,
    space_to_dict,
    space_to_unit,
)
from searchers.space import check_space

SPACE = {
    "learning_rate": Float(1e-5, 1e-1, log=True),
    "beta": Float(0.0, 4.0),
    "latent_dim": Int(2, 64, log=True),
    "depth": Int(1, 4),
    "activation": Choice(["relu", "tanh", "gelu"]),
    "flag": Choice([True, False, None, 1, 2.5]),
}


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda: Float(1.0, 1.0), "low < high"),
        (lambda: Float(2.0, 1.0), "low < high"),
        (lambda: Float(0.0, 1.0, log=True), "low > 0"),
        (lambda: Float(-1.0, 1.0, log=True), "low > 0"),
        (lambda: Float(float("nan"), 1.0), "finite"),
        (lambda: Float(0.0, float("inf")), "finite"),
        (lambda: Float("a", 1.0), "number"),
        (lambda: Float(0.0, 1.0, log="yes"), "log"),
        (lambda: Int(3, 3), "low < high"),
        (lambda: Int(5, 1), "low < high"),
        (lambda: Int(0, 8, log=True), "low > 0"),
        (lambda: Int(1.5, 3), "integer"),
        (lambda: Int(True, 3), "integer"),
        (lambda: Choice([]), "at least one option"),
        (lambda: Choice("relu"), "list"),
        (lambda: Choice(["relu", "relu"]), "distinct"),
        (lambda: Choice([[1, 2]]), "strings, numbers"),
    ],
)
def test_validation_errors_are_one_line_value_errors(make, fragment):
    with pytest.raises(ValueError, match=fragment) as info:
        make()
    assert "\n" not in str(info.value)


def test_integral_float_bounds_are_accepted_for_int():
    assert Int(2.0, 8) == Int(2, 8)
    assert isinstance(Int(2.0, 8).low, int)


def test_to_dict_has_the_documented_shape():
    assert Float(1e-5, 0.1, log=True).to_dict() == {
        "dist": "float", "low": 1e-5, "high": 0.1, "log": True}
    assert Int(1, 4).to_dict() == {"dist": "int", "low": 1, "high": 4, "log": False}
    assert Choice(["relu", "tanh"]).to_dict() == {"dist": "choice", "options": ["relu", "tanh"]}


def test_space_json_round_trip():
    d = json.loads(json.dumps(space_to_dict(SPACE), allow_nan=False))
    assert space_from_dict(d) == SPACE
    assert list(space_from_dict(d)) == list(SPACE)  # the order is the unit-cube order
    # "log" may be left out of a TOML table.
    assert dimension_from_dict({"dist": "float", "low": 1, "high": 2}) == Float(1.0, 2.0)


@pytest.mark.parametrize(
    ("d", "fragment"),
    [
        ({"dist": "normal", "low": 0, "high": 1}, "dist must be one of"),
        ({"low": 0, "high": 1}, "dist must be one of"),
        ({"dist": "float", "low": 0}, "needs the key 'high'"),
        ({"dist": "int", "low": 0, "high": 3, "step": 1}, "unexpected key 'step'"),
        ({"dist": "choice"}, "needs the key 'options'"),
        ({"dist": "float", "low": 0, "high": 1, "log": True}, "low > 0"),
        ("float", "table"),
    ],
)
def test_space_from_dict_errors_name_the_dimension(d, fragment):
    with pytest.raises(ValueError, match=fragment) as info:
        space_from_dict({"learning_rate": d})
    assert str(info.value).startswith("learning_rate: ")
    assert "\n" not in str(info.value)


def test_check_space_refuses_non_dimensions():
    with pytest.raises(ValueError, match="expected Float, Int or Choice"):
        check_space({"x": (0, 1)})
    with pytest.raises(ValueError, match="dict of dimensions"):
        check_space([Float(0, 1)])


def test_unit_cube_round_trip():
    rng = np.random.default_rng(0)
    for u in rng.random((200, len(SPACE))):
        config = space_from_unit(SPACE, u)
        assert all(dim.contains(config[name]) for name, dim in SPACE.items())
        # config -> cube -> config is exact for every kind of dimension.
        assert space_from_unit(SPACE, space_to_unit(SPACE, config)) == config
        # For floats the cube coordinate itself comes back (up to round-off).
        back = space_to_unit(SPACE, config)
        np.testing.assert_allclose(back[:2], u[:2], rtol=0, atol=1e-12)
    for k in range(2, 65):
        assert Int(2, 64, log=True).from_unit(Int(2, 64, log=True).to_unit(k)) == k
    for k in range(1, 5):
        assert Int(1, 4).from_unit(Int(1, 4).to_unit(k)) == k


def test_from_unit_clips_and_hits_the_bounds():
    assert Float(1e-5, 1e-1, log=True).from_unit(0.0) == 1e-5
    assert Float(1e-5, 1e-1, log=True).from_unit(1.0) == 1e-1
    assert Float(0.0, 4.0).from_unit(1.7) == 4.0
    assert Int(1, 4).from_unit(-3.0) == 1
    assert Int(1, 4).from_unit(1.0) == 4
    assert Choice(["a", "b"]).from_unit(1.0) == "b"


def test_values_are_plain_python_and_json_serialisable():
    config = space_sample(SPACE, np.random.default_rng(1))
    assert type(config["learning_rate"]) is float and type(config["beta"]) is float
    assert type(config["latent_dim"]) is int and type(config["depth"]) is int
    assert json.loads(json.dumps(config)) == config


def _ks_uniform(v: np.ndarray) -> float:
    """Kolmogorov-Smirnov statistic of samples in [0, 1] against the uniform distribution."""
    v = np.sort(v)
    n = len(v)
    return float(max((np.arange(1, n + 1) / n - v).max(), (v - np.arange(n) / n).max()))


def test_log_float_samples_are_uniform_in_log_space():
    n = 4000
    rng = np.random.default_rng(123)
    lo, hi = math.log(1e-4), math.log(1e2)
    log_dim, lin_dim = Float(1e-4, 1e2, log=True), Float(1e-4, 1e2)
    logs = np.log([log_dim.sample(rng) for _ in range(n)])
    # 1.63 / sqrt(n) is the KS critical value at the 1 % level.
    assert _ks_uniform((logs - lo) / (hi - lo)) < 1.63 / math.sqrt(n)
    # The same test has power: a linear-scale dimension is far from log-uniform.
    lin_logs = np.log([lin_dim.sample(rng) for _ in range(n)])
    assert _ks_uniform((lin_logs - lo) / (hi - lo)) > 0.5
    # And a linear dimension is uniform on its own scale.
    lin = np.array([lin_dim.sample(rng) for _ in range(n)])
    assert _ks_uniform((lin - 1e-4) / (1e2 - 1e-4)) < 1.63 / math.sqrt(n)


@pytest.mark.parametrize("dim", [Int(1, 6), Int(1, 10, log=True), Int(-3, 3),
                                 Choice(["relu", "tanh", "gelu", "elu", "sigmoid"])])
def test_int_and_choice_sampling_covers_all_values(dim):
    rng = np.random.default_rng(7)
    seen = [dim.sample(rng) for _ in range(3000)]
    values = list(dim.options) if isinstance(dim, Choice) else list(range(dim.low, dim.high + 1))
    assert set(seen) == set(values)
    if isinstance(dim, Choice) or not dim.log:
        counts = np.array([seen.count(v) for v in values])
        expected = len(seen) / len(values)
        assert np.all(np.abs(counts - expected) < 5 * math.sqrt(expected))  # uniform prior


def test_log_int_prior_favours_small_values():
    rng = np.random.default_rng(0)
    seen = np.array([Int(1, 100, log=True).sample(rng) for _ in range(4000)])
    # Integer k owns [k - 1/2, k + 1/2] in log space: P(k <= 10) = log(10.5/0.5) / log(100.5/0.5).
    assert np.mean(seen <= 10) == pytest.approx(math.log(21) / math.log(201), abs=0.025)


def test_choice_keeps_booleans_apart_from_integers():
    dim = Choice([True, 1])
    assert dim.index(1) == 1 and dim.index(True) == 0
    assert dim.from_unit(dim.to_unit(1)) == 1 and dim.from_unit(dim.to_unit(1)) is not True
