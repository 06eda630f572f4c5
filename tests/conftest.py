import os

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_digits

# Nearly every test is a first sweep of its shapes, which the program cache makes dearer (an
# export, then the loaded program's own lowering and compilation) and never repays; it is tested
# on its own (tests/test_programs.py). Inherited by the sweeps tests start in child processes.
os.environ.setdefault("JAXAE_PROGRAM_CACHE", "off")


@pytest.fixture(scope="session")
def digits() -> jnp.ndarray:
    """The digits pixels in [0, 1], [1797, 64] float32, on device."""
    return jnp.asarray(load_digits().data / 16.0, jnp.float32)


@pytest.fixture(scope="session")
def digits_np() -> np.ndarray:
    return (load_digits().data / 16.0).astype(np.float32)


# A tiny ASHA sweep with replicates for the report's tests (results, analysis, retrain, figures,
# pages, export): one bucket and tiny shapes, so every figure has something to show.
SMALL_SWEEP = """
[sweep]
model = "ae"
searcher = "asha"
population = 4
trials = 12
steps = 60
min_steps = 10
chunk = 10
repeats = 2
[space]
learning_rate = {dist = "float", low = 1e-3, high = 3e-2, log = true}
latent_dim = {dist = "int", low = 2, high = 8}
weight_decay = {dist = "float", low = 1e-6, high = 1e-2, log = true}
hidden = 16
activation = "tanh"
batch_size = 32
"""


@pytest.fixture(scope="session")
def sweep_dir(tmp_path_factory):
    """The directory of ``SMALL_SWEEP`` run once per session (``--no-report``)."""
    from jaxae.sweep import main as sweep_main

    root = tmp_path_factory.mktemp("small_sweep")
    config = root / "sweep.toml"
    config.write_text(SMALL_SWEEP)
    out = root / "sweep"
    assert sweep_main(["--config", str(config), "--out", str(out), "--no-report",
                       "--no-progress"]) == 0
    return out
