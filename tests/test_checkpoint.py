"""Tests for jaxae.checkpoint: the envelope's digest, identity and store summary."""

import hashlib

import numpy as np
import pytest

from jaxae import checkpoint as ck
from jaxae.errors import UserError

CONFIG = {"model": "ae", "seed": 0, "space": {"hidden": 16, "latent_dim": 4}}
ARRAYS = {"train_x": np.arange(12, dtype=np.float32).reshape(4, 3), "train_y": None}
STORE = {"trials": {"0": "completed"}, "rows": {"trials": 1, "curves": 3}}


def test_round_trip_and_layout():
    fp = ck.fingerprint(CONFIG, ARRAYS)
    state = b"\x93msgpack state" * 100
    blob = ck.wrap(state, fp, STORE)
    assert blob == b"".join(ck.wrap_parts(state, fp, STORE))
    # The digest is sha256 of everything after it, computed here independently.
    assert blob[8:40] == hashlib.sha256(blob[40:]).digest()
    assert ck.unwrap(blob, fp) == (state, STORE)


@pytest.mark.parametrize("where", [0, 10, 45, 60, -1])
def test_any_flipped_byte_is_refused(where):
    fp = ck.fingerprint(CONFIG, ARRAYS)
    blob = bytearray(ck.wrap(b"state" * 50, fp, STORE))
    blob[where] ^= 0x40
    with pytest.raises(UserError, match="cannot be restored"):
        ck.unwrap(bytes(blob), fp)


def test_a_truncated_or_foreign_file_is_refused():
    fp = ck.fingerprint(CONFIG, ARRAYS)
    blob = ck.wrap(b"state" * 50, fp, STORE)
    for data in (blob[:-1], blob[:20], b"", b"\x93NUMPY not ours"):
        with pytest.raises(UserError, match="cannot be restored"):
            ck.unwrap(data, fp)


def test_fingerprint_tells_sweeps_and_data_apart():
    fp = ck.fingerprint(CONFIG, ARRAYS)
    changed = dict(ARRAYS, train_x=ARRAYS["train_x"].copy())
    changed["train_x"][3, 2] += 1e-6
    reshaped = dict(ARRAYS, train_x=ARRAYS["train_x"].reshape(3, 4))
    recast = dict(ARRAYS, train_x=ARRAYS["train_x"].astype(np.float64))
    for arrays in (changed, reshaped, recast):
        other = ck.fingerprint(CONFIG, arrays)
        assert other["config"] == fp["config"] and other["data"] != fp["data"]
    reordered = {"model": "ae", "seed": 0, "space": {"latent_dim": 4, "hidden": 16}}
    for config in ({**CONFIG, "seed": 1}, reordered):
        other = ck.fingerprint(config, ARRAYS)
        assert other["config"] != fp["config"] and other["data"] == fp["data"]
    blob = ck.wrap(b"s", fp, STORE)
    with pytest.raises(UserError, match="another sweep: its data fingerprint"):
        ck.unwrap(blob, ck.fingerprint(CONFIG, changed))
    with pytest.raises(UserError, match="another sweep: its configuration fingerprint"):
        ck.unwrap(blob, ck.fingerprint({**CONFIG, "seed": 1}, ARRAYS))


def test_a_checkpoint_of_an_older_format_is_refused_in_one_line(monkeypatch):
    fp = ck.fingerprint(CONFIG, ARRAYS)
    monkeypatch.setattr(ck, "FORMAT", ck.FORMAT - 1)  # written by the previous version
    blob = ck.wrap(b"state", fp, STORE)
    monkeypatch.undo()
    with pytest.raises(UserError, match=f"format {ck.FORMAT - 1}, this jaxae reads {ck.FORMAT}"):
        ck.unwrap(blob, fp)
