#!/usr/bin/env python3
"""Draws `tessera bench sparse --json` output: attention-mass recall and relative output error
against the token budget, one row per family, one line per method, at one context length.

Usage: tessera bench sparse --json > sparse.json
       python3 scripts/plot_sparse.py sparse.json sparse.png [--context 32768]
Needs matplotlib (Debian: python3-matplotlib).
"""
import argparse
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {
    "cluster": dict(color="tab:blue", marker="o"),
    "quest": dict(color="tab:orange", marker="s"),
    "meanstd": dict(color="tab:green", marker="^"),
    "sink_window": dict(color="tab:gray", marker="v"),
    "oracle": dict(color="black", marker="*", linestyle="--"),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json_file")
    ap.add_argument("png_file")
    ap.add_argument("--context", type=int, default=None,
                    help="context length to draw (default: 32768 if present, else the largest)")
    args = ap.parse_args()
    with open(args.json_file) as f:
        data = json.load(f)
    cells = data["cells"]
    contexts = sorted({c["context"] for c in cells})
    ctx = args.context or (32768 if 32768 in contexts else contexts[-1])
    if ctx not in contexts:
        sys.exit(f"context {ctx} not in the results (have {contexts})")
    families = list(dict.fromkeys(c["family"] for c in cells))
    methods = list(dict.fromkeys(c["method"] for c in cells))
    fig, axes = plt.subplots(len(families), 2, figsize=(10, 2.6 * len(families)), squeeze=False)
    for row, fam in enumerate(families):
        for col, (key, label) in enumerate((("mass_recall", "attention-mass recall"),
                                            ("rel_error", "relative output error"))):
            ax = axes[row][col]
            for m in methods:
                pts = sorted((c["budget"], c[key]) for c in cells
                             if c["family"] == fam and c["method"] == m and c["context"] == ctx)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], label=m,
                            **STYLE.get(m, {}))
            ax.set_xscale("log", base=2)
            if key == "rel_error":
                ax.set_yscale("log")
            else:
                ax.set_ylim(0, 1.02)
            ax.set_title(f"{fam}: {label}", fontsize=9)
            ax.set_xlabel("budget (tokens)", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower right")
    shape = data.get("shape", {})
    fig.suptitle(f"tessera bench sparse: {ctx // 1024}K context, {shape.get('kv_heads')} kv heads "
                 f"x group {shape.get('group')}, head_dim {shape.get('head_dim')}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(args.png_file, dpi=90)
    print(f"wrote {args.png_file} ({len(families)} families, {len(methods)} methods, {ctx} tokens)")


if __name__ == "__main__":
    main()
