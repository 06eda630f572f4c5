"""Training throughput of a population: one vmapped program against one member at a time.

The same ``P`` members (same hyperparameters, same init and data keys) are trained three ways, and
every way calls the one training step of the library, ``population.member_step``:

* ``vmap``: ``population.train_chunk`` on a population of ``P`` (vmap over slots, scan over steps).
* ``sequential``: for each member, ``train_chunk`` on a population of 1 holding only that member.
  One compiled program serves every member (compiled once); the member's result is waited for
  before the next one starts, as a tuner that runs trials one after another does.
* ``loop``: for each member, a Python ``for`` loop over steps around ``jax.jit(member_step)``, the
  way code written for a per-trial tuner trains. With ``--sync-every-step`` (the default) the loop
  reads the loss back every step (``float(loss)``), as such loops do to log or prune; with
  ``--no-sync-every-step`` it only waits at the end of each member. Because this case is slow, only
  ``--loop-members`` members (default ``min(P, 8)``, evenly spread over the population) are timed,
  and its throughput is per member-step of those members.

Compilation is excluded from the timings and reported separately (``compile_s``). All cases are
compiled first, then timed side by side: each of ``--repeats`` rounds times every case once, so
load from other processes hits the cases alike; the reported time is the best round (``time_s``;
the median is ``time_s_median``). Every round starts from the same initial state.

Model FLOPs (``flops_per_member_step``) are counted analytically for the MLP: a dense layer of
``in x out`` costs ``2 * batch * in * out`` FLOPs forward; a training step costs forward + backward
~= 3x forward (the backward pass computes the input and the weight gradients, each a matmul of the
forward's size). Elementwise work (activations, Adam) is not counted. The contractive kind adds the
encoder Jacobian, one vector-Jacobian product per code unit and its gradient, counted likewise as
~3 x latent_dim x encoder forward (an estimate). ``xla_flops_per_member_step`` is XLA's own count
(``cost_analysis``) of the compiled ``jit(member_step)``, elementwise operations included, as a
cross-check.

Output: one JSON line per case (and per grid point with ``--sweep-populations`` /
``--sweep-hidden``), with keys ``case``, ``population``, ``steps``, ``member_steps_per_s``,
``model_gflops_per_s``, ``device``, ``compile_s``, ``ratio_vs_sequential``, ``ratio_vs_loop`` and
the settings.

Example:
    python bench/throughput.py --population 64 --steps 300 --hidden 64 --latent 16 --batch 128 \
        --data digits
    python bench/throughput.py --sweep-populations 1,8,32,128 --sweep-hidden 64,256 --steps 100
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxae import hparams
from jaxae import population as P
from jaxae.data import load_digits
from jaxae.models import ModelSpec

CASES = ("vmap", "sequential", "loop")


def load_data(name: str, seed: int) -> np.ndarray:
    """Training inputs [n, features] in [0, 1]: the digits, or MNIST-shaped random pixels."""
    if name == "digits":
        return load_digits()[0]
    rng = np.random.default_rng(seed)  # 8-bit pixels like MNIST's, no download
    return (rng.integers(0, 256, size=(10000, 784)) / 255.0).astype(np.float32)


def dense_layers(spec: ModelSpec) -> list[tuple[int, int]]:
    """(in, out) of every dense layer of the autoencoder, encoder first."""
    enc = [(spec.features, spec.hidden)] + [(spec.hidden, spec.hidden)] * (spec.depth - 1)
    code = [(spec.hidden, spec.latent_dim)] * (2 if spec.variational else 1)
    dec = [(spec.latent_dim, spec.hidden)] + [(spec.hidden, spec.hidden)] * (spec.depth - 1)
    return enc + code + dec + [(spec.hidden, spec.features)]


def model_flops_per_step(spec: P.TrainSpec) -> float:
    """Analytic FLOPs of one member's training step (see the module docstring)."""
    b = spec.batch_size
    forward = sum(2 * b * i * o for i, o in dense_layers(spec.model))
    flops = 3 * forward
    if spec.model.kind == "contractive":
        enc = dense_layers(spec.model)[: spec.model.depth + 1]
        flops += 3 * spec.model.latent_dim * sum(2 * b * i * o for i, o in enc)
    return float(flops)


