"""Models: every layer draws its own initial kernel; masking, fan-in and layout of the init.

Independent references: sample statistics of the draws against LeCun normal's closed form, and a
numpy forward pass through ``kernel_matrix`` against the flax module.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxae import hparams
from jaxae.models import (
    PRECISIONS,
    ModelSpec,
    apply_fn,
    init_params,
    kernel_matrix,
    layer_widths,
    layers,
    make_masks,
    resolve_precision,
    stores_transposed,
)

# 48 -> 64 and 32 -> 64 are stored [in, out]; 64 -> 32 and 64 -> 48 are stored [out, in].
FEATURES, HIDDEN, LATENT = 48, 64, 32
CASES = [(kind, depth) for kind in hparams.MODELS for depth in (1, 2, 3)]


def spec_of(kind: str, depth: int, hidden: int = HIDDEN, latent_dim: int = LATENT) -> ModelSpec:
    return ModelSpec(kind, FEATURES, hidden=hidden, latent_dim=latent_dim, depth=depth,
                     precision="float32")  # full float32 matmuls on any backend


def init(spec: ModelSpec, seed: int, hidden: int | None = None, latent_dim: int | None = None):
    masks = make_masks(spec, spec.hidden if hidden is None else hidden,
                       spec.latent_dim if latent_dim is None else latent_dim)
    return init_params(spec, jax.random.PRNGKey(seed), masks)


def matrices(spec: ModelSpec, params: dict) -> dict[str, np.ndarray]:
    """Every layer's kernel as a numpy [in, out] matrix."""
    return {name: np.asarray(kernel_matrix(spec, params, name)) for name in layers(spec)}


def used_sizes(spec: ModelSpec, hidden: int, latent_dim: int) -> dict[str, tuple[int, int]]:
    """Each layer's used (in, out) sizes for a slot of width ``hidden`` and code ``latent_dim``."""
    size = {"features": spec.features, "hidden": hidden, "latent": latent_dim}
    return {name: (size[a], size[b]) for name, (a, b) in layers(spec).items()}


@pytest.mark.parametrize(("kind", "depth"), CASES)
def test_every_pair_of_layers_draws_independent_kernels(kind, depth):
    spec = spec_of(kind, depth)
    kernels = matrices(spec, init(spec, seed=0))
    assert len(kernels) == 2 * depth + 2 + (kind == "vae")
    for (a, ka), (b, kb) in itertools.combinations(kernels.items(), 2):
        rows, cols = min(ka.shape[0], kb.shape[0]), min(ka.shape[1], kb.shape[1])
        corr = np.corrcoef(ka[:rows, :cols].ravel(), kb[:rows, :cols].ravel())[0, 1]
        # >= 32 x 32 shared entries: an independent pair's corr is ~ N(0, 1/1024), 0.2 is 6 sd.
        # Layers that share a key (enc_1 and enc_2 under the old 4-byte hash) give 1.0.
        assert abs(corr) < 0.2, (a, b, corr)


@pytest.mark.parametrize(("kind", "depth"), CASES)
def test_a_masked_slot_starts_from_the_unpadded_models_init(kind, depth):
    padded = spec_of(kind, depth)
    small = spec_of(kind, depth, hidden=40, latent_dim=12)
    got = matrices(padded, init(padded, seed=3, hidden=40, latent_dim=12))
    want = matrices(small, init(small, seed=3))
    for name, (n_in, n_out) in used_sizes(padded, 40, 12).items():
        assert want[name].shape == (n_in, n_out)
        np.testing.assert_array_equal(got[name][:n_in, :n_out], want[name], err_msg=name)


@pytest.mark.parametrize(("kind", "depth"), CASES)
def test_kernels_are_lecun_normal_for_the_true_fan_in_and_the_rest_is_zero(kind, depth):
    spec = spec_of(kind, depth)
    params = init(spec, seed=5, hidden=40, latent_dim=12)
    kernels = matrices(spec, params)
    for name, (n_in, n_out) in used_sizes(spec, 40, 12).items():
        used = kernels[name][:n_in, :n_out].astype(np.float64)
        std = np.sqrt(1.0 / n_in)
        # >= 480 draws: the sample std of a (truncated) normal is within 3.3% (1 sd) of its std.
        assert used.std() == pytest.approx(std, rel=0.15), name
        assert abs(used.mean()) < 4 * std / np.sqrt(used.size), name
        # LeCun normal as flax draws it: truncated at 2 sd of the untruncated normal, which has
        # std / 0.8796 so that the truncated one has variance 1 / fan_in.
        assert np.abs(used).max() <= 2 * std / 0.87962566103423978 * (1 + 1e-6), name
        assert np.abs(used).max() > 1.5 * std, name  # the tails are there (not a narrower law)
        # Unused units: no weight in or out of them, and every bias starts at zero.
        assert not kernels[name][n_in:].any() and not kernels[name][:, n_out:].any(), name
        assert not np.asarray(params[name]["bias"]).any(), name


