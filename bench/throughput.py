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

Roofline. Every row compares the measured time of a member-step with its roofline bound,
``max(flops / peak_flops, bytes / bandwidth)`` (``roofline_us_per_member_step``), and reports
``roofline_ratio`` = measured / bound (1 would be the hardware's limit) and
``fraction_of_matmul_peak`` = model FLOP/s / ``peak_flops``. The bytes of a member-step
(``bytes_per_member_step``) are a minimal-traffic model, float32 throughout:

* parameter-sized traffic, ``4 * n_params * (2 * k + 5)`` for an optimizer with ``k`` moment
  arrays (Adam / AdamW / RMSProp-with-momentum: 2, SGD with momentum: 1): the optimizer reads the
  parameters, the gradient and the ``k`` moments and writes the parameters and the moments
  (``2 * k + 3`` passes: 7 for Adam), the backward pass writes the gradient (1) and the forward
  pass reads the weights (1). For 784-512-32 with Adam: 9 x 4 B x 837,424 = 30.1 MB.
* activation traffic, ``4 * 4 * batch * (features + sum of the layers' outputs)``: the gathered
  input batch and every layer's output are written and read once forward, and their gradients
  written and read once backward (4 passes; fused activations count once).

It is a lower bound on memory traffic: it assumes nothing is re-read and ignores caches, the
per-step gradient-norm / divergence / select passes of ``population.member_step`` and the
contractive / VAE extras. On a CPU a working set that fits in cache can beat it
(``roofline_ratio`` < 1 on the memory side is possible there).

``peak_flops`` and ``bandwidth_bytes_per_s``: ``--peak-flops`` / ``--bandwidth`` when given; for
a known accelerator, its datasheet numbers (``ACCELERATOR_PEAKS``); otherwise (CPU) measured in
the same run, inside the same timing rounds as the cases: the best FLOP/s of one float32
``jnp.dot`` of ``--matmul-size`` squared matrices, and the best bytes read + written per second
of an in-place ``a + 1`` over a float32 array of ``--bandwidth-mb`` MB. The measured values are
also reported on accelerators (``measured_matmul_flops_per_s``, ``measured_bandwidth_bytes_per_s``)
and ``peak_source`` says where the peaks came from.

Output: one JSON line per case (and per grid point with ``--sweep-populations`` /
``--sweep-hidden``), with keys ``case``, ``population``, ``steps``, ``member_steps_per_s``,
``model_gflops_per_s``, ``device``, ``compile_s``, ``ratio_vs_sequential``, ``ratio_vs_loop``,
the roofline keys (``bytes_per_member_step``, ``peak_flops``, ``bandwidth_bytes_per_s``,
``roofline_us_per_member_step``, ``measured_us_per_member_step``, ``roofline_ratio``,
``roofline_limit``, ``fraction_of_matmul_peak``) and the settings.

Example:
    python bench/throughput.py --population 64 --steps 300 --hidden 64 --latent 16 --batch 128 \
        --data digits
    python bench/throughput.py --sweep-populations 1,8,32,128 --sweep-hidden 64,256 --steps 100
    python bench/throughput.py --data mnist-shape --hidden 512 --latent 32 \
        --sweep-populations 1,8,32,128 --steps 20 --cases vmap,sequential
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxae import hparams, optimizers, placement, runtime, sharding
from jaxae import population as P
from jaxae.data import load_digits
from jaxae.models import (
    PRECISION_NAMES,
    PRECISIONS,
    ModelSpec,
    layer_widths,
    resolve_precision,
)

CASES = ("vmap", "sequential", "loop", "reference", "sequential-xla", "procs")
# Cases that run in child processes (CPU only): fair baselines for a CPU of several cores.
CHILD_CASES = ("sequential-xla", "procs")


def load_data(name: str, seed: int) -> np.ndarray:
    """Training inputs [n, features] in [0, 1]: the digits, or MNIST-shaped random pixels."""
    if name == "digits":
        return load_digits()[0]
    rng = np.random.default_rng(seed)  # 8-bit pixels like MNIST's, no download
    return (rng.integers(0, 256, size=(10000, 784)) / 255.0).astype(np.float32)


def dense_layers(spec: ModelSpec) -> list[tuple[int, int]]:
    """(in, out) of every dense layer of the autoencoder, encoder first."""
    return list(layer_widths(spec).values())


def model_flops_per_step(spec: P.TrainSpec) -> float:
    """Analytic FLOPs of one member's training step (see the module docstring)."""
    b = spec.batch_size
    forward = sum(2 * b * i * o for i, o in dense_layers(spec.model))
    flops = 3 * forward
    if spec.model.kind == "contractive":
        enc = layer_widths(spec.model, "encoder").values()
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


# Moment arrays (each the size of the parameters) that each optimizer family keeps.
OPTIMIZER_MOMENTS = {"adam": 2, "adamw": 2, "sgd": 1, "rmsprop": 2}

# Datasheet peaks of known accelerators, matched in order against a substring of jax's
# ``device_kind``: (substring, dense TF32 tensor-core FLOP/s, strict float32 FLOP/s, HBM bytes/s).
# Sources: NVIDIA H100 datasheet (SXM5: TF32 989 TFLOP/s *with sparsity*, i.e. 494.7 dense, FP32
# 67 TFLOP/s, HBM3 3.35 TB/s; PCIe: 756 sparse / 378 dense, 51, 2.0 TB/s; NVL: 835 sparse /
# 417.5 dense, 60, 3.9 TB/s), H200 datasheet (SXM: the H100 SXM's compute, HBM3e 4.8 TB/s), A100
# datasheet (TF32 156 dense, FP32 19.5; 80 GB SXM 2.039 TB/s, 80 GB PCIe 1.935, 40 GB 1.555).
# These are marketing peaks at boost clocks; sustained matmuls reach ~70-80 % of them. float32
# matmuls run on TF32 tensor cores under JAX's default precision on these GPUs; with
# ``jax_default_matmul_precision`` set to "highest" / "float32" the strict FP32 column applies.
ACCELERATOR_PEAKS: tuple[tuple[str, float, float, float], ...] = (
    ("H200", 494.7e12, 67e12, 4.8e12),
    ("H100 PCIe", 378e12, 51e12, 2.0e12),
    ("H100 NVL", 417.5e12, 60e12, 3.9e12),
    ("H100", 494.7e12, 67e12, 3.35e12),
    ("A100-SXM4-80GB", 156e12, 19.5e12, 2.039e12),
    ("A100 80GB PCIe", 156e12, 19.5e12, 1.935e12),
    ("A100", 156e12, 19.5e12, 1.555e12),
)


def param_count(model: ModelSpec) -> int:
    """Parameters of one member: every dense layer's kernel and bias."""
    return sum(i * o + o for i, o in dense_layers(model))


def bytes_per_member_step(spec: P.TrainSpec) -> dict[str, float]:
    """Minimal memory traffic of one member's training step (the model of the module docstring).

    Returns ``{"param": bytes, "activation": bytes}``.
    """
    passes = 2 * OPTIMIZER_MOMENTS[spec.optimizer] + 3 + 2  # optimizer + grad write + weight read
    outputs = sum(o for _, o in dense_layers(spec.model))
    return {
        "param": 4.0 * param_count(spec.model) * passes,
        "activation": 4.0 * 4 * spec.batch_size * (spec.model.features + outputs),
    }


def table_peaks(device: jax.Device) -> tuple[float, float, str] | None:
    """(peak FLOP/s, bytes/s, source) of a known accelerator, or None."""
    if device.platform == "cpu":
        return None
    strict = str(jax.config.jax_default_matmul_precision).lower() in ("highest", "float32")
    for key, tf32, fp32, bandwidth in ACCELERATOR_PEAKS:
        if key.lower() in device.device_kind.lower():
            precision = "fp32" if strict else "tf32"
            return (fp32 if strict else tf32), bandwidth, f"table:{key}:{precision}"
    return None


def matmul_timer(n: int) -> tuple[Callable[[], float], float]:
    """A timer of one float32 ``[n, n] x [n, n]`` matmul (best of 3 calls) and its FLOPs."""
    ka, kb = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(ka, (n, n), jnp.float32)
    b = jax.random.normal(kb, (n, n), jnp.float32)
    dot = jax.jit(jnp.dot).lower(a, b).compile()
    jax.block_until_ready(dot(a, b))

    def timer() -> float:
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            jax.block_until_ready(dot(a, b))
            best = min(best, time.perf_counter() - t0)
        return best

    return timer, 2.0 * n**3


def bandwidth_timer(megabytes: float) -> tuple[Callable[[], float], float]:
    """A timer of an in-place ``a + 1`` over a float32 array (best of 3) and its bytes moved."""
    n = max(1, int(megabytes * 1e6) // 4)
    add = jax.jit(lambda a: a + 1.0, donate_argnums=(0,))
    state = [jax.block_until_ready(add(jnp.zeros((n,), jnp.float32)))]

    def timer() -> float:
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            state[0] = jax.block_until_ready(add(state[0]))
            best = min(best, time.perf_counter() - t0)
        return best

    return timer, 2.0 * 4 * n  # every element read once and written once


def call_timer(compiled: Callable, fresh_state: Callable[[], object], x: jax.Array
               ) -> Callable[[], float]:
    """A timer of one call ``compiled(state, x)`` from a fresh copy of the initial state (the call
    donates it), the copy made and placed before the clock starts."""

    def timer() -> float:
        state = jax.block_until_ready(fresh_state())
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(state, x))
        return time.perf_counter() - t0

    return timer


def make_members(args: argparse.Namespace, hidden: int, population: int) -> list[placement.Member]:
    """The benchmarked members: learning rates log-spaced over [1e-4, 1e-2], keys from the seed."""
    lrs = np.geomspace(1e-4, 1e-2, population) if population > 1 else np.array([1e-3])
    sizes = {"hidden": hidden, "latent_dim": args.latent,
             "grad_clip": getattr(args, "grad_clip", 0.0)}
    return [
        placement.Member(
            t,
            hparams.resolve(args.model, {**sizes, "learning_rate": float(lr)}),
            args.steps,
            P.trial_keys(args.seed, t),
        )
        for t, lr in enumerate(lrs)
    ]


def run_point(args: argparse.Namespace, x: jax.Array, population: int, hidden: int) -> list[dict]:
    """Compiles and times every requested case for one (population, hidden); one dict per case."""
    loss = args.loss or hparams.defaults(args.model)["loss"]
    model = ModelSpec(args.model, int(x.shape[1]), hidden, args.latent, args.depth, "relu", loss,
                      args.precision)
    # As the sweep builds it: the gradient-norm pass only where some member clips.
    spec = P.TrainSpec(model, args.optimizer, args.batch, clip_gradients=args.grad_clip > 0)
    members = make_members(args, hidden, population)
    pop = placement.assign(spec, placement.create(spec, population), list(range(population)),
                           members)
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

    # With several devices (JAXAE_CPU_DEVICES=N splits a CPU into N), the slots are sharded and
    # each device trains its own share, as the sweep driver does (vmap and reference cases).
    mesh = sharding.slot_mesh() if jax.device_count() > 1 else None
    if mesh is not None and population % mesh.size:
        mesh = None  # the driver would pad; the bench keeps P exact and uses one device
    if mesh is None:
        place, xv = jax.device_put, x
    else:
        place = functools.partial(sharding.shard, sharding=sharding.slot_sharding(mesh))
        xv = jax.device_put(x, sharding.replicated(mesh))

    if "vmap" in args.cases:
        chunk = compile_timed(
            "vmap", lambda: P.train_chunk.lower(spec, place(host), xv, steps, mesh=mesh)
        )
        timed_members["vmap"] = population
        timers["vmap"] = call_timer(chunk, lambda: place(host), xv)

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

    if "reference" in args.cases:
        if args.model != "ae" or args.optimizer != "adam":
            raise SystemExit("the reference case is a plain autoencoder with Adam: use "
                             "--model ae --optimizer adam")
        ref_train, ref_state = reference_program(spec, x, members)
        ref_host = jax.device_get(ref_state)
        compiled_ref = compile_timed("reference",
                                     lambda: ref_train.lower(place(ref_host), xv))
        timed_members["reference"] = population
        timers["reference"] = call_timer(compiled_ref, lambda: place(ref_host), xv)

    # The hardware's own limits, measured inside the same rounds as the cases so that load from
    # other processes hits them alike (skipped when given by flags).
    probes: dict[str, tuple[Callable[[], float], float]] = {}
    if args.peak_flops is None:
        probes["matmul"] = matmul_timer(args.matmul_size)
    if args.bandwidth is None:
        probes["bandwidth"] = bandwidth_timer(args.bandwidth_mb)

    times: dict[str, list[float]] = {case: [] for case in [*timers, *probes]}
    for _ in range(args.repeats):  # rounds: every case once per round, side by side
        for case, timer in timers.items():
            times[case].append(timer())
        for name, (timer, _) in probes.items():
            times[name].append(timer())
    measured = {name: work / min(times[name]) for name, (_, work) in probes.items()}
    peaks = resolve_peaks(args, measured)

    flops = model_flops_per_step(spec)
    traffic = bytes_per_member_step(spec)
    moved = traffic["param"] + traffic["activation"]
    compute_s = flops / peaks["peak_flops"]
    memory_s = moved / peaks["bandwidth_bytes_per_s"]
    bound_s = max(compute_s, memory_s)
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
                "device": runtime.device_name(),
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
                "precision": resolve_precision(args.precision),
                "grad_clip": args.grad_clip,
                "settle_moments": optimizers.settles_moments(),
                "flops_per_member_step": flops,
                "xla_flops_per_member_step": xla_step_flops,
                "sync_every_step": args.sync_every_step if case == "loop" else None,
                "n_params": param_count(spec.model),
                "bytes_per_member_step": moved,
                "param_bytes_per_member_step": traffic["param"],
                "activation_bytes_per_member_step": traffic["activation"],
                **peaks,
                "roofline_us_per_member_step": bound_s * 1e6,
                "roofline_compute_us": compute_s * 1e6,
                "roofline_memory_us": memory_s * 1e6,
                "roofline_limit": "compute" if compute_s >= memory_s else "memory",
                "measured_us_per_member_step": 1e6 / rate,
                "roofline_ratio": (1.0 / rate) / bound_s,
                "fraction_of_matmul_peak": rate * flops / peaks["peak_flops"],
                "jax": jax.__version__,
                "xla_flags": os.environ.get("XLA_FLAGS", ""),
            }
        )
    return rows


