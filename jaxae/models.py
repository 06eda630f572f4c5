"""MLP autoencoders (flax.linen) whose width and code size can be masked per population slot.

The padded model has ``hidden`` units per hidden layer and ``latent_dim`` code units; a slot that
wants fewer passes masks that zero the unused units. A zeroed unit contributes exact zeros
downstream and receives zero gradient, so a masked slot computes what the smaller model would
(up to the summation order of the wider matmul).
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

# Matmul precision: parameters (the optimizer's master copy) stay float32 in every case.
#   float32  -- full float32 matmuls (Precision.HIGHEST)
#   tf32     -- the backend's default float32 matmul: TF32 tensor cores on NVIDIA GPUs since
#               Ampere, plain float32 on CPU
#   bfloat16 -- activations and matmul inputs in bfloat16, accumulation in float32
PRECISIONS: dict[str, tuple[jnp.dtype, jax.lax.Precision]] = {
    "float32": (jnp.float32, jax.lax.Precision.HIGHEST),
    "tf32": (jnp.float32, jax.lax.Precision.DEFAULT),
    "bfloat16": (jnp.bfloat16, jax.lax.Precision.DEFAULT),
}
# ``auto``, the default: tf32 on accelerators, float32 on CPUs (where the two are the same). A
# sweep is a search: on an H200 tf32 trained the 784-512-32 autoencoder 1.6x faster than float32
# and moved final validation losses by 0.007 % (median; 0.17 % at most) over 2000 steps; for a
# digits VAE by 0.015 % (0.14 %), under a third of the spread that another data order gives
# (bench/RESULTS.md, "GPU trainer").
AUTO_PRECISION = {"cpu": "float32"}
PRECISION_NAMES = ("auto", *PRECISIONS)


def resolve_precision(name: str, backend: str | None = None) -> str:
    """The ``PRECISIONS`` key that ``name`` means on ``backend`` (default: JAX's default)."""
    if name != "auto":
        return name
    return AUTO_PRECISION.get(backend or jax.default_backend(), "tf32")

ACTIVATION_FNS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "tanh": jnp.tanh,
    "gelu": nn.gelu,
    "elu": nn.elu,
    "sigmoid": nn.sigmoid,
}


def stores_transposed(n_in: int, n_out: int) -> bool:
    """Whether a dense layer keeps its kernel as [out, in] instead of [in, out]: when it narrows.

    Its gradient is then a matmul whose result is wider than tall, for which XLA's CPU backend
    picks a fast kernel; the other way round a narrowing layer's weight gradient ran at a quarter
    of matmul speed (64-256-16 digits model: 115 vs 26 us for the code layer of two members,
    bench/RESULTS.md). The forward pass and input gradient cost the same either way.
    """
    return n_in > n_out


