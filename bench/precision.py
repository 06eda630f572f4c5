"""What a lower matmul precision does to the losses a sweep ranks: the same members trained at
``float32``, ``tf32`` and ``bfloat16``.

``--population`` members (``ae`` or ``vae``, learning rates log-spaced over [1e-4, 1e-2], keys from
``population.trial_keys``) are trained for ``--steps`` steps at each precision from the same
initial weights and data order, then evaluated on held-out data at float32. Printed per precision
(one JSON line each): the members' validation losses, their relative difference from the float32
run (median and max over members), the Spearman rank correlation of the members' losses with the
float32 ranking, the member-steps/s of the training call, and for scale the relative spread of
the float32 losses across two data-order seeds (``seed_noise_median``): a precision whose
difference is far below the seed noise does not change what a sweep finds.

On a CPU ``tf32`` is plain float32 (XLA's CPU matmuls have no reduced-precision mode); the
difference shows on accelerators.

Example:
    python bench/precision.py --data mnist-shape --hidden 512 --latent 32 --steps 2000
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import jax
import numpy as np
from throughput import load_data  # the sibling bench script

from jaxae import hparams, placement, runtime
from jaxae import population as P
from jaxae.models import PRECISIONS, ModelSpec


def train(args: argparse.Namespace, x: np.ndarray, val: np.ndarray, precision: str,
          seed: int) -> tuple[np.ndarray, float]:
    """Final validation losses [members] and member-steps/s of one precision."""
    model = ModelSpec(args.model, int(x.shape[1]), args.hidden, args.latent, 1, "relu",
                      hparams.defaults(args.model)["loss"], precision)
    spec = P.TrainSpec(model, "adam", args.batch, clip_gradients=False)  # no member clips
    lrs = np.geomspace(1e-4, 1e-2, args.population)
    members = [placement.Member(t, hparams.resolve(args.model, {"learning_rate": float(lr),
                                                                "hidden": args.hidden,
                                                                "latent_dim": args.latent}),
                                args.steps, P.trial_keys(seed, t)) for t, lr in enumerate(lrs)]
    pop = placement.assign(spec, placement.create(spec, args.population),
                           list(range(args.population)), members)
    xd = jax.device_put(x)
    chunk = P.train_chunk.lower(spec, pop, xd, args.steps).compile()
    t0 = time.perf_counter()
    pop, _ = jax.block_until_ready(chunk(pop, xd))
    elapsed = time.perf_counter() - t0
    # Evaluated at float32 whatever the training precision: the difference is the training's.
    eval_spec = P.TrainSpec(ModelSpec(**{**model.__dict__, "precision": "float32"}), "adam",
                            args.batch)
    losses = np.asarray(P.evaluate(eval_spec, pop, jax.device_put(val))["val_loss"])
    return losses, args.population * args.steps / elapsed


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", choices=("digits", "mnist-shape"), default="digits")
    p.add_argument("--model", choices=("ae", "vae"), default="ae")
    p.add_argument("--population", type=int, default=16)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--latent", type=int, default=16)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--precisions", default=",".join(PRECISIONS))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    runtime.use_cpu_cores()
    data = load_data(args.data, args.seed)
    n_val = len(data) // 5
    val, x = data[:n_val], data[n_val:]
    reference, _ = train(args, x, val, "float32", args.seed)
    other_seed, _ = train(args, x, val, "float32", args.seed + 1)
    noise = np.abs(other_seed - reference) / np.abs(reference)
    for precision in args.precisions.split(","):
        losses, rate = train(args, x, val, precision, args.seed)
        rel = np.abs(losses - reference) / np.abs(reference)
        print(json.dumps({
            "bench": "precision", "precision": precision, "device": runtime.device_name(),
            "data": args.data, "model": args.model, "hidden": args.hidden, "latent": args.latent,
            "population": args.population, "steps": args.steps, "batch": args.batch,
            "member_steps_per_s": rate,
            "rel_diff_median": float(np.median(rel)), "rel_diff_max": float(np.max(rel)),
            "spearman_vs_float32": spearman(losses, reference),
            "seed_noise_median": float(np.median(noise)),
            "val_losses": [float(v) for v in losses],
        }), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
