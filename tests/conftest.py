import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_digits


@pytest.fixture(scope="session")
def digits() -> jnp.ndarray:
    """The digits pixels in [0, 1], [1797, 64] float32, on device."""
    return jnp.asarray(load_digits().data / 16.0, jnp.float32)


@pytest.fixture(scope="session")
def digits_np() -> np.ndarray:
    return (load_digits().data / 16.0).astype(np.float32)
