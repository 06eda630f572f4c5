"""MLP autoencoders (flax.linen) whose width and code size can be masked per population slot.

The padded model has ``hidden`` units per hidden layer and ``latent_dim`` code units; a slot that
wants fewer passes masks that zero the unused units. A zeroed unit contributes exact zeros
downstream and receives zero gradient, so a masked slot computes what the smaller model would
(up to the summation order of the wider matmul).

Each hidden layer is ``Dense -> norm -> activation -> mask -> dropout``: normalisation (``norm``)
acts on the dense layer's output before the non-linearity, as Ioffe & Szegedy (2015) and Ba et al.
(2016) place it; dropout (inverted: kept units are scaled by ``1 / (1 - p)``) acts on the hidden
layer's output while training. Neither touches the code layer or the output layer.
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

from jaxae.hparams import ACTIVATIONS

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
    "leaky_relu": nn.leaky_relu,  # negative slope 0.01, flax's default
}

# Batch norm's running statistics: new = MOMENTUM * old + (1 - MOMENTUM) * batch, as
# flax.linen.BatchNorm(momentum=0.9) (flax's own default is 0.99: too slow for sweeps of a few
# hundred steps). The epsilons are flax's defaults.
BATCH_NORM_MOMENTUM = 0.9
BATCH_NORM_EPS = 1e-5
LAYER_NORM_EPS = 1e-6

# Dropout masks come from the step's noise key folded with this constant, so the denoising and VAE
# noise (which use the key itself and its split halves) keep their streams.
DROPOUT_STREAM = 0x64726F70  # "drop"


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
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n_in = x.shape[-1]
        transposed = stores_transposed(n_in, self.features)
        shape = (self.features, n_in) if transposed else (n_in, self.features)
        # init_params draws the real initial values; these are placeholders of the right shape.
        kernel = self.param("kernel", nn.initializers.zeros_init(), shape, jnp.float32)
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        dims = (((x.ndim - 1,), (1 if transposed else 0,)), ((), ()))
        y = jax.lax.dot_general(x, kernel, dims, precision=self.precision)
        if not self.use_bias:
            return y
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        return y + bias.astype(y.dtype)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The static shape of a model (everything that changes the compiled program).

    Attributes:
        kind: the autoencoder kind, one of ``hparams.MODELS``.
        features: input size (64 for digits, 784 for MNIST).
        hidden: padded width of each hidden layer.
        latent_dim: padded code size.
        depth: hidden layers in the encoder (at least 1); the decoder mirrors it.
        activation: hidden-layer non-linearity, a key of ``ACTIVATION_FNS``; or a tuple of
            them, the choices of a sweep: each slot then applies the one its ``activation``
            hyperparameter names (``Masks.activation``), so the choice adds no program.
        loss: reconstruction loss, ``"mse"`` or ``"bce"``.
        precision: matmul precision, a key of ``PRECISIONS`` or ``"auto"``
            (``resolve_precision``, decided when the program is traced).
        norm: normalisation of each hidden layer, one of ``hparams.NORMS``.
        dropout: whether the training pass draws dropout masks at all (the rate is per slot; a
            sweep whose dropout is 0 everywhere skips the masks' random bits).
    """

    kind: str
    features: int
    hidden: int = 128
    latent_dim: int = 16
    depth: int = 1
    activation: str | tuple[str, ...] = "relu"
    loss: str = "mse"
    precision: str = "auto"
    norm: str = "none"
    dropout: bool = False

    @property
    def variational(self) -> bool:
        return self.kind == "vae"

    @property
    def activations(self) -> tuple[str, ...]:
        """The hidden-layer non-linearities this program can apply."""
        return (self.activation,) if isinstance(self.activation, str) else self.activation

    @property
    def code_activation(self) -> str:
        # Sparse autoencoders (Ng's notes) use sigmoid codes: the KL target rho is a firing rate.
        return "sigmoid" if self.kind == "sparse" else "linear"


@struct.dataclass
class Masks:
    """Which units of the padded model a slot uses (1.0) or ignores (0.0)."""

    hidden: jax.Array  # shape=[hidden], float32
    latent: jax.Array  # shape=[latent_dim], float32
    # shape=[], float32: the slot's activation as an index of hparams.ACTIVATIONS (None: the
    # program has one activation).
    activation: jax.Array | None = None


