"""What the regularisation hyperparameters cost per member-step: batch / layer norm, dropout and
the learning-rate schedule, each against the plain program.

Cases (``P`` members, ``ae`` / mse / adam, learning rates log-spaced over [1e-4, 1e-2], keys from
``population.trial_keys(--seed, t)``, all trained by ``population.train_chunk``):

* ``plain``        -- norm none, no dropout masks, constant schedule (the schedule's arithmetic
  is still in the program: it always is);
* ``no-schedule``  -- ``plain`` with ``population.learning_rate_at`` replaced by the bare learning
  rate, i.e. the program before schedules existed: ``plain`` over it is the schedule's cost;
* ``cosine``       -- ``plain``'s program, every member on a cosine schedule with warmup;
* ``dropout``      -- the program draws dropout masks (``ModelSpec.dropout``), rate 0.1;
* ``dropout-zero`` -- the same program at rate 0 (what a sweep pays for dropout it may search);
* ``layer-norm`` / ``batch-norm`` -- ``norm`` set, no dropout.

Compilation is excluded (``compile_s``; cases with the same program compile it once, so the later
one reports about 0); each of ``--repeats`` rounds times every case once from the same initial
state and the best round is reported, with ``ratio_vs_plain``.

Output: one JSON line per case with ``case``, ``population``, ``steps``, ``hidden``, ``latent``,
``depth``, ``batch``, ``member_steps_per_s``, ``us_per_member_step``, ``ratio_vs_plain``,
``compile_s``, ``device``.

Example:
    python bench/hparams_cost.py --population 16 --steps 200 --hidden 128 --latent 16 --batch 64
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_digits

from jaxae import hparams, placement
from jaxae import population as P
from jaxae.models import ModelSpec

CASES = ("plain", "no-schedule", "cosine", "dropout", "dropout-zero", "layer-norm", "batch-norm")


def case_setup(case: str, args: argparse.Namespace) -> tuple[P.TrainSpec, list[dict]]:
    model = ModelSpec("ae", 64, hidden=args.hidden, latent_dim=args.latent, depth=args.depth,
                      norm={"layer-norm": "layer", "batch-norm": "batch"}.get(case, "none"),
                      dropout=case.startswith("dropout"))
    spec = P.TrainSpec(model, "adam", args.batch)
    extra = {"cosine": {"schedule": "cosine", "warmup": 10, "final_lr_ratio": 0.1},
             "dropout": {"dropout": 0.1}}.get(case, {})
    configs = [hparams.resolve("ae", {"hidden": args.hidden, "latent_dim": args.latent,
                                      "learning_rate": float(lr), **extra})
               for lr in np.geomspace(1e-4, 1e-2, args.population)]
    return spec, configs


def fresh(spec: P.TrainSpec, configs: list[dict], args: argparse.Namespace) -> P.Population:
    members = [placement.Member(t, c, 10**9, P.trial_keys(args.seed, t), horizon=args.steps)
                       for t, c in enumerate(configs)]
    return placement.assign(spec, placement.create(spec, len(members)),
                            list(range(len(members))), members)


def timed(program, pop: P.Population, x: jax.Array) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(program(pop, x))
    return time.perf_counter() - t0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--latent", type=int, default=16)
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args(argv)
    cases = args.cases.split(",")
    x = jnp.asarray(load_digits().data / 16.0, jnp.float32)
    schedule_fn = P.learning_rate_at
    setups, programs, compile_s, best = {}, {}, {}, {}
    shared: dict[tuple, object] = {}
    for case in cases:
        spec, configs = case_setup(case, args)
        setups[case] = (spec, configs)
        # train_chunk's program (one device, no mesh), one jitted function per program: cases of
        # the same spec share it (cosine is plain's program, dropout-zero dropout's), compiled
        # once; no-schedule's is traced once with the schedule patched out and never shared.
        key = (spec, case == "no-schedule")
        if key not in shared:
            shared[key] = jax.jit(lambda pop, x, spec=spec: P._train_slots(
                spec, pop, x, num_steps=args.steps))
        programs[case] = shared[key]
    rounds = [[] for _ in cases]
    for r in range(args.repeats + 1):  # round 0 compiles
        for i, case in enumerate(cases):
            spec, configs = setups[case]
            pop = fresh(spec, configs, args)
            jax.block_until_ready(pop)
            if case == "no-schedule" and r == 0:
                P.learning_rate_at = lambda learning_rate, hp, step: learning_rate
            try:
                seconds = timed(programs[case], pop, x)
            finally:
                P.learning_rate_at = schedule_fn
            if r == 0:
                compile_s[case] = seconds
            else:
                rounds[i].append(seconds)
    for i, case in enumerate(cases):
        best[case] = min(rounds[i])
    device = jax.devices()[0].device_kind
    base = best.get("plain")
    for case in cases:
        rate = args.population * args.steps / best[case]
        print(json.dumps({
            "case": case, "population": args.population, "steps": args.steps,
            "hidden": args.hidden, "latent": args.latent, "depth": args.depth,
            "batch": args.batch, "member_steps_per_s": rate, "us_per_member_step": 1e6 / rate,
            "ratio_vs_plain": None if base is None else base / best[case],
            "compile_s": max(0.0, compile_s[case] - best[case]), "device": device,
        }), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
