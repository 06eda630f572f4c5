"""Tests for jaxae.data: the digits, every file format, the split, and every refusal."""

from __future__ import annotations

import gzip
import os
import pathlib
import zipfile

import numpy as np
import pytest

from jaxae import data
from jaxae.errors import UserError

RNG = np.random.default_rng(0)


def write_idx(path: pathlib.Path, a: np.ndarray, *, gz: bool = False) -> pathlib.Path:
    """Writes ``a`` (uint8) as an IDX file: 0, 0, type 0x08, ndim, big-endian dims, data."""
    header = bytes([0, 0, 0x08, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    payload = header + np.ascontiguousarray(a, dtype=np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def images(n: int, rows: int = 4, cols: int = 3) -> np.ndarray:
    return RNG.integers(0, 256, size=(n, rows, cols), dtype=np.uint8)


def labels(n: int) -> np.ndarray:
    return RNG.integers(0, 10, size=n, dtype=np.uint8)


def unique_rows(n: int, features: int = 6) -> np.ndarray:
    """``[n, features]`` float32 in [0, 1] whose rows are all distinct, to trace the split."""
    return (np.arange(n * features, dtype=np.float32) / (n * features)).reshape(n, features)


def refused(path: os.PathLike[str] | str, match: str, **kwargs: float) -> str:
    """Checks that reading ``path`` raises one-line UserError naming it; returns the message."""
    with pytest.raises(UserError, match=match) as info:
        data.load(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    return message


def rows(x: np.ndarray) -> set[bytes]:
    return {r.tobytes() for r in x}


def sorted_rows(x: np.ndarray) -> np.ndarray:
    return x[np.lexsort(x.T[::-1])]


# --- digits -------------------------------------------------------------------------------------


def test_load_digits_shape_range_labels():
    x, y = data.load_digits()
    assert x.shape == (1797, 64) and x.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    assert set(np.unique(y)) == set(range(10))


def test_digits_split_sizes_and_partition():
    x, _ = data.load_digits()
    ds = data.load("digits", seed=3)
    assert ds.name == "digits" and ds.image_shape == (8, 8) and ds.features == 64
    assert (len(ds.train), len(ds.val), len(ds.test)) == (1257, 270, 270)
    parts = np.concatenate([ds.train.x, ds.val.x, ds.test.x])
    # The splits together are the data set again, each example exactly once.
    np.testing.assert_array_equal(sorted_rows(parts), sorted_rows(x))
    for split in (ds.train, ds.val, ds.test):
        assert split.x.dtype == np.float32 and split.y.dtype == np.int64
        assert split.x.min() >= 0.0 and split.x.max() <= 1.0


def test_split_is_deterministic_per_seed():
    a, b, c = data.load("digits", seed=7), data.load("digits", seed=7), data.load("digits", seed=8)
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(a, name).x, getattr(b, name).x)
        np.testing.assert_array_equal(getattr(a, name).y, getattr(b, name).y)
    assert not np.array_equal(a.val.x, c.val.x)


def test_splits_do_not_overlap(tmp_path):
    x = unique_rows(40)
    np.save(tmp_path / "x.npy", x)
    ds = data.load(tmp_path / "x.npy", seed=1, val_fraction=0.2, test_fraction=0.25)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (22, 8, 10)
    train, val, test = rows(ds.train.x), rows(ds.val.x), rows(ds.test.x)
    assert not (train & val or train & test or val & test)
    assert train | val | test == rows(x)


# --- formats --------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_idx_images_with_sibling_labels(tmp_path, gz):
    suffix = ".gz" if gz else ""
    a, y = images(12), labels(12)
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", a, gz=gz)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", y, gz=gz)
    x, got_y, shape = data.load_file(tmp_path / f"train-images-idx3-ubyte{suffix}")
    assert shape == (4, 3) and x.dtype == np.float32
    np.testing.assert_array_equal(x, a.reshape(12, -1) / np.float32(255))
    np.testing.assert_array_equal(got_y, y.astype(np.int64))


def test_idx_gzip_found_by_magic_not_name(tmp_path):
    a = images(10)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", a, gz=True)  # compressed, no .gz suffix
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels(10))  # plain, with .gz suffix
    x, y, _ = data.load_file(tmp_path / "t10k-images-idx3-ubyte")
    np.testing.assert_array_equal(x, a.reshape(10, -1) / np.float32(255))
    assert y is not None and y.shape == (10,)


def test_idx_without_labels(tmp_path):
    a = images(10)
    x, y, shape = data.load_file(write_idx(tmp_path / "faces.idx", a))
    assert y is None and shape == (4, 3) and x.shape == (10, 12)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_directory_keeps_its_test_set(tmp_path, gz):
    suffix = ".gz" if gz else ""
    train_x, train_y, test_x, test_y = images(30), labels(30), images(8), labels(8)
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", train_x, gz=gz)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", train_y, gz=gz)
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", test_x, gz=gz)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", test_y, gz=gz)

    x, y, shape = data.load_file(tmp_path)
    assert x.shape == (38, 12) and shape == (4, 3)
    np.testing.assert_array_equal(y, np.concatenate([train_y, test_y]))

    ds = data.load(tmp_path, seed=0, val_fraction=0.2)
    assert ds.name == tmp_path.name
    np.testing.assert_array_equal(ds.test.x, test_x.reshape(8, -1) / np.float32(255))
    np.testing.assert_array_equal(ds.test.y, test_y)
    assert (len(ds.train), len(ds.val)) == (24, 6)
    assert rows(ds.train.x) | rows(ds.val.x) == rows(train_x.reshape(30, -1) / np.float32(255))


