#!/usr/bin/env python3
"""Prints the Markdown result tables of docs/results.md from the trainers' JSON-lines logs.

    scripts/results_table.py [docs/results]

ResNet logs are docs/results/resnet-<name>.jsonl (the first, fp32-l2, is the baseline); GPT logs are
docs/results/gpt-<name>.jsonl with samples in gpt-<name>.sample.txt; numerics reports
(--quant-report, <name>.quant.jsonl) beside them are skipped. Standard library only.
"""
import glob
import json
import os
import sys


def rows(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def complete(paths):
    """Metrics logs with at least one row (numerics reports, *.quant.jsonl, are not tables)."""
    return [p for p in paths if not p.endswith(".quant.jsonl") and rows(p)]


def name_of(path, prefix):
    return os.path.basename(path)[len(prefix):].removesuffix(".jsonl")


def ordered(paths, prefix, baseline):
    return sorted(paths, key=lambda p: (name_of(p, prefix) != baseline, name_of(p, prefix)))


def resnet_table(directory):
    paths = ordered(complete(glob.glob(os.path.join(directory, "resnet-*.jsonl"))), "resnet-", "fp32-l2")
    if not paths:
        return
    base = rows(paths[0])[-1]
    print("| run | epochs | test accuracy | gap to fp32 (points) | train loss | images/s | train time |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for p in paths:
        r = rows(p)
        last = r[-1]
        seconds = sum(e["train_seconds"] for e in r)
        images_per_s = sum(e["images_per_second"] * e["train_seconds"] for e in r) / seconds
        gap = 100 * (base["test_accuracy"] - last["test_accuracy"])
        print(f"| {name_of(p, 'resnet-')} | {last['epoch']} | {100 * last['test_accuracy']:.2f}% | "
              f"{gap:+.2f} | {last['train_loss']:.4f} | {images_per_s:.0f} | {seconds / 60:.1f} min |")
    print()


def gpt_table(directory):
    paths = ordered(complete(glob.glob(os.path.join(directory, "gpt-*.jsonl"))), "gpt-", "fp32-l2")
    if not paths:
        return
    base = rows(paths[0])[-1]
    print("| run | steps | val loss (nats/char) | bits/char | relative gap to fp32 | train loss | tokens/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for p in paths:
        r = rows(p)
        last = r[-1]
        tokens_per_s = sum(e["tokens_per_second"] for e in r) / len(r)
        gap = 100 * (last["val_loss"] - base["val_loss"]) / base["val_loss"]
        print(f"| {name_of(p, 'gpt-')} | {last['step']} | {last['val_loss']:.4f} | {last['val_bpc']:.3f} | "
              f"{gap:+.2f}% | {last['train_loss']:.4f} | {tokens_per_s:.0f} |")
    print()
    for p in paths:
        sample = p.removesuffix(".jsonl") + ".sample.txt"
        if os.path.exists(sample):
            with open(sample, encoding="utf-8") as f:
                text = f.read().strip()
            print(f"**{name_of(p, 'gpt-')}** sample (`--sample 300 --prompt \"And God said\"`):\n")
            print("```\n" + text + "\n```\n")


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else "docs/results"
    resnet_table(directory)
    gpt_table(directory)


if __name__ == "__main__":
    main()
