"""A sweep's output folder: taking it (it must be empty, or hold the sweep to resume; locked,
writable), reading a resumed sweep's ``sweep.json`` and its configuration back, and refusing
data or settings that changed since."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from jaxae import config as config_lib
from jaxae import store as store_lib
from jaxae.errors import UserError, one_line
from jaxae.lock import LOCK, DirectoryLock


def path(out: Path, what: str) -> Path:
    """Refuses an ``--out`` the file system cannot name (a component over 255 bytes, ...)."""
    try:
        if out.exists() and not out.is_dir():
            raise UserError(f"{what} {str(out)!r} exists and is not a directory")
    except OSError as e:
        raise UserError(f"{what} {short(out)} cannot be used: {e.strerror or e}") from None
    return out


def short(path: Path) -> str:
    text = str(path)
    return repr(text if len(text) <= 80 else text[:60] + "..." + text[-17:])


def read_info(out: Path) -> dict[str, Any]:
    """``DIR/sweep.json`` of the sweep to resume, checked for the shape this module writes."""
    path = out / "sweep.json"
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"--resume: {str(out)!r} holds no sweep (no sweep.json)") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"--resume: {str(path)!r} is unreadable: {one_line(e)}") from None
    if not (isinstance(info, dict) and isinstance(info.get("config"), dict)
            and isinstance(info.get("resumed", []), list)
            and isinstance(info.get("fingerprint", {}), dict)):
        raise UserError(f"--resume: {str(path)!r} is not a sweep's sweep.json (it lacks the "
                        "'config' object this sweep writes)")
    return info


def resumed_config(out: Path, info: dict[str, Any], settings: dict[str, Any],
                    origins: dict[str, str]) -> config_lib.SweepConfig:
    """The stored configuration; refuses settings given with ``--resume`` that differ from it,
    naming every one."""
    stored = dict(info["config"])
    # sweep.json sorts its keys; the order of the space's dimensions matters to the searchers.
    order = info.get("space_order")
    if isinstance(stored.get("space"), dict) and isinstance(order, list) and \
            sorted(order) == sorted(stored["space"]):
        stored["space"] = {name: stored["space"][name] for name in order}
    try:
        base = config_lib.build(stored)
    except UserError as e:
        raise UserError(f"--resume: {str(out / 'sweep.json')!r} holds a configuration this "
                        f"jaxae cannot use: {e}") from None
    if not settings:
        return base
    try:
        given: config_lib.SweepConfig | None = config_lib.build({**stored, **settings}, origins)
        error = None
    except UserError as e:
        given, error = None, e
    before = json.loads(json.dumps(base.to_dict()))
    differ = []
    for name in sorted(settings):
        if name == "space":
            continue
        if json.loads(json.dumps(settings[name])) != before.get(name):
            differ.append(f"{name!r} was {before.get(name)!r}, now {settings[name]!r}")
    if "space" in settings:
        now = given.space if given is not None else settings["space"]
        now = json.loads(json.dumps(now)) if isinstance(now, dict) else now
        if not isinstance(now, dict):
            differ.append("'space' differs")
        elif now != before["space"]:
            names = sorted(k for k in set(now) | set(before["space"])
                           if now.get(k) != before["space"].get(k))
            differ.append(f"'space' differs in {', '.join(names)}")
        elif "space_order" in info and list(now) != list(before["space"]):
            differ.append(f"'space' lists its dimensions in another order (was "
                          f"{', '.join(before['space'])})")
    if differ:
        raise UserError(f"--resume: settings differ from the sweep in {str(out)!r} (pass only "
                        f"--resume --out DIR): {'; '.join(differ)}")
    if error is not None:
        raise error
    # Equal values; the given order is the original one where sweep.json predates space_order.
    return given if given is not None else base


def own(out: Path, resume: bool) -> DirectoryLock:
    """Creates (or, resuming, checks) the output directory and locks it for this sweep; clears
    the temporaries interrupted writes left there."""
    what = "--out"
    try:
        if not resume:
            # Checked before locking too, so that a refused directory gains no lock file.
            check_empty(out)
            out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{what} {short(out)} is not writable: {e.strerror or e}") from None
    lock = DirectoryLock(out)
    try:
        if resume and not (out / "sweep.json").exists():  # gone while this sweep started
            raise UserError(f"--resume: {str(out)!r} holds no sweep (no sweep.json)")
        if not resume:
            check_empty(out)  # another sweep may have filled it before this one locked it
        store_lib.remove_temporaries(out)
        # Root writes anywhere, a read-only mount refuses everyone: try it.
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test.", suffix=store_lib.TMP_SUFFIX)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        lock.release()
        raise UserError(f"{what} {str(out)!r} is not writable: {e.strerror or e}") from None
    except BaseException:
        lock.release()
        raise
    return lock


def check_empty(out: Path) -> None:
    """Refuses a directory with anything in it but a lock file and interrupted temporaries."""
    if out.is_dir() and any(p.name != LOCK and not store_lib.is_temporary(p.name)
                            for p in out.iterdir()):
        raise UserError(f"--out {str(out)!r} is not empty; choose a new directory or pass "
                        "--resume to continue the sweep in it")


def check_data(out: Path, info: dict[str, Any], fingerprint: dict[str, str]) -> None:
    stored = info.get("fingerprint", {}).get("data")
    if stored is not None and stored != fingerprint["data"]:
        raise UserError(f"--resume: the data differ from those the sweep in {str(out)!r} started "
                        f"with (data = {info['config'].get('data')!r} changed since: its sha256 "
                        "differs); restore them or start a new sweep")