def test_keras_npz_keeps_its_test_set(tmp_path):
    xt, yt, xs, ys = images(20, 5, 5), labels(20), images(6, 5, 5), labels(6)
    np.savez(tmp_path / "mnist.npz", x_train=xt, y_train=yt, x_test=xs, y_test=ys)
    ds = data.load(tmp_path / "mnist.npz", seed=2, val_fraction=0.25)
    assert ds.name == "mnist.npz" and ds.image_shape == (5, 5) and ds.features == 25
    assert (len(ds.train), len(ds.val), len(ds.test)) == (15, 5, 6)
    np.testing.assert_array_equal(ds.test.x, xs.reshape(6, -1) / np.float32(255))
    np.testing.assert_array_equal(ds.test.y, ys)
    x, y, _ = data.load_file(tmp_path / "mnist.npz")
    np.testing.assert_array_equal(x, np.concatenate([xt, xs]).reshape(26, -1) / np.float32(255))
    np.testing.assert_array_equal(y, np.concatenate([yt, ys]))


def test_keras_npz_without_labels(tmp_path):
    np.savez_compressed(tmp_path / "m.npz", x_train=images(12), x_test=images(3))
    ds = data.load(tmp_path / "m.npz")
    assert ds.train.y is None and ds.test.y is None and len(ds.test) == 3


@pytest.mark.parametrize("with_y", [False, True])
@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_with_x(tmp_path, with_y, save):
    x = RNG.random((15, 7))  # float64 in [0, 1): kept, cast to float32
    y = np.arange(15) % 3
    save(tmp_path / "d.npz", **({"x": x, "y": y} if with_y else {"x": x}))
    got_x, got_y, shape = data.load_file(tmp_path / "d.npz")
    np.testing.assert_array_equal(got_x, x.astype(np.float32))
    assert shape is None
    if with_y:
        np.testing.assert_array_equal(got_y, y)
    else:
        assert got_y is None


def test_npy_2d_and_3d(tmp_path):
    flat = RNG.random((11, 9), dtype=np.float32)
    np.save(tmp_path / "flat.npy", flat)
    x, y, shape = data.load_file(tmp_path / "flat.npy")
    np.testing.assert_array_equal(x, flat)
    assert y is None and shape is None

    cube = images(11, 3, 3)
    np.save(tmp_path / "cube.npy", cube)
    x, _, shape = data.load_file(tmp_path / "cube.npy")
    np.testing.assert_array_equal(x, cube.reshape(11, 9) / np.float32(255))
    assert shape == (3, 3)


