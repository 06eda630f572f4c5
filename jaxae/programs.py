"""A sweep's programs kept across processes, traced and lowered once (``jax.export``).

XLA's persistent cache (``runtime.enable_compilation_cache``) spares a user's next sweep the
compilation of its programs but not their tracing and lowering: about 1.2 s for the chunk program
of the digits bench shape on the 2-core CPU, paid before the sweep's first result
(bench/RESULTS.md). ``Program`` exports a jitted function once (StableHLO, shardings included)
into ``programs/`` of that cache's directory and later processes load it instead: one file per
program, static arguments, argument shapes and placements, jaxae source and JAX version.

Anything that fails here (no ``flatbuffers``, which JAX's serialization needs; an unreadable file;
an export JAX refuses) falls back to the jitted function: the cache can save time, never change a
result (the loaded program is the same StableHLO; tested bit for bit).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax

import jaxae

# Programs exported ("<name>/traced") and loaded ("<name>/loaded") by this process: tests use it.
COUNTS: dict[str, int] = {}
# Loaded programs by file key (None: this one falls back to jax.jit), kept for the process: a
# later sweep in it (the bench's measured run) calls the same jitted wrapper, compiled once.
_LOADED: dict[str, Callable | None] = {}


_TRACE_SETTINGS = ("jax_threefry_partitionable", "jax_enable_x64", "jax_default_prng_impl",
                   "jax_default_matmul_precision")


# The most bytes of exported programs kept (each 40-100 KB; every jaxae version or sweep shape
# makes new ones): past it the least recently used go.
MAX_BYTES = 256 * 2**20


def prune(directory: Path, keep: Path | None = None, max_bytes: int | None = None) -> None:
    """Deletes the least recently used program files of ``directory`` (modification time: a
    load refreshes it) until they take at most ``max_bytes`` (``MAX_BYTES``); never ``keep``.
    Files another process deletes first, or cannot be deleted, are skipped."""
    limit = MAX_BYTES if max_bytes is None else max_bytes
    files = []
    for path in directory.glob("*.jaxexport"):
        with contextlib.suppress(OSError):
            stat = path.stat()
            files.append((stat.st_mtime, stat.st_size, path))
    total = sum(size for _, size, _ in files)
    for _, size, path in sorted(files, key=lambda f: f[0]):
        if total <= limit:
            break
        if path == keep:
            continue
        with contextlib.suppress(OSError):
            path.unlink()
            total -= size


def forget() -> None:
    """Forgets the programs this process loaded (with ``jax.clear_caches``: a bench's next case
    then starts as a new process would, from the files)."""
    _LOADED.clear()


@functools.cache
def _source_hash() -> str:
    """jaxae's own source: any edit makes new programs."""
    root = Path(jaxae.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def _directory() -> Path | None:
    """``programs/`` in the persistent compilation cache's directory; None when that is off,
    ``JAXAE_PROGRAM_CACHE=off``, or JAX cannot serialize programs here (``flatbuffers``
    missing)."""
    cache = jax.config.jax_compilation_cache_dir
    if (not cache or os.environ.get("JAXAE_PROGRAM_CACHE", "").lower() == "off"
            or importlib.util.find_spec("flatbuffers") is None):
        return None
    return Path(cache) / "programs"


def _placement(x: Any) -> str:
    """Where ``x`` lives, in XLA's terms: shardings that place it alike (a program's output
    sharded ``P()`` on a one-device mesh, its input ``P('pop')``) name one program."""
    sharding = getattr(x, "sharding", None)
    if sharding is None:
        return "host"
    try:
        devices = sorted(d.id for d in sharding.device_set)
        return f"{sharding._to_xla_hlo_sharding(x.ndim)}@{devices}"
    except Exception:  # noqa: BLE001 -- a sharding without XLA's view: its own description
        return str(sharding)


class Program:
    """``fn(*args)`` whose first ``donated`` arguments are populations (donated, and returned
    first in the same structure, ``None`` included), run through ``jax.export`` when the
    persistent cache is on.

    Args:
        name: the program's name (file names, ``COUNTS``).
        fn: a call of a jitted function with the static arguments bound: the dynamic ones in.
        lower: the same with ``.lower`` (compiling ahead without the cache).
        static: what the binding fixed (hashed into the file name: its ``repr`` must name it).
        donated: how many leading arguments are donated populations.
    """

    def __init__(self, name: str, fn: Callable, lower: Callable, static: Any, donated: int
                 ) -> None:
        self.name, self.fn, self.lower, self.static, self.donated = (name, fn, lower, static,
                                                                     donated)
        self._keys: dict[tuple, str] = {}  # arguments' structure, shapes, placements -> key

    def __call__(self, *args: Any) -> tuple:
        leaves, tree = jax.tree.flatten(args)
        run = self._callable(args, leaves, tree)
        if run is None:
            return self.fn(*args)
        return self._structure(args, run(*leaves))

    def compile(self, *args: Any) -> None:
        """Compiles for ``args`` now (``Driver._compile``); the calls that follow find it."""
        leaves, tree = jax.tree.flatten(args)
        run = self._callable(args, leaves, tree)
        if run is None:
            self.lower(*args).compile()
        else:
            run.lower(*leaves).compile()

    def _structure(self, args: Sequence[Any], flat: tuple) -> tuple:
        pops = [jax.tree.unflatten(jax.tree.structure(a), leaves)
                for a, leaves in zip(args[: self.donated], flat[: self.donated], strict=True)]
        return (*pops, *flat[self.donated:])

    def _key(self, leaves: list, tree: Any) -> str:
        signature = (tree, *((getattr(x, "shape", ()), getattr(x, "dtype", type(x)),
                              getattr(x, "sharding", None)) for x in leaves))
        if signature not in self._keys:  # each call's: hashing every leaf's placement costs
            self._keys[signature] = self._file_key(leaves, tree)
        return self._keys[signature]

    def _file_key(self, leaves: list, tree: Any) -> str:
        device = jax.devices()[0]
        parts = [self.name, repr(self.static), str(tree), jax.__version__, _source_hash(),
                 device.platform, device.device_kind, str(jax.device_count())]
        # Settings that change what a trace produces (random bits, dtypes, matmul precision).
        parts += [str(getattr(jax.config, name, None)) for name in _TRACE_SETTINGS]
        parts += [f"{getattr(x, 'shape', ())}/{getattr(x, 'dtype', type(x))}/{_placement(x)}"
                  for x in leaves]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]

    def _callable(self, args: Sequence[Any], leaves: list, tree: Any) -> Callable | None:
        """The loaded (or just exported) program for ``args``' shapes; None: use ``jax.jit``."""
        directory = _directory()
        if directory is None or jax.process_count() > 1:
            return None
        key = self._key(leaves, tree)
        if key in _LOADED:
            return _LOADED[key]
        path = directory / f"{self.name}-{key}.jaxexport"
        try:
            exported = jax.export.deserialize(bytearray(path.read_bytes()))
            how = "loaded"
            with contextlib.suppress(OSError):
                os.utime(path)  # recently used: pruned last
        except Exception:  # noqa: BLE001 -- absent, unreadable or stale: export it again
            try:
                exported = self._export(args)
                directory.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".tmp{os.getpid()}")
                tmp.write_bytes(exported.serialize())
                os.replace(tmp, path)
            except Exception:  # noqa: BLE001 -- e.g. no flatbuffers: the jitted path
                _LOADED[key] = None
                return None
            how = "traced"
            prune(directory, keep=path)
        COUNTS[f"{self.name}/{how}"] = COUNTS.get(f"{self.name}/{how}", 0) + 1
        donated = len(jax.tree.leaves(args[: self.donated]))
        run = jax.jit(exported.call, donate_argnums=tuple(range(donated)))
        _LOADED[key] = run
        return run

    def _export(self, args: Sequence[Any]) -> jax.export.Exported:
        """``fn`` over flat leaves, its populations' outputs flat too (so the exported tree
        holds only built-in containers, which JAX serializes)."""
        leaves, tree = jax.tree.flatten(args)

        def flat(*xs):
            out = self.fn(*jax.tree.unflatten(tree, xs))
            return (*(jax.tree.leaves(p) for p in out[: self.donated]), *out[self.donated:])

        return jax.export.export(jax.jit(flat))(*leaves)
