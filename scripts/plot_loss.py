#!/usr/bin/python3
"""Draws the loss curve of a `tessera train` JSONL log (one JSON object per step: "step", "loss",
optionally "test_accuracy") to a PNG with Debian's matplotlib.

Usage: /usr/bin/python3 scripts/plot_loss.py LOG.jsonl OUT.png [--title TEXT]
"""
import argparse
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("log")
    ap.add_argument("out")
    ap.add_argument("--title", default=None)
    a = ap.parse_args()
    steps, losses, acc_steps, accs = [], [], [], []
    with open(a.log) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"plot_loss: {a.log}:{n}: not JSON ({e})")
            if "loss" in rec:
                steps.append(rec["step"])
                losses.append(rec["loss"])
            if "test_accuracy" in rec:
                acc_steps.append(rec["step"])
                accs.append(rec["test_accuracy"])
    if not steps:
        sys.exit(f"plot_loss: {a.log} has no loss records")
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(steps, losses, color="tab:blue", linewidth=1.2, label="training loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    if accs:
        ax2 = ax.twinx()
        ax2.plot(acc_steps, [100 * x for x in accs], "o-", color="tab:orange", markersize=3,
                 label="test accuracy (%)")
        ax2.set_ylabel("test accuracy (%)")
        ax2.set_ylim(0, 100)
        lines = ax.get_lines() + ax2.get_lines()
        ax.legend(lines, [l.get_label() for l in lines], loc="center right")
    ax.set_title(a.title or a.log)
    fig.tight_layout()
    fig.savefig(a.out)
    print(f"plot_loss: {len(steps)} steps -> {a.out}")


if __name__ == "__main__":
    main()
