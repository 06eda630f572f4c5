"""Reads bench JSON lines on stdin and prints one short line each: the keys a reader compares.

Used by bench/gpu.sh so that a lent machine's results fit in a terminal's last screens.
"""

from __future__ import annotations

import json
import sys

KEYS = ("bench", "case", "searcher", "pipelined", "capacity", "slots_per_bucket", "kernel",
        "population", "precision", "settle_moments",
        "member_steps_per_s", "measured_us_per_member_step", "roofline_us_per_member_step",
        "roofline_ratio", "model_gflops_per_s", "ratio_vs_reference", "ratio_vs_sequential",
        "ratio_vs_loop", "sweep_efficiency", "trainer_member_steps_per_s", "wall_s", "compile_s",
        "first_trial_s", "host_ms_per_chunk", "host_ms_per_trial", "busy_slot_fraction",
        "occupancy", "packing_bound", "compiles", "member_steps", "rel_diff_median", "rel_diff_max",
        "spearman_vs_float32", "seed_noise_median", "us_per_member_step", "share",
        "kernels_per_step", "device_us_per_member_step")


def short(value: object) -> object:
    if isinstance(value, float):
        return float(f"{value:.4g}")
    return value


def main() -> int:
    for line in sys.stdin:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue
        print(" ".join(f"{k}={short(row[k])}" for k in KEYS if row.get(k) is not None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
