"""The model's dropout, normalisation and leaky ReLU against a solo, unpadded flax.linen model
built from flax's own layers (nn.Dense, nn.LayerNorm, nn.BatchNorm, nn.Dropout) with the padded
slot's used weights."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxae import models as M

FEATURES, HIDDEN, LATENT, DEPTH = 64, 32, 8, 2
USED_HIDDEN, USED_LATENT = 20, 6  # the slot's own width and code size inside the padding


class Reference(nn.Module):
    """An unpadded depth-2 autoencoder: Dense -> norm -> leaky ReLU -> Dropout per hidden layer."""

    norm: str
    rate: float

    @nn.compact
    def __call__(self, x, train, keys):
        def hidden(h, name, key):
            h = nn.Dense(USED_HIDDEN, use_bias=self.norm != "batch", name=name)(h)
            if self.norm == "layer":
                h = nn.LayerNorm(name=f"{name}_norm")(h)
            elif self.norm == "batch":
                h = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                                 name=f"{name}_norm")(h)
            h = jnp.where(h > 0, h, 0.01 * h)
            # [batch, units] transposed: the layout the model draws its masks in.
            return nn.Dropout(self.rate)(h.T, deterministic=not train, rng=key).T

        h = x
        for i in range(DEPTH):
            h = hidden(h, f"enc_{i}", keys[i])
        h = nn.Dense(USED_LATENT, use_bias=self.norm != "batch", name="code")(h)
        for i in range(DEPTH):
            h = hidden(h, f"dec_{i}", keys[DEPTH + i])
        return nn.Dense(FEATURES, name="output")(h)


def padded_model(norm, key):
    spec = M.ModelSpec("ae", FEATURES, hidden=HIDDEN, latent_dim=LATENT, depth=DEPTH,
                       activation="leaky_relu", norm=norm, dropout=True)
    masks = M.make_masks(spec, USED_HIDDEN, USED_LATENT)
    params = M.init_params(spec, key, masks)
    # Scale, offset and biases away from their initial values, on used units only.
    k1, k2 = jax.random.split(key)
    for name in params:
        mask = masks.latent if name == "code" else masks.hidden
        if name == "output":
            mask = jnp.ones(FEATURES)
        noise = lambda k, a: a + 0.3 * jax.random.normal(k, a.shape) * mask  # noqa: E731
        if "bias" in params[name]:  # not before batch norm
            params[name]["bias"] = noise(jax.random.fold_in(k1, len(name)),
                                         params[name]["bias"])
        if "scale" in params[name]:
            params[name]["scale"] = noise(jax.random.fold_in(k2, len(name)),
                                          params[name]["scale"])
    return spec, masks, params


def used(spec, params, stats):
    """The unpadded reference's variables: the used block of every padded leaf."""
    sizes = {"features": FEATURES, "hidden": USED_HIDDEN, "latent": USED_LATENT}
    out = {}
    for name, (reads, writes) in M.layers(spec).items():
        kernel = M.kernel_matrix(spec, params, name)
        out[name] = {"kernel": kernel[: sizes[reads], : sizes[writes]]}
        if "bias" in params[name]:
            out[name]["bias"] = params[name]["bias"][: sizes[writes]]
    for name in M.norm_layers(spec):
        out[name] = {k: v[:USED_HIDDEN] for k, v in params[name].items()}
    variables = {"params": out}
    if stats:
        variables["batch_stats"] = jax.tree.map(lambda a: a[:USED_HIDDEN], stats)
    return variables


@pytest.mark.parametrize("norm", ["none", "layer", "batch"])
def test_training_and_evaluation_passes_equal_an_unpadded_flax_model(norm, digits):
    spec, masks, params = padded_model(norm, jax.random.PRNGKey(1))
    x = digits[:48]
    stats = M.init_stats(spec)
    if stats:  # running statistics away from their initial values, for the evaluation pass
        stats = jax.tree.map(lambda a: a + 0.5 * jax.random.uniform(jax.random.PRNGKey(2),
                                                                    a.shape), stats)
    rate, key = 0.3, jax.random.PRNGKey(3)
    keys = [jax.random.fold_in(key, i) for i in range(2 * DEPTH)]
    ref = Reference(norm, rate)
    variables = used(spec, params, stats)

    logits, new_stats = jax.jit(M.train_fn(spec))(params, x, masks, stats,
                                                  M.Train(jnp.float32(rate), key))
    want, updated = ref.apply(variables, x, True, keys, mutable=["batch_stats"])
    np.testing.assert_allclose(logits, want, rtol=2e-5, atol=2e-5)
    if norm == "batch":  # momentum 0.9 toward the batch's statistics; padding keeps its own
        chex.assert_trees_all_close(used(spec, params, new_stats)["batch_stats"],
                                    updated["batch_stats"], rtol=1e-5, atol=1e-6)
        chex.assert_trees_all_equal(jax.tree.map(lambda a: a[USED_HIDDEN:], new_stats),
                                    jax.tree.map(lambda a: a[USED_HIDDEN:], stats))
    else:
        assert new_stats == {}

    evaluated = jax.jit(M.apply_fn(spec))(params, x, masks, stats)
    want = ref.apply(variables, x, False, keys)
    np.testing.assert_allclose(evaluated, want, rtol=2e-5, atol=2e-5)


def test_dropout_off_at_rate_zero_and_in_evaluation(digits):
    spec, masks, params = padded_model("none", jax.random.PRNGKey(4))
    x = digits[:16]
    evaluated = M.apply_fn(spec)(params, x, masks)
    at_zero, _ = M.train_fn(spec)(params, x, masks, {}, M.Train(jnp.float32(0.0),
                                                                jax.random.PRNGKey(0)))
    np.testing.assert_array_equal(at_zero, evaluated)
    dropped, _ = M.train_fn(spec)(params, x, masks, {}, M.Train(jnp.float32(0.5),
                                                                jax.random.PRNGKey(0)))
    assert not np.allclose(dropped, evaluated)


def test_inverted_dropout_keeps_the_mean_and_drops_about_the_rate():
    h = jnp.ones((4096, 16))
    out = np.asarray(M.dropout(h, jnp.float32(0.25), jax.random.PRNGKey(0)))
    assert set(np.unique(out)) <= {0.0, np.float32(1 / 0.75)}
    assert (out == 0).mean() == pytest.approx(0.25, abs=0.01)
    assert out.mean() == pytest.approx(1.0, abs=0.02)


def test_a_units_dropout_mask_does_not_depend_on_the_padding():
    key = jax.random.PRNGKey(7)
    narrow = M.dropout(jnp.ones((8, 20)), jnp.float32(0.5), key)
    wide = M.dropout(jnp.ones((8, 128)), jnp.float32(0.5), key)
    np.testing.assert_array_equal(wide[:, :20], narrow)


def test_leaky_relu_has_slope_one_hundredth():
    np.testing.assert_allclose(M.ACTIVATION_FNS["leaky_relu"](jnp.array([-2.0, 0.0, 3.0])),
                               [-0.02, 0.0, 3.0], rtol=1e-6)