def test_npy_fortran_big_endian_and_bool(tmp_path):
    a = np.asfortranarray(RNG.random((10, 4)).astype(">f8"))
    np.save(tmp_path / "f.npy", a)
    np.testing.assert_array_equal(data.load_file(tmp_path / "f.npy")[0], a.astype(np.float32))
    b = RNG.random((10, 4)) > 0.5
    np.save(tmp_path / "b.npy", b)
    np.testing.assert_array_equal(data.load_file(tmp_path / "b.npy")[0], b.astype(np.float32))


def test_format_found_by_magic_not_extension(tmp_path):
    a = unique_rows(10)
    with open(tmp_path / "data.bin", "wb") as f:
        np.save(f, a)
    np.testing.assert_array_equal(data.load_file(tmp_path / "data.bin")[0], a)


# --- the split's arguments ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "below 1"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_bad_split_arguments(kwargs, match):
    with pytest.raises(UserError, match=match):
        data.load("digits", **kwargs)


def test_too_few_examples(tmp_path):
    np.save(tmp_path / "few.npy", unique_rows(9))
    refused(tmp_path / "few.npy", "9 examples are too few")


def test_no_train_left(tmp_path):
    np.save(tmp_path / "ten.npy", unique_rows(10))
    refused(tmp_path / "ten.npy", "no training examples", val_fraction=0.49, test_fraction=0.5)


# --- refusals ------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    refused(tmp_path / "nope.npy", "does not exist")


def test_empty_file(tmp_path):
    (tmp_path / "empty.npy").write_bytes(b"")
    refused(tmp_path / "empty.npy", "is empty")


def test_unknown_format(tmp_path):
    (tmp_path / "notes.txt").write_text("hello, world\n")
    refused(tmp_path / "notes.txt", "not a recognised data file")


def test_idx_bad_magic(tmp_path):
    path = write_idx(tmp_path / "train-images-idx3-ubyte", images(10))
    raw = bytearray(path.read_bytes())
    raw[2] = 0x99  # an element type IDX does not define
    path.write_bytes(bytes(raw))
    refused(path, "element type 0x99")


@pytest.mark.parametrize("gz", [False, True])
def test_idx_truncated_body(tmp_path, gz):
    # The header claims 2**32 - 1 images; nothing that large may be allocated on its word.
    header = bytes([0, 0, 8, 3]) + (2**32 - 1).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    payload = header + bytes(100)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(gzip.compress(payload) if gz else payload)
    refused(path, "truncated")


def test_idx_trailing_bytes(tmp_path):
    path = write_idx(tmp_path / "x-images-idx3-ubyte", images(10))
    path.write_bytes(path.read_bytes() + b"\x00")
    refused(path, "trailing bytes")


