"""Data files read safely: IDX (plain or gzip), ``.npy`` and ``.npz``, checked before allocation.

Formats (told apart by their magic bytes, never by the file name):

* An IDX images file as MNIST / Fashion-MNIST ship it (``train-images-idx3-ubyte``, plain or
  gzip-compressed). A labels file next to it under the usual name
  (``train-labels-idx1-ubyte[.gz]``) is read too.
* A directory holding the four standard MNIST IDX files: its ``train`` files are the source's
  examples, its ``t10k`` files the source's own test set.
* An ``.npz``: either as Keras saves MNIST (``x_train``, ``y_train``, ``x_test``, ``y_test``; the
  file's own test set is kept) or with one array ``x`` and optionally labels ``y``.
* An ``.npy`` holding ``[n, features]`` or ``[n, rows, cols]`` (flattened; the image shape is kept).

Values: integer pixels must lie in 0..255 and are divided by 255 (so binary data saved as
integers 0 / 1 becomes 0 and 1/255: save it as bool or float instead); bool becomes 0 / 1;
floats must already be scaled to [0, 1] and are refused otherwise, because the models here
reconstruct through a sigmoid and could never reach values outside it.

Files are data, never code: nothing is unpickled, and every size read from a header (IDX or
``.npy``) is checked against the bytes really there, and against memory, before anything is
allocated from it. Any problem with a file raises :class:`~jaxae.errors.UserError` with one line
naming the file. How a source is split into train / val / test is :mod:`jaxae.data`'s business.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import math
import os
import re
import zipfile
import zlib
from typing import IO

import numpy as np

from jaxae import memory
from jaxae.errors import UserError, one_line

_GZIP_MAGIC = b"\x1f\x8b"
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
_IDX_UBYTE = 0x08
# Reads go in chunks so that memory grows with the bytes actually present, never with what a
# (possibly lying) header claims.
_CHUNK = 1 << 24
_NPY_MAX_HEADER = 10_000  # numpy's own default guard against huge headers
_IDX_DIR_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclasses.dataclass(frozen=True)
class Source:
    """What a file holds before splitting: all of it, or its own train and test parts."""

    x: np.ndarray  # [n, features] float32 in [0, 1]
    y: np.ndarray | None  # [n] int64
    image_shape: tuple[int, ...] | None
    test: tuple[np.ndarray, np.ndarray | None] | None = None  # the file's own test set


def show(path: str | os.PathLike[str]) -> str:
    """Names ``path`` in a message: quoted, and always on one line."""
    # repr escapes newlines and other control characters, so the message stays one line.
    return repr(os.fspath(path))


def _fail(path: str | os.PathLike[str], problem: str) -> UserError:
    return UserError(f"data file {show(path)}: {problem}")


def read_source(path: str | os.PathLike[str]) -> Source:
    """Reads any supported source into host arrays, telling formats apart by their magic bytes.

    Args:
        path: An IDX images file (plain or gzip), a directory of the four MNIST IDX files, an
            ``.npz`` or an ``.npy``; see the module docstring for the layouts.

    Returns:
        The :class:`Source`: ``x`` ``[n, features]`` float32 in [0, 1], labels ``[n]`` or
        ``None``, the image shape, and the file's own test set when it has one.

    Raises:
        UserError: The file is missing, unreadable, corrupt, of an unknown format, empty,
            wrongly shaped, non-numeric, non-finite, out of range, or its labels do not match.
    """
    if os.path.isdir(path):
        return _read_idx_dir(path)
    if not os.path.exists(path):
        raise _fail(path, "does not exist")
    # Opening a FIFO or device would block or stream forever.
    if not os.path.isfile(path):
        raise _fail(path, "is not a regular file or directory")
    try:
        with open(path, "rb") as f:
            head = f.read(len(_NPY_MAGIC))
    except OSError as err:
        raise _fail(path, f"cannot be read ({one_line(err)})") from err

    if head.startswith(_NPY_MAGIC):
        x, image_shape = _images(_read_npy(path), path, "the array")
        return Source(x=x, y=None, image_shape=image_shape)
    if head.startswith(_ZIP_MAGIC):
        return _read_npz(path)
    if head.startswith(_GZIP_MAGIC) or head[:2] == b"\x00\x00":
        return _read_idx_images(path)
    if not head:
        raise _fail(path, "is empty")
    raise _fail(
        path, "is not a recognised data file (expected IDX, gzip-compressed IDX, .npz or .npy)"
    )


def _read_exact(stream: IO[bytes], nbytes: int, path: str | os.PathLike[str]) -> bytearray:
    """Reads exactly ``nbytes`` and checks nothing follows; memory follows the real data."""
    buf = bytearray()
    while len(buf) < nbytes:
        chunk = stream.read(min(_CHUNK, nbytes - len(buf)))
        if not chunk:
            raise _fail(
                path, f"is truncated: its header promises {nbytes} bytes of data, found {len(buf)}"
            )
        buf += chunk
    if stream.read(1):
        raise _fail(path, f"has bytes beyond the {nbytes} bytes of data its header describes")
    return buf


# IDX: big-endian header of two zero bytes, an element-type byte, a dimension-count byte, then
# one uint32 per dimension; the data follow (http://yann.lecun.com/exdb/mnist/).


def _read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads an unsigned-byte IDX file, plain or gzip, into a uint8 array of its header's shape."""
    compressed = False
    try:
        with open(path, "rb") as raw, contextlib.ExitStack() as stack:
            compressed = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            stream: IO[bytes] = raw
            if compressed:
                stream = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
            magic = stream.read(4)
            if len(magic) < 4 or magic[:2] != b"\x00\x00":
                raise _fail(path, "is not an IDX file (bad magic number)")
            if magic[2] != _IDX_UBYTE:
                raise _fail(
                    path,
                    f"has IDX element type 0x{magic[2]:02X}; only unsigned bytes (0x08, as in "
                    "MNIST) are supported",
                )
            ndim = magic[3]
            if ndim == 0:
                raise _fail(path, "is an IDX file with no dimensions")
            header = stream.read(4 * ndim)
            if len(header) < 4 * ndim:
                raise _fail(path, "is truncated inside its IDX header")
            shape = tuple(int.from_bytes(header[4 * i : 4 * i + 4], "big") for i in range(ndim))
            nbytes = math.prod(shape)
            packed = os.fstat(raw.fileno()).st_size
            _check_declared(path, "its IDX header", shape, nbytes, nbytes,
                            packed if compressed else None)
            if not compressed:
                # The size on disk is known: refuse a lying header before reading a byte of data.
                present = os.fstat(raw.fileno()).st_size - 4 - 4 * ndim
                if present != nbytes:
                    what = "is truncated" if present < nbytes else "has trailing bytes"
                    raise _fail(
                        path,
                        f"{what}: its IDX header promises {nbytes} bytes of data "
                        f"(shape {shape}), the file holds {present}",
                    )
            body = _read_exact(stream, nbytes, path)
    except UserError:
        raise
    except (OSError, EOFError, zlib.error) as err:
        # gzip.BadGzipFile is an OSError; a cut-off gzip stream raises EOFError.
        kind = "is not a valid gzip file" if compressed else "cannot be read"
        raise _fail(path, f"{kind} ({one_line(err)})") from err
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def _read_idx_images(
    path: str | os.PathLike[str], labels_path: str | os.PathLike[str] | None = None
) -> Source:
    """Reads IDX images and, if given or found beside them, their IDX labels."""
    raw = _read_idx(path)
    if raw.ndim == 1:
        raise _fail(path, "is an IDX labels file (one dimension); give the images file")
    if raw.ndim > 3:
        raise _fail(path, f"has {raw.ndim} IDX dimensions; expected [n, rows, cols]")
    x, image_shape = _images(raw, path, "the images")
    if labels_path is None:
        labels_path = _sibling_labels(path)
    y = None if labels_path is None else _read_idx_labels(labels_path, x.shape[0], path)
    return Source(x=x, y=y, image_shape=image_shape)


