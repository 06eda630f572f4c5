"""``python -m jaxae.sweep``: sweep autoencoder hyperparameters with a population trainer.

With no options it runs a useful default sweep (ASHA over learning rate, weight decay, code size,
width and activation of a plain autoencoder on scikit-learn's digits) that finishes in a few
minutes on a laptop CPU, and prints where its results are.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import signal
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from jaxae import checkpoint as checkpoint_lib
from jaxae import config as config_lib
from jaxae import console, outdir
from jaxae import store as store_lib
from jaxae.errors import UserError
from jaxae.models import PRECISION_NAMES
from jaxae.signals import Interrupted, StopOnSignal

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
    add("--curve-examples", type=int, default=None, metavar="N", dest="curve_examples",
        help="validation examples of each learning-curve point (the split's first N; 0: all); "
        "a trial's loss always uses the whole split [default: 1024]")
    add("--checkpoint-every", type=float, default=CHECKPOINT_EVERY, metavar="SECONDS",
        help=f"seconds between checkpoints (0: after every chunk) [default: {CHECKPOINT_EVERY:g}]")
    add("--no-report", action="store_true", help="skip the report at the end")
    add("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    stop = StopOnSignal()
    try:
        with stop:
            return _run(args, stop)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Interrupted) as e:  # outside the training loop, which stops
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT  # cleanly itself
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
                  "pbt_ready", "pbt_fraction", "pbt_resample", "curve_examples")


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


def _run(args: argparse.Namespace, stop: StopOnSignal) -> int:
    every = args.checkpoint_every
    if math.isnan(every) or every < 0:
        raise UserError(f"--checkpoint-every {every:g} must be a number of seconds >= 0")
    settings, origins = _settings(args)
    info = None
    if args.resume:
        if args.out is None:
            raise UserError("--resume needs --out DIR naming the sweep to continue")
        out = outdir.path(Path(args.out), "--resume: --out")
        info = outdir.read_info(out)
        config = outdir.resumed_config(out, info, settings, origins)
    else:
        config = config_lib.build(settings, origins)
        if args.out is None:
            stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            out = Path("runs") / f"{config.model}-{config.searcher}-{stamp}"
        else:
            out = outdir.path(Path(args.out), "--out")
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
        outdir.check_data(out, info, fingerprint)
    if config.searcher == "pbt":
        from jaxae import pbt

        driver = pbt.PBTDriver(config, dataset)
    else:
        driver = driver_lib.Driver(config, dataset)
    memory.check(config, dataset.features, len(dataset.train), len(dataset.val), driver.capacity,
                 host_data=sum(a.nbytes for a in arrays.values() if a is not None),
                 devices=driver.mesh.size)
    if not primary:
        return _run_secondary(args, driver, out, fingerprint)
    lock = outdir.own(out, args.resume)
    stop.out = out
    try:
        return _sweep(args, config, dataset, driver, out, info, fingerprint, stop)
    finally:
        lock.release()


def _sweep(args: argparse.Namespace, config: config_lib.SweepConfig, dataset: Any, driver: Any,
           out: Path, info: dict[str, Any] | None, fingerprint: dict[str, str],
           stop: StopOnSignal) -> int:
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
        progress = console.Progress(config, driver, enabled=not args.no_progress)
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
        console.print_summary(store, out, best, elapsed)
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


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from jaxae import runtime

    try:
        runtime.use_cpu_cores()  # before anything starts JAX's backends
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(main())