def add_ratios(rows: list[dict]) -> None:
    """Each row's throughput against every baseline measured at the same point, and against the
    best fair sequential baseline (the fastest of ``sequential``, ``sequential-xla``, ``procs``)."""
    rates = {r["case"]: r["member_steps_per_s"] for r in rows}
    fair = [rates[c] for c in ("sequential", "sequential-xla", "procs") if c in rates]
    for r in rows:
        for base in ("sequential", "loop", "reference", "sequential-xla", "procs"):
            r[f"ratio_vs_{base}"] = r["member_steps_per_s"] / rates[base] if base in rates else None
        r["ratio_vs_best_fair_sequential"] = r["member_steps_per_s"] / max(fair) if fair else None


def reference_program(spec: P.TrainSpec, x: jax.Array, members: Sequence[placement.Member]):
    """A plain population trainer as a user would write it in ~40 lines, the yardstick of the
    ``reference`` case: flax ``nn.Dense`` layers, ``optax.inject_hyperparams(optax.adam)`` with
    a per-member learning rate, ``jit(vmap(scan))``, the batch drawn inside the step; no masks,
    no divergence checks, no clipping. Same shape, precision, loss and batch size as ``spec``.

    Returns ``(train, state)``: ``train(state, x) -> (state, losses [members, steps])``.
    """
    import flax.linen as nn
    import optax

    m = spec.model
    dtype, precision = PRECISIONS[resolve_precision(m.precision)]
    dense = functools.partial(nn.Dense, dtype=dtype, precision=precision)

    class Plain(nn.Module):
        @nn.compact
        def __call__(self, v):
            h = nn.relu(dense(m.hidden)(v))
            z = dense(m.latent_dim)(h)
            h = nn.relu(dense(m.hidden)(z))
            return dense(m.features)(h).astype(jnp.float32)

    model = Plain()
    tx = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
    steps = members[0].target

    def init(key, lr):
        params = model.init(key, x[:1])["params"]
        opt = tx.init(params)
        opt.hyperparams["learning_rate"] = lr
        return params, opt, key

    def loss_fn(params, batch):
        recon = jax.nn.sigmoid(model.apply({"params": params}, batch))
        return jnp.mean(jnp.sum(jnp.square(recon - batch), axis=-1))

    def member(state, data):
        def step(carry, i):
            params, opt, key = carry
            idx = jax.random.randint(jax.random.fold_in(key, i), (spec.batch_size,), 0,
                                     data.shape[0])
            loss, grads = jax.value_and_grad(loss_fn)(params, data[idx])
            updates, opt = tx.update(grads, opt, params)
            return (optax.apply_updates(params, updates), opt, key), loss

        return jax.lax.scan(step, state, jnp.arange(steps))

    keys = jnp.stack([jnp.asarray(mb.keys["init_key"]) for mb in members])
    lrs = jnp.asarray([mb.config["learning_rate"] for mb in members], jnp.float32)
    state = jax.jit(jax.vmap(init))(keys, lrs)
    train = jax.jit(jax.vmap(member, in_axes=(0, None)), donate_argnums=(0,))
    return train, state


