"""Tests for jaxae.config: ranges, suggestions, and where a bad setting came from."""

import pytest

from jaxae import config as config_lib
from jaxae.errors import UserError


def refused(settings, origins=None):
    with pytest.raises(UserError) as e:
        config_lib.build(settings, origins)
    message = str(e.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name, value", [
    ("seed", 2**64), ("seed", 2**32), ("seed", -1), ("steps", 2**31), ("chunk", 10**10),
    ("min_steps", 10**12), ("population", 10**9), ("trials", 2**40), ("repeats", 10**6),
    ("eta", 10**6),
])
def test_values_that_overflow_the_device_integers_are_refused(name, value):
    settings = {name: value}
    if name == "min_steps":
        settings["steps"] = 2**30
    assert f"{name} = {value}" in refused(settings)


def test_the_largest_allowed_values_build():
    config = config_lib.build({"seed": 2**32 - 1, "steps": 2**30, "chunk": 2**30,
                               "min_steps": 2**30})
    assert config.seed == 2**32 - 1 and config.steps == config.min_steps == 2**30


def test_unknown_setting_suggests_and_names_file_and_table():
    where = "config file 'x.toml' [sweep]"
    message = refused({"populaton": 4}, {"populaton": where})
    assert message.startswith(where + ": ")
    assert "did you mean 'population'?" in message
    known = message.split("known: ")[1]
    assert "space" not in known.split(", ") and "population" in known
    assert message.count("populaton") == 1


@pytest.mark.parametrize("settings, suggestion", [
    ({"model": "vea"}, "vae"),
    ({"searcher": "hyperbnd"}, "hyperband"),
    ({"space": {"learningrate": 0.1}}, "learning_rate"),
    ({"space": {"activation": "rlu"}}, "relu"),
    ({"space": {"activation": {"dist": "choice", "options": ["relu", "tahn"]}}}, "tanh"),
])
def test_misspelt_names_and_choices_get_a_suggestion(settings, suggestion):
    (name,) = settings
    table = "[space]" if name == "space" else "[sweep]"
    origins = {name: f"config file 'x.toml' {table}"}
    message = refused(settings, origins)
    assert f"did you mean {suggestion!r}?" in message
    assert message.startswith(f"config file 'x.toml' {table}")
    assert message.count("config file") == 1


def test_a_setting_given_as_a_flag_is_named_as_the_flag():
    assert refused({"trials": 0}, {"trials": "--trials"}).startswith("--trials: trials = 0")


def test_space_errors_name_the_hyperparameter_once():
    message = refused({"space": {"learning_rate": {"dist": "float", "low": 0.1, "high": 0.01}}})
    assert message.count("learning_rate") == 1, message


def test_space_is_not_a_sweep_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[sweep]\nspace = 3\n')
    with pytest.raises(UserError, match=r"\[sweep\]: unknown setting 'space'"):
        config_lib.read_toml(path)
    path.write_text('[swep]\nmodel = "ae"\n')
    with pytest.raises(UserError, match="did you mean 'sweep'"):
        config_lib.read_toml(path)


@pytest.mark.parametrize("name, dimension, fragment", [
    ("dropout", {"dist": "float", "low": 0.1, "high": 0.95}, "dropout = 0.95 is outside [0, 0.9]"),
    ("dropout", {"dist": "float", "low": -0.1, "high": 0.5}, "dropout = -0.1 is outside [0, 0.9]"),
    ("dropout", {"dist": "int", "low": 0, "high": 1}, "dropout = 1 is outside [0, 0.9]"),
    ("dropout", {"dist": "float", "low": 0.5, "high": 0.1}, "dropout: Float needs low < high"),
    ("latent_dim", {"dist": "float", "low": 2, "high": 8}, "latent_dim is an integer"),
])
def test_an_impossible_range_is_refused_in_one_line(name, dimension, fragment):
    # A range reaching outside what the hyperparameter allows (hparams.HPARAMS) is refused
    # whole, before any trial could draw the bad end of it.
    message = refused({"space": {name: dimension}})
    assert fragment in message, message


def test_value_ranges_and_bucket_counts_of_a_space():
    config = config_lib.build({"model": "vae", "space": {
        "depth": {"dist": "int", "low": 1, "high": 3},
        "activation": {"dist": "choice", "options": ["relu", "tanh"]},
        "hidden": 48,
        "beta": {"dist": "float", "low": 0.5, "high": 2.0},
    }})
    assert config_lib.value_range(config, "depth") == [1, 2, 3]
    assert config_lib.value_range(config, "hidden") == [48]
    assert config_lib.value_range(config, "beta") == [0.5, 2.0]
    assert config_lib.value_range(config, "loss") == ["bce"]  # the VAE's default
    # depth only: the activation is a per-slot choice inside each program; the rest is fixed.
    assert config_lib.count_buckets(config) == 3
    optimizer = {"dist": "choice", "options": ["adam", "sgd"]}
    both = config_lib.build({"model": "vae", "space": {**config.space, "optimizer": optimizer}})
    assert config_lib.count_buckets(both) == 3 * 2
    assert set(config_lib.searched(config)) == {"depth", "activation", "beta"}
    assert config_lib.fixed(config) == {"hidden": 48}


def test_curve_examples_is_a_count_of_examples_stored_only_when_set():
    from jaxae.population import CURVE_EXAMPLES

    assert "curve_examples = -1" in refused({"curve_examples": -1})
    assert "curve_examples = 1.5" in refused({"curve_examples": 1.5})
    assert "--curve-examples" in refused({"curve_examples": True},
                                         {"curve_examples": "--curve-examples"})
    unset = config_lib.build({})
    # A sweep stored before the setting existed keeps its fingerprint (resumes): unset, it is
    # not in the stored form, and the default applies.
    assert "curve_examples" not in unset.to_dict()
    assert config_lib.curve_examples(unset) == CURVE_EXAMPLES
    assert config_lib.curve_examples(config_lib.build({"curve_examples": 0})) is None  # all
    some = config_lib.build({"curve_examples": 300})
    assert some.to_dict()["curve_examples"] == 300 and config_lib.curve_examples(some) == 300
    assert config_lib.build(some.to_dict()) == some
