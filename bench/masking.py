"""What masking costs: members of one true size trained inside larger padded shapes.

Width (``hidden``) and code size (``latent_dim``) are not compiled into the program per member:
a population's ``TrainSpec`` holds their padded maxima and each member's own ``hidden`` /
``latent_dim`` hyperparameters mask the units it does not use. The masked units still cost their
FLOPs. This benchmark puts a number on that, timing side by side in one run:

* ``fixed``: ``P`` members of true size ``(hidden h, latent l)`` in a population whose spec is
  exactly ``(h, l)``: no padding, the baseline.
* ``pad-both`` / ``pad-hidden`` / ``pad-latent`` (one per factor ``k > 1`` of ``--pads``): the same
  members (same hyperparameters and keys) in a population padded to ``(k h, k l)``, ``(k h, l)``
  or ``(h, k l)``.
* ``mixed``: the realistic sweep case. ``P`` members whose sizes are drawn log-uniformly (as the
  default search space draws them) from ``[h / 4, H]`` and ``[l / 4, L]``, where ``(H, L)`` is the
  largest padding, ``(max(pads) h, max(pads) l)``, in a population padded to ``(H, L)``.

All members are ``ae`` / relu / mse / adam with learning rates log-spaced over [1e-4, 1e-2] and
keys from ``population.trial_keys(--seed, t)``. Every case is built with ``population.create`` /
``assign`` and trained with ``population.train_chunk`` (one vmapped program, the library's one
training step). Compilation is excluded and reported as ``compile_s``; then each of ``--repeats``
rounds times every case once from the same initial state, and the best round is reported.

FLOPs are counted analytically for the dense layers (``2 * batch * in * out`` forward, x3 for a
training step; elementwise work not counted, as in ``throughput.py``).
``useful_gflops_per_s`` counts the FLOPs of the members' true-size models (for ``mixed``: each
member's own size), ``padded_gflops_per_s`` the FLOPs the padded program computes;
``useful_fraction`` is their ratio. ``ratio_vs_fixed`` is the case's member-steps/s over
``fixed``'s; for ``mixed`` compare ``useful_gflops_per_s`` instead (its members are not of size
``(h, l)``).

The padded cases start from the same keys but not from the same initial weights: the padded
kernel is drawn at the padded shape and then masked, so the used block holds other draws (of the
same distribution) than the unpadded model's. Their losses therefore match the fixed case's only
in distribution; ``final_loss_median`` (the median over members of the mean training loss of the
last tenth of the steps, first timed round) shows that they train alike.

Output: one JSON line per case with ``case``, ``population``, ``steps``, ``hidden``, ``latent``
(for ``mixed``: the members' mean), ``padded_hidden``, ``padded_latent``, ``member_steps_per_s``,
``useful_gflops_per_s``, ``padded_gflops_per_s``, ``ratio_vs_fixed``, ``device``, ``compile_s``
and the settings.

Example:
    python bench/masking.py --population 32 --steps 200 --hidden 64 --latent 16 --batch 128 \
        --data digits --pads 1,2,4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from throughput import (  # the sibling bench script: python puts bench/ on sys.path
    int_list,
    load_data,
)

from jaxae import grouping, hparams, placement, runtime
from jaxae import population as P
from jaxae.models import ModelSpec

AXES = ("both", "hidden", "latent")


def step_flops(features: int, hidden: int, latent: int, batch: int) -> float:
    """Analytic FLOPs of one training step of a depth-1 ``ae`` of this size."""
    layers = [(features, hidden), (hidden, latent), (latent, hidden), (hidden, features)]
    return 3.0 * sum(2 * batch * i * o for i, o in layers)


def log_uniform_ints(rng: np.random.Generator, low: int, high: int, n: int) -> np.ndarray:
    """``n`` integers log-uniform over [low, high] (both included)."""
    u = rng.uniform(np.log(low), np.log(high + 1), size=n)
    return np.minimum(np.floor(np.exp(u)), high).astype(int)


def make_members(args: argparse.Namespace, hidden: Sequence[int], latent: Sequence[int]
                 ) -> list[placement.Member]:
    """Members t = 0..P-1 of the given sizes; learning rates log-spaced over [1e-4, 1e-2]."""
    n = len(hidden)
    lrs = np.geomspace(1e-4, 1e-2, n) if n > 1 else np.array([1e-3])
    return [
        placement.Member(
            t,
            hparams.resolve("ae", {"hidden": int(h), "latent_dim": int(z),
                                           "learning_rate": float(lr), "batch_size": args.batch}),
            args.steps,
            P.trial_keys(args.seed, t),
        )
        for t, (h, z, lr) in enumerate(zip(hidden, latent, lrs, strict=True))
    ]


def cases(args: argparse.Namespace) -> list[dict]:
    """Every case to time: its name, padded shape and members' true sizes."""
    h, z, n = args.hidden, args.latent, args.population
    out = [{"case": "fixed", "pad": 1, "padded": (h, z), "sizes": ([h] * n, [z] * n)}]
    for k in args.pads:
        if k == 1:
            continue
        shapes = {"both": (k * h, k * z), "hidden": (k * h, z), "latent": (h, k * z)}
        for axis in args.pad_axes:
            out.append({"case": f"pad-{axis}", "pad": k, "padded": shapes[axis],
                        "sizes": ([h] * n, [z] * n)})
    if args.mixed:
        big = max(args.pads)
        hmax, zmax = big * h, big * z
        rng = np.random.default_rng(args.seed)
        sizes = (log_uniform_ints(rng, max(1, h // 4), hmax, n),
                 log_uniform_ints(rng, max(1, z // 4), zmax, n))
        out.append({"case": "mixed", "pad": big, "padded": (hmax, zmax), "sizes": sizes})
    return out


def run(args: argparse.Namespace) -> list[dict]:
    x = jnp.asarray(load_data(args.data, args.seed))
    features = int(x.shape[1])
    steps = args.steps
    prepared = []
    for c in cases(args):
        ph, pz = c["padded"]
        spec = P.TrainSpec(ModelSpec("ae", features, ph, pz, 1, "relu", "mse"), "adam",
                           args.batch)
        members = make_members(args, *c["sizes"])
        pop = placement.assign(spec, placement.create(spec, args.population),
                               list(range(args.population)), members)
        host = jax.device_get(pop)  # the initial state every round starts from
        t0 = time.perf_counter()
        compiled = P.train_chunk.lower(spec, pop, x, steps).compile()
        prepared.append({**c, "spec": spec, "host": host, "compiled": compiled,
                         "compile_s": time.perf_counter() - t0, "times": []})

    for c in prepared:  # one untimed warm-up run each: first-call costs stay out of the rounds
        jax.block_until_ready(c["compiled"](jax.device_put(c["host"]), x))
    first_losses: dict[int, np.ndarray] = {}
    for r in range(args.repeats):  # rounds: every case once per round, side by side
        for c in prepared:
            p = jax.block_until_ready(jax.device_put(c["host"]))
            t0 = time.perf_counter()
            _, losses = jax.block_until_ready(c["compiled"](p, x))
            c["times"].append(time.perf_counter() - t0)
            if r == 0:
                first_losses[id(c)] = np.asarray(losses)

    fixed_rate = args.population * steps / min(prepared[0]["times"])
    tail = max(1, steps // 10)
    rows = []
    for c in prepared:
        hs, zs = (np.asarray(s) for s in c["sizes"])
        ph, pz = c["padded"]
        useful = float(np.mean([step_flops(features, int(a), int(b), args.batch)
                                for a, b in zip(hs, zs, strict=True)]))
        padded = step_flops(features, ph, pz, args.batch)
        best = min(c["times"])
        rate = args.population * steps / best
        final = np.nanmean(first_losses[id(c)][:, -tail:], axis=1)  # [members]
        rows.append({
            "case": c["case"],
            "population": args.population,
            "steps": steps,
            "hidden": float(hs.mean()) if c["case"] == "mixed" else int(hs[0]),
            "latent": float(zs.mean()) if c["case"] == "mixed" else int(zs[0]),
            "padded_hidden": ph,
            "padded_latent": pz,
            "pad": c["pad"],
            "member_steps_per_s": rate,
            "useful_gflops_per_s": rate * useful / 1e9,
            "padded_gflops_per_s": rate * padded / 1e9,
            "useful_fraction": useful / padded,
            "ratio_vs_fixed": rate / fixed_rate,
            "device": runtime.device_name(),
            "compile_s": c["compile_s"],
            "time_s": best,
            "time_s_median": statistics.median(c["times"]),
            "repeats": args.repeats,
            "final_loss_median": float(np.nanmedian(final)),
            "hidden_range": [int(hs.min()), int(hs.max())],
            "latent_range": [int(zs.min()), int(zs.max())],
            "useful_flops_per_member_step": useful,
            "padded_flops_per_member_step": padded,
            "batch": args.batch,
            "data": args.data,
            "features": features,
            "group_size": grouping.group_size(c["spec"], args.population),
            "jax": jax.__version__,
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
        })
    return rows


def axis_list(text: str) -> list[str]:
    axes = [a.strip() for a in text.split(",") if a.strip()]
    if not axes or set(axes) - set(AXES):
        raise argparse.ArgumentTypeError(f"axes must be among {','.join(AXES)}: {text!r}")
    return axes


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Member-steps per second of members of one true size trained in a population "
        "of exactly that shape against populations padded to larger widths / code sizes, and of "
        "a population of mixed sizes. Prints JSON lines.",
    )
    parser.add_argument("--population", type=int, default=32, help="members P (default 32)")
    parser.add_argument("--steps", type=int, default=200, help="training steps per member")
    parser.add_argument("--hidden", type=int, default=64, help="true hidden width h (default 64)")
    parser.add_argument("--latent", type=int, default=16, help="true code size l (default 16)")
    parser.add_argument("--pads", type=int_list, default=[1, 2, 4],
                        help="padding factors k: padded shapes k*h, k*l (default 1,2,4)")
    parser.add_argument("--pad-axes", type=axis_list, default=list(AXES),
                        help="what each factor pads: comma-separated subset of both,hidden,latent "
                        "(default all three)")
    parser.add_argument("--mixed", action=argparse.BooleanOptionalAction, default=True,
                        help="also time a population of random sizes in [h/4, max(pads)*h] x "
                        "[l/4, max(pads)*l] padded to the maxima (default on)")
    parser.add_argument("--batch", type=int, default=128, help="mini-batch size (default 128)")
    parser.add_argument("--data", choices=("digits", "mnist-shape"), default="digits",
                        help="digits: sklearn's 1797 x 64; mnist-shape: random [10000, 784] "
                        "pixels in [0, 1] (no download)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timing rounds; the best round is reported (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of keys and mixed sizes")
    args = parser.parse_args(argv)
    for name in ("population", "steps", "hidden", "latent", "batch", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for row in run(args):
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