def xla_flops(compiled) -> float | None:
    """XLA's flop count of a compiled program, when the backend reports one."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # not every backend implements it
        return None
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def make_members(args: argparse.Namespace, hidden: int, population: int) -> list[P.Member]:
    """The benchmarked members: learning rates log-spaced over [1e-4, 1e-2], keys from the seed."""
    lrs = np.geomspace(1e-4, 1e-2, population) if population > 1 else np.array([1e-3])
    sizes = {"hidden": hidden, "latent_dim": args.latent}
    return [
        P.Member(
            t,
            hparams.resolve(args.model, {**sizes, "learning_rate": float(lr)}),
            args.steps,
            P.trial_keys(args.seed, t),
        )
        for t, lr in enumerate(lrs)
    ]


def device_name() -> str:
    d = jax.devices()[0]
    name = f"{d.platform}:{d.device_kind}"
    return f"{name} ({os.cpu_count()} cores)" if d.platform == "cpu" else name


def run_point(args: argparse.Namespace, x: jax.Array, population: int, hidden: int) -> list[dict]:
    """Compiles and times every requested case for one (population, hidden); one dict per case."""
    loss = args.loss or hparams.defaults(args.model)["loss"]
    model = ModelSpec(args.model, int(x.shape[1]), hidden, args.latent, args.depth, "relu", loss)
    spec = P.TrainSpec(model, args.optimizer, args.batch)
    members = make_members(args, hidden, population)
    pop = P.assign(spec, P.create(spec, population), list(range(population)), members)
    host = jax.device_get(pop)  # the initial state every round starts from
    steps = args.steps

    timers: dict[str, Callable[[], float]] = {}
    compile_s: dict[str, float] = {}
    timed_members: dict[str, int] = {}

    def compile_timed(case: str, lower: Callable[[], object]):
        t0 = time.perf_counter()
        compiled = lower().compile()
        compile_s[case] = time.perf_counter() - t0
        return compiled

    # The per-step program is compiled in every run: XLA's flop count comes from it.
    step_fn = jax.jit(P.member_step, static_argnums=(0,), donate_argnums=(2,))
    one = jax.tree.map(lambda a: a[0], host)
    step_compiled = compile_timed("loop", lambda: step_fn.lower(spec, x, jax.device_put(one)))
    xla_step_flops = xla_flops(step_compiled)

    if "vmap" in args.cases:
        chunk = compile_timed("vmap", lambda: P.train_chunk.lower(spec, pop, x, steps))
        timed_members["vmap"] = population

        def time_vmap() -> float:
            p = jax.block_until_ready(jax.device_put(host))
            t0 = time.perf_counter()
            jax.block_until_ready(chunk(p, x))
            return time.perf_counter() - t0

        timers["vmap"] = time_vmap

    if "sequential" in args.cases:
        solos = [jax.tree.map(lambda a, i=i: a[i : i + 1], host) for i in range(population)]
        solo_chunk = compile_timed(
            "sequential", lambda: P.train_chunk.lower(spec, jax.device_put(solos[0]), x, steps)
        )
        timed_members["sequential"] = population

        def time_sequential() -> float:
            ps = jax.block_until_ready([jax.device_put(s) for s in solos])
            t0 = time.perf_counter()
            for p in ps:  # one trial after another, each waited for
                jax.block_until_ready(solo_chunk(p, x))
            return time.perf_counter() - t0

        timers["sequential"] = time_sequential

    if "loop" in args.cases:
        count = min(population, args.loop_members or min(population, 8))
        chosen = np.unique(np.linspace(0, population - 1, count).round().astype(int))
        loop_members = [jax.tree.map(lambda a, i=i: a[i], host) for i in chosen]
        timed_members["loop"] = len(chosen)
        sync = args.sync_every_step
        # The jitted function itself is called, as user code would; the AOT compilation above
        # filled its cache, so the first call does not compile.
        jax.block_until_ready(step_fn(spec, x, jax.device_put(one)))

        def time_loop() -> float:
            ms = jax.block_until_ready([jax.device_put(m) for m in loop_members])
            t0 = time.perf_counter()
            for m in ms:
                for _ in range(steps):
                    m, loss_value = step_fn(spec, x, m)
                    if sync:
                        float(loss_value)
                jax.block_until_ready(m)
            return time.perf_counter() - t0

        timers["loop"] = time_loop

    times: dict[str, list[float]] = {case: [] for case in timers}
    for _ in range(args.repeats):  # rounds: every case once per round, side by side
        for case, timer in timers.items():
            times[case].append(timer())

    flops = model_flops_per_step(spec)
    rows = []
    for case in timers:
        best = min(times[case])
        rate = timed_members[case] * steps / best
        rows.append(
            {
                "case": case,
                "population": population,
                "steps": steps,
                "member_steps_per_s": rate,
                "model_gflops_per_s": rate * flops / 1e9,
                "device": device_name(),
                "compile_s": compile_s[case],
                "time_s": best,
                "time_s_median": statistics.median(times[case]),
                "repeats": args.repeats,
                "members_timed": timed_members[case],
                "model": args.model,
                "hidden": hidden,
                "latent": args.latent,
                "depth": args.depth,
                "batch": args.batch,
                "data": args.data,
                "features": int(x.shape[1]),
                "optimizer": args.optimizer,
                "flops_per_member_step": flops,
                "xla_flops_per_member_step": xla_step_flops,
                "sync_every_step": args.sync_every_step if case == "loop" else None,
                "jax": jax.__version__,
                "xla_flags": os.environ.get("XLA_FLAGS", ""),
            }
        )
    rates = {r["case"]: r["member_steps_per_s"] for r in rows}
    for r in rows:
        for base in ("sequential", "loop"):
            r[f"ratio_vs_{base}"] = r["member_steps_per_s"] / rates[base] if base in rates else None
    return rows


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected integers joined by commas: {text!r}") from err
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers: {text!r}")
    return values


def case_list(text: str) -> list[str]:
    cases = [c.strip() for c in text.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown or not cases:
        raise argparse.ArgumentTypeError(f"cases must be among {','.join(CASES)}: {text!r}")
    return cases


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Member-steps per second of vmapped population training against "
        "sequential and per-step-loop training of the same members. Prints JSON lines.",
    )
    parser.add_argument("--population", type=int, default=64, help="members P (default 64)")
    parser.add_argument("--steps", type=int, default=300, help="training steps per member")
    parser.add_argument("--hidden", type=int, default=64, help="hidden width (default 64)")
    parser.add_argument("--latent", type=int, default=16, help="code size (default 16)")
    parser.add_argument("--depth", type=int, default=1, help="hidden layers per encoder")
    parser.add_argument("--batch", type=int, default=128, help="mini-batch size (default 128)")
    parser.add_argument("--data", choices=("digits", "mnist-shape"), default="digits",
                        help="digits: sklearn's 1797 x 64; mnist-shape: random [10000, 784] "
                        "pixels in [0, 1] (no download)")
    parser.add_argument("--model", choices=hparams.MODELS, default="ae")
    parser.add_argument("--loss", choices=hparams.LOSSES, default=None,
                        help="reconstruction loss (default: the model's default)")
    parser.add_argument("--optimizer", choices=hparams.OPTIMIZERS, default="adam")
    parser.add_argument("--cases", type=case_list, default=list(CASES),
                        help="comma-separated subset of vmap,sequential,loop (default all)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timing rounds; the best round is reported (default 3)")
    parser.add_argument("--loop-members", type=int, default=None,
                        help="members timed in the loop case (default min(P, 8))")
    parser.add_argument("--sync-every-step", action=argparse.BooleanOptionalAction, default=True,
                        help="loop case: read the loss back every step with float(loss), as "
                        "per-trial training loops do for logging / pruning (default on)")
    parser.add_argument("--sweep-populations", type=int_list, default=None,
                        help="e.g. 1,8,32,128: run every case for each population size")
    parser.add_argument("--sweep-hidden", type=int_list, default=None,
                        help="e.g. 64,256: run every case for each hidden width")
    parser.add_argument("--seed", type=int, default=0, help="seed of the members' keys")
    args = parser.parse_args(argv)
    for name in ("population", "steps", "hidden", "latent", "depth", "batch", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.loop_members is not None and args.loop_members < 1:
        parser.error("--loop-members must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    x = jnp.asarray(load_data(args.data, args.seed))
    populations = args.sweep_populations or [args.population]
    widths = args.sweep_hidden or [args.hidden]
    for hidden in widths:
        for population in populations:
            for row in run_point(args, x, population, hidden):
                print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
