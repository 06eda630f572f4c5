"""Retraining the top configurations of a sweep in JAX, and scoring their codes downstream.

Each trial is retrained from its own keys, in a population of its own, to the steps it trained in
the sweep; its codes then feed the metrics of ``jaxae.downstream`` (linear-probe accuracy,
anomaly-detection ROC AUC).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxae import hparams
from jaxae.results import Sweep, ranked

# Retraining runs the trial's compiled program in the sweep's layout from the trial's keys: equal
# up to the evaluation's float rounding, unless this machine's devices differ from the sweep's.
REPRODUCED = 1e-5  # relative
DIFFERENCE_REASON = (
    "retraining runs the trial's program from its own keys in the sweep's layout (slots per "
    "bucket over this machine's devices), so a difference means the sweep ran on other devices "
    "(see sweep.json: count, kind, precision), where float rounding differs and training "
    "amplifies it; the stored loss is the trial's, the retrained one belongs to the model "
    "scored here.")


@dataclasses.dataclass(frozen=True)
class Baselines:
    """The same downstream scores for codes that need no training, to read the autoencoders'
    against: PCA with each trial's code size, and the raw pixels.

    Attributes:
        code_sizes: [k] PCA components per trial (its ``latent_dim``, at most the features).
        pca_probe: [k] linear-probe test accuracy of the PCA codes (fitted on the train split).
        pca_auc: [k] anomaly ROC AUC of the PCA reconstruction error, PCA fitted on the train
            examples without the anomaly class; None without anomaly detection.
        raw_probe: linear-probe test accuracy of the pixels themselves.
        raw_auc: anomaly ROC AUC of the squared distance to the mean normal training example;
            None without anomaly detection.
    """

    code_sizes: list[int]
    pca_probe: np.ndarray
    pca_auc: np.ndarray | None
    raw_probe: float
    raw_auc: float | None


def baselines(dataset: Any, code_sizes: Sequence[int], anomaly_class: int,
              num_classes: int) -> Baselines:
    """PCA and raw-pixel scores with the very metrics the retrained members get."""
    import jax
    import jax.numpy as jnp

    from jaxae import downstream as metrics_lib

    train, test = dataset.train, dataset.test
    probe = functools.partial(metrics_lib.linear_probe_accuracy,
                              num_classes=max(num_classes, 2))
    sizes = [min(int(k), train.x.shape[1]) for k in code_sizes]
    is_anomaly = test.y == anomaly_class
    anomaly = bool(is_anomaly.any()) and bool((train.y != anomaly_class).any())
    normal = train.x[train.y != anomaly_class]
    # Every code size padded to the largest with zero columns (a constant column is only
    # centred by the probe, and its weight stays zero), so one compiled probe scores them all.
    distinct = sorted(set(sizes))
    width = max(distinct)
    fitted = [_pca(train.x, k) for k in distinct]
    pad = lambda z: np.pad(z, ((0, 0), (0, width - z.shape[1])))  # noqa: E731
    accuracy = jax.vmap(probe, in_axes=(0, None, 0, None))(
        jnp.asarray(np.stack([pad((train.x - m) @ v) for m, v in fitted])), train.y,
        jnp.asarray(np.stack([pad((test.x - m) @ v) for m, v in fitted])), test.y)
    pca_probe = dict(zip(distinct, np.asarray(accuracy).tolist(), strict=True))
    pca_auc = {}
    if anomaly:
        errors = []
        for k in distinct:
            mean, basis = _pca(normal, k)
            centred = test.x - mean
            errors.append(np.sum((centred - centred @ basis @ basis.T) ** 2, axis=1))
        aucs = jax.vmap(metrics_lib.roc_auc, in_axes=(0, None))(jnp.asarray(np.stack(errors)),
                                                                jnp.asarray(is_anomaly))
        pca_auc = dict(zip(distinct, np.asarray(aucs).tolist(), strict=True))
    raw_auc = None
    if anomaly:
        distance = np.sum((test.x - normal.mean(axis=0)) ** 2, axis=1)
        raw_auc = float(metrics_lib.roc_auc(jnp.asarray(distance), jnp.asarray(is_anomaly)))
    return Baselines(
        code_sizes=sizes,
        pca_probe=np.array([pca_probe[k] for k in sizes]),
        pca_auc=np.array([pca_auc[k] for k in sizes]) if anomaly else None,
        raw_probe=float(probe(train.x, train.y, test.x, test.y)),
        raw_auc=raw_auc,
    )


def _pca(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean [features] and the top ``k`` principal directions [features, k] of ``x``."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean, vt[:k].T


@dataclasses.dataclass(frozen=True)
class Downstream:
    """Downstream quality of the top-k configurations, retrained from their trial keys.

    Attributes:
        trial_ids: [k] the trials, best first.
        steps: [k] steps each was trained (as in the sweep).
        stored_val_loss: [k] replicate 0's validation loss in the store.
        val_loss: [k] the retrained member's validation loss: equals ``stored_val_loss`` when the
            retraining reproduced the trial.
        test_loss: [k] its reconstruction error (``recon`` metric) on the test split.
        probe_accuracy: [k] linear-probe test accuracy of its codes (VAE: the mean), or None.
        auc: [k] anomaly-detection ROC AUC of members retrained without ``anomaly_class``, or None.
        scores: [k, n_test] their anomaly scores (per-example reconstruction error), or None.
        is_anomaly: [n_test] bool, test examples of ``anomaly_class``, or None.
        anomaly_class: the class held out.
        num_classes: classes the probe separates (0 without labels).
        notes: why a part was skipped, if one was.
        baselines: PCA and raw-pixel scores (None without labels).
    """

    trial_ids: list[int]
    steps: list[int]
    stored_val_loss: np.ndarray
    val_loss: np.ndarray
    test_loss: np.ndarray
    probe_accuracy: np.ndarray | None
    auc: np.ndarray | None
    scores: np.ndarray | None
    is_anomaly: np.ndarray | None
    anomaly_class: int
    num_classes: int
    notes: list[str]
    baselines: Baselines | None = None
    model: str = "ae"

    @property
    def test_name(self) -> str:
        """What ``test_loss`` measures (a VAE's through its mean code, without the KL term)."""
        if self.model == "vae":
            return "test reconstruction error (mean code, no KL term)"
        return "test reconstruction error"

    def reproduction(self) -> str:
        """One sentence on how closely the retrained validation losses match the stored ones."""
        rel = np.abs(self.val_loss - self.stored_val_loss) / np.maximum(
            np.abs(self.stored_val_loss), 1e-12)
        worst = float(np.nanmax(rel)) if np.isfinite(rel).any() else math.nan
        if worst <= REPRODUCED:
            return (f"The retrained validation losses reproduce the stored ones (largest "
                    f"relative difference {worst:.1e}, float reassociation).")
        off = [f"trial {t} {a:.4g} vs {b:.4g}" for t, a, b, r in
               zip(self.trial_ids, self.val_loss, self.stored_val_loss, rel, strict=True)
               if not r <= REPRODUCED]
        return (f"The retrained validation losses do not reproduce the stored ones exactly "
                f"(retrained vs stored: {'; '.join(off)}; up to {100 * worst:.2g}%): "
                f"{DIFFERENCE_REASON}")


def downstream(sweep: Sweep, *, top_k: int = 3, anomaly_class: int = 0,
               dataset: Any = None) -> Downstream | None:
    """Retrains the ``top_k`` best configurations and scores their codes.

    Each trial is retrained in one population per compiled program (bucket), from its own keys
    ``population.trial_keys(seed, trial, 0)`` (replicate 0) to the steps it trained in the sweep,
    on the same padded shapes and in the sweep's layout (``sweep_layout``), so the member
    reproduces the stored trial. Its codes of the train
    split fit a linear probe scored on the test split. For anomaly detection the same
    configurations are retrained on the train split without ``anomaly_class`` (a model must not
    have seen the anomalies) and score each test example by its reconstruction error.

    Args:
        sweep: the sweep.
        top_k: how many configurations (from ``ranked``).
        anomaly_class: the label held out as the anomaly.
        dataset: the sweep's data (``jaxae.data.Dataset``); loaded from the config when None.

    Returns:
        The scores, or None when no trial has a finite loss.

    Raises:
        UserError: the sweep's data cannot be loaded.
    """
    import jax
    import jax.numpy as jnp

    from jaxae import buckets as buckets_lib
    from jaxae import data as data_lib
    from jaxae import downstream as metrics_lib
    from jaxae import placement
    from jaxae import population as pop_lib
    from jaxae import sharding as sharding_lib

    top = ranked(sweep)[:top_k]
    if not top:
        return None
    if dataset is None:
        dataset = data_lib.load(sweep.config.data, seed=sweep.config.seed)
    notes = []
    labelled = all(s.y is not None for s in (dataset.train, dataset.test))
    num_classes = int(max(dataset.train.y.max(), dataset.test.y.max())) + 1 if labelled else 0
    anomaly = labelled and bool(np.any(dataset.test.y == anomaly_class)) and bool(
        np.any(dataset.train.y != anomaly_class))
    if not labelled:
        notes.append(f"data set {dataset.name!r} has no labels: no anomaly detection or probe")
    elif not anomaly:
        notes.append(f"class {anomaly_class} does not occur in the test split: no anomaly "
                     "detection")
    train_x, test_x = (jnp.asarray(s.x) for s in (dataset.train, dataset.test))
    probe = jax.vmap(lambda a, b, c, d: metrics_lib.linear_probe_accuracy(
        a, b, c, d, num_classes=max(num_classes, 2)), in_axes=(0, None, 0, None))
    auc_fn = jax.vmap(metrics_lib.roc_auc, in_axes=(0, None))
    is_anomaly = (dataset.test.y == anomaly_class) if anomaly else None

    mesh, slots = sweep_layout(sweep.config, dataset.features)
    # Replicated over the mesh, as the driver holds them.
    train_rep, val_rep = (jax.device_put(x, sharding_lib.replicated(mesh))
                          for x in (dataset.train.x, dataset.val.x))
    normal_rep = (jax.device_put(dataset.train.x[dataset.train.y != anomaly_class],
                                 sharding_lib.replicated(mesh)) if anomaly else None)
    results: dict[int, dict[str, Any]] = {}
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for t in top:
        groups.setdefault(tuple(t["params"][n] for n in hparams.BUCKET_NAMES), []).append(t)
    for key, trials in groups.items():
        spec = buckets_lib.train_spec(sweep.config, dataset.features, key)
        members = [placement.Member(t["trial_id"], t["params"], t["steps"],
                                    buckets_lib.member_keys(sweep.config, t["trial_id"], 0),
                                    horizon=sweep.config.steps)
                     for t in trials]
        # The sweep's own layout (slots per bucket, devices), so the members reproduce their
        # trials exactly; scoring then uses only the members' slots.
        group = buckets_lib.group(sweep.config, spec, slots, mesh)
        pop = retrain(spec, members, train_rep, sweep.config.chunk, slots=slots, mesh=mesh,
                      group=group)
        val = np.asarray(sharding_lib.to_host(
            pop_lib.evaluate(spec, pop, val_rep)["val_loss"]))[:len(members)]
        pop = _first(pop, len(members))
        test = np.asarray(recon_errors(spec, pop, test_x)).mean(axis=1)
        acc = None
        if labelled:
            acc = np.asarray(probe(codes(spec, pop, train_x), jnp.asarray(dataset.train.y),
                                   codes(spec, pop, test_x), jnp.asarray(dataset.test.y)))
        scores = auc = None
        if anomaly:
            normal_pop = _first(retrain(spec, members, normal_rep, sweep.config.chunk,
                                        slots=slots, mesh=mesh, group=group), len(members))
            scores = recon_errors(spec, normal_pop, test_x)
            auc = np.asarray(auc_fn(scores, jnp.asarray(is_anomaly)))
            scores = np.asarray(scores)
        for i, t in enumerate(trials):
            results[t["trial_id"]] = {
                "val": val[i], "test": test[i],
                "acc": None if acc is None else acc[i],
                "auc": None if auc is None else auc[i],
                "scores": None if scores is None else scores[i],
            }

    ids = [t["trial_id"] for t in top]
    stored = []
    for t in top:
        rep0 = [v for r, _, v, _ in sweep.replicates.get(t["trial_id"], []) if r == 0]
        stored.append(rep0[0] if rep0 and rep0[0] is not None else t["val_loss"])
    return Downstream(
        trial_ids=ids,
        steps=[t["steps"] for t in top],
        stored_val_loss=np.array(stored, dtype=np.float64),
        val_loss=np.array([results[i]["val"] for i in ids], dtype=np.float64),
        test_loss=np.array([results[i]["test"] for i in ids], dtype=np.float64),
        probe_accuracy=(np.array([results[i]["acc"] for i in ids], dtype=np.float64)
                        if labelled else None),
        auc=np.array([results[i]["auc"] for i in ids], dtype=np.float64) if anomaly else None,
        scores=np.stack([results[i]["scores"] for i in ids]) if anomaly else None,
        is_anomaly=is_anomaly,
        anomaly_class=anomaly_class,
        num_classes=num_classes,
        notes=notes,
        model=sweep.config.model,
        baselines=baselines(dataset, [t["params"]["latent_dim"] for t in top], anomaly_class,
                            num_classes) if labelled else None,
    )


def retrain(spec: Any, members: Sequence[Any], train_x: Any, chunk: int,
            slots: int | None = None, mesh: Any = None, group: int | None = None) -> Any:
    """Trains ``members`` (``population.Member``) from scratch in one population of their own,
    in chunks of the sweep's ``chunk`` steps, until each reaches its target.

    Args:
        spec: the bucket's ``population.TrainSpec``.
        members: the trials to train.
        train_x: [n, features] training data on device.
        chunk: steps per jitted call.
        slots: population size (at least ``len(members)``; the rest stay empty).
        mesh: a ``"pop"`` mesh of several devices to shard the slots over, each device training
            its own (as the sweep's driver does); None trains on one device.
        group: slots trained side by side (per device), the sweep's bucket's
            (``buckets.group``); None: ``grouping.group_size``'s.

    Returns:
        The trained ``population.Population`` (slot i holds members[i]).
    """
    from jaxae import placement
    from jaxae import population as pop_lib
    from jaxae import sharding as sharding_lib

    size = max(len(members), slots or 0)
    sharded = mesh is not None and mesh.size > 1
    if sharded:
        size = sharding_lib.round_up(size, mesh)
    pop = placement.create(spec, size)
    pop = placement.assign(spec, pop, list(range(len(members))), members)
    for _ in range(math.ceil(max(m.target for m in members) / chunk)):
        if sharded:
            pop = sharding_lib.shard(pop, sharding_lib.slot_sharding(mesh))
        pop, _ = pop_lib.train_chunk(spec, pop, train_x, chunk, mesh=mesh if sharded else None,
                                     group=group)
    return pop


def sweep_layout(config: Any, features: int) -> tuple[Any, int]:
    """The device mesh and slots per bucket the sweep's driver trained with.

    Retraining a member in that very layout runs the compiled program its trial ran, so it
    reproduces the trial's losses bit for bit; another layout (fewer slots per device, another
    device count) changes float rounding, which training amplifies (measured: 0.23% in the
    validation loss of a 150-step trial at learning rate 0.017, two CPU devices against one).
    The capacity is the driver's (``buckets.capacity``).

    Returns:
        The mesh over every device, and the population size of one bucket.
    """
    from jaxae import buckets
    from jaxae import sharding as sharding_lib

    mesh = sharding_lib.slot_mesh()
    return mesh, buckets.capacity(config, mesh, features)


def _first(pop: Any, k: int) -> Any:
    """The first ``k`` slots of a population, gathered on one device."""
    import jax
    import jax.numpy as jnp

    return jax.tree.map(lambda leaf: jnp.asarray(np.asarray(leaf)[:k]), pop)


def codes(spec: Any, pop: Any, x: Any) -> Any:
    """Codes [slots, n, latent_dim] of ``x`` [n, features] (VAE: the posterior mean; units a
    slot masks out are exact zeros)."""
    return _programs()[0](spec, pop, x)


def recon_errors(spec: Any, pop: Any, x: Any) -> Any:
    """Per-example reconstruction error [slots, n] of ``x`` (the ``recon`` validation metric:
    through the mean code for a VAE), the anomaly score."""
    return _programs()[1](spec, pop, x)


@functools.cache
def _programs() -> tuple[Any, Any]:
    # Built on first use so that reading a sweep and drawing figures never imports JAX.
    import jax

    from jaxae.models import apply_fn, make_masks
    from jaxae.objectives import make_metrics

    @functools.partial(jax.jit, static_argnums=(0,))
    def codes_fn(spec, pop, x):
        encode = apply_fn(spec.model, "encode")

        def member(m):
            hp = m.hparams.model
            z = encode(m.params, x, make_masks(spec.model, hp.hidden, hp.latent_dim,
                                               hp.activation), m.stats)
            return z[0] if spec.model.variational else z

        return jax.vmap(member)(pop)

    @functools.partial(jax.jit, static_argnums=(0,))
    def recon_fn(spec, pop, x):
        metrics = make_metrics(spec.model)
        return jax.vmap(
            lambda m: metrics(m.params, x, m.eval_key, m.hparams.model, m.stats)["recon"])(pop)

    return codes_fn, recon_fn
