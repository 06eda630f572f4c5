"""Retraining the top configurations: members reproduce the stored trials, and the downstream
scores equal scikit-learn's on the same codes."""

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from jaxae import buckets as buckets_lib
from jaxae import data as data_lib
from jaxae import hparams, placement, retrain
from jaxae import population as pop_lib
from jaxae.results import load_sweep


@pytest.fixture(scope="session")
def down(sweep_dir):
    # Four members fill a population as large as the sweep's (4 slots).
    return retrain.downstream(load_sweep(sweep_dir), top_k=4)


def test_retrained_members_reproduce_the_stored_trials(down) -> None:
    assert len(down.trial_ids) == 4
    # The sweep's layout, the same compiled program: equal but for evaluation rounding.
    np.testing.assert_allclose(down.val_loss, down.stored_val_loss, rtol=1e-6)


def test_anomaly_auc_is_sklearns_on_the_same_scores(sweep_dir, down) -> None:
    sweep = load_sweep(sweep_dir)
    dataset = data_lib.load(sweep.config.data, seed=sweep.config.seed)
    assert down.is_anomaly.tolist() == (dataset.test.y == 0).tolist()
    for scores, auc in zip(down.scores, down.auc, strict=True):
        assert auc == pytest.approx(roc_auc_score(down.is_anomaly, scores), abs=1e-6)
    # The scores come from members retrained without the anomaly class, as claimed.
    spec, members = _members(sweep, down.trial_ids, dataset)
    normal = jnp.asarray(dataset.train.x[dataset.train.y != 0])
    pop = retrain.retrain(spec, members, normal, sweep.config.chunk)
    scores = np.asarray(retrain.recon_errors(spec, pop, jnp.asarray(dataset.test.x)))[0]
    np.testing.assert_allclose(scores, down.scores[0], rtol=1e-5, atol=1e-7)


def test_linear_probe_agrees_with_sklearn_on_the_retrained_codes(sweep_dir, down) -> None:
    sweep = load_sweep(sweep_dir)
    dataset = data_lib.load(sweep.config.data, seed=sweep.config.seed)
    spec, members = _members(sweep, down.trial_ids, dataset)
    pop = retrain.retrain(spec, members, jnp.asarray(dataset.train.x), sweep.config.chunk)
    train = np.asarray(retrain.codes(spec, pop, jnp.asarray(dataset.train.x)))[0]
    test = np.asarray(retrain.codes(spec, pop, jnp.asarray(dataset.test.x)))[0]
    # linear_probe_accuracy's standardisation (masked code units are constant: only centred)
    # and its objective in sklearn's terms, C = 1 / (l2 n) with l2 = 1e-3.
    mean, std = train.mean(0), train.std(0)
    std = np.where(std > 1e-6 * (1 + np.abs(mean)), std, 1.0)
    probe = LogisticRegression(C=1.0 / (1e-3 * len(train)), max_iter=5000, tol=1e-8)
    probe.fit((train - mean) / std, dataset.train.y)
    want = probe.score((test - mean) / std, dataset.test.y)
    assert abs(down.probe_accuracy[0] - want) <= 0.02


def _members(sweep, trial_ids, dataset):
    """The bucket's spec and the members of ``trial_ids`` (one bucket: the activation is fixed)."""
    rows = {t["trial_id"]: t for t in sweep.trials}
    trials = [rows[t] for t in trial_ids]
    key = tuple(trials[0]["params"][n] for n in hparams.BUCKET_NAMES)
    spec = buckets_lib.train_spec(sweep.config, dataset.features, key)
    members = [placement.Member(t["trial_id"], t["params"], t["steps"],
                                pop_lib.trial_keys(sweep.config.seed, t["trial_id"], 0))
                 for t in trials]
    return spec, members


def test_baselines_are_sklearns_pca_and_pixels(sweep_dir, down) -> None:
    from sklearn.decomposition import PCA

    sweep = load_sweep(sweep_dir)
    dataset = data_lib.load(sweep.config.data, seed=sweep.config.seed)
    base = down.baselines
    assert base is not None
    rows = {t["trial_id"]: t for t in sweep.trials}
    assert base.code_sizes == [rows[t]["params"]["latent_dim"] for t in down.trial_ids]
    train, test = dataset.train, dataset.test
    normal = train.x[train.y != 0]
    is_anomaly = test.y == 0
    for k, auc in zip(base.code_sizes, base.pca_auc, strict=True):
        pca = PCA(n_components=k).fit(normal)
        error = np.sum((test.x - pca.inverse_transform(pca.transform(test.x))) ** 2, axis=1)
        assert auc == pytest.approx(roc_auc_score(is_anomaly, error), abs=1e-4)
    distance = np.sum((test.x - normal.mean(axis=0)) ** 2, axis=1)
    assert base.raw_auc == pytest.approx(roc_auc_score(is_anomaly, distance), abs=1e-6)
    # The probe on PCA codes, by sklearn on the same standardised codes.
    k = base.code_sizes[0]
    pca = PCA(n_components=k).fit(train.x)
    codes_train, codes_test = pca.transform(train.x), pca.transform(test.x)
    mean, std = codes_train.mean(0), codes_train.std(0)
    probe = LogisticRegression(C=1.0 / (1e-3 * len(codes_train)), max_iter=5000, tol=1e-8)
    probe.fit((codes_train - mean) / std, train.y)
    assert abs(base.pca_probe[0] - probe.score((codes_test - mean) / std, test.y)) <= 0.02


def test_reproduction_says_which_trials_differ(down) -> None:
    import dataclasses

    assert "reproduce the stored ones" in down.reproduction()
    off = down.val_loss.copy()
    off[1] *= 1.05
    text = dataclasses.replace(down, val_loss=off).reproduction()
    assert "do not reproduce" in text and f"trial {down.trial_ids[1]}" in text
    assert f"trial {down.trial_ids[0]}" not in text and "up to 5%" in text


_TWO_DEVICES = """
import json
import sys
from jaxae import runtime
runtime.use_cpu_cores()
import jax
from jaxae import retrain
from jaxae.results import load_sweep
from jaxae.sweep import main
assert jax.device_count() == 2
out = sys.argv[1]
assert main(["--searcher", "random", "--trials", "2", "--steps", "30", "--population", "2",
             "--chunk", "10", "--out", out, "--no-report", "--no-progress"]) == 0
down = retrain.downstream(load_sweep(out), top_k=2)
print(json.dumps([down.val_loss.tolist(), down.stored_val_loss.tolist()]))
"""


@pytest.mark.slow
def test_retraining_reproduces_a_sweep_sharded_over_two_devices(tmp_path) -> None:
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "JAXAE_CPU_DEVICES": "2", "JAXAE_COMPILATION_CACHE": "off"}
    env.pop("XLA_FLAGS", None)
    run = subprocess.run([sys.executable, "-c", _TWO_DEVICES, str(tmp_path / "s")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    retrained, stored = json.loads(run.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(retrained, stored, rtol=1e-6)
