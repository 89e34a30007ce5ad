#!/usr/bin/env python3
"""Turns Google Benchmark JSON (run with --benchmark_repetitions=N --benchmark_report_aggregates_only=true)
into Markdown ratio tables. Standard library only.

usage: bench/report.py bench/results/bench_gemm.json > table.md     (GEMMs and quantizers)
       bench/report.py bench/results/bench_layers.json > table.md   (layers and normalization)
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


def layer_tables(runs):
    """bench_layers: fp32 vs int per layer, and L2 / L1 / L1-int per normalization."""
    pairs, norms = {}, {}
    for name, b in runs.items():
        m = re.match(r"BM_(Linear|Conv2d)_(f32|int)/(.+)/threads:(\d+)", name)
        if m:
            pairs.setdefault((m.group(1), m.group(3), int(m.group(4))), {})[m.group(2)] = ms(b)
        m = re.match(r"BM_(BatchNorm2d|LayerNorm)_(L2_f32|L1_f32|L1_int)/(.+)/threads:(\d+)", name)
        if m:
            norms.setdefault((m.group(1), m.group(3), int(m.group(4))), {})[m.group(2)] = ms(b)
    print("| layer | shape | threads | fp32 (ms) | int (ms) | fp32 / int |")
    print("|---|---|---|---|---|---|")
    for (layer, shape, threads), v in sorted(pairs.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1])):
        if "f32" in v and "int" in v:
            print(f"| {layer} | {shape} | {threads} | {v['f32']:.2f} | {v['int']:.2f} | **{v['f32'] / v['int']:.2f}x** |")
    print()
    print("| layer | shape | threads | L2 fp32 (ms) | L1 fp32 (ms) | L1 int (ms) | L2 / L1 fp32 | L2 fp32 / L1 int |")
    print("|---|---|---|---|---|---|---|---|")
    for (layer, shape, threads), v in sorted(norms.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1])):
        if len(v) == 3:
            print(f"| {layer} | {shape} | {threads} | {v['L2_f32']:.2f} | {v['L1_f32']:.2f} | {v['L1_int']:.2f} | "
                  f"{v['L2_f32'] / v['L1_f32']:.2f}x | **{v['L2_f32'] / v['L1_int']:.2f}x** |")


def main():
    context, runs = medians(sys.argv[1])
    if any(name.startswith(("BM_Linear", "BM_Conv2d", "BM_BatchNorm2d", "BM_LayerNorm")) for name in runs):
        layer_tables(runs)
        return
    table = defaultdict(dict)  # (kind, shape, threads) -> impl -> bench
    for name, b in runs.items():
        key = split(name)
        if key:
            kind, impl, shape, threads = key
            table[(kind, shape, threads)][impl] = b
    print(f"Machine: {context.get('num_cpus', '?')} CPUs at "
          f"{context.get('mhz_per_cpu', '?')} MHz; oneDNN {context.get('onednn', '?')}; "
          f"int8 dot product: {context.get('int8_dot_product', '?')}; integer GEMM: "
          f"{context.get('int_gemm_kernel', '?')}; quantizer ISA: {context.get('quantize_isa', '?')}.")
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