@struct.dataclass
class Train:
    """What makes a forward pass a training pass: dropout and batch statistics on."""

    dropout: jax.Array  # shape=[], float32: the slot's dropout rate
    key: jax.Array  # shape=[2], uint32: this step's dropout key


def dropout(h: jax.Array, rate: jax.Array, key: jax.Array) -> jax.Array:
    """Inverted dropout of ``h`` [..., batch, units] (``flax.linen.Dropout``'s rule).

    The keep mask is drawn as [units, batch] and transposed: with JAX's partitionable threefry a
    draw's values follow its row-major index, so unit ``j``'s mask does not depend on how many
    units the padded layer has, and a masked slot drops what the unpadded model drops.
    """
    keep = jax.random.bernoulli(key, 1.0 - rate, h.shape[::-1]).T
    return jnp.where(keep, h / (1.0 - rate).astype(h.dtype), jnp.zeros((), h.dtype))


class Norm(nn.Module):
    """Batch or layer normalisation over a slot's used units, with learnable scale and offset.

    Layer norm averages over the units where ``mask`` is 1 only, so a padded slot normalises as the
    unpadded model does. Batch norm normalises each unit over the batch while training and keeps
    running statistics (collection ``batch_stats``: ``mean``, ``var`` [units]) for evaluation;
    masked units keep their initial statistics. Statistics are computed in float32.
    """

    kind: str  # "batch" or "layer"

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, training: bool) -> jax.Array:
        n = x.shape[-1]
        # init_params draws the real initial values (scale 1 on used units, 0 elsewhere).
        scale = self.param("scale", nn.initializers.zeros_init(), (n,), jnp.float32)
        offset = self.param("bias", nn.initializers.zeros_init(), (n,), jnp.float32)
        dtype, x = x.dtype, x.astype(jnp.float32)
        if self.kind == "layer":
            count = jnp.sum(mask)
            mean = jnp.sum(x * mask, axis=-1, keepdims=True) / count
            var = jnp.sum(jnp.square((x - mean) * mask), axis=-1, keepdims=True) / count
            eps = LAYER_NORM_EPS
        else:
            stats = init_stats_of_units(n)
            ra_mean = self.variable("batch_stats", "mean", lambda: stats["mean"])
            ra_var = self.variable("batch_stats", "var", lambda: stats["var"])
            if training:
                axes = tuple(range(x.ndim - 1))
                mean = jnp.mean(x, axis=axes)
                var = jnp.mean(jnp.square(x - mean), axis=axes)
                if not self.is_initializing():
                    m = BATCH_NORM_MOMENTUM
                    blend = lambda old, new: old + mask * ((m - 1.0) * old + (1.0 - m) * new)  # noqa: E731
                    ra_mean.value = blend(ra_mean.value, mean)
                    ra_var.value = blend(ra_var.value, var)
            else:
                mean, var = ra_mean.value, ra_var.value
            eps = BATCH_NORM_EPS
        y = (x - mean) * jax.lax.rsqrt(var + eps)
        return ((y * scale + offset) * mask).astype(dtype)


def init_stats_of_units(n: int) -> dict[str, jax.Array]:
    """A batch-norm layer's initial running statistics: mean 0, variance 1 ([n] each)."""
    return {"mean": jnp.zeros((n,), jnp.float32), "var": jnp.ones((n,), jnp.float32)}


def make_masks(spec: ModelSpec, hidden: jax.Array, latent_dim: jax.Array,
               activation: jax.Array | None = None) -> Masks:
    """Masks for a slot of width ``hidden`` and code size ``latent_dim`` (scalars, any dtype);
    ``activation``: the slot's activation index (``hparams.ACTIVATIONS``), needed when ``spec``
    has several."""
    if len(spec.activations) > 1 and activation is None:
        raise ValueError("a program with several activations needs each slot's activation")
    return Masks(
        hidden=(jnp.arange(spec.hidden) < hidden).astype(jnp.float32),
        latent=(jnp.arange(spec.latent_dim) < latent_dim).astype(jnp.float32),
        activation=None if len(spec.activations) == 1 else jnp.asarray(activation, jnp.float32),
    )