def _sibling_labels(path: str | os.PathLike[str]) -> str | None:
    """Finds ``*-labels-idx1-ubyte[.gz]`` next to ``*-images-idx3-ubyte[.gz]``, if present."""
    folder, name = os.path.split(os.fspath(path))
    labels = re.sub(r"images([.-])idx3", r"labels\g<1>idx1", name, count=1)
    if labels == name:
        return None
    stem = labels.removesuffix(".gz")
    # Prefer the same compression as the images, but MNIST mirrors mix the two.
    candidates = [labels, stem] if labels.endswith(".gz") else [labels, labels + ".gz"]
    for candidate in candidates:
        full = os.path.join(folder, candidate)
        if os.path.isfile(full):
            return full
    return None


def _read_idx_labels(
    path: str | os.PathLike[str], n: int, images_path: str | os.PathLike[str]
) -> np.ndarray:
    raw = _read_idx(path)
    if raw.ndim != 1:
        raise _fail(path, f"should be an IDX labels file (one dimension), has {raw.ndim}")
    return _labels(raw, n, path, images_path)


def _read_idx_dir(path: str | os.PathLike[str]) -> Source:
    """Reads a directory holding MNIST's four IDX files: train for train / val, t10k for test."""
    found = {}
    for name in _IDX_DIR_FILES:
        for candidate in (name, name + ".gz"):
            full = os.path.join(os.fspath(path), candidate)
            if os.path.isfile(full):
                found[name] = full
                break
        else:
            raise UserError(
                f"data directory {show(path)}: lacks {name}[.gz] (expected the four MNIST IDX "
                f"files {', '.join(_IDX_DIR_FILES)})"
            )
    train = _read_idx_images(found["train-images-idx3-ubyte"], found["train-labels-idx1-ubyte"])
    test = _read_idx_images(found["t10k-images-idx3-ubyte"], found["t10k-labels-idx1-ubyte"])
    if test.image_shape != train.image_shape:
        raise UserError(
            f"data directory {show(path)}: train images are {train.image_shape} but t10k "
            f"images are {test.image_shape}"
        )
    return dataclasses.replace(train, test=(test.x, test.y))


