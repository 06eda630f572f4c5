"""Data sets and their split: the embedded digits or a data file, into train / val / test.

A sweep keeps its whole data set on the accelerator, so everything here is small, host-side
numpy: the population trainer moves the arrays over once.

Sources that :func:`load` accepts:

* ``"digits"``: scikit-learn's embedded 8x8 digits (1797 examples); never a file of that name.
* A path to an IDX images file (plain or gzip), a directory of the four MNIST IDX files, an
  ``.npz`` or an ``.npy``: read by :mod:`jaxae.datafiles`, which documents the layouts, the
  value scaling and the checks made before anything is allocated. A source with its own test set
  (an IDX directory's ``t10k`` files, a Keras-style ``.npz``) keeps it as the test split.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

from jaxae.datafiles import Source, read_source, show
from jaxae.errors import UserError

# Fewer examples than this cannot give every split at least one example with room to spare.
MIN_EXAMPLES = 10


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """One part of a data set (train, val or test), on the host.

    Attributes:
        x: ``[n, features]`` float32 in [0, 1].
        y: ``[n]`` int64 labels, or ``None`` when the source has none.
    """

    x: np.ndarray
    y: np.ndarray | None = None

    def __post_init__(self) -> None:
        # Coerce rather than reject so tests and callers may pass plain float64 / int arrays.
        x = np.asarray(self.x, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f"Split.x must be [n, features], got shape {x.shape}")
        object.__setattr__(self, "x", x)
        if self.y is not None:
            y = np.asarray(self.y, dtype=np.int64)
            if y.shape != (x.shape[0],):
                raise ValueError(f"Split.y must be [{x.shape[0]}], got shape {y.shape}")
            object.__setattr__(self, "y", y)

    def __len__(self) -> int:
        return self.x.shape[0]


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A data set split three ways, all splits with the same feature count.

    Attributes:
        name: ``"digits"`` or the file (or directory) name it was read from.
        train: The examples the autoencoders train on.
        val: The examples the searchers rank trials by.
        test: Held out for the final report.
        image_shape: ``(rows, cols)`` for image data, e.g. ``(8, 8)`` digits or ``(28, 28)``
            MNIST, so that ``features == rows * cols``; ``None`` when unknown.
    """

    name: str
    train: Split
    val: Split
    test: Split
    image_shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        widths = {s.x.shape[1] for s in (self.train, self.val, self.test)}
        if len(widths) != 1:
            raise ValueError(f"splits of {self.name!r} differ in features: {sorted(widths)}")
        if self.image_shape is not None and math.prod(self.image_shape) != self.features:
            raise ValueError(
                f"image_shape {self.image_shape} does not hold {self.features} features"
            )

    @property
    def features(self) -> int:
        """Values per example (``x.shape[1]`` of every split)."""
        return self.train.x.shape[1]


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """Loads scikit-learn's embedded 8x8 digits (no download: it ships with the package).

    Returns:
        ``x`` ``[1797, 64]`` float32 in [0, 1] (pixels 0..16 divided by 16) and ``y`` ``[1797]``
        int64 labels 0..9.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    x = (np.asarray(bunch.data, dtype=np.float32) / np.float32(16.0)).astype(np.float32)
    return x, np.asarray(bunch.target, dtype=np.int64)


def load_file(
    path: str | os.PathLike[str],
) -> tuple[np.ndarray, np.ndarray | None, tuple[int, ...] | None]:
    """Reads a data file (or an MNIST IDX directory) whole.

    A source with its own test set (Keras-style ``.npz``, IDX directory) comes back as its train
    examples followed by its test examples; :func:`load` keeps the two apart instead.

    Args:
        path: An IDX images file (plain or gzip), a directory of the four MNIST IDX files, an
            ``.npz`` or an ``.npy``; see :mod:`jaxae.datafiles` for the layouts.

    Returns:
        ``x`` ``[n, features]`` float32 in [0, 1]; ``y`` ``[n]`` int64 labels or ``None``; and the
        image shape ``(rows, cols)`` or ``None``.

    Raises:
        UserError: The file is missing, unreadable, corrupt, of an unknown format, empty,
            wrongly shaped, non-numeric, non-finite, out of range, or its labels do not match.
    """
    source = read_source(path)
    if source.test is None:
        return source.x, source.y, source.image_shape
    test_x, test_y = source.test
    x = np.concatenate([source.x, test_x])
    y = None if source.y is None or test_y is None else np.concatenate([source.y, test_y])
    return x, y, source.image_shape


def load(
    source: str | os.PathLike[str],
    *,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
) -> Dataset:
    """Loads a data set and splits it into train / val / test.

    The split is a permutation drawn from ``np.random.default_rng(seed)``: the same seed always
    gives the same split, whatever else the sweep does. Each of val and test gets
    ``round(fraction * n)`` examples (at least one), train the rest. When the source has its own
    test set (Keras-style ``.npz``, IDX directory) that set is the test split, unshuffled, and val
    is ``val_fraction`` of the source's train part; ``test_fraction`` is then unused.

    Args:
        source: ``"digits"`` for the embedded data set, else a path accepted by
            :func:`load_file`.
        seed: Seed of the split.
        val_fraction: Share of the examples held out for validation, in (0, 1).
        test_fraction: Share held out for the final test, in (0, 1).

    Returns:
        The split :class:`Dataset`.

    Raises:
        UserError: Bad fractions or seed, a bad file (see :func:`load_file`), or too few
            examples to give every split at least one.
    """
    for what, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < fraction < 1.0:
            raise UserError(f"{what} must be between 0 and 1 (exclusive), got {fraction!r}")
    if val_fraction + test_fraction >= 1.0:
        raise UserError(
            f"val_fraction + test_fraction must be below 1, got {val_fraction + test_fraction!r}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise UserError(f"the split seed must be a non-negative integer, got {seed!r}")
    rng = np.random.default_rng(seed)

    if isinstance(source, str) and source == "digits":
        x, y = load_digits()
        data = Source(x=x, y=y, image_shape=(8, 8))
        name, label = "digits", "digits data set"
    else:
        data = read_source(source)
        name = os.path.basename(os.path.normpath(os.fspath(source)))
        label = f"data file {show(source)}"

    n = data.x.shape[0] + (0 if data.test is None else data.test[0].shape[0])
    if n < MIN_EXAMPLES:
        raise UserError(
            f"{label}: {n} examples are too few to split into train / val / test "
            f"(at least {MIN_EXAMPLES} needed)"
        )

    if data.test is None:
        n_all = data.x.shape[0]
        n_test = max(1, round(test_fraction * n_all))
        n_val = max(1, round(val_fraction * n_all))
        order = rng.permutation(n_all)
        test_idx, val_idx, train_idx = np.split(order, [n_test, n_test + n_val])
        test = _take(data.x, data.y, test_idx)
    else:
        n_val = max(1, round(val_fraction * data.x.shape[0]))
        order = rng.permutation(data.x.shape[0])
        val_idx, train_idx = np.split(order, [n_val])
        test = Split(*data.test)
    if train_idx.size == 0:
        raise UserError(
            f"{label}: no training examples left after holding out val and test "
            f"({data.x.shape[0]} examples); lower val_fraction / test_fraction"
        )
    return Dataset(
        name=name,
        train=_take(data.x, data.y, train_idx),
        val=_take(data.x, data.y, val_idx),
        test=test,
        image_shape=data.image_shape,
    )


def _take(x: np.ndarray, y: np.ndarray | None, idx: np.ndarray) -> Split:
    return Split(x[idx], None if y is None else y[idx])
