#!/usr/bin/env python3
"""Scaling model of shiftq's data-parallel training on paper (docs/distributed.md).

Weak scaling: every node trains the same per-node batch, so the compute part of a step stays the
measured single-node step time; the gradient exchange grows with the node count P and shrinks with
the link bandwidth. No overlap of communication with backward is assumed (an upper bound: DataParallel
starts buckets during backward, which hides part of it).

  fp32 exchange, per rank and step: reduce-scatter + all-gather of 4 N bytes
      bytes = 2 (P-1)/P * 4N,  latency = 2 (P-1) alpha per bucket
  int8 exchange: a max-allreduce of N/G exponent bytes, an all-to-all and an all-gather of N codes
      bytes = 2 (P-1)/P * N * (1 + 1/G),  latency = (2 (P-1) + 2 log2 P) alpha per bucket,
      plus the codec's compute, c_codec * N (bench_dist)

Usage: scripts/dist_scaling_model.py [--resnet20-ms T] [--gpt-ms T] [--codec-ns C] [--alpha-us A]
"""
import argparse
import math

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--resnet20-ms", type=float, required=True, help="measured 4-bit ResNet-20 step, batch 128, one node")
p.add_argument("--gpt-ms", type=float, required=True, help="measured 6-bit char-GPT step, batch 32x128, one node")
p.add_argument("--codec-ns", type=float, required=True, help="int8 codec time per gradient value (bench_dist)")
p.add_argument("--alpha-us", type=float, default=20.0, help="per-message latency (TCP over Ethernet: 10-50 us)")
p.add_argument("--bucket-mib", type=float, default=1.0)
p.add_argument("--group", type=int, default=64)
a = p.parse_args()

# ResNet-50 has no shiftq measurement: its step is the ResNet-20 step scaled by forward FLOPs per
# image (4.1 GFLOP at 224x224 against 0.031 GFLOP for ResNet-20 at 28x28, width 16) at a per-node
# batch of 32 instead of 128.
models = [
    ("ResNet-20 (Fashion-MNIST, batch 128/node)", 272_186, a.resnet20_ms),
    ("ResNet-50 (ImageNet 224x224, batch 32/node; compute extrapolated)", 25_557_032,
     a.resnet20_ms * (4.1 / 0.031) * (32 / 128)),
    ("char-GPT (4 x 256, batch 32x128/node)", 3_224_640, a.gpt_ms),
]
bandwidths = [10, 25, 100]
nodes = [2, 4, 8, 16, 32, 64]


def comm_ms(n_values, procs, gbps, int8):
    bw = gbps * 1e9 / 8  # bytes/s
    buckets = max(1, math.ceil(4 * n_values / (a.bucket_mib * 2**20)))
    alpha = a.alpha_us * 1e-6
    if int8:
        data = 2 * (procs - 1) / procs * n_values * (1 + 1 / a.group)
        lat = buckets * (2 * (procs - 1) + 2 * math.log2(procs)) * alpha
        codec = a.codec_ns * 1e-9 * n_values
    else:
        data = 2 * (procs - 1) / procs * 4 * n_values
        lat = buckets * 2 * (procs - 1) * alpha
        codec = 0.0
    return 1e3 * (data / bw + lat + codec)


for name, n, compute in models:
    print(f"\n**{name}**: {n:,} gradient values, compute {compute:.0f} ms per step\n")
    head = " | ".join(f"{g} Gb/s fp32 | {g} Gb/s int8" for g in bandwidths)
    print(f"| nodes | {head} |")
    print("| ---: |" + " ---: |" * (2 * len(bandwidths)))
    for procs in nodes:
        cells = []
        for g in bandwidths:
            for int8 in (False, True):
                c = comm_ms(n, procs, g, int8)
                share = c / (compute + c)
                mark = "**" if share > 0.5 else ""
                cells.append(f"{mark}{compute + c:.0f} ({100 * share:.0f}%){mark}")
        print(f"| {procs} | " + " | ".join(cells) + " |")
print("\nEach cell: step time in ms (the exchange's share of it); bold where the exchange takes more than half.")

# Faster nodes shrink the compute part and leave the exchange: the first node count (up to 1024) at
# which the exchange takes more than half of the step, for nodes `speedup` times faster than the
# measured one (e.g. 32: a 64-core server against these 2 cores, if compute scaled linearly).
print("\nNodes at which the exchange exceeds half of the step (\">1024\": not up to 1024 nodes):\n")
head = " | ".join(f"{g} Gb/s fp32 | {g} Gb/s int8" for g in bandwidths)
print(f"| model | node speed | {head} |")
print("| --- | ---: |" + " ---: |" * (2 * len(bandwidths)))
for name, n, compute in models:
    for speedup in (1, 8, 32):
        cells = []
        for g in bandwidths:
            for int8 in (False, True):
                first = next((q for q in (2 ** k for k in range(1, 11))
                              if comm_ms(n, q, g, int8) > compute / speedup), None)
                cells.append(str(first) if first else ">1024")
        print(f"| {name.split(' (')[0]} | {speedup}x | " + " | ".join(cells) + " |")
