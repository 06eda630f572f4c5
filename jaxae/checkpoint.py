"""The checkpoint envelope (``DIR/checkpoint.msgpack``): the driver's state with its identity.

The driver's ``state_bytes()`` say how to continue a sweep but not which sweep they belong to,
whether they arrived intact, or what the trial store held when they were taken. The envelope
adds all three, so ``--resume`` can refuse a checkpoint of another sweep (or of the same
configuration on replaced data), one with flipped bytes, and a store that lost rows since::

    MAGIC (8 bytes) | sha256 of the rest (32 bytes) | header length (8 bytes, big-endian)
    | header (JSON: format, fingerprint, store summary) | the driver's state (msgpack)

JSON and msgpack only: reading a checkpoint never executes anything.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from jaxae.errors import UserError

MAGIC = b"JAXAECK\n"
# 2: buckets no longer include the activation (a per-slot choice), so a format-1 state's
# bucket keys would not name this version's programs.
FORMAT = 2
_DIGEST = 32
_LENGTH = 8


class Contents(NamedTuple):
    """An opened envelope."""

    state: bytes  # what Driver.state_bytes() returned
    store: dict[str, Any]  # TrialStore.summary() when the checkpoint was taken


def fingerprint(config: Mapping[str, Any], arrays: Mapping[str, np.ndarray | None]
                ) -> dict[str, str]:
    """The identity of a sweep: sha256 of its resolved configuration and of its data.

    Args:
        config: ``SweepConfig.to_dict()``.
        arrays: the data set's arrays by name (``train_x``, ``val_y``, ...; None for no labels).

    Returns:
        ``{"config": hex, "data": hex}``; the data digest covers every array's name, dtype,
        shape and bytes, so a data file replaced between a kill and a resume changes it.
    """
    data = hashlib.sha256()
    for name in sorted(arrays):
        a = arrays[name]
        if a is None:
            data.update(f"{name}:none;".encode())
            continue
        a = np.ascontiguousarray(a)
        data.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        data.update(memoryview(a).cast("B"))
    # Not sorted: the order of the space's dimensions is part of the sweep (searchers draw and
    # encode in that order).
    text = json.dumps(dict(config), separators=(",", ":"))
    return {"config": hashlib.sha256(text.encode()).hexdigest(), "data": data.hexdigest()}


def wrap(state: bytes, fingerprint: Mapping[str, str], store: Mapping[str, Any]) -> bytes:
    """The envelope around ``state``."""
    return b"".join(wrap_parts(state, fingerprint, store))


def wrap_parts(state: bytes, fingerprint: Mapping[str, str], store: Mapping[str, Any]
               ) -> list[bytes]:
    """``wrap``'s bytes in pieces (``state`` itself the last), so that writing a large state
    never copies it (``store.atomic_write_bytes`` takes the list)."""
    header = json.dumps({"format": FORMAT, "fingerprint": dict(fingerprint),
                         "store": dict(store)}, sort_keys=True).encode()
    head = len(header).to_bytes(_LENGTH, "big") + header
    digest = hashlib.sha256(head)
    digest.update(state)
    return [MAGIC + digest.digest() + head, state]


def unwrap(data: bytes, fingerprint: Mapping[str, str], *, what: str = "checkpoint") -> Contents:
    """Opens an envelope written by ``wrap`` for the sweep of ``fingerprint``.

    Raises:
        UserError: (one line starting with ``what``) not an envelope, damaged (digest mismatch),
            a format this version cannot read, or another sweep's (configuration or data).
    """
    head = len(MAGIC) + _DIGEST + _LENGTH
    if len(data) < head or not data.startswith(MAGIC):
        raise UserError(f"{what} cannot be restored: not a jaxae checkpoint (written by an "
                        "older jaxae, or not a checkpoint at all)")
    digest, body = data[len(MAGIC):len(MAGIC) + _DIGEST], data[len(MAGIC) + _DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        raise UserError(f"{what} cannot be restored: damaged (its sha256 does not match its "
                        "content)")
    size = int.from_bytes(body[:_LENGTH], "big")
    try:
        header = json.loads(body[_LENGTH:_LENGTH + size])
        fmt, stored, store = header["format"], header["fingerprint"], header["store"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{what} cannot be restored: its header is malformed") from None
    if fmt != FORMAT:
        raise UserError(f"{what} cannot be restored: format {fmt!r}, this jaxae reads {FORMAT}")
    for key, name in (("config", "configuration"), ("data", "data")):
        if stored.get(key) != fingerprint.get(key):
            raise UserError(f"{what} belongs to another sweep: its {name} fingerprint differs "
                            "from this sweep's")
    return Contents(body[_LENGTH + size:], store)
