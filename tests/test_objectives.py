"""Objectives: every kind trains, and each formula matches an independent computation.

The references are numpy in float64 (closed forms written out by hand) and ``jax.jacfwd``
(forward mode, where the code under test uses reverse mode).
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxae import hparams, placement
from jaxae import objectives as O
from jaxae import population as P
from jaxae.models import ModelSpec, apply_fn, init_params, kernel_matrix, make_masks

# ---------------------------------------------------------------------------------------------
# numpy references


def np_sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def np_bce(logits, x):
    """Bernoulli cross-entropy from logits, the stable form of -(x log s + (1-x) log(1-s))."""
    return np.maximum(logits, 0) - logits * x + np.log1p(np.exp(-np.abs(logits)))


def np64(tree, spec=None):
    """float64 copies; with ``spec``, every kernel as [in, out] (the model may store [out, in])."""
    if spec is not None:
        tree = {name: {**layer, "kernel": kernel_matrix(spec, tree, name)}
                for name, layer in tree.items()}
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def np_dense(p, x):
    return x @ p["kernel"] + p["bias"]


def np_encode_vae(params, x, mh, ml):
    """The VAE encoder of a depth-1 relu model, written out in numpy: (mu, logvar)."""
    h = np.maximum(np_dense(params["enc_0"], x), 0) * mh
    return np_dense(params["code"], h) * ml, np_dense(params["code_logvar"], h) * ml


def np_decode_logits(params, z, mh, ml):
    h = np.maximum(np_dense(params["dec_0"], z * ml), 0) * mh
    return np_dense(params["output"], h)


def hp_of(kind, **values):
    """Scalar hyperparameter arrays of one member (no slot axis), as the trainer passes them."""
    config = hparams.resolve(kind, values)
    return jax.tree.map(lambda a: jnp.asarray(a[0]), hparams.slot_hparams([config], [1]))


@functools.partial(jax.jit, static_argnums=(0,))
def perturbed_params(spec, masks, key, scale=0.3):
    """Initial params plus noise on every leaf (biases too), so no term is trivially zero."""
    params = init_params(spec, jax.random.PRNGKey(0), masks)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    noisy = [a + scale * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys, strict=True)]
    return jax.tree.unflatten(treedef, noisy)


# ---------------------------------------------------------------------------------------------
# Every kind lowers its loss when trained by the population trainer.

SIZES = {"hidden": 32, "latent_dim": 8}
# Four slots per kind; the sparse and denoising variants share one program (one compilation).
SLOT_CONFIGS = {
    "ae": [{"learning_rate": lr} for lr in (3e-3, 5e-3, 1e-2, 2e-2)],
    "sparse": [
        {"l1": 1e-3, "sparsity_weight": 0.0},
        {"l1": 1e-2, "sparsity_weight": 0.0},
        {"l1": 0.0, "sparsity_weight": 0.1, "rho": 0.05},
        {"l1": 0.0, "sparsity_weight": 1.0, "rho": 0.1},
    ],
    "denoising": [
        {"noise_kind": "gaussian", "noise": 0.1},
        {"noise_kind": "gaussian", "noise": 0.3},
        {"noise_kind": "mask", "noise": 0.2},
        {"noise_kind": "mask", "noise": 0.5},
    ],
    "contractive": [{"contractive": c} for c in (1e-3, 1e-2, 1e-1, 1.0)],
    "vae": [{"beta": b} for b in (0.5, 1.0, 2.0, 4.0)],
}
STEPS = 150


@pytest.mark.parametrize("kind", hparams.MODELS)
def test_every_kind_lowers_its_training_and_validation_loss(kind, digits):
    spec = P.TrainSpec(ModelSpec(kind, 64, **SIZES, loss="bce" if kind == "vae" else "mse"),
                       "adam", 32)
    base = {"learning_rate": 1e-2, **SIZES}
    members = [
        placement.Member(t, hparams.resolve(kind, {**base, **values}), STEPS, P.trial_keys(0, t))
        for t, values in enumerate(SLOT_CONFIGS[kind])
    ]
    pop = placement.assign(spec, placement.create(spec, 4), [0, 1, 2, 3], members)
    before = np.asarray(P.evaluate(spec, pop, digits)["val_loss"])
    pop, losses = P.train_chunk(spec, pop, digits, STEPS)
    after = np.asarray(P.evaluate(spec, pop, digits)["val_loss"])
    losses = np.asarray(losses)

    assert not np.asarray(pop.diverged).any()
    assert np.isfinite(losses).all() and np.isfinite(after).all()
    np.testing.assert_array_less(after, before)  # every slot, every variant
    np.testing.assert_array_less(losses[:, -20:].mean(axis=1), losses[:, :20].mean(axis=1))


# ---------------------------------------------------------------------------------------------
# Contractive penalty


def test_contractive_penalty_of_a_sigmoid_layer_is_the_textbook_closed_form():
    """Rifai et al. (2011): for a one-layer sigmoid encoder h = sigmoid(W^T x + b),
    ||J||_F^2 = sum_j (h_j (1 - h_j))^2 sum_i W_ij^2."""
    k_w, k_b, k_x = jax.random.split(jax.random.PRNGKey(1), 3)
    W = 0.5 * jax.random.normal(k_w, (12, 5))
    b = 0.5 * jax.random.normal(k_b, (5,))
    x = jax.random.uniform(k_x, (7, 12))
    encode = lambda xi: jax.nn.sigmoid(xi @ W + b)  # noqa: E731
    got = jax.jit(O.contractive_penalty, static_argnums=0)(encode, x)

    Wn, xn = np.asarray(W, np.float64), np.asarray(x, np.float64)
    h = np_sigmoid(xn @ Wn + np.asarray(b, np.float64))
    expected = ((h * (1 - h)) ** 2 * (Wn**2).sum(axis=0)).sum(axis=1)
    chex.assert_shape(got, (7,))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
def test_contractive_penalty_of_the_model_encoder_matches_jacfwd_and_numpy(activation):
    """The model's encoder is z = mask_l * (W2^T (mask_h * act(W1^T x + b1)) + b2), so
    J = diag(mask_l) W2^T diag(mask_h * act'(a1)) W1^T; checked with a masked (padded) slot."""
    spec = ModelSpec("contractive", 10, hidden=16, latent_dim=6, activation=activation)
    masks = make_masks(spec, 11, 4)
    params = perturbed_params(spec, masks, jax.random.PRNGKey(2))
    x = jax.random.uniform(jax.random.PRNGKey(3), (9, 10))
    encode = apply_fn(spec, "encode")

    @jax.jit  # one compilation instead of op-by-op dispatch
    def both(params, x):
        fn = lambda xi: encode(params, xi, masks)  # noqa: E731
        jac = jax.vmap(jax.jacfwd(fn))(x)  # [batch, latent, features]
        return O.contractive_penalty(fn, x), jnp.sum(jnp.square(jac), axis=(1, 2))

    got, by_jacfwd = both(params, x)
    np.testing.assert_allclose(got, by_jacfwd, rtol=1e-5)

    p = np64(params, spec)
    mh, ml = np.asarray(masks.hidden, np.float64), np.asarray(masks.latent, np.float64)
    a1 = np_dense(p["enc_0"], np.asarray(x, np.float64))
    act_grad = {"sigmoid": np_sigmoid(a1) * (1 - np_sigmoid(a1)), "tanh": 1 - np.tanh(a1) ** 2}
    d = act_grad[activation] * mh  # [batch, hidden]
    W1, W2 = p["enc_0"]["kernel"], p["code"]["kernel"] * ml  # [features, hidden], [hidden, latent]
    J = np.einsum("ij,bj,jk->bki", W1, d, W2)
    np.testing.assert_allclose(got, (J**2).sum(axis=(1, 2)), rtol=1e-5)
    assert np.all(np.asarray(got) > 0)


def test_contractive_objective_is_reconstruction_plus_weighted_penalty():
    spec = ModelSpec("contractive", 10, hidden=8, latent_dim=3, activation="tanh")
    hp = hp_of("contractive", contractive=0.7, hidden=8, latent_dim=3)
    masks = make_masks(spec, 8, 3)
    params = perturbed_params(spec, masks, jax.random.PRNGKey(4))
    x = jax.random.uniform(jax.random.PRNGKey(5), (6, 10))
    loss, aux = jax.jit(O.make_objective(spec))(params, x, jax.random.PRNGKey(0), hp.model,
                                                 hp.penalty)

    @jax.jit
    def reference(params, x):
        fn = lambda xi: apply_fn(spec, "encode")(params, xi, masks)  # noqa: E731
        penalty = 0.7 * jnp.mean(jnp.sum(jnp.square(jax.vmap(jax.jacfwd(fn))(x)), axis=(1, 2)))
        return penalty, jnp.mean(O.reconstruction(apply_fn(spec)(params, x, masks), x, "mse"))

    penalty, recon = reference(params, x)
    np.testing.assert_allclose(aux["penalty"], penalty, rtol=1e-5)
    np.testing.assert_allclose(loss, recon + penalty, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# KL sparsity


def test_kl_sparsity_matches_numpy_and_ignores_masked_units():
    rng = np.random.default_rng(0)
    z = rng.uniform(0.01, 0.99, size=(20, 6)).astype(np.float32)
    mask = np.array([1, 1, 0, 1, 0, 1], np.float32)
    rho = 0.07
    got = O.kl_sparsity(jnp.asarray(z), jnp.float32(rho), jnp.asarray(mask))

    rho_hat = z.astype(np.float64).mean(axis=0)
    kl = rho * np.log(rho / rho_hat) + (1 - rho) * np.log((1 - rho) / (1 - rho_hat))
    np.testing.assert_allclose(got, (kl * mask).sum(), rtol=1e-5)

    # A masked unit's codes are irrelevant, including the exact zeros a masked slot produces.
    z2 = z.copy()
    z2[:, [2, 4]] = [0.0, 1.0]
    np.testing.assert_allclose(
        O.kl_sparsity(jnp.asarray(z2), jnp.float32(rho), jnp.asarray(mask)), got, rtol=1e-6)
    grad = jax.jit(jax.grad(O.kl_sparsity))(jnp.asarray(z2), jnp.float32(rho), jnp.asarray(mask))
    assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[:, [2, 4]] == 0)


def test_kl_sparsity_is_zero_at_the_target_rate():
    z = jnp.full((8, 4), 0.05)
    np.testing.assert_allclose(O.kl_sparsity(z, jnp.float32(0.05), jnp.ones(4)), 0.0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# VAE


def vae_setup():
    spec = ModelSpec("vae", 10, hidden=16, latent_dim=5, loss="bce")
    masks = make_masks(spec, 12, 3)
    params = perturbed_params(spec, masks, jax.random.PRNGKey(6))
    x = jax.random.uniform(jax.random.PRNGKey(7), (11, 10))
    return spec, masks, params, x


def test_vae_objective_is_the_beta_elbo_written_out_in_numpy():
    spec, masks, params, x = vae_setup()
    hp = hp_of("vae", beta=2.5, hidden=12, latent_dim=3)
    key = jax.random.PRNGKey(8)
    loss, aux = jax.jit(O.make_objective(spec))(params, x, key, hp.model, hp.penalty)

    p, xn = np64(params, spec), np.asarray(x, np.float64)
    mh, ml = np.asarray(masks.hidden, np.float64), np.asarray(masks.latent, np.float64)
    mu, logvar = np_encode_vae(p, xn, mh, ml)
    eps = np.asarray(jax.random.normal(key, mu.shape), np.float64)  # the objective's key use
    z = mu + np.exp(0.5 * logvar) * eps * ml
    recon = np_bce(np_decode_logits(p, z, mh, ml), xn).sum(axis=1)
    kl = 0.5 * (mu**2 + np.exp(logvar) - 1 - logvar).sum(axis=1)
    np.testing.assert_allclose(loss, np.mean(recon + 2.5 * kl), rtol=1e-5)
    np.testing.assert_allclose(aux["kl"], kl.mean(), rtol=1e-5)
    np.testing.assert_allclose(aux["recon"], recon.mean(), rtol=1e-5)
    assert kl.mean() > 0.1  # the KL term is really exercised


def test_vae_validation_loss_is_the_beta_one_negative_elbo():
    spec, masks, params, x = vae_setup()
    hp = hp_of("vae", beta=3.0, hidden=12, latent_dim=3)  # beta must not matter here
    key = jax.random.PRNGKey(9)
    out = jax.jit(O.make_metrics(spec))(params, x, key, hp.model)

    p, xn = np64(params, spec), np.asarray(x, np.float64)
    mh, ml = np.asarray(masks.hidden, np.float64), np.asarray(masks.latent, np.float64)
    mu, logvar = np_encode_vae(p, xn, mh, ml)
    eps = np.asarray(jax.random.normal(key, mu.shape), np.float64)
    z = mu + np.exp(0.5 * logvar) * eps * ml
    neg_elbo = np_bce(np_decode_logits(p, z, mh, ml), xn).sum(axis=1) + 0.5 * (
        mu**2 + np.exp(logvar) - 1 - logvar
    ).sum(axis=1)
    chex.assert_shape(out["val_loss"], (11,))
    np.testing.assert_allclose(out["val_loss"], neg_elbo, rtol=1e-5)
    np.testing.assert_allclose(
        out["recon"], np_bce(np_decode_logits(p, mu, mh, ml), xn).sum(axis=1), rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Reconstruction losses


def test_bce_matches_the_textbook_formula():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, size=(5, 7))
    x = rng.uniform(size=(5, 7))  # non-binary targets, as digits' grey levels are
    s = np_sigmoid(logits)
    expected = -(x * np.log(s) + (1 - x) * np.log(1 - s)).sum(axis=1)
    got = O.reconstruction(jnp.asarray(logits, jnp.float32), jnp.asarray(x, jnp.float32), "bce")
    chex.assert_shape(got, (5,))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_bce_is_finite_for_huge_logits():
    logits = jnp.array([[1e4, -1e4, 1e4, -1e4]])
    x = jnp.array([[1.0, 0.0, 0.0, 1.0]])
    got = O.reconstruction(logits, x, "bce")
    chex.assert_tree_all_finite(got)
    np.testing.assert_allclose(got, [2e4], rtol=1e-6)  # two perfect guesses, two off by 1e4
    grad = jax.grad(lambda lg: O.reconstruction(lg, x, "bce").sum())(logits)
    chex.assert_tree_all_finite(grad)


def test_mse_compares_the_sigmoid_of_the_logits():
    rng = np.random.default_rng(2)
    logits, x = rng.normal(size=(4, 6)), rng.uniform(size=(4, 6))
    got = O.reconstruction(jnp.asarray(logits, jnp.float32), jnp.asarray(x, jnp.float32), "mse")
    np.testing.assert_allclose(got, ((np_sigmoid(logits) - x) ** 2).sum(axis=1), rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Denoising corruption


def test_masking_noise_zeroes_about_noise_of_the_inputs():
    x = jnp.full((2000, 64), 0.5)
    for noise in (0.1, 0.5):
        out = np.asarray(O.corrupt(x, jax.random.PRNGKey(0), jnp.float32(noise), jnp.float32(1)))
        assert set(np.unique(out)) <= {0.0, 0.5}
        # 128000 Bernoulli draws: binomial std < 0.0015, so 0.01 is > 6 std.
        assert abs((out == 0).mean() - noise) < 0.01
    np.testing.assert_array_equal(O.corrupt(x, jax.random.PRNGKey(0), 0.0, 1.0), x)


def test_gaussian_noise_has_std_noise():
    x = jnp.full((2000, 64), 0.5)
    out = np.asarray(O.corrupt(x, jax.random.PRNGKey(1), jnp.float32(0.3), jnp.float32(0)))
    diff = out - 0.5
    assert abs(diff.std() - 0.3) < 0.005 and abs(diff.mean()) < 0.005


def test_noise_kind_selects_per_slot():
    x = jnp.full((500, 64), 0.5)
    keys = jax.random.split(jax.random.PRNGKey(2), 2)
    out = jax.vmap(O.corrupt, in_axes=(None, 0, 0, 0))(
        x, keys, jnp.array([0.3, 0.3]), jnp.array([0.0, 1.0])  # slot 0 gaussian, slot 1 mask
    )
    gauss, masked = np.asarray(out[0]), np.asarray(out[1])
    assert not np.isin(gauss, [0.0, 0.5]).any() and abs((gauss - 0.5).std() - 0.3) < 0.01
    assert set(np.unique(masked)) == {0.0, 0.5} and abs((masked == 0).mean() - 0.3) < 0.02
