"""Common random numbers: does sharing the data order per replicate index steady the ranking?

With ``repeats = K`` every trial runs as K members. Without common random numbers (``crn =
false``) each member draws its own data order from ``(seed, trial, replicate)``; with them
(``crn = true``) replicate r of every trial uses one shared data order
(``population.shared_data_key(seed, r)``), while the init keys still differ per trial. Within a
replicate index the configurations then see the same mini-batches, so the data-order part of the
noise is common to all of them and should cancel from their comparisons.

Protocol (per ``--seeds`` value s):

1. Draw ``--configs`` N configurations with ``RandomSearch(seed=s)`` from the space
   ``learning_rate`` log-uniform [3e-4, 1e-2], ``latent_dim`` int [4, 32]; ``hidden`` 64, relu,
   ``ae``, the library's defaults otherwise (adam, batch 64, mse), on the digits split of seed s.
2. For crn in (false, true): build ``jaxae.config.build({"crn": crn, "repeats": K, ...})``, put
   all N x K members in one population (slot ``t * K + r``: trial t, replicate r; keys from
   ``buckets.member_keys(config, t, r)``, so both arms share the init keys and differ only in the
   data order), train with ``population.train_chunk`` and record ``population.evaluate``'s
   ``val_loss`` L[t, r] at each budget of ``--budgets`` (one run, evaluated on the way).
3. For every budget and arm, with the N configurations ranked by L[:, r] in each replicate r
   (a non-finite loss ranks last):

   * ``kendall_tau``: mean Kendall tau between the rankings of two replicates, over all K(K-1)/2
     pairs (higher: a more stable ranking);
   * ``rank_std``: the standard deviation of a configuration's rank across replicates, averaged
     over configurations (lower: more stable);
   * ``flip_prob``: the probability that a pairwise comparison (config i better than j) in one
     replicate is reversed in another, over all config pairs and replicate pairs (for untied
     losses this is (1 - tau) / 2);
   * ``var_diff``: the variance across replicates of the loss difference L[i, r] - L[j, r],
     averaged over config pairs; ``var_loss``: the variance of L[i, r] itself, averaged over
     configs; ``corr``: the mean correlation across replicates of two configs' losses.
     Var(Li - Lj) = Var(Li) + Var(Lj) - 2 Cov(Li, Lj): CRN can only help through the covariance;
   * ``tau_vs_reference`` / ``best_agrees``: agreement of a single replicate's ranking / winner
     with the reference ranking by the mean loss over both arms' 2K members;
   * ``signal_std``: the standard deviation over configurations of their mean loss (how far apart
     the configurations really are, to read the noise against).

With ``--decompose`` two more populations split a configuration's seed-to-seed variance into its
sources: ``var_data_only`` (each config's K members keep replicate 0's init key and draw their own
data orders) and ``var_init_only`` (they keep replicate 0's data key and draw their own inits),
printed as one ``"case": "decompose"`` line per (seed, budget) next to ``var_both`` (the
independent arm's ``var_loss``). CRN can only cancel the data-order part, and only as far as
different configurations react alike to the same mini-batches.

Not measured: sharing the init key as well (the same initial weights per replicate index across
trials). The library has no such option (``member_keys`` shares only the data key); with the
padded shapes of a bucket it would give every trial of a replicate index the same padded draws.

Output: one JSON line per (seed, crn, budget), then with several seeds one ``"summary": true``
line per (crn, budget) with the metrics averaged over seeds. Lines of the CRN arm also carry
``var_diff_ratio`` and ``flip_ratio`` (CRN over independent, same seed or seed-averaged).

Example:
    python bench/crn.py --configs 16 --replicates 8 --budgets 100,300,1000 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from collections.abc import Sequence

import jax
import numpy as np
from scipy import stats
from throughput import int_list  # the sibling bench script: python puts bench/ on sys.path

from jaxae import buckets as buckets_lib
from jaxae import config as config_lib
from jaxae import data as data_lib
from jaxae import hparams, placement, runtime
from jaxae import population as P
from searchers import RandomSearch

SPACE = {
    "learning_rate": {"dist": "float", "low": 3e-4, "high": 1e-2, "log": True},
    "latent_dim": {"dist": "int", "low": 4, "high": 32},
}
METRICS = ("kendall_tau", "rank_std", "flip_prob", "var_diff", "var_loss", "corr",
           "tau_vs_reference", "best_agrees", "signal_std", "mean_val_loss")


def sweep_config(args: argparse.Namespace, seed: int, crn: bool) -> config_lib.SweepConfig:
    n = args.configs * args.replicates
    space = {**SPACE, "hidden": args.hidden, "activation": "relu"}
    return config_lib.build({"model": "ae", "seed": seed, "crn": crn, "repeats": args.replicates,
                             "population": n, "trials": args.configs, "steps": max(args.budgets),
                             "space": space})


def member_keys(cfg: config_lib.SweepConfig, trial: int, replicate: int, fix: str | None
                ) -> dict[str, np.ndarray]:
    """The library's keys of a member; ``fix`` ("init_key" / "data_key") keeps replicate 0's."""
    keys = buckets_lib.member_keys(cfg, trial, replicate)
    if fix is not None:
        keys = {**keys, fix: buckets_lib.member_keys(cfg, trial, 0)[fix]}
    return keys


def train_arm(args: argparse.Namespace, cfg: config_lib.SweepConfig, configs: list[dict],
              train_x: jax.Array, val_x: jax.Array, fix: str | None = None
              ) -> dict[int, np.ndarray]:
    """Val losses [configs, replicates] of every member at each budget (one training run)."""
    k = args.replicates
    bucket = tuple(configs[0][name] for name in hparams.BUCKET_NAMES)
    spec = buckets_lib.train_spec(cfg, int(train_x.shape[1]), bucket)
    total = max(args.budgets)
    members = [placement.Member(t, c, total, member_keys(cfg, t, r, fix))
                       for t, c in enumerate(configs) for r in range(k)]
    pop = placement.assign(spec, placement.create(spec, len(members)),
                           list(range(len(members))), members)
    chunk = math.gcd(*args.budgets)
    out = {}
    for done in range(chunk, total + 1, chunk):
        pop, _ = P.train_chunk(spec, pop, train_x, chunk)
        if done in args.budgets:
            val = np.asarray(P.evaluate(spec, pop, val_x)["val_loss"], np.float64)
            out[done] = val.reshape(len(configs), k)
    return out


def ranks(losses: np.ndarray) -> np.ndarray:
    """Ranks (1 = best) of the configurations in each replicate: [configs, replicates]."""
    finite = np.where(np.isfinite(losses), losses, np.inf)
    return np.stack([stats.rankdata(finite[:, r]) for r in range(losses.shape[1])], axis=1)


def ranking_metrics(losses: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """The module docstring's metrics of val losses [configs, replicates]."""
    n, k = losses.shape
    finite = np.where(np.isfinite(losses), losses, np.inf)
    rk = ranks(losses)
    rep_pairs = list(itertools.combinations(range(k), 2))
    cfg_pairs = list(itertools.combinations(range(n), 2))
    taus = [stats.kendalltau(finite[:, a], finite[:, b]).statistic for a, b in rep_pairs]
    sign = np.sign(finite[:, None, :] - finite[None, :, :])  # [n, n, k]
    i, j = np.triu_indices(n, 1)
    s = sign[i, j]  # [pairs, k]
    flips = [np.mean(s[:, a] != s[:, b]) for a, b in rep_pairs]
    ok = np.all(np.isfinite(losses), axis=1)
    diffs = [np.var(losses[a] - losses[b], ddof=1) for a, b in cfg_pairs if ok[a] and ok[b]]
    corrs = [np.corrcoef(losses[a], losses[b])[0, 1] for a, b in cfg_pairs if ok[a] and ok[b]]
    ref_rank = stats.rankdata(np.where(np.isfinite(reference), reference, np.inf))
    tau_ref = [stats.kendalltau(rk[:, r], ref_rank).statistic for r in range(k)]
    best = [np.argmin(finite[:, r]) == np.argmin(ref_rank) for r in range(k)]
    return {
        "kendall_tau": float(np.nanmean(taus)),
        "rank_std": float(np.mean(np.std(rk, axis=1, ddof=1))),
        "flip_prob": float(np.mean(flips)),
        "var_diff": float(np.mean(diffs)) if diffs else math.nan,
        "var_loss": float(np.mean(np.var(losses[ok], axis=1, ddof=1))),
        "corr": float(np.nanmean(corrs)) if corrs else math.nan,
        "tau_vs_reference": float(np.nanmean(tau_ref)),
        "best_agrees": float(np.mean(best)),
        "signal_std": float(np.std(np.mean(losses[ok], axis=1), ddof=1)),
        "mean_val_loss": float(np.mean(losses[ok])),
        "diverged": int(np.sum(~np.isfinite(losses))),
    }


