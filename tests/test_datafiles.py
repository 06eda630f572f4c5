"""Tests for jaxae.datafiles: the readers on their own, before any split (numpy as the reference).

The formats' every refusal is tested through ``data.load`` in test_data.py and test_data_bombs.py;
here the reader's own contract: what a :class:`Source` holds, checked against ``np.load``.
"""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from jaxae import data, datafiles
from jaxae.errors import UserError


def idx_bytes(a: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    return header + a.astype(np.uint8).tobytes()


@pytest.mark.parametrize("order", ["C", "F"])
def test_npy_matches_numpys_own_reader(tmp_path, order):
    a = np.asfortranarray if order == "F" else np.ascontiguousarray
    x = a(np.random.default_rng(1).random((5, 3, 2)).astype(np.float32))
    np.save(tmp_path / "x.npy", x)
    source = datafiles.read_source(tmp_path / "x.npy")
    reference = np.load(tmp_path / "x.npy", allow_pickle=False)
    np.testing.assert_array_equal(source.x, reference.reshape(5, 6))
    assert source.image_shape == (3, 2) and source.y is None and source.test is None


def test_keras_npz_keeps_train_and_test_apart(tmp_path):
    rng = np.random.default_rng(2)
    xt, xs = rng.integers(0, 256, (4, 2, 2), np.uint8), rng.integers(0, 256, (2, 2, 2), np.uint8)
    yt, ys = np.array([1, 2, 3, 4], np.uint8), np.array([7, 8], np.uint8)
    np.savez(tmp_path / "m.npz", x_train=xt, y_train=yt, x_test=xs, y_test=ys)
    source = datafiles.read_source(tmp_path / "m.npz")
    np.testing.assert_array_equal(source.x, xt.reshape(4, 4) / np.float32(255))
    np.testing.assert_array_equal(source.y, yt.astype(np.int64))
    test_x, test_y = source.test
    np.testing.assert_array_equal(test_x, xs.reshape(2, 4) / np.float32(255))
    np.testing.assert_array_equal(test_y, ys.astype(np.int64))


def test_gzip_idx_with_its_sibling_labels(tmp_path):
    x = np.arange(3 * 2 * 2, dtype=np.uint8).reshape(3, 2, 2) * 20
    (tmp_path / "a-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(x)))
    (tmp_path / "a-labels-idx1-ubyte").write_bytes(idx_bytes(np.array([5, 6, 9])))
    source = datafiles.read_source(tmp_path / "a-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(source.x, x.reshape(3, 4).astype(np.float32) / 255)
    np.testing.assert_array_equal(source.y, [5, 6, 9])
    assert source.image_shape == (2, 2)


def test_reader_leaves_the_split_policy_to_data(tmp_path):
    # Three examples are a valid file; only the split refuses them (data.MIN_EXAMPLES).
    np.save(tmp_path / "few.npy", np.zeros((3, 4), np.float32))
    assert datafiles.read_source(tmp_path / "few.npy").x.shape == (3, 4)
    with pytest.raises(UserError, match="too few"):
        data.load(tmp_path / "few.npy")


def test_a_lying_header_is_refused_naming_the_file_on_one_line(tmp_path):
    path = tmp_path / "bad\nname.npy"
    np.save(path, np.zeros((4, 4), np.float32))
    path.write_bytes(path.read_bytes()[:-8])  # 8 bytes short of what the header promises
    with pytest.raises(UserError, match="truncated") as info:
        datafiles.read_source(path)
    assert "\n" not in str(info.value) and datafiles.show(path) in str(info.value)
