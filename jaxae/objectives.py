"""Training objectives, one per autoencoder kind, and the validation metrics.

Every objective is a pure function ``loss_fn(params, x, key, model_hp, penalty_hp, stats) ->
(loss, aux)`` of one member: ``x`` is a batch [batch, features] in [0, 1], ``key`` a PRNG key for
the step's noise (denoising, VAE sampling, dropout), ``model_hp`` the slot's
``hparams.ModelHParams`` (masked sizes, activation, dropout) and ``penalty_hp`` its
``hparams.PenaltyHParams`` (scalars), ``stats`` the batch-norm running statistics
(``models.init_stats``; ``aux["stats"]`` holds them after this batch). The population trainer
vmaps it over slots.

Conventions (the textbook ones: Ng's sparse-autoencoder notes, Rifai et al. 2011, Kingma & Welling
2014): the reconstruction term is a per-example *sum* over features, averaged over the batch, so
penalty weights mean the same thing as in those texts and the VAE loss is a proper negative ELBO.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from jaxae.hparams import ModelHParams, PenaltyHParams
from jaxae.models import DROPOUT_STREAM, Masks, ModelSpec, Train, apply_fn, make_masks, train_fn

Objective = Callable[..., tuple[jax.Array, dict]]


def reconstruction(logits: jax.Array, x: jax.Array, loss: str) -> jax.Array:
    """Per-example reconstruction error [batch] of ``x`` [batch, features] from decoder logits.

    ``mse`` compares ``sigmoid(logits)`` with ``x`` (a Gaussian likelihood up to scale and a
    constant);
    ``bce`` is the Bernoulli cross-entropy computed from the logits, stable for large |logits|.
    """
    if loss == "mse":
        return jnp.sum(jnp.square(jax.nn.sigmoid(logits) - x), axis=-1)
    if loss == "bce":
        return jnp.sum(optax.sigmoid_binary_cross_entropy(logits, x), axis=-1)
    raise ValueError(f"unknown loss {loss!r}")


def l1_activity(z: jax.Array) -> jax.Array:
    """L1 activity penalty per example [batch]: sum_j |z_j|."""
    return jnp.sum(jnp.abs(z), axis=-1)


def kl_sparsity(z: jax.Array, rho: jax.Array, mask: jax.Array) -> jax.Array:
    """KL sparsity penalty sum_j KL(rho || rho_hat_j) over the used code units (a scalar).

    Args:
        z: sigmoid codes [batch, latent_dim] in (0, 1).
        rho: target mean activation, a scalar in (0, 1).
        mask: [latent_dim], 1.0 for the units the slot uses.
    """
    eps = 1e-6
    rho_hat = jnp.clip(jnp.mean(z, axis=0), eps, 1.0 - eps)
    kl = rho * jnp.log(rho / rho_hat) + (1.0 - rho) * jnp.log((1.0 - rho) / (1.0 - rho_hat))
    return jnp.sum(kl * mask)


def gaussian_kl(mu: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mu, exp(logvar)) || N(0, I)) per example [batch]; masked units (0, 0) add exactly 0."""
    return 0.5 * jnp.sum(jnp.square(mu) + jnp.exp(logvar) - 1.0 - logvar, axis=-1)


def corrupt(x: jax.Array, key: jax.Array, noise: jax.Array, noise_kind: jax.Array) -> jax.Array:
    """Denoising input: additive Gaussian noise of std ``noise`` (kind 0) or masking noise that
    zeroes each input with probability ``noise`` (kind 1). Both are drawn; the kind selects, so the
    kind can differ between slots of one program."""
    k_gauss, k_mask = jax.random.split(key)
    gaussian = x + noise * jax.random.normal(k_gauss, x.shape, x.dtype)
    masked = x * (jax.random.uniform(k_mask, x.shape) >= noise)
    return jnp.where(noise_kind > 0.5, masked, gaussian)


def contractive_penalty(encode: Callable[[jax.Array], jax.Array], x: jax.Array) -> jax.Array:
    """Squared Frobenius norm of the encoder Jacobian dz/dx per example [batch].

    Computed with reverse mode, one pass per code unit (latent_dim < features, so this is the
    cheaper direction).
    """
    jac = jax.vmap(jax.jacrev(encode))(x)  # [batch, latent_dim, features]
    return jnp.sum(jnp.square(jac), axis=(-2, -1))


