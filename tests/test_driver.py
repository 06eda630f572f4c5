"""The driver's program specs: what each bucket's compiled program is built with."""

import pytest

from jaxae import config as config_lib
from jaxae import hparams
from jaxae.driver import train_spec


def bucket_of(config):
    values = {**hparams.defaults(config.model), **{k: v for k, v in config.space.items()
                                                  if not isinstance(v, dict)}}
    return tuple(values[name] for name in hparams.BUCKET_NAMES)


@pytest.mark.parametrize(("space", "clips"), [
    ({}, False),                                                         # grad_clip unnamed: 0
    ({"grad_clip": 0.0}, False),                                         # fixed off
    ({"grad_clip": 1.0}, True),                                          # fixed on
    ({"grad_clip": {"dist": "float", "low": 0.1, "high": 10.0, "log": True}}, True),
])
def test_the_gradient_norm_pass_is_compiled_only_where_a_trial_can_clip(space, clips):
    config = config_lib.build({"searcher": "random", "space": space})
    spec = train_spec(config, 64, bucket_of(config))
    assert spec.clip_gradients is clips


def test_the_padded_shape_is_the_largest_the_space_allows():
    config = config_lib.build({"space": {
        "hidden": {"dist": "int", "low": 8, "high": 48},
        "latent_dim": {"dist": "int", "low": 2, "high": 12, "log": True}}})
    spec = train_spec(config, 64, bucket_of(config))
    assert (spec.model.hidden, spec.model.latent_dim, spec.model.features) == (48, 12, 64)
