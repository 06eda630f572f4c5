"""The slot axis sharded over several devices gives the same results as one device.

JAX fixes the device count at start-up, so the multi-device side runs in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``.
"""

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxae import sharding
from jaxae.errors import UserError
from jaxae.sweep import main

ROOT = Path(__file__).parents[1]
FOUR_DEVICES = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
                "PYTHONPATH": str(ROOT)}

SCRIPT = textwrap.dedent("""
    import json, jax, numpy as np
    from sklearn.datasets import load_digits
    from jaxae import hparams, placement, sharding
    from jaxae import population as P
    from jaxae.models import ModelSpec

    assert jax.device_count() == 4
    x = np.asarray(load_digits().data / 16.0, np.float32)
    spec = P.TrainSpec(ModelSpec("ae", 64, hidden=16, latent_dim=4), "adam", 32)
    mesh = sharding.slot_mesh()
    slots = sharding.round_up(6, mesh)  # 6 members padded to 8 slots
    members = [placement.Member(t, hparams.resolve("ae", {"hidden": 16, "latent_dim": 4,
                                                           "learning_rate": 1e-3 * (t + 1)}),
                                30, P.trial_keys(0, t)) for t in range(6)]

    def train(place, mesh=None):
        pop = place(placement.assign(spec, placement.create(spec, slots), list(range(6)), members))
        pop, losses = P.train_chunk(spec, pop, x, 30, mesh=mesh)
        val = P.evaluate(spec, pop, x)["val_loss"]
        return pop, np.asarray(losses)[:6].tolist(), np.asarray(val)[:6].tolist()

    one = jax.devices()[0]
    on_mesh = lambda t: sharding.shard(t, sharding.slot_sharding(mesh))
    pop1, l1, v1 = train(lambda t: jax.device_put(t, one))
    pop4, l4, v4 = train(on_mesh)  # XLA partitions the vmapped program
    popm, lm, vm = train(on_mesh, mesh)  # shard_map: each device its own slots, grouped
    print(json.dumps({
        "slots": slots,
        "devices_used": len(pop4.params["code"]["kernel"].sharding.device_set),
        "devices_used_map": len(popm.params["code"]["kernel"].sharding.device_set),
        "losses_1": l1, "losses_4": l4, "val_1": v1, "val_4": v4, "losses_m": lm, "val_m": vm,
    }))
""")


@pytest.mark.slow
def test_sharded_population_equals_one_device():
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=FOUR_DEVICES, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["slots"] == 8 and result["devices_used"] == 4
    assert result["devices_used_map"] == 4
    for case in ("4", "m"):
        np.testing.assert_allclose(result[f"losses_{case}"], result["losses_1"], rtol=1e-5)
        np.testing.assert_allclose(result[f"val_{case}"], result["val_1"], rtol=1e-5)


def test_cpu_cores_become_devices_unless_xla_flags_choose(monkeypatch):
    from jaxae import runtime

    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    monkeypatch.setenv("JAXAE_CPU_DEVICES", "3")
    assert runtime.use_cpu_cores() == 3
    assert os.environ["XLA_FLAGS"] == ("--xla_cpu_enable_fast_math=false "
                                       "--xla_force_host_platform_device_count=3")
    assert runtime.use_cpu_cores() is None  # already chosen: left alone
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv("JAXAE_CPU_DEVICES", "auto")
    auto = min(runtime.cpu_cores(), runtime.AUTO_MAX_DEVICES)
    assert runtime.use_cpu_cores() == auto
    monkeypatch.delenv("JAXAE_CPU_DEVICES")
    monkeypatch.setenv("XLA_FLAGS", "")
    assert runtime.use_cpu_cores() == auto  # the default
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv("JAXAE_CPU_DEVICES", "1")
    assert runtime.use_cpu_cores() == 1
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=1"
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv("JAXAE_CPU_DEVICES", "many")
    with pytest.raises(UserError, match="JAXAE_CPU_DEVICES"):
        runtime.use_cpu_cores()


@pytest.mark.slow
@pytest.mark.parametrize("args", [
    ["--searcher", "random", "--trials", "5", "--population", "3", "--steps", "20"],
    # Pauses park members on their own device and the thinning tail trains 4 of 8 slots;
    # curve points on 100 of the 270 validation examples, results on all of them.
    ["--searcher", "asha", "--trials", "12", "--population", "8", "--steps", "90",
     "--min-steps", "10", "--curve-examples", "100"],
], ids=["random", "asha"])
def test_sweep_on_four_devices_matches_one_device(tmp_path, args):
    args = [*args, "--chunk", "10", "--no-report", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    out = subprocess.run([sys.executable, "-m", "jaxae.sweep", *args, "--out",
                          str(tmp_path / "four")], env=FOUR_DEVICES, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    info = json.loads((tmp_path / "four" / "sweep.json").read_text())
    assert info["device"]["count"] == 4

    def rows(name):
        with sqlite3.connect(tmp_path / name / "trials.db") as db:
            return db.execute("SELECT trial_id, status, params, val_loss FROM trials "
                              "ORDER BY 1").fetchall()

    one, four = rows("one"), rows("four")
    assert [r[:3] for r in one] == [r[:3] for r in four]
    # Each device runs its own share of the slots, so matmuls of a different batch size may sum
    # in another order: equal up to float reassociation.
    np.testing.assert_allclose([r[3] for r in four], [r[3] for r in one], rtol=1e-4)


def test_round_up_pads_slots_to_a_multiple_of_the_mesh():
    four = types.SimpleNamespace(size=4)  # round_up reads only the mesh's size
    assert [sharding.round_up(n, four) for n in (1, 4, 5, 6, 8, 9)] == [4, 4, 8, 8, 8, 12]
    one = sharding.slot_mesh()
    assert one.size == 1 and one.axis_names == (sharding.AXIS,)
    assert sharding.round_up(7, one) == 7


def test_shard_and_to_host_round_trip_on_one_device():
    mesh = sharding.slot_mesh()
    tree = {"w": np.arange(12.0, dtype=np.float32).reshape(3, 4), "step": np.arange(3)}
    placed = sharding.shard(tree, sharding.slot_sharding(mesh))
    assert placed["w"].sharding.spec == jax.sharding.PartitionSpec(sharding.AXIS)
    back = sharding.to_host(placed)
    assert all(isinstance(leaf, np.ndarray) for leaf in back.values())
    np.testing.assert_array_equal(back["w"], tree["w"])
    np.testing.assert_array_equal(back["step"], tree["step"])
    replicated = sharding.shard(tree, sharding.replicated(mesh))
    assert replicated["w"].sharding.is_fully_replicated