def run_seed(args: argparse.Namespace, seed: int) -> list[dict]:
    dataset = data_lib.load("digits", seed=seed)
    train_x, val_x = jax.device_put(dataset.train.x), jax.device_put(dataset.val.x)
    base = sweep_config(args, seed, crn=False)
    asked = RandomSearch(config_lib.searched(base), batch_size=args.configs, seed=seed).ask()
    configs = [hparams.resolve("ae", {**config_lib.fixed(base), **c}) for c in asked]
    arms, wall = {}, {}
    for crn in (False, True):
        t0 = time.perf_counter()
        arms[crn] = train_arm(args, sweep_config(args, seed, crn), configs, train_x, val_x)
        wall[crn] = time.perf_counter() - t0
    rows = []
    for budget in args.budgets:
        reference = np.mean(np.concatenate([arms[False][budget], arms[True][budget]], 1), 1)
        for crn in (False, True):
            rows.append({
                "seed": seed, "crn": crn, "steps": budget,
                **ranking_metrics(arms[crn][budget], reference),
                "configs": args.configs, "replicates": args.replicates, "hidden": args.hidden,
                "wall_s": wall[crn], "device": runtime.device_name(), "jax": jax.__version__,
                "learning_rates": [c["learning_rate"] for c in configs] if crn else None,
                "latent_dims": [c["latent_dim"] for c in configs] if crn else None,
            })
        add_ratios(rows[-2], rows[-1])
    if args.decompose:
        parts = {fix: train_arm(args, base, configs, train_x, val_x, fix)
                 for fix in ("init_key", "data_key")}
        for budget in args.budgets:
            var = {name: float(np.nanmean(np.var(parts[fix][budget], axis=1, ddof=1)))
                   for name, fix in (("var_data_only", "init_key"), ("var_init_only", "data_key"))}
            both = next(r["var_loss"] for r in rows if r["steps"] == budget and not r["crn"])
            rows.append({"case": "decompose", "seed": seed, "steps": budget, **var,
                         "var_both": both, "data_share": var["var_data_only"] / both,
                         "configs": args.configs, "replicates": args.replicates,
                         "device": runtime.device_name()})
    return rows


