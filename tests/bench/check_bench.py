"""Runs `tessera bench <name> --quick --json` (under mpirun for the multi-rank ones), parses its
JSON and asserts what it must hold whatever the machine's speed: each benchmark's correctness
field against its baseline (the largest difference of its results from the baseline's or the
reference's), the medians and spreads of interleaved rounds, and that every speedup names the
baseline it was measured against (for `kernels`: the fastest of every formulation timed).
No speed threshold is asserted: CI machines differ; the README quotes full runs.

Usage: check_bench.py <name> [--np N]   (TESSERA_BIN, MPIEXEC from the environment)
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


def need(cond, msg):
    if not cond:
        fail(msg)


def finite_pos(x, what):
    need(isinstance(x, (int, float)) and math.isfinite(x) and x > 0, f"{what} = {x!r} is not a positive number")


def spread(s, what, positive=True):
    for k in ("median", "p10", "p90", "min", "max", "samples"):
        need(k in s, f"{what}: spread lacks {k}: {s}")
    need(s["samples"] >= 3, f"{what}: only {s['samples']} samples")
    need(s["min"] <= s["p10"] <= s["median"] <= s["p90"] <= s["max"],
         f"{what}: spread out of order: {s}")
    if positive:
        finite_pos(s["median"], what + " median")


def check_caches(j):
    finite_pos(j["alloc_free_per_s"], "alloc_free_per_s")
    spread(j["alloc_free_per_s_spread"], "alloc_free_per_s")
    spread(j["baseline_std_list_alloc_free_per_s_spread"], "baseline alloc_free_per_s")
    spread(j["alloc_free_speedup_per_round"], "alloc/free speedup per round")
    need(j["pool_consistent"] and j["baseline_consistent"], "a free list lost blocks")
    need(j["waste_workload"]["failed_allocations"] == 0, "the waste workload ran out of blocks")
    need(0 <= j["paged_waste_pct"] < j["contiguous_waste_pct"] <= 100,
         f"waste: paged {j['paged_waste_pct']} vs contiguous {j['contiguous_waste_pct']}")
    need(0 < j["prefix_hit_rate"] <= j["prefix_ideal_hit_rate"] + 1e-9,
         f"prefix hit rate {j['prefix_hit_rate']} vs ideal {j['prefix_ideal_hit_rate']}")


PAGED_TOL = 1e-4


def check_paged(j):
    need(j["max_abs_err_vs_reference"] <= PAGED_TOL,
         f"paged decode differs from the reference by {j['max_abs_err_vs_reference']}")
    need(j["int8_max_abs_err_vs_reference"] <= PAGED_TOL,
         f"int8 paged decode differs from the reference by {j['int8_max_abs_err_vs_reference']}")
    finite_pos(j["paged_decode_bw_fraction"], "paged_decode_bw_fraction")
    spread(j["paged_decode_bw_fraction_per_round"], "fp32 bandwidth fraction per round")
    spread(j["paged_decode_ms_spread"], "paged decode ms")
    spread(j["mem_read_ms"], "streaming read ms")


CLUSTER_BASELINES = {"gather", "dense_scatter", "dense_logcount", "dense_scatter_chunked",
                     "dense_logcount_chunked"}


def check_kernels(j):
    rows = j["cluster_attention"]
    need([r["config"] for r in rows] == ["small", "medium", "large"], "configs")
    for r in rows:
        c = r["config"]
        need(set(r["baselines"]) == CLUSTER_BASELINES, f"{c}: baselines {sorted(r['baselines'])}")
        need(r["max_abs_err_vs_baseline"] <= 1e-4,
             f"{c}: forward differs from a baseline by {r['max_abs_err_vs_baseline']}")
        need(r["max_grad_err_vs_baseline"] <= 1e-3,
             f"{c}: gradients differ from a baseline by {r['max_grad_err_vs_baseline']}")
        for name, d in r["baseline_detail"].items():
            need(d["fwd"]["max_err_vs_ours"] <= 1e-4, f"{c}/{name}: forward error")
            need(d["fwd_bwd"]["max_err_vs_ours"] <= 1e-3, f"{c}/{name}: gradient error")
            spread(d["fwd"]["ms"], f"{c}/{name} fwd ms")
            spread(d["fwd_bwd"]["ms"], f"{c}/{name} fwd+bwd ms")
        for p in ("fwd", "fwd_bwd"):
            spread(r[p + "_ms_spread"], f"{c} ours {p} ms")
            spread(r[p + "_speedup_per_round"], f"{c} {p} speedup per round")
            base = r[p + "_baseline"]
            fastest = min(r["baselines"], key=lambda n: r["baselines"][n][p + "_ms"])
            need(base == fastest, f"{c}: {p} speedup against {base}, the fastest is {fastest}")
            need(abs(r[p + "_baseline_ms"] - r["baselines"][base][p + "_ms"]) < 1e-9, f"{c}: {p} ms")
            finite_pos(r[p + "_speedup"], f"{c} {p}_speedup")
            need(abs(r[p + "_speedup"] - r[p + "_baseline_ms"] / r[p + "_ms"]) < 1e-6 * r[p + "_speedup"],
                 f"{c}: {p}_speedup is not baseline / ours")
    finite_pos(j["paged_decode_bw_fraction"], "paged_decode_bw_fraction")


def check_comm(j):
    need(j["world_size"] >= 2, "comm needs 2 ranks")
    need(j["max_abs_diff_vs_mpi"] == 0, f"collectives differ from MPI's: {j['max_abs_diff_vs_mpi']}")
    for name in ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast"):
        need(j[name], f"no {name} rows")
        for r in j[name]:
            need(r["max_abs_diff_vs_mpi"] == 0, f"{name} {r['bytes']} B differs from MPI")
            need(r["rounds"] >= 5, f"{name}: {r['rounds']} rounds")
            need(r["ratio_p10"] <= r["ratio"] <= r["ratio_p90"], f"{name}: ratio spread")
            finite_pos(r["ours_us"], f"{name} ours_us")


def check_sp_decode(j):
    need(j["world_size"] >= 2, "sp_decode needs 2 ranks")
    need(j["bytes_per_step_spread"] == 0, "bytes per decode step grow with the context")
    need(j["one_rank_threads"] == j["world_size"] * j["sharded_threads_per_rank"],
         "the one-rank side must use the cores of all ranks")
    for r in j["contexts"]:
        need(r["max_abs_diff"] <= 1e-4, f"{r['tokens']} tokens: sharded differs by {r['max_abs_diff']}")
        spread(r["one_rank_ms_spread"], f"{r['tokens']} one-rank ms")
        spread(r["sharded_ms_spread"], f"{r['tokens']} sharded ms")
        spread(r["speedup_per_step"], f"{r['tokens']} speedup per step")
        need(r["kv_bytes_per_sharded_rank"] < r["kv_bytes_one_rank"], "sharding saves no memory")


def check_scheduler(j):
    for w in ("decode", "churn"):
        r = j[w]
        need(r["requests"] == 1024, f"{w}: {r['requests']} requests, the key is for 1024")
        need(r["min_us"] <= r["p10_us"] <= r["median_us"] <= r["p90_us"] <= r["max_us"],
             f"{w}: spread out of order")
        finite_pos(r["median_us"], f"{w} median_us")
        finite_pos(r["baseline_kv_append_median_us"], f"{w} baseline")
        need(r["steps"] >= 100, f"{w}: {r['steps']} steps")
    need(j["scheduler_step_us_1024"] == j["decode"]["median_us"], "key is not the decode median")


CHECKS = {"caches": check_caches, "scheduler": check_scheduler, "kernels": check_kernels, "paged": check_paged,
          "comm": check_comm, "sp_decode": check_sp_decode}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("name", choices=sorted(CHECKS))
    ap.add_argument("--np", type=int, default=1)
    a = ap.parse_args()
    cmd = [os.environ["TESSERA_BIN"], "bench", a.name, "--quick", "--json"]
    if a.np > 1:
        cmd = [os.environ.get("MPIEXEC", "mpirun"), "-np", str(a.np), "--oversubscribe"] + cmd
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    print(" ".join(cmd), f"({time.time() - t0:.1f} s)")
    if p.returncode != 0:
        fail(f"exit {p.returncode}\n{p.stderr}")
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    need(len(lines) == 1, f"expected one JSON line, got {len(lines)}:\n{p.stdout}")
    j = json.loads(lines[0])
    CHECKS[a.name](j)
    print("ok:", a.name)


if __name__ == "__main__":
    main()
