#!/usr/bin/env python3
"""Draws training curves from the trainers' JSON-lines metrics logs (--log) into a PNG.

    scripts/plot_metrics.py out.png docs/results/resnet-fp32-l2.jsonl docs/results/resnet-w4a4g4-l1.jsonl
    scripts/plot_metrics.py --y val_loss gpt.png docs/results/gpt-*.jsonl
    scripts/plot_metrics.py numerics.png run.quant.jsonl     # a --quant-report file: one line per layer

A numerics report (--quant-report) is drawn as four panels over the training steps, one line per
quantized layer: the input's saturation rate and relative error, the output gradient's underflow
(zero) rate and relative error. Its last report is also printed as a table (no matplotlib needed).

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


def load_pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("plot_metrics: needs matplotlib (Debian package python3-matplotlib)")
    return plt


QUANT_PANELS = [("input", "saturation_rate"), ("input", "relative_error"),
                ("grad_output", "zero_rate"), ("grad_output", "relative_error")]


def print_quant_summary(path, rows):
    """The last report of a --quant-report file as a table, one row per layer."""
    last = rows[-1]
    print(f"{path}: step {last['step']}, loss {last.get('loss')}")
    header = ["layer", "bits a/g", "range", "sat calls", "in sat", "in zero", "in err", "g zero", "g err"]
    print(" | ".join(header))
    for layer in last["layers"]:
        i, g = layer.get("input", {}), layer.get("grad_output", {})
        fmt = lambda d, k: f"{d[k]:.4f}" if k in d else "-"
        print(" | ".join([layer["layer"], f"{layer['activation_bits']}/{layer['gradient_bits']}",
                          f"{layer.get('input_range', float('nan')):.4g}",
                          f"{layer['saturated_calls']}/{layer['observed_calls']}",
                          fmt(i, "saturation_rate"), fmt(i, "zero_rate"), fmt(i, "relative_error"),
                          fmt(g, "zero_rate"), fmt(g, "relative_error")]))


def plot_quant_report(plt, rows, output):
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    names = [layer["layer"] for layer in rows[-1]["layers"]]
    for ax, (role, key) in zip(axes.flat, QUANT_PANELS):
        for name in names:
            xs, ys = [], []
            for row in rows:
                layer = next((l for l in row["layers"] if l["layer"] == name), None)
                if layer and role in layer:
                    xs.append(row["step"])
                    ys.append(layer[role][key])
            if xs:
                ax.plot(xs, ys, label=name)
        ax.set(xlabel="step", title=f"{role} {key}")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(output, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--x", help="x-axis key (default: epoch or step)")
    parser.add_argument("--y", help="metric key (default: test_accuracy or val_loss)")
    parser.add_argument("output", help="PNG file to write")
    parser.add_argument("logs", nargs="+", help="JSON-lines logs written with --log")
    args = parser.parse_args()

    logs = {os.path.basename(p).removesuffix(".jsonl"): read_log(p) for p in args.logs}
    first = next(iter(logs.values()))[0]
    if "layers" in first:  # a numerics report
        if len(args.logs) != 1:
            sys.exit("plot_metrics: draw one --quant-report file at a time")
        rows = next(iter(logs.values()))
        print_quant_summary(args.logs[0], rows)
        plot_quant_report(load_pyplot(), rows, args.output)
        print(f"plot_metrics: wrote {args.output}")
        return
    plt = load_pyplot()
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
