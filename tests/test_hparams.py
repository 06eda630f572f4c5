"""Tests for jaxae.hparams: defaults per model, one-line refusals, and what reaches the trainer."""

import math

import jax
import numpy as np
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


def test_the_per_slot_structure_has_every_array_name_once_in_its_tables_group():
    fields = {group: cls._fields for group, cls in hparams.GROUPS.items()}
    assert list(fields) == list(hparams.SlotHParams._fields)
    leaves = [name for names in fields.values() for name in names]
    assert len(leaves) == len(set(leaves))  # no name in two groups
    assert set(leaves) == set(hparams.ARRAY_NAMES) | set(hparams.EXTRA_LEAVES)
    assert hparams.EXTRA_LEAVES == ("horizon",) and "horizon" in fields["schedule"]
    for name, hp in hparams.HPARAMS.items():
        if hp.kind == "bucket":
            assert hp.group == "", name
        else:
            assert name in fields[hp.group], name


def test_slot_hparams_fill_inapplicable_names_with_defaults_and_name_options_by_index():
    configs = [hparams.resolve("ae", {"learning_rate": 0.1}),
               hparams.resolve("denoising", {"noise_kind": "mask", "grad_clip": 1.5,
                                             "schedule": "exponential", "latent_dim": 5})]
    hp = hparams.slot_hparams(configs, [100, 7])
    assert all(leaf.dtype == np.float32 and leaf.shape == (2,) for leaf in jax.tree.leaves(hp))
    assert hp.opt.learning_rate.tolist() == [np.float32(0.1), np.float32(1e-3)]
    assert np.isinf(hp.opt.grad_clip[0]) and hp.opt.grad_clip[1] == 1.5  # 0: no clipping
    assert hp.penalty.beta.tolist() == [1.0, 1.0]  # not a VAE: the default
    assert hp.penalty.noise_kind.tolist() == [0.0, 1.0]  # the index in NOISE_KINDS
    assert hp.schedule.schedule.tolist() == [0.0, 2.0] and hp.schedule.horizon.tolist() == [100, 7]
    assert hp.model.latent_dim.tolist() == [16.0, 5.0]


def test_by_name_and_from_names_are_inverse():
    hp = hparams.slot_hparams([hparams.resolve("sparse", {"rho": 0.2})], [3])
    named = hparams.by_name(hp)
    assert set(named) == set(hparams.ARRAY_NAMES) | {"horizon"}
    assert named["rho"][0] == np.float32(0.2)
    back = hparams.from_names(named)
    assert jax.tree.structure(back) == jax.tree.structure(hp)
    assert all(a is b for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(hp), strict=True))


def test_set_rows_writes_only_the_given_rows():
    into = hparams.slot_hparams([hparams.defaults("ae")] * 3, [1] * 3)
    hparams.set_rows(into, [0, 2], hparams.slot_hparams([{"learning_rate": 0.5}], [9]))
    assert into.opt.learning_rate.tolist() == [0.5, np.float32(1e-3), 0.5]
    assert into.schedule.horizon.tolist() == [9.0, 1.0, 9.0]


def test_complete_merges_without_checking_and_agrees_with_resolve_on_valid_values():
    values = {"learning_rate": 1, "latent_dim": 12.0, "activation": "tanh"}
    assert hparams.complete("ae", values) == hparams.resolve("ae", values)
    assert type(hparams.complete("ae", values)["latent_dim"]) is int
    assert type(hparams.complete("ae", values)["learning_rate"]) is float
    # Validation happens once, at the edge (config.build, hparams.resolve), not per trial.
    assert hparams.complete("ae", {"dropout": 5.0})["dropout"] == 5.0
    with pytest.raises(UserError, match="dropout"):
        hparams.resolve("ae", {"dropout": 5.0})