class Dense(nn.Module):
    """``nn.Dense`` (float32 parameters, compute in ``dtype``) with the kernel layout of
    ``stores_transposed``. Use ``kernel_matrix`` to read a kernel as [in, out]."""

    features: int
    dtype: jnp.dtype = jnp.float32
    precision: jax.lax.Precision | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n_in = x.shape[-1]
        transposed = stores_transposed(n_in, self.features)
        shape = (self.features, n_in) if transposed else (n_in, self.features)
        # init_params draws the real initial values; these are placeholders of the right shape.
        kernel = self.param("kernel", nn.initializers.zeros_init(), shape, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        dims = (((x.ndim - 1,), (1 if transposed else 0,)), ((), ()))
        return jax.lax.dot_general(x, kernel, dims, precision=self.precision) + bias


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The static shape of a model (everything that changes the compiled program).

    Attributes:
        kind: the autoencoder kind, one of ``hparams.MODELS``.
        features: input size (64 for digits, 784 for MNIST).
        hidden: padded width of each hidden layer.
        latent_dim: padded code size.
        depth: hidden layers in the encoder (at least 1); the decoder mirrors it.
        activation: hidden-layer non-linearity, a key of ``ACTIVATION_FNS``.
        loss: reconstruction loss, ``"mse"`` or ``"bce"``.
        precision: matmul precision, a key of ``PRECISIONS`` or ``"auto"``
            (``resolve_precision``, decided when the program is traced).
    """

    kind: str
    features: int
    hidden: int = 128
    latent_dim: int = 16
    depth: int = 1
    activation: str = "relu"
    loss: str = "mse"
    precision: str = "auto"

    @property
    def variational(self) -> bool:
        return self.kind == "vae"

    @property
    def code_activation(self) -> str:
        # Sparse autoencoders (Ng's notes) use sigmoid codes: the KL target rho is a firing rate.
        return "sigmoid" if self.kind == "sparse" else "linear"


@struct.dataclass
class Masks:
    """Which units of the padded model a slot uses (1.0) or ignores (0.0)."""

    hidden: jax.Array  # shape=[hidden], float32
    latent: jax.Array  # shape=[latent_dim], float32


def make_masks(spec: ModelSpec, hidden: jax.Array, latent_dim: jax.Array) -> Masks:
    """Masks for a slot of width ``hidden`` and code size ``latent_dim`` (scalars, any dtype)."""
    return Masks(
        hidden=(jnp.arange(spec.hidden) < hidden).astype(jnp.float32),
        latent=(jnp.arange(spec.latent_dim) < latent_dim).astype(jnp.float32),
    )


class MLPAutoencoder(nn.Module):
    """Encoder ``depth x Dense(hidden)`` -> code, decoder mirrored -> logits of the input.

    The decoder returns logits: ``sigmoid(logits)`` is the reconstruction of data in [0, 1], and the
    bce loss is computed from the logits directly (numerically stable).
    """

    spec: ModelSpec

    def setup(self) -> None:
        s = self.spec
        dtype, precision = PRECISIONS[resolve_precision(s.precision)]
        dense = functools.partial(Dense, dtype=dtype, precision=precision)
        self.encoder_layers = [dense(s.hidden, name=f"enc_{i}") for i in range(s.depth)]
        self.code = dense(s.latent_dim, name="code")
        if s.variational:
            self.code_logvar = dense(s.latent_dim, name="code_logvar")
        self.decoder_layers = [dense(s.hidden, name=f"dec_{i}") for i in range(s.depth)]
        self.output = dense(s.features, name="output")

    def _hidden(self, x: jax.Array, layer: nn.Dense, mask: jax.Array) -> jax.Array:
        return ACTIVATION_FNS[self.spec.activation](layer(x)) * mask

    def encode(self, x: jax.Array, masks: Masks) -> jax.Array | tuple[jax.Array, jax.Array]:
        """Codes of ``x`` [..., features]: z [..., latent_dim], or (mu, logvar) for a VAE."""
        h = x
        for layer in self.encoder_layers:
            h = self._hidden(h, layer, masks.hidden)
        # Codes and logits leave the model in float32: losses and penalties are computed there.
        pre = self.code(h).astype(jnp.float32)
        if self.spec.variational:
            logvar = self.code_logvar(h).astype(jnp.float32)
            return pre * masks.latent, logvar * masks.latent
        if self.spec.code_activation == "sigmoid":
            pre = nn.sigmoid(pre)
        return pre * masks.latent

    def decode(self, z: jax.Array, masks: Masks) -> jax.Array:
        """Logits [..., features] of the reconstruction of codes ``z`` [..., latent_dim]."""
        h = z * masks.latent
        for layer in self.decoder_layers:
            h = self._hidden(h, layer, masks.hidden)
        return self.output(h).astype(jnp.float32)

    def __call__(self, x: jax.Array, masks: Masks) -> jax.Array:
        code = self.encode(x, masks)
        return self.decode(code[0] if self.spec.variational else code, masks)


# LeCun normal as flax draws it: a normal truncated at +-2 std, rescaled to unit variance.
_TRUNCATED_STD = 0.87962566103423978


def _kernel(key: jax.Array, shape: tuple[int, int], fan_in: jax.Array) -> jax.Array:
    """A LeCun-normal kernel [in, out] whose used block does not depend on the padding.

    Row ``i`` is drawn from ``fold_in(key, i)`` as a 1-D vector: with JAX's partitionable threefry
    (the default) a 1-D draw's first ``n`` values are the same whatever its length, so a slot's
    used block [:in_used, :out_used] equals what the unpadded model draws from the same key.
    """
    rows = jax.vmap(lambda i: jax.random.truncated_normal(
        jax.random.fold_in(key, i), -2.0, 2.0, (shape[1],)))(jnp.arange(shape[0]))
    return rows * (jnp.sqrt(1.0 / fan_in) / _TRUNCATED_STD)


def layers(spec: ModelSpec) -> dict[str, tuple[str, str]]:
    """Every dense layer's name and the kinds of its input and output: ``"features"``,
    ``"hidden"`` or ``"latent"``."""
    out = {f"enc_{i}": ("features" if i == 0 else "hidden", "hidden") for i in range(spec.depth)}
    out["code"] = ("hidden", "latent")
    if spec.variational:
        out["code_logvar"] = ("hidden", "latent")
    for i in range(spec.depth):
        out[f"dec_{i}"] = ("latent" if i == 0 else "hidden", "hidden")
    out["output"] = ("hidden", "features")
    return out


def _sizes(spec: ModelSpec) -> dict[str, int]:
    return {"features": spec.features, "hidden": spec.hidden, "latent": spec.latent_dim}


def kernel_matrix(spec: ModelSpec, params: dict, name: str) -> jax.Array:
    """Layer ``name``'s kernel as [..., in, out], whatever its stored layout (leading axes, such
    as the population's slot axis, are kept)."""
    kernel = params[name]["kernel"]
    n_in, n_out = (_sizes(spec)[kind] for kind in layers(spec)[name])
    return jnp.swapaxes(kernel, -1, -2) if stores_transposed(n_in, n_out) else kernel


def init_params(spec: ModelSpec, key: jax.Array, masks: Masks) -> dict:
    """Initial parameters of one slot: LeCun normal for the slot's true (unmasked) fan-in, zero
    biases, and zeros for every weight of an unused unit.

    The used block equals the parameters of an unpadded model of the slot's own size drawn from
    the same key, so a trial starts from the same weights whatever the sweep's padded maximum.
    """
    sizes = _sizes(spec)
    used = {"features": (jnp.ones((spec.features,)), spec.features),
            "hidden": (masks.hidden, masks.hidden.sum()),
            "latent": (masks.latent, masks.latent.sum())}
    params = {}
    # Layer keys by name, not position: adding a layer kind never shifts another's draw.
    for name, (reads, writes) in layers(spec).items():
        (in_mask, in_used), (out_mask, _) = used[reads], used[writes]
        layer_key = jax.random.fold_in(key, _stable_hash(name))
        kernel = _kernel(layer_key, (sizes[reads], sizes[writes]), in_used)
        kernel = kernel * in_mask[:, None] * out_mask[None, :]
        params[name] = {
            "kernel": kernel.T if stores_transposed(sizes[reads], sizes[writes]) else kernel,
            "bias": jnp.zeros((sizes[writes],), jnp.float32),
        }
    return params


def _stable_hash(name: str) -> np.uint32:
    """A layer name's key data for ``fold_in``: CRC-32, the same in every process.

    Python's ``hash()`` is salted per process. Every byte of the name counts: an earlier hash of
    the first four bytes gave ``enc_0``, ``enc_1``, ... one key, so their kernels were identical.
    """
    return np.uint32(zlib.crc32(name.encode()))


def apply_fn(spec: ModelSpec, method: str = "__call__") -> Callable:
    """``fn(params, x, masks)`` calling ``MLPAutoencoder(spec).<method>``, for use inside jit."""
    model = MLPAutoencoder(spec)

    def fn(params: dict, x: jax.Array, masks: Masks):
        return model.apply({"params": params}, x, masks, method=getattr(model, method))

    return fn