def test_different_keys_draw_different_kernels():
    spec = spec_of("ae", 2)
    first, second = matrices(spec, init(spec, seed=0)), matrices(spec, init(spec, seed=1))
    for name in first:
        corr = np.corrcoef(first[name].ravel(), second[name].ravel())[0, 1]
        assert abs(corr) < 0.2, (name, corr)


def test_kernel_matrix_is_in_by_out_for_both_layouts():
    spec = spec_of("vae", 2)
    params = init(spec, seed=0, hidden=40, latent_dim=12)
    layouts = {name: stores_transposed(*kernel_matrix(spec, params, name).shape)
               for name in layers(spec)}
    assert layouts == {"enc_0": False, "enc_1": False, "code": True, "code_logvar": True,
                       "dec_0": False, "dec_1": False, "output": True}
    sizes = {"features": FEATURES, "hidden": HIDDEN, "latent": LATENT}
    for name, (a, b) in layers(spec).items():
        stored = params[name]["kernel"].shape
        assert stored == ((sizes[b], sizes[a]) if layouts[name] else (sizes[a], sizes[b]))
        assert kernel_matrix(spec, params, name).shape == (sizes[a], sizes[b])
    # Leading axes (the population's slot axis) are kept.
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), params, params)
    assert kernel_matrix(spec, stacked, "code").shape == (2, HIDDEN, LATENT)
    # The module computes x @ kernel_matrix + bias, in either layout (numpy reference).
    masks = make_masks(spec, 40, 12)
    perturbed = jax.tree.map(lambda a: a + 0.1, params)  # nonzero biases, no masked zeros
    k = {name: np.asarray(kernel_matrix(spec, perturbed, name), np.float64)
         for name in layers(spec)}
    bias = {name: np.asarray(perturbed[name]["bias"], np.float64) for name in layers(spec)}
    x = np.random.default_rng(0).random((5, FEATURES))
    mh, ml = np.asarray(masks.hidden, np.float64), np.asarray(masks.latent, np.float64)
    h = x
    for name in ("enc_0", "enc_1"):
        h = np.maximum(h @ k[name] + bias[name], 0) * mh
    mu, logvar = apply_fn(spec, "encode")(perturbed, jnp.asarray(x, jnp.float32), masks)
    np.testing.assert_allclose(np.asarray(mu), (h @ k["code"] + bias["code"]) * ml,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(logvar),
                               (h @ k["code_logvar"] + bias["code_logvar"]) * ml,
                               rtol=1e-5, atol=1e-5)
    z = np.asarray(mu, np.float64)
    h = z * ml
    for name in ("dec_0", "dec_1"):
        h = np.maximum(h @ k[name] + bias[name], 0) * mh
    logits = apply_fn(spec, "decode")(perturbed, jnp.asarray(z, jnp.float32), masks)
    np.testing.assert_allclose(np.asarray(logits), h @ k["output"] + bias["output"],
                               rtol=1e-5, atol=1e-5)


def test_auto_precision_is_tf32_on_accelerators_and_float32_on_cpus():
    assert resolve_precision("auto", "cpu") == "float32"
    assert resolve_precision("auto", "gpu") == "tf32"
    assert resolve_precision("auto", "tpu") == "tf32"
    for name in PRECISIONS:
        assert resolve_precision(name, "gpu") == name


def test_auto_precision_computes_what_its_resolution_computes():
    x = jax.random.uniform(jax.random.PRNGKey(0), (8, 64))
    outs = []
    for precision in ("auto", resolve_precision("auto")):
        spec = ModelSpec("ae", 64, hidden=32, latent_dim=8, precision=precision)
        masks = make_masks(spec, 32, 8)
        params = init_params(spec, jax.random.PRNGKey(1), masks)
        outs.append(np.asarray(apply_fn(spec)(params, x, masks)))
    np.testing.assert_array_equal(outs[0], outs[1])


def test_layer_widths_are_the_shapes_of_the_parameters_init_creates():
    spec = spec_of("vae", 2)
    widths = layer_widths(spec)
    assert widths == {"enc_0": (48, 64), "enc_1": (64, 64), "code": (64, 32),
                      "code_logvar": (64, 32), "dec_0": (32, 64), "dec_1": (64, 64),
                      "output": (64, 48)}
    params = init(spec, seed=0)
    for name, (n_in, n_out) in widths.items():
        kernel = params[name]["kernel"]
        assert kernel.shape == ((n_out, n_in) if stores_transposed(n_in, n_out) else (n_in, n_out))
        assert params[name]["bias"].shape == (n_out,)
    encoder, decoder = layer_widths(spec, "encoder"), layer_widths(spec, "decoder")
    assert list(encoder) == ["enc_0", "enc_1", "code", "code_logvar"]  # the doubled code
    assert {**encoder, **decoder} == widths and list(decoder) == ["dec_0", "dec_1", "output"]
    assert list(layer_widths(spec_of("ae", 1), "encoder")) == ["enc_0", "code"]
    with pytest.raises(ValueError, match="part must be"):
        layer_widths(spec, "middle")