def child_rows(args: argparse.Namespace, argv: Sequence[str], population: int, hidden: int
               ) -> list[dict]:
    """The CPU's fair sequential baselines, each in child processes with one JAX device that XLA
    may thread over every core (``JAXAE_CPU_DEVICES=1``):

    * ``sequential-xla``: one process trains the ``P`` members one after another.
    * ``procs``: one process per core, pinned to it, each training its share of the members one
      after another, all started together (the way one would use a many-core CPU with a
      per-trial tuner); the throughput is the sum of the processes'.
    """
    if jax.devices()[0].platform != "cpu":
        return []
    base = [sys.executable, os.path.abspath(__file__), *argv, "--cases", "sequential",
            "--hidden", str(hidden), "--child"]
    env = {**os.environ, "JAXAE_CPU_DEVICES": "1"}
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if "host_platform_device_count" not in f)
    rows = []
    if "sequential-xla" in args.cases:
        out = subprocess.run([*base, "--population", str(population)], env=env, check=True,
                             capture_output=True, text=True).stdout
        row = json.loads(out.splitlines()[-1])
        rows.append({**row, "case": "sequential-xla", "processes": 1})
    if "procs" in args.cases:
        cores = sorted(os.sched_getaffinity(0))
        shares = [len(a) for a in np.array_split(np.arange(population), len(cores)) if len(a)]
        children = [
            subprocess.Popen(["taskset", "-c", str(core), *base, "--population", str(n)],
                             env=env, stdout=subprocess.PIPE, text=True)
            for core, n in zip(cores, shares, strict=False)
        ]
        results = [json.loads(c.communicate()[0].splitlines()[-1]) for c in children]
        if any(c.returncode for c in children):
            raise SystemExit("a child process of the procs case failed")
        rate = sum(r["member_steps_per_s"] for r in results)
        row = {**results[0], "case": "procs", "processes": len(children),
               "population": population, "member_steps_per_s": rate,
               "members_timed": population,
               "model_gflops_per_s": rate * results[0]["flops_per_member_step"] / 1e9}
        row["measured_us_per_member_step"] = 1e6 / rate
        row["roofline_ratio"] = (1e6 / rate) / row["roofline_us_per_member_step"]
        row["fraction_of_matmul_peak"] = rate * row["flops_per_member_step"] / row["peak_flops"]
        rows.append(row)
    return rows


