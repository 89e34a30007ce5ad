#!/usr/bin/env python3
"""Turns Google Benchmark JSON (run with --benchmark_repetitions=N --benchmark_report_aggregates_only=true)
into Markdown ratio tables. Standard library only.

usage: bench/report.py bench/results/bench_gemm.json > table.md
"""
import json
import re
import sys
from collections import defaultdict


def medians(path):
    with open(path) as f:
        data = json.load(f)
    out = {}
    for b in data["benchmarks"]:
        if b.get("aggregate_name") != "median":
            continue
        out[b["run_name"]] = b
    return data["context"], out


def split(run_name):
    # BM_Gemm_<impl>/M:256/N:1024/K:1024/threads:2/real_time -> ("Gemm", impl, "256x1024x1024", 2)
    m = re.match(r"BM_(Gemm|PackWeights)_([a-z0-9_]+)/M:(\d+)/N:(\d+)/K:(\d+)/threads:(\d+)", run_name)
    if m:
        return m.group(1), m.group(2), f"{m.group(3)}x{m.group(4)}x{m.group(5)}", int(m.group(6))
    m = re.match(r"BM_Quantize_([a-z_]+)/R:(\d+)/C:(\d+)/threads:(\d+)", run_name)
    if m:
        return "Quantize", m.group(1), f"{m.group(2)}x{m.group(3)}", int(m.group(4))
    return None


def ms(b):
    scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[b["time_unit"]]
    return b["real_time"] * scale


def main():
    context, runs = medians(sys.argv[1])
    table = defaultdict(dict)  # (kind, shape, threads) -> impl -> bench
    for name, b in runs.items():
        key = split(name)
        if key:
            kind, impl, shape, threads = key
            table[(kind, shape, threads)][impl] = b
    print(f"Machine: {context.get('host_name', '?')}, {context.get('num_cpus', '?')} CPUs at "
          f"{context.get('mhz_per_cpu', '?')} MHz; oneDNN {context.get('onednn', '?')}; "
          f"int8 dot product: {context.get('int8_dot_product', '?')}; quantizer ISA: {context.get('quantize_isa', '?')}.")
    print("Median of the repetitions; times in ms; ratios are fp32 oneDNN time / other time (higher = faster).\n")
    print("| M x N x K | threads | f32 oneDNN | f32 Eigen | s8s8s32 | u8s8s32 | ShiftQuant e2e | "
          "ShiftQuant / f32 oneDNN | u8s8s32 / f32 oneDNN | weight pack (once/step) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (kind, shape, threads) in sorted(table, key=lambda k: (k[0], [int(x) for x in k[1].split("x")], k[2])):
        if kind != "Gemm":
            continue
        row = table[(kind, shape, threads)]
        pack = table.get(("PackWeights", shape, threads), {}).get("shiftquant")
        f32 = row.get("f32_onednn")
        cell = lambda impl: f"{ms(row[impl]):.3f}" if impl in row else "-"
        ratio = lambda impl: f"{ms(f32) / ms(row[impl]):.2f}x" if f32 and impl in row else "-"
        print(f"| {shape} | {threads} | {cell('f32_onednn')} | {cell('f32_eigen')} | {cell('s8s8s32')} | "
              f"{cell('u8s8s32')} | {cell('shiftquant')} | **{ratio('shiftquant')}** | {ratio('u8s8s32')} | "
              f"{ms(pack):.3f} |" if pack else "-")
    print("\nQuantizers alone (fp32 input bytes read per second):\n")
    print("| R x C | threads | quantizer | time (us) | GB/s |")
    print("|---|---|---|---|---|")
    for (kind, shape, threads) in sorted(table):
        if kind != "Quantize":
            continue
        for impl, b in sorted(table[(kind, shape, threads)].items()):
            print(f"| {shape} | {threads} | {impl} | {ms(b) * 1e3:.1f} | {b['bytes_per_second'] / 1e9:.1f} |")


if __name__ == "__main__":
    main()
