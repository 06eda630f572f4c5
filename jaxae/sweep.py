"""``python -m jaxae.sweep``: sweep autoencoder hyperparameters with a population trainer.

With no options it runs a useful default sweep (ASHA over learning rate, weight decay, code size,
width and activation of a plain autoencoder on scikit-learn's digits) that finishes in a few
minutes on a laptop CPU, and prints where its results are.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import shlex
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from jaxae import checkpoint as checkpoint_lib
from jaxae import config as config_lib
from jaxae import store as store_lib
from jaxae.errors import UserError, one_line
from jaxae.lock import LOCK, DirectoryLock
from jaxae.models import PRECISION_NAMES

RESULT_FILES = ("trials.db", "sweep.json", "best.json")
CHECKPOINT_EVERY = 30.0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jaxae.sweep",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        epilog="Settings come from the defaults, then --config FILE.toml ([sweep] and [space] "
        "tables), then these flags; --resume --out DIR reads them from DIR/sweep.json. Outputs: "
        "DIR/trials.db (SQLite), DIR/best.json, DIR/sweep.json, DIR/checkpoint.msgpack, "
        "DIR/report/.",
    )
    d = config_lib.SweepConfig()
    add = p.add_argument
    add("--model", choices=config_lib.hparams.MODELS, default=None,
        help=f"autoencoder kind [default: {d.model}]")
    add("--searcher", choices=config_lib.SEARCHER_NAMES, default=None,
        help=f"how configurations are chosen; sha / hyperband / asha stop poor trials early; "
        f"pbt trains --trials members at once, the worst copying the best "
        f"[default: {d.searcher}]")
    add("--population", type=int, default=None, metavar="P",
        help=f"members trained at once by one program [default: {d.population}]")
    add("--trials", type=int, default=None, metavar="N",
        help="configurations to try (multi-fidelity: configurations started at the lowest "
        f"budget) [default: {d.trials}]")
    add("--steps", type=int, default=None, metavar="S",
        help=f"training steps of a trial that runs to the end (the maximum budget) "
        f"[default: {d.steps}]")
    add("--seed", type=int, default=None, metavar="K",
        help=f"sweep seed: names the configurations, initialisations and data orders "
        f"[default: {d.seed}]")
    add("--data", default=None, metavar="{digits,PATH}",
        help="'digits' (embedded) or a path to MNIST-style data: IDX (optionally gzipped), a "
        "directory of the four MNIST IDX files, a Keras-style .npz, or .npy [default: digits]")
    add("--out", default=None, metavar="DIR",
        help="output directory; must be new or empty unless --resume [default: "
        "runs/MODEL-SEARCHER-TIMESTAMP]")
    add("--config", default=None, metavar="FILE.toml", help="a TOML file with [sweep] and [space]")
    add("--resume", action="store_true",
        help="continue the sweep in --out after a crash, kill or interrupt, from its last "
        "checkpoint; its settings come from DIR/sweep.json (other flags must match them)")
    add("--repeats", type=int, default=None, metavar="K",
        help=f"seeds per configuration (replicates); the searcher sees their aggregate "
        f"[default: {d.repeats}]")
    add("--aggregate", choices=config_lib.AGGREGATES, default=None,
        help=f"how replicates are combined [default: {d.aggregate}]")
    add("--crn", action="store_true", default=None,
        help="common random numbers: replicate r of every trial sees the same data order")
    add("--eta", type=int, default=None, help=f"reduction factor of sha / hyperband / asha "
        f"[default: {d.eta}]")
    add("--min-steps", type=int, default=None, dest="min_steps",
        help="lowest budget of sha / hyperband / asha [default: steps // eta**3]")
    add("--sampler", choices=config_lib.SAMPLERS, default=None,
        help=f"where sha / hyperband / asha get new configurations [default: {d.sampler}]")
    add("--pbt-ready", type=int, default=None, metavar="STEPS", dest="pbt_ready",
        help="pbt: steps between exploits, a multiple of --chunk [default: steps / 10 rounded "
        "to whole chunks]")
    add("--pbt-fraction", type=float, default=None, metavar="Q", dest="pbt_fraction",
        help="pbt: the bottom share of members that copy one of the top share [default: 0.25]")
    add("--pbt-resample", type=float, default=None, metavar="P", dest="pbt_resample",
        help="pbt: chance that an explored hyperparameter is redrawn from the prior instead of "
        "scaled by 0.8 or 1.2 [default: 0.25]")
    add("--precision", choices=PRECISION_NAMES, default=None,
        help=f"matmul precision; parameters stay float32; auto: tf32 on accelerators, float32 "
        f"on CPUs [default: {d.precision}]")
    add("--chunk", type=int, default=None,
        help=f"steps trained per jitted call between evaluations [default: {d.chunk}]")
    add("--checkpoint-every", type=float, default=CHECKPOINT_EVERY, metavar="SECONDS",
        help=f"seconds between checkpoints (0: after every chunk) [default: {CHECKPOINT_EVERY:g}]")
    add("--no-report", action="store_true", help="skip the report at the end")
    add("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    stop = _StopOnSignal()
    try:
        with stop:
            return _run(args, stop)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, _Interrupted) as e:  # outside the training loop, which stops
        signum = e.signum if isinstance(e, _Interrupted) else signal.SIGINT  # cleanly itself
        print(f"error: interrupted by {signal.Signals(signum).name}{stop.hint()}", file=sys.stderr)
        return 128 + signum
    except Exception as e:  # the device ran out of memory: say what to change, not a traceback
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        print("error: out of device memory; lower --population (or the widths in [space]), or "
              "set JAXAE_MEMORY_BUDGET to train fewer slots at a time; the sweep can be continued "
              "with --resume", file=sys.stderr)
        return 2


_FLAG_SETTINGS = ("model", "searcher", "population", "trials", "steps", "seed", "data", "repeats",
                  "aggregate", "crn", "eta", "min_steps", "sampler", "chunk", "precision",
                  "pbt_ready", "pbt_fraction", "pbt_resample")


def _settings(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str]]:
    """The settings the user gave (file, then flags) and where each came from."""
    settings: dict[str, Any] = {}
    origins: dict[str, str] = {}
    if args.config:
        settings = config_lib.read_toml(args.config)
        for name in settings:
            table = "[space]" if name == "space" else "[sweep]"
            origins[name] = f"config file {args.config!r} {table}"
    for name in _FLAG_SETTINGS:
        value = getattr(args, name)
        if value is not None:
            settings[name] = value
            origins[name] = "--" + name.replace("_", "-")
    return settings, origins


def _path(out: Path, what: str) -> Path:
    """Refuses an ``--out`` the file system cannot name (a component over 255 bytes, ...)."""
    try:
        if out.exists() and not out.is_dir():
            raise UserError(f"{what} {str(out)!r} exists and is not a directory")
    except OSError as e:
        raise UserError(f"{what} {_short(out)} cannot be used: {e.strerror or e}") from None
    return out


def _short(path: Path) -> str:
    text = str(path)
    return repr(text if len(text) <= 80 else text[:60] + "..." + text[-17:])


def _read_info(out: Path) -> dict[str, Any]:
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


def _resumed_config(out: Path, info: dict[str, Any], settings: dict[str, Any],
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


def _own(out: Path, resume: bool) -> DirectoryLock:
    """Creates (or, resuming, checks) the output directory and locks it for this sweep; clears
    the temporaries interrupted writes left there."""
    what = "--out"
    try:
        if not resume:
            # Checked before locking too, so that a refused directory gains no lock file.
            _check_empty(out)
            out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{what} {_short(out)} is not writable: {e.strerror or e}") from None
    lock = DirectoryLock(out)
    try:
        if resume and not (out / "sweep.json").exists():  # gone while this sweep started
            raise UserError(f"--resume: {str(out)!r} holds no sweep (no sweep.json)")
        if not resume:
            _check_empty(out)  # another sweep may have filled it before this one locked it
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


def _check_empty(out: Path) -> None:
    """Refuses a directory with anything in it but a lock file and interrupted temporaries."""
    if out.is_dir() and any(p.name != LOCK and not store_lib.is_temporary(p.name)
                            for p in out.iterdir()):
        raise UserError(f"--out {str(out)!r} is not empty; choose a new directory or pass "
                        "--resume to continue the sweep in it")


def _check_data(out: Path, info: dict[str, Any], fingerprint: dict[str, str]) -> None:
    stored = info.get("fingerprint", {}).get("data")
    if stored is not None and stored != fingerprint["data"]:
        raise UserError(f"--resume: the data differ from those the sweep in {str(out)!r} started "
                        f"with (data = {info['config'].get('data')!r} changed since: its sha256 "
                        "differs); restore them or start a new sweep")


def _environment() -> dict[str, Any]:
    import jax

    versions = {}
    for pkg in ("jax", "jaxlib", "flax", "optax", "numpy", "jaxae"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    devices = jax.devices()
    return {
        "versions": versions,
        "python": platform.python_version(),
        "device": {"kind": devices[0].device_kind, "platform": devices[0].platform,
                   "count": len(devices)},
        "host": platform.node(),
    }


def _run(args: argparse.Namespace, stop: _StopOnSignal) -> int:
    every = args.checkpoint_every
    if math.isnan(every) or every < 0:
        raise UserError(f"--checkpoint-every {every:g} must be a number of seconds >= 0")
    settings, origins = _settings(args)
    info = None
    if args.resume:
        if args.out is None:
            raise UserError("--resume needs --out DIR naming the sweep to continue")
        out = _path(Path(args.out), "--resume: --out")
        info = _read_info(out)
        config = _resumed_config(out, info, settings, origins)
    else:
        config = config_lib.build(settings, origins)
        if args.out is None:
            stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            out = Path("runs") / f"{config.model}-{config.searcher}-{stamp}"
        else:
            out = _path(Path(args.out), "--out")
    from jaxae import runtime

    runtime.initialize_distributed()
    runtime.enable_compilation_cache()
    import jax

    # Several processes run the same deterministic driver, each on its own devices; process 0
    # alone writes the outputs (the others keep their store in memory).
    primary = jax.process_index() == 0
    # Data and memory problems are found before anything is written.
    from jaxae import data as data_lib
    from jaxae import driver as driver_lib
    from jaxae import memory

    dataset = data_lib.load(config.data, seed=config.seed)
    arrays = {f"{split}_{kind}": getattr(getattr(dataset, split), kind)
              for split in ("train", "val", "test") for kind in ("x", "y")}
    fingerprint = checkpoint_lib.fingerprint(config.to_dict(), arrays)
    if info is not None:
        _check_data(out, info, fingerprint)
    if config.searcher == "pbt":
        from jaxae import pbt

        driver = pbt.PBTDriver(config, dataset)
    else:
        driver = driver_lib.Driver(config, dataset)
    memory.check(config, dataset.features, len(dataset.train), len(dataset.val), driver.capacity,
                 host_data=sum(a.nbytes for a in arrays.values() if a is not None))
    if not primary:
        return _run_secondary(args, driver, out, fingerprint)
    lock = _own(out, args.resume)
    stop.out = out
    try:
        return _sweep(args, config, dataset, driver, out, info, fingerprint, stop)
    finally:
        lock.release()


def _sweep(args: argparse.Namespace, config: config_lib.SweepConfig, dataset: Any, driver: Any,
           out: Path, info: dict[str, Any] | None, fingerprint: dict[str, str],
           stop: _StopOnSignal) -> int:
    """The sweep proper, in a directory this process owns."""
    import jax

    from jaxae import buckets, runner

    sweep_json = out / "sweep.json"
    checkpoint = out / runner.CHECKPOINT
    if info is not None:
        store = _resume(driver, out, fingerprint)
        info["resumed"] = info.get("resumed", []) + [_now()]
        info.setdefault("fingerprint", fingerprint)
        store_lib.atomic_write_json(sweep_json, info)
    else:
        info = {"config": config.to_dict(), "start_time": _now(), "end_time": None,
                "data": {"name": dataset.name, "train": len(dataset.train.x),
                         "val": len(dataset.val.x), "test": len(dataset.test.x),
                         "features": dataset.features},
                "space_order": list(config.space), "fingerprint": fingerprint,
                **_environment()}
        store_lib.atomic_write_json(sweep_json, info)
        store = store_lib.TrialStore(out / "trials.db")

    def save(state: bytes) -> None:
        store_lib.atomic_write_bytes(checkpoint,
                                     checkpoint_lib.wrap_parts(state, fingerprint,
                                                               store.summary()))

    try:
        started = time.perf_counter()
        progress = _Progress(config, driver, enabled=not args.no_progress)
        # Several processes must stop at the same chunk: there a signal interrupts at once.
        with stop.deferred(jax.process_count() == 1):
            runner.run(driver, store, out, checkpoint_every=args.checkpoint_every,
                           on_chunk=progress.update, save=save, should_stop=stop.requested)
        progress.close()
        if not driver.done:
            print(f"interrupted by {signal.Signals(stop.signum).name}: checkpoint written"
                  f"{stop.hint()}", file=sys.stderr)
            return 128 + stop.signum
        stop.out = None  # complete: nothing left to resume
        elapsed = time.perf_counter() - started
        best = store.best()
        # Per bucket, the wall time of its first chunk: compilation plus one chunk of training
        # (the compilation dominates; a warm compilation cache shrinks it).
        first_chunk_s = {buckets.bucket_json(b.key): b.first_chunk_s
                         for b in driver.buckets.values()}
        info.update(end_time=_now(), member_steps=driver.member_steps, wall_s=elapsed,
                    first_chunk_s=first_chunk_s)
        store_lib.atomic_write_json(sweep_json, info)
        if best is not None:
            store_lib.atomic_write_json(out / "best.json", best)
        _print_summary(store, out, best, elapsed)
    finally:
        store.close()
    if not args.no_report and jax.process_count() > 1:
        print(f"multi-process sweep: run `python -m jaxae.report {out}` for the report")
    elif not args.no_report:
        try:
            from jaxae import report
        except ImportError:
            report = None
        if report is not None:
            report.main([str(out)])
    return 0


def _resume(driver: Any, out: Path, fingerprint: dict[str, str]) -> store_lib.TrialStore:
    """Restores ``driver`` from the checkpoint in ``out`` and opens the store, refusing a
    checkpoint of another sweep or a damaged one, and a store that lost what the checkpoint
    recorded."""
    from jaxae import runner

    checkpoint = out / runner.CHECKPOINT
    db = out / "trials.db"
    what = f"--resume: checkpoint {str(checkpoint)!r}"
    try:
        data = checkpoint.read_bytes()
    except FileNotFoundError:
        data = None  # killed before its first checkpoint: the sweep restarts and replays
    except OSError as e:
        raise UserError(f"{what} cannot be read: {e.strerror or e}") from None
    contents = None if data is None else checkpoint_lib.unwrap(data, fingerprint, what=what)
    recorded = {} if contents is None else contents.store
    if recorded.get("trials") and not db.exists():
        raise UserError(f"--resume: {str(db)!r} is missing, but the checkpoint recorded "
                        f"{len(recorded['trials'])} trial(s) in it; the sweep cannot be "
                        "completed (start a new one)")
    store = store_lib.TrialStore(db)
    try:
        problems = store.missing(recorded)
        if problems:
            raise UserError(f"--resume: {str(db)!r} holds less than the checkpoint recorded "
                            f"({'; '.join(problems)}); the sweep cannot be completed from it "
                            "(start a new one)")
        if contents is not None:
            try:
                driver.restore(contents.state)
            except Exception as e:  # intact but unusable: written by an incompatible version
                raise UserError(f"{what} cannot be restored ({type(e).__name__}): written by an "
                                "incompatible jaxae version") from None
    except BaseException:
        store.close()
        raise
    return store


def _run_secondary(args: argparse.Namespace, driver: Any, out: Path,
                   fingerprint: dict[str, str]) -> int:
    """A non-zero process of a multi-process sweep: the same loop, nothing written."""
    from jaxae import runner

    checkpoint = out / runner.CHECKPOINT
    if args.resume and checkpoint.exists():
        what = f"--resume: checkpoint {str(checkpoint)!r}"
        driver.restore(checkpoint_lib.unwrap(checkpoint.read_bytes(), fingerprint,
                                             what=what).state)
    store = store_lib.TrialStore(":memory:")
    try:
        runner.run(driver, store, out, write=False)
    finally:
        store.close()
    return 0


class _Interrupted(BaseException):  # noqa: N818 -- a signal, not an error (as KeyboardInterrupt)
    """SIGINT or SIGTERM outside the training loop."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _StopOnSignal:
    """SIGINT and SIGTERM during a sweep. Inside ``deferred()`` (the training loop) the first
    signal only asks the loop to stop after its current chunk, which then writes a checkpoint,
    so a sweep is never cut mid-write; elsewhere, or at a second signal, it interrupts at once
    (``_Interrupted``)."""

    def __init__(self) -> None:
        # Handlers can only be installed from the main thread (a library caller may use others).
        self.enabled = threading.current_thread() is threading.main_thread()
        self.signum: int | None = None
        self.out: Path | None = None  # a sweep that can be resumed once interrupted
        self._defer = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self._defer and self.signum is None:
            self.signum = signum
            return
        raise _Interrupted(signum)

    def requested(self) -> bool:
        return self.signum is not None

    def hint(self) -> str:
        if self.out is None or not (self.out / "sweep.json").exists():
            return ""
        return f"; continue with: python -m jaxae.sweep --resume --out {shlex.quote(str(self.out))}"

    @contextlib.contextmanager
    def deferred(self, enabled: bool = True) -> Iterator[None]:
        self._defer = enabled
        try:
            yield
        finally:
            self._defer = False

    def __enter__(self) -> _StopOnSignal:
        if self.enabled:
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class _Progress:
    """A tqdm bar over trials that have reported at least once (multi-fidelity trials report at
    their first rung long before they settle). It says when the first programs are compiling,
    shows the best completed loss (before any trial completes, the best loss at the highest
    budget reached, with that budget), the trials still training once all have reported, and
    member-steps per second. On ``--resume`` it starts from the trials already reported."""

    def __init__(self, config: config_lib.SweepConfig, driver: Any, enabled: bool) -> None:
        self.bar = None
        self.label = f"{config.model}/{config.searcher}"
        self.best = math.inf
        self.best_at: dict[int, float] = {}  # budget -> best loss told at it
        self.shown_best = ""
        self.reported: set[int] = driver.reported()
        self.t0 = time.perf_counter()
        self.steps0 = driver.member_steps
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=config.trials, initial=len(self.reported), desc=self.label,
                            unit="trial", file=sys.stderr, dynamic_ncols=True)
            self.bar.set_postfix_str("compiling the first programs (a warm cache skips this)")

    def best_text(self) -> str:
        if math.isfinite(self.best) or not self.best_at:
            return f"{self.best:.4g}"
        budget = max(self.best_at)
        return f"{self.best_at[budget]:.4g}@{budget}steps"

    def update(self, driver: Any, events: list) -> None:
        new = {e.trial for e in events if e.told or e.status != "running"} - self.reported
        self.reported |= new
        for e in events:
            if not math.isfinite(e.val_loss):
                continue
            if e.status == "completed":
                self.best = min(self.best, e.val_loss)
            if e.told:
                self.best_at[e.budget] = min(self.best_at.get(e.budget, math.inf), e.val_loss)
        if self.bar is not None:
            rate = (driver.member_steps - self.steps0) / max(time.perf_counter() - self.t0, 1e-9)
            finishing = len(self.reported) >= (self.bar.total or 0) and driver.running
            self.bar.set_description(f"{self.label} (finishing)" if finishing else self.label,
                                     refresh=False)
            best = self.best_text()
            self.bar.set_postfix({"best": best, "training": len(driver.running),
                                  "member-steps/s": f"{rate:,.0f}"}, refresh=False)
            if best != self.shown_best:  # a new best is shown at once, however fast chunks go
                self.shown_best = best
                self.bar.refresh()
            self.bar.update(len(new))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _print_summary(store: Any, out: Path, best: dict | None, elapsed: float) -> None:
    trials = store.trials()
    counts: dict[str, int] = {}
    for t in trials:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    print(f"\n{len(trials)} trials in {elapsed:.1f} s: "
          + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    done = sorted((t for t in trials if t["status"] == "completed" and t["val_loss"] is not None),
                  key=lambda t: (t["val_loss"], t["trial_id"]))[:5]
    if done:
        names = sorted({k for t in done for k in t["params"]
                        if len({json.dumps(u["params"].get(k)) for u in trials}) > 1})
        header = ["trial", "val_loss", *names]
        rows = [[str(t["trial_id"]), f"{t['val_loss']:.5g}",
                 *[_fmt(t["params"].get(k)) for k in names]] for t in done]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        print("top configurations:")
        for r in [header, *rows]:
            print("  " + "  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
    if best is None:
        print("no trial completed with a finite validation loss")
    print(f"results: {out / 'trials.db'}\n         {out / 'best.json'}\n         "
          f"{out / 'sweep.json'}")
    sys.stdout.flush()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from jaxae import runtime

    try:
        runtime.use_cpu_cores()  # before anything starts JAX's backends
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(main())
