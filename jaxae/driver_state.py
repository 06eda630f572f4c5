"""A sweep driver's state as bytes: everything a checkpoint needs to continue the sweep exactly
(msgpack, no pickle), and back. Paused members are saved from the device's parking lot and
spread over the devices again on load."""

from __future__ import annotations

import json
import math
import time
from typing import TYPE_CHECKING

import jax
import numpy as np
from flax import serialization

from jaxae import sharding as sharding_lib
from jaxae.config import searched
from jaxae.jobs import Paused, Running
from searchers import Job, restore_scheduler

if TYPE_CHECKING:
    from jaxae.driver import Driver


def save(driver: Driver) -> bytes:
    """Everything needed to continue ``driver``'s sweep exactly, as msgpack (no pickle)."""
    driver.flush()
    meta = {
        "chunk": driver.chunk,
        "member_steps": driver.member_steps,
        "scheduler": driver.scheduler.state_dict(),
        "buckets": [{"key": list(b.key), "owner": b.owner, "slots": _held(b.owner)}
                    for b in driver.buckets.values()],
        "running": [
            {"trial": t, "budget": r.job.budget, "job_config": r.job.config,
             "config": r.config, "bucket": list(r.bucket), "slots": r.slots}
            for t, r in driver.running.items()
        ],
        "paused": [
            {"trial": t, "config": p.config, "bucket": list(p.bucket), "budget": p.budget,
             "loss": _json_float(p.loss), "replicate_losses": [_json_float(v) for v in
                                                               p.replicate_losses]}
            for t, p in driver.paused.items()
        ],
        "queue": [{"trial": j.trial_id, "config": j.config, "budget": j.budget}
                  for j in driver.queue],
        "lagged": driver.lagged,
        "released": sorted(driver._released),
        "capacity": driver.capacity,
    }
    # A pipelined sweep's chunk in flight: its results are read now but told by the next step,
    # as they would have been without this checkpoint (so it never changes the schedule).
    inflight = driver._inflight
    if inflight is not None:
        results = sharding_lib.to_host([e.out for e in inflight.entries])
        meta["inflight"] = {"steps": inflight.steps, "entries": [
            {"bucket": list(e.bucket), "computed": e.computed, "owner": e.before.owner}
            for e in inflight.entries]}
    parked = {k: sharding_lib.to_host(b.parked) for k, b in driver.buckets.items()
              if b.parked is not None and any(p.bucket == k for p in driver.paused.values())}
    arrays = {
        # Only the slots that hold a member: a sweep's last checkpoint holds none.
        "buckets": {str(i): serialization.to_state_dict(_held_members(b))
                    for i, b in enumerate(driver.buckets.values())},
        "paused": {str(t): {str(r): serialization.to_state_dict(
                                jax.tree.map(lambda a, row=row: a[row], parked[p.bucket]))
                            for r, row in enumerate(p.rows)}
                   for t, p in driver.paused.items()},
    }
    if inflight is not None:
        arrays["inflight"] = {str(i): {"out": out, "step": e.before.step,
                                       "diverged": e.before.diverged,
                                       "target": e.before.target, "active": e.before.active}
                              for i, (e, out) in enumerate(zip(inflight.entries, results,
                                                               strict=True))}
    return serialization.msgpack_serialize({"meta": json.dumps(meta), "arrays": arrays})

