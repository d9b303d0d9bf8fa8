#!/usr/bin/env python3
"""Draws `tessera bench serve --json` as a PNG: throughput and p99 time to first token against the
request rate, Tessera beside llama.cpp's server (when the run measured it).

Usage: /usr/bin/python3 scripts/plot_serve.py bench.json out.png   (Debian's python3-matplotlib)"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        data = json.load(f)
    rows = data["rates"]
    rates = [r["rps"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label, style in (("tessera", "Tessera", "o-"), ("llama_cpp", "llama.cpp server", "s--")):
        pts = [(r["rps"], r[key]) for r in rows if key in r and "tok_s" in r[key]]
        if not pts:
            continue
        x = [p[0] for p in pts]
        ax1.plot(x, [p[1]["tok_s"] for p in pts], style, label=label)
        ax2.plot(x, [p[1]["ttft_p99_ms"] for p in pts], style, label=label)
    ax1.set(xlabel="request rate (req/s)", ylabel="output tokens/s", title="Throughput")
    ax2.set(xlabel="request rate (req/s)", ylabel="ms (log scale)", title="p99 time to first token")
    ax2.set_yscale("log")
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(rates, [f"{r:g}" for r in rates])
        ax.grid(alpha=0.3)
        ax.legend()
    ck = data.get("checkpoint", {})
    model = data.get("model")
    if "params" in ck:
        model = f"{ck.get('name', model)} {ck['params'] / 1e6:.1f} M params"
    loads = [r[k][f] for r in rows for k in ("tessera", "llama_cpp")
             for f in ("load_before", "load_after") if k in r and f in r[k]]
    load = f", load {min(loads):.1f}-{max(loads):.1f}" if loads else ""
    fig.suptitle(f"tessera bench serve: {model}, {data.get('requests_per_rate')} requests per "
                 f"rate, {data.get('max_tokens')} tokens each\n{data.get('threads', '?')} threads "
                 f"per server{load} {data.get('date', '')}")
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=100)


if __name__ == "__main__":
    main()