def activate(spec: ModelSpec, h: jax.Array, index: jax.Array | None) -> jax.Array:
    """``spec``'s activation of ``h``; with several, the one ``index`` names. Every choice is
    computed and one selected, so a slot's values (and gradients: the others get a zero
    cotangent) are those of its activation alone."""
    names = spec.activations
    out = ACTIVATION_FNS[names[-1]](h)
    for name in names[:-1]:
        out = jnp.where(index == ACTIVATIONS.index(name), ACTIVATION_FNS[name](h), out)
    return out


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
        self.encoder_layers = [dense(s.hidden, name=f"enc_{i}", use_bias=has_bias(s, f"enc_{i}"))
                               for i in range(s.depth)]
        self.code = dense(s.latent_dim, name="code", use_bias=has_bias(s, "code"))
        if s.variational:
            self.code_logvar = dense(s.latent_dim, name="code_logvar")
        self.decoder_layers = [dense(s.hidden, name=f"dec_{i}", use_bias=has_bias(s, f"dec_{i}"))
                               for i in range(s.depth)]
        self.output = dense(s.features, name="output")
        if s.norm != "none":
            self.encoder_norms = [Norm(s.norm, name=f"enc_{i}_norm") for i in range(s.depth)]
            self.decoder_norms = [Norm(s.norm, name=f"dec_{i}_norm") for i in range(s.depth)]

    def _hidden(self, x: jax.Array, part: str, i: int, masks: Masks, train: Train | None
                ) -> jax.Array:
        s = self.spec
        mask = masks.hidden
        h = getattr(self, f"{part}coder_layers")[i](x)
        if s.norm != "none":
            h = getattr(self, f"{part}coder_norms")[i](h, mask, train is not None)
        h = activate(s, h, masks.activation) * mask
        if train is not None and s.dropout:
            # One stream per hidden layer: encoder layers 0 .. depth-1, decoder depth .. 2 depth-1.
            index = i if part == "en" else s.depth + i
            h = dropout(h, train.dropout, jax.random.fold_in(train.key, index))
        return h

    def encode(self, x: jax.Array, masks: Masks, train: Train | None = None
               ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """Codes of ``x`` [..., features]: z [..., latent_dim], or (mu, logvar) for a VAE.
        ``train``: a training pass (dropout, batch statistics); None evaluates."""
        h = x
        for i in range(self.spec.depth):
            h = self._hidden(h, "en", i, masks, train)
        # Codes and logits leave the model in float32: losses and penalties are computed there.
        pre = self.code(h).astype(jnp.float32)
        if self.spec.variational:
            logvar = self.code_logvar(h).astype(jnp.float32)
            return pre * masks.latent, logvar * masks.latent
        if self.spec.code_activation == "sigmoid":
            pre = nn.sigmoid(pre)
        return pre * masks.latent

    def decode(self, z: jax.Array, masks: Masks, train: Train | None = None) -> jax.Array:
        """Logits [..., features] of the reconstruction of codes ``z`` [..., latent_dim]."""
        h = z * masks.latent
        for i in range(self.spec.depth):
            h = self._hidden(h, "de", i, masks, train)
        return self.output(h).astype(jnp.float32)

    def __call__(self, x: jax.Array, masks: Masks, train: Train | None = None) -> jax.Array:
        code = self.encode(x, masks, train)
        return self.decode(code[0] if self.spec.variational else code, masks, train)


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


def layer_widths(spec: ModelSpec, part: str = "all") -> dict[str, tuple[int, int]]:
    """Every dense layer's (inputs, outputs) at the padded widths, in the order data flows.

    The one place a model's layer sizes are computed (the trainer's memory estimates and the
    benchmarks' FLOP and byte counts read them here).

    Args:
        spec: the model.
        part: ``"encoder"`` (``enc_*`` then ``code``, and a VAE's ``code_logvar``: its code is
            doubled, a mean and a log-variance), ``"decoder"`` (``dec_*`` then ``output``) or
            ``"all"`` (both, encoder first).

    Returns:
        ``{layer name: (inputs, outputs)}``.
    """
    if part not in ("all", "encoder", "decoder"):
        raise ValueError(f"part must be 'all', 'encoder' or 'decoder', got {part!r}")
    sizes = _sizes(spec)
    widths = {name: (sizes[a], sizes[b]) for name, (a, b) in layers(spec).items()}
    if part == "all":
        return widths
    decoder = part == "decoder"
    return {name: w for name, w in widths.items() if name.startswith(("dec_", "output")) == decoder}


def kernel_matrix(spec: ModelSpec, params: dict, name: str) -> jax.Array:
    """Layer ``name``'s kernel as [..., in, out], whatever its stored layout (leading axes, such
    as the population's slot axis, are kept)."""
    kernel = params[name]["kernel"]
    n_in, n_out = layer_widths(spec)[name]
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
    params.update(_norm_params(spec, masks))
    for name in layers(spec):
        if not has_bias(spec, name):
            del params[name]["bias"]
    return params


def _stable_hash(name: str) -> np.uint32:
    """A layer name's key data for ``fold_in``: CRC-32, the same in every process.

    Python's ``hash()`` is salted per process. Every byte of the name counts: an earlier hash of
    the first four bytes gave ``enc_0``, ``enc_1``, ... one key, so their kernels were identical.
    """
    return np.uint32(zlib.crc32(name.encode()))
def has_bias(spec: ModelSpec, name: str) -> bool:
    """Whether dense layer ``name`` has a bias: not where batch norm subtracts any constant it
    adds (the hidden layers, and a linear code, which reaches the loss only through the first
    decoder layer's batch norm). There a bias's gradient is zero but for rounding, and Adam scales
    rounding noise up to full-size steps: the bias would wander, the evaluation pass (running
    statistics) would follow it, and a trial's validation loss would depend on its slot's
    rounding (by 1e-3 in 20 steps, seen)."""
    if spec.norm != "batch" or name == "output":
        return True
    if name in ("code", "code_logvar"):  # a sigmoid code's or a VAE's bias shapes the penalty
        return spec.code_activation != "linear" or spec.variational
    return False


def norm_layers(spec: ModelSpec) -> tuple[str, ...]:
    """The names of the normalisation layers (one after each hidden dense layer, if any)."""
    if spec.norm == "none":
        return ()
    return tuple(f"{part}_{i}_norm" for part in ("enc", "dec") for i in range(spec.depth))


def _norm_params(spec: ModelSpec, masks: Masks) -> dict:
    # Scale 1 and offset 0 on used units (flax's initialisers); 0 on unused ones, like every
    # other weight of an unused unit.
    return {name: {"scale": masks.hidden, "bias": jnp.zeros((spec.hidden,), jnp.float32)}
            for name in norm_layers(spec)}


def init_stats(spec: ModelSpec) -> dict:
    """One slot's initial batch-norm running statistics (empty unless ``spec.norm == "batch"``):
    ``{layer: {"mean": [hidden], "var": [hidden]}}``."""
    if spec.norm != "batch":
        return {}
    return {name: init_stats_of_units(spec.hidden) for name in norm_layers(spec)}


def apply_fn(spec: ModelSpec, method: str = "__call__") -> Callable:
    """``fn(params, x, masks, stats=None)`` calling ``MLPAutoencoder(spec).<method>`` in
    evaluation form (no dropout; batch norm reads the running ``stats`` of ``init_stats``' layout),
    for use inside jit."""
    model = MLPAutoencoder(spec)

    def fn(params: dict, x: jax.Array, masks: Masks, stats: dict | None = None):
        variables = {"params": params, **({"batch_stats": stats} if stats else {})}
        return model.apply(variables, x, masks, method=getattr(model, method))

    return fn


def train_fn(spec: ModelSpec, method: str = "__call__") -> Callable:
    """``fn(params, x, masks, stats, train) -> (out, new_stats)``: ``MLPAutoencoder(spec).<method>``
    as a training pass (dropout; batch norm normalises by the batch and returns ``stats`` moved
    toward the batch's statistics; ``{}`` in and out without batch norm)."""
    model = MLPAutoencoder(spec)

    def fn(params: dict, x: jax.Array, masks: Masks, stats: dict, train: Train):
        if spec.norm != "batch":
            return model.apply({"params": params}, x, masks, train,
                               method=getattr(model, method)), stats
        out, updated = model.apply({"params": params, "batch_stats": stats}, x, masks, train,
                                   method=getattr(model, method), mutable=["batch_stats"])
        return out, updated["batch_stats"]

    return fn
