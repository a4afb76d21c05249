"""Defining a chain of promises: time and memory at 1,000, 2,000 and 4,000 states.

Each size is defined in a fresh process (no run): time with memory measured
as the growth of the process's resident set, and, in a separate process,
the peak of Python allocations (tracemalloc). Linearity is the ratio of the
per-state cost at 4,000 to that at 1,000 (1.0 is perfectly linear). The
floor is one atomic small-file write, as a unit of this machine's speed.

    python benchmarks/define.py
"""

from __future__ import annotations

from _common import MiB, emit, floor, in_fresh_process, median, repeat_env, scratch

TARGET_S = 0.2
TARGET_MIB = 60
SIZES = (1000, 2000, 4000)


def main() -> dict:
    reps = repeat_env(5)
    out: dict = {"workload": "define", "repeats": reps, "target_s": TARGET_S, "target_mib": TARGET_MIB}
    per_state = {}
    for n in SIZES:
        times, rss = [], []
        for _ in range(reps):
            with scratch() as folder:
                res = in_fresh_process("define", folder, "chain", n)
            times.append(res["define_s"])
            rss.append(res["rss_delta_bytes"])
        with scratch() as folder:
            traced = in_fresh_process("define", folder, "chain", n, tracemalloc=True)["traced_peak_bytes"]
        out[f"chain_{n}_s"] = median(times)
        out[f"chain_{n}_rss_mib"] = median(rss) / MiB
        out[f"chain_{n}_traced_peak_mib"] = traced / MiB
        per_state[n] = median(times) / n
    out["time_linearity_4000_vs_1000"] = per_state[4000] / per_state[1000]
    out["memory_linearity_4000_vs_1000"] = (out["chain_4000_traced_peak_mib"] / 4000) / (out["chain_1000_traced_peak_mib"] / 1000)
    fl = floor(4096)
    out.update(fl)
    out["ratio_to_atomic_write_per_state"] = (out["chain_4000_s"] * 1e3 / 4000) / fl["atomic_write_ms"]
    out["meets_target"] = out["chain_4000_s"] <= TARGET_S and max(out["chain_4000_rss_mib"], out["chain_4000_traced_peak_mib"]) <= TARGET_MIB
    return out


if __name__ == "__main__":
    emit(main())
