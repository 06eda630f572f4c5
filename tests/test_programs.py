"""Programs kept across processes: a loaded program gives the jitted numbers bit for bit, and a
missing, stale or corrupt file only costs an export."""

import importlib.util
import os
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxae import config as config_lib
from jaxae import data as data_lib
from jaxae import driver as driver_lib
from jaxae import programs


def _sweep():
    config = config_lib.build({
        "searcher": "asha", "population": 4, "trials": 4, "steps": 20, "chunk": 10,
        "space": {"hidden": 8, "latent_dim": 2, "batch_size": 8,
                  "learning_rate": {"dist": "float", "low": 1e-3, "high": 1e-2, "log": True}}})
    driver = driver_lib.Driver(config, data_lib.load("digits"))
    results = []
    while not driver.done:
        events, _ = driver.step()
        results += [(e.trial, e.steps, e.val_loss) for e in events if e.told]
    return sorted(results)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    pytest.importorskip("flatbuffers")  # JAX's export serialization needs it
    monkeypatch.setattr(programs, "_directory", lambda: tmp_path / "programs")
    monkeypatch.setattr(programs, "_LOADED", {})
    monkeypatch.setattr(programs, "COUNTS", {})
    return tmp_path / "programs"


# Two devices: the programs shard their slots (shard_map) and hand members across devices; one
# device's loaded programs run in every CLI test that repeats a shape (the cache is on there).
@pytest.mark.parametrize("devices", [2])
def test_a_loaded_program_gives_the_jitted_numbers_bit_for_bit(devices, cache, monkeypatch):
    if jax.device_count() != devices:  # JAX fixes the device count at start-up: rerun
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
        test = f"{__file__}::test_a_loaded_program_gives_the_jitted_numbers_bit_for_bit"
        done = subprocess.run([sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-p",
                               "no:cacheprovider", f"{test}[{devices}]"], env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout + done.stderr
        return
    exported = _sweep()  # exports both programs into the cache, then runs them
    assert programs.COUNTS == {"place/traced": 1, "run_chunk/traced": 1}
    assert sorted(p.name.split("-")[0] for p in cache.iterdir()) == ["place", "run_chunk"]
    monkeypatch.setattr(programs, "_LOADED", {})  # as a new process: from the files
    loaded = _sweep()
    assert programs.COUNTS == {"place/traced": 1, "run_chunk/traced": 1, "place/loaded": 1,
                               "run_chunk/loaded": 1}
    monkeypatch.setattr(programs, "_directory", lambda: None)  # no cache: jax.jit itself
    jitted = _sweep()
    assert len(jitted) > 4  # results of both rungs
    np.testing.assert_array_equal(np.array(loaded), np.array(jitted))
    np.testing.assert_array_equal(np.array(exported), np.array(jitted))


def test_a_corrupt_program_file_is_exported_again_and_then_loaded(cache):
    step = jax.jit(lambda p, x: ({"w": p["w"] * x}, p["w"].sum()), donate_argnums=0)
    program = programs.Program("toy", step, step.lower, static="toy", donated=1)
    run = lambda: program({"w": jnp.arange(4.0)}, np.float32(3.0))  # noqa: E731
    expected = step({"w": jnp.arange(4.0)}, np.float32(3.0))
    first = run()
    (path,) = cache.iterdir()
    path.write_bytes(b"not a program")
    programs.forget()  # as a new process
    again = run()
    assert programs.COUNTS == {"toy/traced": 2} and path.stat().st_size > 1000  # rewritten
    programs.forget()
    loaded = run()
    assert programs.COUNTS == {"toy/traced": 2, "toy/loaded": 1}
    for out in (first, again, loaded):
        np.testing.assert_array_equal(out[0]["w"], expected[0]["w"])
        assert float(out[1]) == float(expected[1])


def test_program_files_past_the_budget_go_least_recently_used_first(cache, monkeypatch):
    step = jax.jit(lambda p, x: ({"w": p["w"] * x}, p["w"].sum()), donate_argnums=0)
    program = programs.Program("toy", step, step.lower, static="toy", donated=1)
    run = lambda: program({"w": jnp.arange(4.0)}, np.float32(3.0))  # noqa: E731
    run()
    (exported,) = cache.glob("toy-*.jaxexport")
    size = exported.stat().st_size
    for i in range(4):  # four stale programs of the same size, oldest first
        stale = cache / f"stale{i}.jaxexport"
        stale.write_bytes(b"x" * size)
        os.utime(stale, (1_000_000 + i, 1_000_000 + i))
    other = cache / "notes.txt"  # not a program: never touched
    other.write_bytes(b"y" * 10 * size)
    # An export prunes to the budget (three programs' worth), the oldest first, never itself.
    monkeypatch.setattr(programs, "MAX_BYTES", 3 * size)
    exported.unlink()
    programs.forget()
    run()
    assert programs.COUNTS == {"toy/traced": 2}
    assert sorted(p.name for p in cache.glob("*.jaxexport")) == sorted(
        [exported.name, "stale2.jaxexport", "stale3.jaxexport"])
    assert other.exists()
    # Loading a program marks it used: a prune then keeps it over newer-stamped ones.
    os.utime(exported, (1_000_000, 1_000_000))
    programs.forget()
    run()
    assert programs.COUNTS == {"toy/traced": 2, "toy/loaded": 1}
    programs.prune(cache, max_bytes=size)
    assert list(cache.glob("*.jaxexport")) == [exported]


def test_the_persistent_cache_is_bounded(tmp_path, monkeypatch):
    from jaxae import runtime

    before = {name: getattr(jax.config, name) for name in (
        "jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
        "jax_compilation_cache_max_size")}
    monkeypatch.setenv("JAXAE_COMPILATION_CACHE", str(tmp_path / "xla"))
    try:
        assert runtime.enable_compilation_cache() == tmp_path / "xla"
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")
        # Capped where JAX can evict (filelock, a dependency, installed), unbounded elsewhere:
        # set without filelock, the cap would make JAX refuse every read of the cache.
        expected = runtime.CACHE_MAX_BYTES if runtime.cache_can_evict() else before[
            "jax_compilation_cache_max_size"]
        assert jax.config.jax_compilation_cache_max_size == expected
        assert runtime.cache_can_evict() == (importlib.util.find_spec("filelock") is not None)
    finally:
        for name, value in before.items():
            jax.config.update(name, value)


def test_entries_written_without_a_cap_get_the_stamp_eviction_reads(tmp_path, monkeypatch):
    """A cache filled before the cap was set (no ``-atime`` files) stays writable: JAX's
    eviction reads every entry's stamp, and a missing one made each later write fail with a
    warning (seen on a machine that had run an earlier jaxae)."""
    pytest.importorskip("filelock")
    lru_cache = pytest.importorskip("jax._src.lru_cache")
    from jaxae import runtime

    cache = tmp_path / "xla"
    cache.mkdir()
    old = cache / "old-cache"
    old.write_bytes(b"x" * 100)
    os.utime(old, ns=(1_000_000_000, 1_000_000_000))
    (cache / "used-cache").write_bytes(b"y" * 100)
    (cache / "used-atime").write_bytes((5_000_000_000).to_bytes(8, "little"))
    runtime.stamp_cache_entries(cache)
    assert int.from_bytes((cache / "old-atime").read_bytes(), "little") == 1_000_000_000
    assert int.from_bytes((cache / "used-atime").read_bytes(), "little") == 5_000_000_000
    # JAX's own eviction now works over the directory: the oldest stamp goes first.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lru_cache.LRUCache(str(cache), max_size=250).put("new", b"z" * 100)
    assert sorted(p.name for p in cache.glob("*-cache")) == ["new-cache", "used-cache"]
    # Without the stamp, the same write fails (what the stamp fixes).
    (cache / "bare-cache").write_bytes(b"w" * 10)
    with pytest.raises(FileNotFoundError):
        lru_cache.LRUCache(str(cache), max_size=250).put("newer", b"v" * 100)
