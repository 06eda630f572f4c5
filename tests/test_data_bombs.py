"""jaxae.data refuses, from declared sizes alone, what would decompress past memory (bombs)."""

import gzip
import io
import zipfile

import numpy as np
import pytest

from jaxae import data, memory
from jaxae.errors import UserError


def idx_header(shape):
    return bytes([0, 0, 0x08, len(shape)]) + b"".join(d.to_bytes(4, "big") for d in shape)


def test_gzip_idx_bomb_is_refused_before_decompressing(tmp_path):
    # 2 MB of gzip expanding to 2 GiB of zeros, under a header that declares 8 GiB.
    path = tmp_path / "bomb-images-idx3-ubyte.gz"
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(idx_header((2**23, 32, 32)))
        block = bytes(2**24)
        for _ in range(128):
            f.write(block)
    assert path.stat().st_size < 4 * 2**20
    with pytest.raises(UserError, match="decompression bomb") as e:
        data.load(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_idx_larger_than_memory_is_refused_from_its_header(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "host_available", lambda: 2**20)
    images = np.zeros((512, 16, 16), np.uint8)  # 128 KiB, 640 KiB with its float32 copy
    path = tmp_path / "images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_header(images.shape) + images.tobytes()))
    assert data.load(path).features == 256
    monkeypatch.setattr(memory, "host_available", lambda: 2**19)
    with pytest.raises(UserError, match=r"declares shape \(512, 16, 16\).*memory available"):
        data.load(path)


def test_deflated_npz_bomb_is_refused_from_its_declared_sizes(tmp_path, monkeypatch):
    path = tmp_path / "bomb.npz"
    x = np.zeros((2**20, 8), np.float32)  # 32 MiB of zeros: ~32 KiB deflated
    np.savez_compressed(path, x=x)
    assert path.stat().st_size < 2**20
    monkeypatch.setattr(memory, "host_available", lambda: 48 * 2**20)
    with pytest.raises(UserError, match=r"array 'x''s header declares shape \(1048576, 8\)"):
        data.load(path)


def test_zip_member_larger_than_its_declared_size_is_refused(tmp_path):
    # The .npy header promises more than the zip entry declares: refused from the headers, before
    # zipfile's own limit would cut it short.
    real = io.BytesIO()
    np.save(real, np.ones((100, 8), np.float32))
    payload = real.getvalue()
    payload = payload.replace(b"(100, 8)", b"(900, 8)")
    path = tmp_path / "lying.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", payload)
    with pytest.raises(UserError, match="truncated"):
        data.load(path)