def add_ratios(independent: dict, crn: dict) -> None:
    for metric in ("var_diff", "flip_prob"):
        name = "var_diff_ratio" if metric == "var_diff" else "flip_ratio"
        crn[name] = crn[metric] / independent[metric] if independent[metric] else None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Ranking stability of N configurations x K seeds with and without common "
        "random numbers (a data order shared per replicate index). Prints JSON lines.",
    )
    parser.add_argument("--configs", type=int, default=16, help="configurations N (default 16)")
    parser.add_argument("--replicates", type=int, default=8, help="seeds K per config (default 8)")
    parser.add_argument("--budgets", type=lambda t: sorted(set(int_list(t, 1))),
                        default=[100, 300, 1000],
                        help="training steps at which to rank (default 100,300,1000)")
    parser.add_argument("--seeds", type=lambda t: int_list(t, 0), default=[0],
                        help="sweep seeds: configurations, keys and data split (default 0)")
    parser.add_argument("--hidden", type=int, default=64, help="hidden width (default 64)")
    parser.add_argument("--decompose", action="store_true",
                        help="also split the seed variance into data-order and init parts")
    args = parser.parse_args(argv)
    if args.configs < 2 or args.replicates < 2:
        parser.error("--configs and --replicates must be at least 2")
    if args.hidden < 1:
        parser.error("--hidden must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rows = []
    for seed in args.seeds:
        for row in run_seed(args, seed):
            print(json.dumps(row), flush=True)
            rows.append(row)
    if len(args.seeds) > 1:
        for budget in args.budgets:
            pair = []
            for crn in (False, True):
                mine = [r for r in rows
                        if r["steps"] == budget and r.get("crn") == crn and "case" not in r]
                pair.append({"summary": True, "crn": crn, "steps": budget, "seeds": args.seeds,
                             **{m: float(np.mean([r[m] for r in mine])) for m in METRICS},
                             **{f"{m}_sd": float(np.std([r[m] for r in mine], ddof=1))
                                for m in ("kendall_tau", "flip_prob", "var_diff")},
                             "configs": args.configs, "replicates": args.replicates,
                             "device": runtime.device_name()})
            add_ratios(*pair)
            crn_rows = [r for r in rows if r["steps"] == budget and r.get("crn")]
            pair[1]["var_diff_ratio_per_seed"] = [r["var_diff_ratio"] for r in crn_rows]
            pair[1]["flip_ratio_per_seed"] = [r["flip_ratio"] for r in crn_rows]
            for row in pair:
                print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