# .npy / .npz: numpy's format is parsed here rather than by np.load, because np.load allocates
# the whole array a header announces before reading it; header and dtype are checked first.


def _read_npy_stream(
    stream: IO[bytes],
    path: str | os.PathLike[str],
    what: str,
    available: int | None,
    compressed: int | None = None,
) -> np.ndarray:
    """Reads one array in .npy format from ``stream``, refusing objects and lying headers.

    Args:
        stream: Positioned at the ``\\x93NUMPY`` magic.
        path: The file, for messages.
        what: Names the array in messages (``"the array"``, ``"array 'x_train'"``).
        available: Bytes from the magic to the end, when known (a file on disk, or the size
            a zip member's header declares).
        compressed: The deflated size of the member, when it is deflated (bounds its size).
    """
    fmt = np.lib.format
    try:
        version = fmt.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(stream, _NPY_MAX_HEADER)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(stream, _NPY_MAX_HEADER)
        else:
            # Version 3 exists only for structured dtypes with non-latin names: never numeric.
            raise _fail(path, f"{what} uses .npy format version {version}, not 1.0 or 2.0")
        header_len = stream.tell()
    except UserError:
        raise
    except (ValueError, OSError, EOFError, zlib.error) as err:
        raise _fail(path, f"{what} is not a valid .npy array ({one_line(err)})") from err
    if dtype.hasobject:
        raise _fail(
            path, f"{what} holds Python objects, which are never unpickled; save numeric arrays"
        )
    _check_dtype(dtype, path, what)
    nbytes = math.prod(shape) * dtype.itemsize
    _check_declared(path, f"{what}'s header", shape, nbytes, math.prod(shape), compressed)
    if available is not None and available - header_len != nbytes:
        state = "truncated" if available - header_len < nbytes else "followed by extra bytes"
        raise _fail(
            path,
            f"{what} is {state}: its header promises {nbytes} bytes (shape {shape}, "
            f"{dtype}), {available - header_len} present",
        )
    try:
        body = _read_exact(stream, nbytes, path)
    except UserError:
        raise
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as err:
        raise _fail(path, f"{what} cannot be read ({one_line(err)})") from err
    flat = np.frombuffer(body, dtype=dtype)
    return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)