def load(driver: Driver, data: bytes) -> None:
    """Sets ``driver`` (built from the same configuration) to continue from ``save``'s bytes."""
    state = serialization.msgpack_restore(data)
    meta = json.loads(state["meta"])
    arrays = state["arrays"]
    driver.chunk = meta["chunk"]
    driver.member_steps = meta["member_steps"]
    driver.scheduler = restore_scheduler(searched(driver.config), meta["scheduler"])
    driver.buckets = {}
    # The slots per bucket the sweep ran with (a state written before 2026-12-07 names them
    # through its buckets' owners), whatever this version's rule would give.
    saved = meta.get("capacity", len(meta["buckets"][0]["owner"]) if meta["buckets"] else None)
    if saved is not None:
        driver.capacity = saved
    for i, b in enumerate(meta["buckets"]):
        key = tuple(b["key"])
        bucket = driver._bucket(key)
        host = jax.tree.map(np.array, sharding_lib.to_host(bucket.pop))  # empty slots
        if "slots" in b:  # the slots that held a member, in order
            held = serialization.from_state_dict(jax.tree.map(lambda a: a[b["slots"]], host),
                                                 arrays["buckets"][str(i)])
            jax.tree.map(lambda a, v: a.__setitem__(b["slots"], v), host, held)
        else:  # written before 2026-11-29: every slot
            host = serialization.from_state_dict(host, arrays["buckets"][str(i)])
        bucket.pop = sharding_lib.shard(host, driver.slots)
        bucket.owner = [tuple(o) if o is not None else None for o in b["owner"]]
        bucket.hparams = jax.tree.map(np.array, host.hparams)
        bucket.keys = {k: np.array(getattr(host, k))
                       for k in ("init_key", "data_key", "eval_key")}
        bucket.target = np.array(host.target)
        bucket.trial = np.array(host.trial)
        bucket.step = np.array(host.step)
        bucket.diverged = np.array(host.diverged)
    driver.running = {
        r["trial"]: Running(Job(r["trial"], r["job_config"], r["budget"]), r["config"],
                            tuple(r["bucket"]), r["slots"])
        for r in meta["running"]
    }
    driver.paused = {}
    by_bucket: dict[tuple, list[tuple[int, dict, list]]] = {}
    for p in meta["paused"]:
        members = [m for _, m in sorted(arrays["paused"][str(p["trial"])].items(),
                                        key=lambda kv: int(kv[0]))]
        by_bucket.setdefault(tuple(p["bucket"]), []).append((p["trial"], p, members))
    for key, entries in by_bucket.items():
        bucket = driver._bucket(key)
        devices = driver.mesh.size
        needed = sum(len(members) for _, _, members in entries)
        driver._grow_parking(bucket, -(-needed // devices))
        host = jax.tree.map(np.array, sharding_lib.to_host(bucket.parked))
        template = jax.tree.map(lambda a: a[0], host)
        k = 0
        for trial, p, members in entries:
            rows = []
            for m in members:
                row = bucket.take_row(k % devices)  # spread over the devices
                k += 1
                member = serialization.from_state_dict(template, m)
                jax.tree.map(lambda a, v, row=row: a.__setitem__(row, v), host, member)
                rows.append(row)
            step = int(np.asarray(members[0]["step"]))
            driver.paused[trial] = Paused(
                p["config"], key, rows, step, p["budget"], _from_json(p["loss"]),
                [_from_json(v) for v in p["replicate_losses"]])
        bucket.parked = sharding_lib.shard(host, driver.slots)
    driver._prepared = {}
    driver.queue = [Job(j["trial"], j["config"], j["budget"]) for j in meta["queue"]]
    driver.lagged = bool(meta.get("lagged", False))  # the sweep's, whatever this process's
    driver._released = set(meta.get("released", []))
    driver._inflight = None
    if "inflight" in meta:
        from jaxae.driver import Launch, Launched, Snapshot

        steps = meta["inflight"]["steps"]
        entries = []
        for i, e in enumerate(meta["inflight"]["entries"]):
            a = arrays["inflight"][str(i)]
            before = Snapshot(np.asarray(a["step"]), np.asarray(a["diverged"]),
                              np.asarray(a["target"]), np.asarray(a["active"]),
                              [tuple(o) if o is not None else None for o in e["owner"]])
            entries.append(Launched(tuple(e["bucket"]), time.perf_counter(), e["computed"],
                                    before, np.asarray(a["out"])))
            # The host's view as the sweep had it: where the chunk leaves its slots, divergence
            # unread (the devices' state, just loaded, already knows it). Slots freed as the
            # chunk started (``Driver._release_ending``) load empty, as they are.
            bucket = driver.buckets[tuple(e["bucket"])]
            act = before.active & np.array([o is not None for o in bucket.owner])
            bucket.step[act] = np.minimum(before.step + steps, before.target)[act]
            bucket.diverged[act] = before.diverged[act]
        driver._inflight = Launch(steps, entries)


def _held_members(bucket) -> object:
    """``bucket``'s population at the slots that hold a member (read from the devices only when
    some slot does: a sweep's last checkpoint reads nothing)."""
    held = _held(bucket.owner)
    if not held:
        return jax.tree.map(lambda a: np.zeros((0, *a.shape[1:]), a.dtype), bucket.pop)
    return jax.tree.map(lambda a: a[held], sharding_lib.to_host(bucket.pop))


def _held(owner: list) -> list[int]:
    """The slots that hold a member."""
    return [s for s, o in enumerate(owner) if o is not None]


def _json_float(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _from_json(v: float | None) -> float:
    return math.nan if v is None else float(v)