def resolve_peaks(args: argparse.Namespace, measured: dict[str, float]) -> dict:
    """The peaks the roofline uses: flags first, then the accelerator table, then measured."""
    table = table_peaks(jax.devices()[0])
    sources = []
    if args.peak_flops is not None:
        peak_flops, sources = args.peak_flops, ["flag"]
    elif table is not None:
        peak_flops, sources = table[0], [table[2]]
    else:
        peak_flops, sources = measured["matmul"], [f"measured:matmul{args.matmul_size}"]
    if args.bandwidth is not None:
        bandwidth, source = args.bandwidth, "flag"
    elif table is not None:
        bandwidth, source = table[1], table[2]
    else:
        bandwidth, source = measured["bandwidth"], f"measured:add{args.bandwidth_mb:g}MB"
    if source not in sources:
        sources.append(source)
    return {
        "peak_flops": peak_flops,
        "bandwidth_bytes_per_s": bandwidth,
        "peak_source": "+".join(sources),
        "measured_matmul_flops_per_s": measured.get("matmul"),
        "measured_bandwidth_bytes_per_s": measured.get("bandwidth"),
    }


def int_list(text: str, low: int = 1) -> list[int]:
    """An argparse type: integers >= ``low`` joined by commas (shared by the bench scripts)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected integers joined by commas: {text!r}") from err
    if not values or min(values) < low:
        raise argparse.ArgumentTypeError(f"expected integers >= {low}: {text!r}")
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
    parser.add_argument("--precision", choices=PRECISION_NAMES, default="auto",
                        help="matmul precision of every case (default auto: tf32 on GPUs, "
                        "float32 on CPUs)")
    parser.add_argument("--grad-clip", type=float, default=0.0,
                        help="every member's grad_clip (default 0: off, no gradient-norm pass)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cases", type=case_list, default=None,
                        help="comma-separated subset of " + ",".join(CASES) + " (default "
                        "vmap,sequential,loop,reference; on CPU also sequential-xla,procs)")
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
    parser.add_argument("--peak-flops", type=float, default=None,
                        help="peak matmul FLOP/s for the roofline (default: the accelerator's "
                        "datasheet value, or on CPU a float32 matmul measured in the same run)")
    parser.add_argument("--bandwidth", type=float, default=None,
                        help="memory bandwidth in bytes/s for the roofline (default: the "
                        "accelerator's datasheet value, or on CPU measured in the same run)")
    parser.add_argument("--matmul-size", type=int, default=2048,
                        help="n of the measured [n, n] x [n, n] float32 matmul (default 2048)")
    parser.add_argument("--bandwidth-mb", type=float, default=256.0,
                        help="MB of the float32 array of the measured in-place add (default 256)")
    args = parser.parse_args(argv)
    for name in ("population", "steps", "hidden", "latent", "depth", "batch", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.loop_members is not None and args.loop_members < 1:
        parser.error("--loop-members must be at least 1")
    if args.matmul_size < 1 or args.bandwidth_mb <= 0:
        parser.error("--matmul-size and --bandwidth-mb must be positive")
    for name in ("peak_flops", "bandwidth"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    runtime.use_cpu_cores()  # JAXAE_CPU_DEVICES, before JAX starts its backends
    if args.cases is None:
        cpu = jax.devices()[0].platform == "cpu"
        args.cases = [c for c in CASES if cpu or c not in CHILD_CASES]
        if args.model != "ae" or args.optimizer != "adam":
            args.cases.remove("reference")
    # The children get the same settings but their own --cases / --population / --hidden.
    child_argv = strip_options(argv, ("--cases", "--population", "--hidden", "--sweep-populations",
                                      "--sweep-hidden"))
    x = jnp.asarray(load_data(args.data, args.seed))
    populations = args.sweep_populations or [args.population]
    widths = args.sweep_hidden or [args.hidden]
    for hidden in widths:
        for population in populations:
            rows = run_point(args, x, population, hidden)
            if not args.child:
                rows += same_peaks(rows[0], child_rows(args, child_argv, population, hidden))
            add_ratios(rows)
            for row in rows:
                print(json.dumps(row), flush=True)
    return 0


def same_peaks(parent: dict, children: list[dict]) -> list[dict]:
    """Child rows judged against this process's peaks and roofline (a pinned child measures one
    core's), so that every row's ``roofline_ratio`` and ``fraction_of_matmul_peak`` compare."""
    keys = ("peak_flops", "bandwidth_bytes_per_s", "peak_source", "measured_matmul_flops_per_s",
            "measured_bandwidth_bytes_per_s", "roofline_us_per_member_step",
            "roofline_compute_us", "roofline_memory_us", "roofline_limit")
    out = []
    for row in children:
        row = {**row, **{k: parent[k] for k in keys}}
        row["roofline_ratio"] = row["measured_us_per_member_step"] / row[
            "roofline_us_per_member_step"]
        row["fraction_of_matmul_peak"] = (row["member_steps_per_s"] * row["flops_per_member_step"]
                                          / row["peak_flops"])
        out.append(row)
    return out


def strip_options(argv: Sequence[str], names: Sequence[str]) -> list[str]:
    """``argv`` without the options ``names`` and their values (``--x v`` or ``--x=v``)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in names:
            skip = True
            continue
        if a.split("=", 1)[0] in names:
            continue
        out.append(a)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
