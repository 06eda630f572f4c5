"""Host-side threefry keys equal jax.random's, bit for bit."""

import jax
import numpy as np
import pytest

from jaxae import keys
from jaxae import population as P

SEEDS = [0, 1, 2023, 2**31 + 5, 2**32 - 1]
DATA = [0, 1, 2, 99, 2**31 - 1, 2**32 - 1]


@pytest.mark.parametrize("seed", SEEDS)
def test_prng_key_and_fold_in_match_jax(seed):
    key = jax.random.PRNGKey(seed)
    np.testing.assert_array_equal(keys.prng_key(seed), np.asarray(key))
    for d in DATA:
        np.testing.assert_array_equal(keys.fold_in(keys.prng_key(seed), d),
                                      np.asarray(jax.random.fold_in(key, np.uint32(d))))


def test_threefry_matches_the_published_known_answer():
    # Salmon et al. (2011), Random123 known-answer test for threefry2x32 with 20 rounds.
    assert keys.threefry2x32((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3)) == (
        0xC4923A9C, 0x483DF7A0)


@pytest.mark.parametrize(("seed", "trial", "replicate"),
                         [(0, 0, 0), (7, 123, 2), (2**32 - 1, 5, 1)])
def test_trial_keys_equal_eager_jax(seed, trial, replicate):
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), trial), replicate)
    got = P.trial_keys(seed, trial, replicate)
    for i, name in enumerate(("init_key", "data_key", "eval_key")):
        np.testing.assert_array_equal(got[name], np.asarray(jax.random.fold_in(key, i)))
        assert got[name].dtype == np.uint32 and got[name].shape == (2,)
    shared = jax.random.fold_in(
        jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), np.uint32(2**32 - 1)),
                           replicate), 1)
    np.testing.assert_array_equal(P.shared_data_key(seed, replicate), np.asarray(shared))