def test_idx_gzip_garbage(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(b"\x1f\x8b" + bytes(range(200)))
    refused(path, "not a valid gzip file")


def test_idx_gzip_cut_off(tmp_path):
    path = write_idx(tmp_path / "train-images-idx3-ubyte.gz", images(10), gz=True)
    path.write_bytes(path.read_bytes()[:-20])
    refused(path, "not a valid gzip file")


def test_idx_label_count_mismatch(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", images(12))
    labels_path = write_idx(tmp_path / "train-labels-idx1-ubyte", labels(11))
    message = refused(tmp_path / "train-images-idx3-ubyte", "count 11 does not match the 12")
    assert str(labels_path) in message


def test_idx_labels_file_given_as_data(tmp_path):
    refused(write_idx(tmp_path / "train-labels-idx1-ubyte", labels(12)), "labels file")


def test_idx_directory_missing_a_file(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", images(12))
    refused(tmp_path, "lacks train-labels-idx1-ubyte")


def test_npy_nan(tmp_path):
    a = unique_rows(12)
    a[3, 2] = np.nan
    np.save(tmp_path / "nan.npy", a)
    refused(tmp_path / "nan.npy", "NaN or infinity")


def test_npy_inf(tmp_path):
    a = unique_rows(12)
    a[0, 0] = np.inf
    np.save(tmp_path / "inf.npy", a)
    refused(tmp_path / "inf.npy", "NaN or infinity")


def test_npz_object_array(tmp_path):
    np.savez(tmp_path / "obj.npz", x=np.array([[1, "a"], [None, 2.0]], dtype=object))
    refused(tmp_path / "obj.npz", "Python objects")


def test_npy_object_array(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([[{}], [[]]], dtype=object), allow_pickle=True)
    refused(tmp_path / "obj.npy", "Python objects")


def test_string_array(tmp_path):
    np.save(tmp_path / "s.npy", np.array([["a", "b"], ["c", "d"]]))
    refused(tmp_path / "s.npy", "non-numeric dtype")


def test_empty_array(tmp_path):
    np.save(tmp_path / "e.npy", np.zeros((0, 5), dtype=np.float32))
    refused(tmp_path / "e.npy", "is empty")
    np.save(tmp_path / "e2.npy", np.zeros((5, 0), dtype=np.float32))
    refused(tmp_path / "e2.npy", "is empty")


def test_wrong_dimensions(tmp_path):
    np.save(tmp_path / "one.npy", np.linspace(0, 1, 20))
    refused(tmp_path / "one.npy", r"shape \(20,\); expected \[n, features\]")
    np.save(tmp_path / "four.npy", np.zeros((10, 2, 2, 2)))
    refused(tmp_path / "four.npy", r"shape \(10, 2, 2, 2\)")


def test_floats_outside_unit_interval(tmp_path):
    np.save(tmp_path / "big.npy", unique_rows(12) * 3)
    refused(tmp_path / "big.npy", r"must be scaled to \[0, 1\]")


def test_integers_outside_bytes(tmp_path):
    np.save(tmp_path / "i.npy", np.full((12, 3), 300, dtype=np.int32))
    refused(tmp_path / "i.npy", r"0\.\.255")


def test_npy_truncated(tmp_path):
    path = tmp_path / "t.npy"
    np.save(path, unique_rows(12))
    path.write_bytes(path.read_bytes()[:-8])
    refused(path, "truncated")


def test_npy_pickle_is_never_loaded(tmp_path):
    import pickle

    path = tmp_path / "p.npy"
    path.write_bytes(pickle.dumps(unique_rows(12)))
    refused(path, "not a recognised data file")


def test_npz_not_a_zip(tmp_path):
    path = tmp_path / "bad.npz"
    path.write_bytes(b"PK\x03\x04" + bytes(50))
    refused(path, "not a valid .npz")


def test_npz_member_not_npy(tmp_path):
    path = tmp_path / "bad.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", b"not numpy at all")
    refused(path, "not a valid .npy array")


def test_npz_unknown_keys(tmp_path):
    np.savez(tmp_path / "k.npz", images=unique_rows(12))
    refused(tmp_path / "k.npz", r"holds arrays \['images'\]")


def test_npz_label_mismatch(tmp_path):
    np.savez(tmp_path / "m.npz", x=unique_rows(12), y=np.arange(11))
    refused(tmp_path / "m.npz", "count 11 does not match the 12")


def test_npz_float_labels(tmp_path):
    np.savez(tmp_path / "m.npz", x=unique_rows(12), y=np.arange(12.0))
    refused(tmp_path / "m.npz", "labels must be integers")


def test_keras_npz_shape_mismatch(tmp_path):
    np.savez(tmp_path / "m.npz", x_train=images(12, 4, 4), x_test=images(3, 5, 5))
    refused(tmp_path / "m.npz", "'x_train' examples are")


def test_keras_npz_labels_on_one_side(tmp_path):
    np.savez(tmp_path / "m.npz", x_train=images(12), y_train=labels(12), x_test=images(3))
    refused(tmp_path / "m.npz", "only one of train and test")


def test_not_a_regular_file(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    refused(fifo, "not a regular file")


def test_message_stays_one_line_for_odd_names(tmp_path):
    path = tmp_path / "two\nlines.npy"
    message = str(pytest.raises(UserError, data.load, path).value)
    assert "\n" not in message and "two\\nlines.npy" in message
