#!/usr/bin/env python3
"""Draws training curves from the trainers' JSON-lines metrics logs (--log) into a PNG.

    scripts/plot_metrics.py out.png docs/results/resnet-fp32-l2.jsonl docs/results/resnet-w4a4g4-l1.jsonl
    scripts/plot_metrics.py --y val_loss gpt.png docs/results/gpt-*.jsonl

Needs python3-matplotlib (Debian: apt-get install python3-matplotlib); it is an optional tool, never a
build or test dependency. x defaults to "epoch" (ResNet logs) or "step" (GPT logs); y defaults to
test_accuracy / val_loss, plus train_loss in a second panel.
"""
import argparse
import json
import os
import sys


def read_log(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{number}: not a JSON object ({e})")
    if not rows:
        sys.exit(f"{path}: empty log")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--x", help="x-axis key (default: epoch or step)")
    parser.add_argument("--y", help="metric key (default: test_accuracy or val_loss)")
    parser.add_argument("output", help="PNG file to write")
    parser.add_argument("logs", nargs="+", help="JSON-lines logs written with --log")
    args = parser.parse_args()
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("plot_metrics: needs matplotlib (Debian package python3-matplotlib)")

    logs = {os.path.basename(p).removesuffix(".jsonl"): read_log(p) for p in args.logs}
    first = next(iter(logs.values()))[0]
    x_key = args.x or ("epoch" if "epoch" in first else "step")
    y_key = args.y or ("test_accuracy" if "test_accuracy" in first else "val_loss")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, rows in logs.items():
        xs = [r[x_key] for r in rows]
        axes[0].plot(xs, [r.get(y_key) for r in rows], marker="o", label=name)
        axes[1].plot(xs, [r.get("train_loss") for r in rows], marker="o", label=name)
    axes[0].set(xlabel=x_key, ylabel=y_key, title=y_key)
    axes[1].set(xlabel=x_key, ylabel="train_loss", title="train_loss")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    print(f"plot_metrics: wrote {args.output}")


if __name__ == "__main__":
    main()
