"""Tests for jaxae.hparams: defaults per model, one-line refusals, and what reaches the trainer."""

import math

import pytest

from jaxae import hparams
from jaxae.errors import UserError


def refused(model, values, match):
    with pytest.raises(UserError, match=match) as info:
        hparams.resolve(model, values)
    assert "\n" not in str(info.value)


def test_resolve_fills_every_applicable_default_and_keeps_given_values():
    config = hparams.resolve("sparse", {"learning_rate": 0.01, "latent_dim": 12.0})
    assert set(config) == set(hparams.names_for("sparse"))
    assert {"l1", "rho", "sparsity_weight"} <= set(config) and "beta" not in config
    assert config["learning_rate"] == 0.01 and config["latent_dim"] == 12
    assert isinstance(config["latent_dim"], int)  # an integral float becomes the int it names
    assert config["rho"] == 0.05 and config["optimizer"] == "adam" and config["loss"] == "mse"
    vae = hparams.resolve("vae", {})
    assert vae["loss"] == "bce" and vae["beta"] == 1.0  # the VAE's own default loss


@pytest.mark.parametrize("model, values, match", [
    ("ae", {"dropout": 0.95}, r"dropout = 0.95 is outside \[0, 0.9\]"),
    ("ae", {"learning_rate": -1e-3}, "learning_rate = -0.001 is outside"),
    ("ae", {"depth": 2.5}, "depth = 2.5 must be an integer"),
    ("ae", {"weight_decay": math.nan}, "must be finite"),
    ("ae", {"batch_size": True}, "must be a number"),
    ("ae", {"activation": "swish"}, "is not one of relu"),
    ("ae", {"beta": 2.0}, "'beta' does not apply to model 'ae'"),
    ("ae", {"lr": 0.1}, "unknown hyperparameter 'lr'"),
    ("contractive", {"norm": "batch"}, "does not apply to model 'contractive'"),
    ("gan", {}, "unknown model 'gan'"),
])
def test_resolve_refuses_in_one_line(model, values, match):
    refused(model, values, match)


def test_every_name_reaches_the_trainer_one_way():
    arrays, buckets = set(hparams.ARRAY_NAMES), set(hparams.BUCKET_NAMES)
    assert not arrays & buckets and arrays | buckets == set(hparams.HPARAMS)
    assert {"latent_dim", "hidden"} <= arrays  # masked sizes ride as floats
    assert {"depth", "optimizer", "batch_size", "loss", "norm"} == buckets
    assert "activation" in arrays  # a per-slot choice (models.activate)


def test_array_values_are_floats_an_index_or_an_infinite_clip():
    assert hparams.array_value("learning_rate", 3e-4) == 3e-4
    assert hparams.array_value("schedule", "exponential") == 2.0  # its index in SCHEDULES
    assert hparams.array_value("noise_kind", "mask") == 1.0
    assert hparams.array_value("grad_clip", 0) == math.inf  # 0 means no clipping
    assert hparams.array_value("grad_clip", 1.5) == 1.5