def _read_npy(path: str | os.PathLike[str]) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            return _read_npy_stream(f, path, "the array", os.fstat(f.fileno()).st_size)
    except OSError as err:
        raise _fail(path, f"cannot be read ({one_line(err)})") from err


def _read_npz(path: str | os.PathLike[str]) -> Source:
    """Reads an .npz with ``x`` [and ``y``], or Keras MNIST's ``x_train``/``y_train``/...``."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = {
                info.filename.removesuffix(".npy"): info
                for info in archive.infolist()
                if not info.is_dir()
            }
            keys = set(members)
            keras = {"x_train", "x_test"} <= keys <= {"x_train", "y_train", "x_test", "y_test"}
            if keys not in ({"x"}, {"x", "y"}) and not keras:
                raise _fail(
                    path,
                    f"holds arrays {sorted(keys)}; expected 'x' (and optionally 'y') or Keras "
                    "MNIST's 'x_train', 'y_train', 'x_test', 'y_test'",
                )
            arrays = {}
            for key in sorted(keys):
                info = members[key]
                deflated = info.compress_type == zipfile.ZIP_DEFLATED
                with archive.open(info) as stream:
                    # The member's declared size must match its .npy header (zipfile stops at it
                    # and checks the CRC), so neither can promise less than is inflated.
                    arrays[key] = _read_npy_stream(
                        stream, path, f"array {key!r}", info.file_size,
                        info.compress_size if deflated else None,
                    )
    except UserError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as err:
        raise _fail(path, f"is not a valid .npz file ({one_line(err)})") from err
    except (NotImplementedError, RuntimeError) as err:
        # Unsupported compression or an encrypted archive.
        raise _fail(path, f"cannot be read as .npz ({one_line(err)})") from err

    if "x" in arrays:
        x, image_shape = _images(arrays["x"], path, "array 'x'")
        y = _labels(arrays["y"], x.shape[0], path, path, "array 'y'") if "y" in arrays else None
        return Source(x=x, y=y, image_shape=image_shape)

    x, image_shape = _images(arrays["x_train"], path, "array 'x_train'")
    test_x, test_shape = _images(arrays["x_test"], path, "array 'x_test'")
    if test_x.shape[1] != x.shape[1] or test_shape != image_shape:
        raise _fail(
            path,
            f"'x_train' examples are {arrays['x_train'].shape[1:]} but 'x_test' examples are "
            f"{arrays['x_test'].shape[1:]}",
        )
    if ("y_train" in arrays) != ("y_test" in arrays):
        raise _fail(path, "has labels for only one of train and test; give both or neither")
    y = test_y = None
    if "y_train" in arrays:
        y = _labels(arrays["y_train"], x.shape[0], path, path, "array 'y_train'")
        test_y = _labels(arrays["y_test"], test_x.shape[0], path, path, "array 'y_test'")
    return Source(x=x, y=y, image_shape=image_shape, test=(test_x, test_y))


# --------------------------------------------------------------------------------------------
# Checking and scaling values.


# Deflate (gzip, zip) expands at most about 1032:1; a header promising more than that of its
# compressed bytes lies (a truncated file, or a decompression bomb).
_DEFLATE_MAX_RATIO = 1032


def _check_declared(
    path: str | os.PathLike[str],
    what: str,
    shape: tuple[int, ...],
    nbytes: int,
    elements: int,
    compressed: int | None,
) -> None:
    """Refuses, from a header alone, data that cannot be decompressed or held in memory."""
    if compressed is not None and nbytes > _DEFLATE_MAX_RATIO * compressed + 2**16:
        raise _fail(
            path,
            f"{what} declares {nbytes} bytes (shape {shape}) but only {compressed} compressed "
            "bytes follow, more than deflate can expand to: truncated, or a decompression bomb",
        )
    # The raw bytes, then their float32 copy.
    need = nbytes + 4 * elements
    free = memory.host_available()
    if need > free:
        raise _fail(
            path,
            f"{what} declares shape {shape}: about {need / 2**30:.1f} GiB to decode, more than "
            f"the {free / 2**30:.1f} GiB of memory available",
        )


def _check_dtype(dtype: np.dtype, path: str | os.PathLike[str], what: str) -> None:
    if dtype.kind not in "biuf":
        raise _fail(
            path, f"{what} has non-numeric dtype {dtype}; expected integers, floats or bools"
        )


def _images(
    a: np.ndarray, path: str | os.PathLike[str], what: str
) -> tuple[np.ndarray, tuple[int, ...] | None]:
    """Checks examples and scales them to float32 in [0, 1].

    Args:
        a: ``[n, features]`` or ``[n, rows, cols]``, any numeric dtype.

    Returns:
        ``[n, features]`` float32 in [0, 1], and ``(rows, cols)`` for 3-D input else ``None``.
    """
    _check_dtype(a.dtype, path, what)
    if a.ndim not in (2, 3):
        raise _fail(path, f"{what} has shape {a.shape}; expected [n, features] or [n, rows, cols]")
    if a.size == 0:
        raise _fail(path, f"{what} is empty (shape {a.shape})")
    image_shape = tuple(int(d) for d in a.shape[1:]) if a.ndim == 3 else None
    a = a.reshape(a.shape[0], -1)
    if a.dtype.kind == "b":
        return a.astype(np.float32), image_shape
    if a.dtype.kind in "iu":
        low, high = int(a.min()), int(a.max())
        if low < 0 or high > 255:
            raise _fail(
                path,
                f"{what} has integer values from {low} to {high}; integer pixels must lie in "
                "0..255 (they are divided by 255)",
            )
        scaled = a.astype(np.float32)
        scaled /= np.float32(255.0)  # in place: MNIST-sized data need not exist three times
        return scaled, image_shape
    if not np.isfinite(a).all():
        raise _fail(path, f"{what} contains NaN or infinity")
    low, high = float(a.min()), float(a.max())
    if low < 0.0 or high > 1.0:
        raise _fail(
            path,
            f"{what} has float values from {low:g} to {high:g}; float data must be scaled to "
            "[0, 1] (the models reconstruct through a sigmoid)",
        )
    return a.astype(np.float32), image_shape


def _labels(
    y: np.ndarray,
    n: int,
    path: str | os.PathLike[str],
    images_path: str | os.PathLike[str],
    what: str = "the labels",
) -> np.ndarray:
    """Checks ``n`` integer labels and returns them as ``[n]`` int64."""
    if y.dtype.kind not in "iu":
        raise _fail(path, f"{what} have dtype {y.dtype}; labels must be integers")
    if y.ndim != 1:
        raise _fail(path, f"{what} have shape {y.shape}; expected [n]")
    if y.shape[0] != n:
        where = "" if os.fspath(path) == os.fspath(images_path) else f" in {show(images_path)}"
        raise _fail(path, f"{what} count {y.shape[0]} does not match the {n} examples{where}")
    out = y.astype(np.int64)
    # Checked after the cast so that huge uint64 values, which wrap negative, are caught too.
    if out.size and out.min() < 0:
        raise _fail(path, f"{what} include negative values; labels must be non-negative")
    return out
