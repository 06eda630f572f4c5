"""``python -m jaxae.sweep``: sweep autoencoder hyperparameters with a population trainer.

With no options it runs a useful default sweep (ASHA over learning rate, weight decay, code size,
width and activation of a plain autoencoder on scikit-learn's digits) that finishes in a few
minutes on a laptop CPU, and prints where its results are.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from jaxae import config as config_lib
from jaxae.errors import UserError

RESULT_FILES = ("trials.db", "sweep.json", "best.json")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jaxae.sweep",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Settings come from the defaults, then --config FILE.toml ([sweep] and [space] "
        "tables), then these flags. Outputs: DIR/trials.db (SQLite), DIR/best.json, "
        "DIR/sweep.json, DIR/report/.",
    )
    d = config_lib.SweepConfig()
    add = p.add_argument
    add("--model", choices=config_lib.hparams.MODELS, default=None,
        help=f"autoencoder kind [default: {d.model}]")
    add("--searcher", choices=config_lib.SEARCHERS, default=None,
        help=f"how configurations are chosen; sha / hyperband / asha stop poor trials early "
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
        help="continue the sweep in --out after a crash or kill, from its last checkpoint")
    add("--repeats", type=int, default=None, metavar="K",
        help=f"seeds per configuration (replicates); the searcher sees their aggregate "
        f"[default: {d.repeats}]")
    add("--aggregate", choices=config_lib.AGGREGATES, default=None,
        help="how replicates are combined [default: mean]")
    add("--crn", action="store_true", default=None,
        help="common random numbers: replicate r of every trial sees the same data order")
    add("--eta", type=int, default=None, help=f"reduction factor of sha / hyperband / asha "
        f"[default: {d.eta}]")
    add("--min-steps", type=int, default=None, dest="min_steps",
        help="lowest budget of sha / hyperband / asha [default: steps // eta**3]")
    add("--sampler", choices=config_lib.SAMPLERS, default=None,
        help="where sha / hyperband / asha get new configurations [default: random]")
    add("--precision", choices=("float32", "tf32", "bfloat16"), default=None,
        help="matmul precision; parameters stay float32 [default: float32]")
    add("--chunk", type=int, default=None,
        help=f"steps trained per jitted call between evaluations [default: {d.chunk}]")
    add("--checkpoint-every", type=float, default=30.0, metavar="SECONDS",
        help="seconds between checkpoints (0: after every chunk)")
    add("--no-report", action="store_true", help="skip the report at the end")
    add("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return _run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # the device ran out of memory: say what to change, not a traceback
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        print("error: out of device memory; lower --population (or the widths in [space]), or "
              "set JAXAE_MEMORY_BUDGET to train fewer slots at a time; the sweep can be continued "
              "with --resume", file=sys.stderr)
        return 2


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    settings = config_lib.read_toml(args.config) if args.config else {}
    for name in ("model", "searcher", "population", "trials", "steps", "seed", "data", "repeats",
                 "aggregate", "crn", "eta", "min_steps", "sampler", "chunk", "precision"):
        value = getattr(args, name)
        if value is not None:
            settings[name] = value
    return settings


def _prepare_out(args: argparse.Namespace, config: config_lib.SweepConfig) -> Path:
    if args.out is None:
        if args.resume:
            raise UserError("--resume needs --out DIR naming the sweep to continue")
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"{config.model}-{config.searcher}-{stamp}"
    else:
        out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} exists and is not a directory")
    if args.resume:
        if not (out / "sweep.json").exists():
            raise UserError(f"--resume: {str(out)!r} holds no sweep (no sweep.json)")
        _check_same_sweep(out, config)
        return out
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {str(out)!r} is not empty; choose a new directory or pass "
                        "--resume to continue the sweep in it")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"--out {str(out)!r} is not writable: {e.strerror or e}") from None
    return out


def _check_same_sweep(out: Path, config: config_lib.SweepConfig) -> None:
    try:
        before = json.loads((out / "sweep.json").read_text())["config"]
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"--resume: {str(out / 'sweep.json')!r} is unreadable: {e}") from None
    now = json.loads(json.dumps(config.to_dict()))
    for key in sorted(set(before) | set(now)):
        if before.get(key) != now.get(key):
            raise UserError(f"--resume: setting {key!r} differs from the sweep in {str(out)!r} "
                            f"(was {before.get(key)!r}, now {now.get(key)!r})")


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


def _run(args: argparse.Namespace) -> int:
    config = config_lib.build(_settings(args))
    from jaxae import runtime

    runtime.initialize_distributed()
    runtime.enable_compilation_cache()
    import jax

    # Several processes run the same deterministic driver, each on its own devices; process 0
    # alone writes the outputs (the others keep their store in memory).
    primary = jax.process_index() == 0
    # Data problems are found before anything is written.
    from jaxae import data as data_lib

    dataset = data_lib.load(config.data, seed=config.seed)
    if primary or args.resume:
        out = _prepare_out(args, config)
    else:
        out = Path(args.out) if args.out else Path("runs") / "process-0-writes"

    from jaxae import driver as driver_lib
    from jaxae.store import TrialStore, atomic_write_json

    driver = driver_lib.Driver(config, dataset)
    sweep_json = out / "sweep.json"
    if not primary:
        return _run_secondary(args, driver, out)
    if args.resume:
        info = json.loads(sweep_json.read_text())
        checkpoint = out / driver_lib.CHECKPOINT
        if checkpoint.exists():
            try:
                driver.restore(checkpoint.read_bytes())
            except Exception as e:  # a damaged checkpoint is the user's file, not our bug
                raise UserError(f"--resume: checkpoint {str(checkpoint)!r} cannot be restored "
                                f"({type(e).__name__}): damaged, or written by an incompatible "
                                f"jaxae version") from None
        info["resumed"] = info.get("resumed", []) + [_now()]
    else:
        info = {"config": config.to_dict(), "start_time": _now(), "end_time": None,
                "data": {"name": dataset.name, "train": len(dataset.train.x),
                         "val": len(dataset.val.x), "test": len(dataset.test.x),
                         "features": dataset.features},
                **_environment()}
    atomic_write_json(sweep_json, info)
    store = TrialStore(out / "trials.db")
    try:
        started = time.perf_counter()
        progress = _Progress(config, driver, enabled=not args.no_progress)
        driver_lib.run(driver, store, out, checkpoint_every=args.checkpoint_every,
                       on_chunk=progress.update)
        progress.close()
        elapsed = time.perf_counter() - started
        best = store.best()
        # Per bucket, the wall time of its first chunk: compilation plus one chunk of training
        # (the compilation dominates; a warm compilation cache shrinks it).
        first_chunk_s = {json.dumps(dict(zip(config_lib.hparams.BUCKET_NAMES, b.key,
                                             strict=True)), sort_keys=True): b.first_chunk_s
                         for b in driver.buckets.values()}
        info.update(end_time=_now(), member_steps=driver.member_steps, wall_s=elapsed,
                    first_chunk_s=first_chunk_s)
        atomic_write_json(sweep_json, info)
        if best is not None:
            atomic_write_json(out / "best.json", best)
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


def _run_secondary(args: argparse.Namespace, driver: Any, out: Path) -> int:
    """A non-zero process of a multi-process sweep: the same loop, nothing written."""
    from jaxae import driver as driver_lib
    from jaxae.store import TrialStore

    checkpoint = out / driver_lib.CHECKPOINT
    if args.resume and checkpoint.exists():
        driver.restore(checkpoint.read_bytes())
    store = TrialStore(":memory:")
    try:
        driver_lib.run(driver, store, out, write=False)
    finally:
        store.close()
    return 0


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class _Progress:
    """A tqdm bar over trials that have reported at least once (multi-fidelity trials report at
    their first rung long before they settle), with the best completed loss and member-steps/s."""

    def __init__(self, config: config_lib.SweepConfig, driver: Any, enabled: bool) -> None:
        self.bar = None
        self.best = math.inf
        self.reported: set[int] = set()
        self.t0 = time.perf_counter()
        self.steps0 = driver.member_steps
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=config.trials, desc=f"{config.model}/{config.searcher}",
                            unit="trial", file=sys.stderr, dynamic_ncols=True)

    def update(self, driver: Any, events: list) -> None:
        new = {e.trial for e in events if e.told or e.status != "running"} - self.reported
        self.reported |= new
        for e in events:
            if e.status == "completed" and math.isfinite(e.val_loss):
                self.best = min(self.best, e.val_loss)
        if self.bar is not None:
            rate = (driver.member_steps - self.steps0) / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.set_postfix(best=f"{self.best:.4g}", running=len(driver.running),
                                 steps_per_s=f"{rate:,.0f}", refresh=False)
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