def _masks(spec: ModelSpec, hp: ModelHParams) -> Masks:
    return make_masks(spec, hp.hidden, hp.latent_dim, hp.activation)


def make_objective(spec: ModelSpec) -> Objective:
    """The training loss of ``spec.kind``: ``loss_fn(params, x, key, model_hp, penalty_hp,
    stats=None) -> (loss, aux)``, computed by a training pass (dropout at the slot's rate, batch
    norm on the batch's statistics). The contractive penalty is the Jacobian of the encoder
    without dropout."""
    encode, decode = train_fn(spec, "encode"), train_fn(spec, "decode")
    clean_encode = apply_fn(spec, "encode")

    def loss_fn(params: dict, x: jax.Array, key: jax.Array, model_hp: ModelHParams,
                hp: PenaltyHParams, stats: dict | None = None) -> tuple[jax.Array, dict]:
        masks = _masks(spec, model_hp)
        kind = spec.kind
        train = Train(model_hp.dropout, jax.random.fold_in(key, DROPOUT_STREAM))
        stats = {} if stats is None else stats
        if kind == "vae":
            (mu, logvar), stats = encode(params, x, masks, stats, train)
            eps = jax.random.normal(key, mu.shape, mu.dtype)
            z = mu + jnp.exp(0.5 * logvar) * eps * masks.latent
            logits, stats = decode(params, z, masks, stats, train)
            recon = reconstruction(logits, x, spec.loss)
            kl = gaussian_kl(mu, logvar)
            loss = jnp.mean(recon + hp.beta * kl)
            return loss, {"recon": jnp.mean(recon), "kl": jnp.mean(kl), "stats": stats}
        x_in = corrupt(x, key, hp.noise, hp.noise_kind) if kind == "denoising" else x
        z, stats = encode(params, x_in, masks, stats, train)
        logits, stats = decode(params, z, masks, stats, train)
        recon = jnp.mean(reconstruction(logits, x, spec.loss))
        penalty = jnp.zeros(())
        if kind == "sparse":
            penalty = hp.l1 * jnp.mean(l1_activity(z)) + hp.sparsity_weight * kl_sparsity(
                z, hp.rho, masks.latent
            )
        elif kind == "contractive":
            # hparams.check_combination keeps batch norm out: no statistics to pass here.
            jac_norm = contractive_penalty(lambda xi: clean_encode(params, xi, masks), x)
            penalty = hp.contractive * jnp.mean(jac_norm)
        return recon + penalty, {"recon": recon, "penalty": penalty, "stats": stats}

    return loss_fn


def make_metrics(spec: ModelSpec) -> Callable[..., dict]:
    """Validation metrics of one member: ``fn(params, x, key, model_hp, stats=None) -> {name:
    [batch]}``
    (an evaluation pass: no dropout, batch norm from the running ``stats``).

    ``recon`` is the reconstruction error of the clean input (for a VAE, through the mean code);
    ``val_loss`` is what searchers minimise: ``recon`` for deterministic kinds, and for a VAE the
    negative ELBO with beta = 1 (one posterior sample), so VAEs of different beta compare fairly.
    """
    encode, decode = apply_fn(spec, "encode"), apply_fn(spec, "decode")

    def metrics(params: dict, x: jax.Array, key: jax.Array, model_hp: ModelHParams,
                stats: dict | None = None) -> dict:
        masks = _masks(spec, model_hp)
        if spec.kind != "vae":
            z = encode(params, x, masks, stats)
            recon = reconstruction(decode(params, z, masks, stats), x, spec.loss)
            return {"recon": recon, "val_loss": recon}
        mu, logvar = encode(params, x, masks, stats)
        recon_mean = reconstruction(decode(params, mu, masks, stats), x, spec.loss)
        eps = jax.random.normal(key, mu.shape, mu.dtype)
        z = mu + jnp.exp(0.5 * logvar) * eps * masks.latent
        neg_elbo = (reconstruction(decode(params, z, masks, stats), x, spec.loss)
                    + gaussian_kl(mu, logvar))
        return {"recon": recon_mean, "val_loss": neg_elbo}

    return metrics
