#!/usr/bin/python3
"""PyTorch fp32 baseline of bench_train_step: one training step (forward + loss + backward + optimizer
update) of the same two models, same shapes, same layer structure, same optimizers.

  ResNet-20 (examples/resnet/model.hpp): batch 128 of 1x28x28 random normal images, 10 classes; 3x3
      stem conv + BN + ReLU, 3 stages x 3 basic blocks (16/32/64 channels, stride 2 at the start of
      stages 2 and 3), 1x1 conv + BN downsampling shortcuts, global average pooling, Linear(64, 10).
      Convolutions without bias. SGD lr 0.1, momentum 0.9, weight decay 5e-4.
  char-GPT (examples/transformer/model.hpp): vocab 65, 4 pre-norm blocks, d 256, 4 heads, context
      128, batch 32 of uniform random tokens; learned position embeddings, causal self-attention
      (qkv Linear(d, 3d), proj Linear(d, d)), MLP Linear(d, 4d) -> GELU (tanh approximation) ->
      Linear(4d, d), final LayerNorm, untied head Linear(d, 65) with bias. AdamW lr 1e-3, weight
      decay 0.1, clip_grad_norm 1.0.

PyTorch is an optional benchmark dependency only (Debian: apt-get install python3-torch
libopenblas0-openmp). Run it with /usr/bin/python3 (Debian's torch is not in other interpreters).
Debian's python3-torch calls whatever libblas.so.3 the alternatives system selects: the reference
BLAS (~2 GFLOPS) unless libopenblas0-openmp is installed; the script measures a matmul and warns.

usage:
  one case (prints key=value lines and one 'RESULT_JSON {...}' line):
    /usr/bin/python3 bench/pytorch/train_step.py --model resnet20 --threads 2 --memory-format channels_last
    /usr/bin/python3 bench/pytorch/train_step.py --model gpt --threads 1 --steps 20
  every case, each in its own process (so that the peak RSS is per case), results to a JSON file:
    /usr/bin/python3 bench/pytorch/train_step.py --all --threads-list 1,2 --out bench/results/train_step_pytorch.json
The ResNet runs in both memory formats (contiguous NCHW and channels_last); the report uses the faster.
"""
import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time

RESULT_PREFIX = "RESULT_JSON "


def rss_mib():
    """Current resident set size of this process in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib():
    """Process high-water mark (getrusage ru_maxrss, KiB on Linux) in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def loaded_libraries(keywords=("blas", "lapack", "mkl", "gomp", "iomp", "dnnl", "mkldnn")):
    """Shared libraries mapped into this process whose path contains a keyword (symlinks resolved)."""
    libs = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 6 and any(k in parts[5].lower() for k in keywords):
                    libs.add(os.path.realpath(parts[5]))
    except OSError:
        pass
    return sorted(libs)


def build_resnet(torch, nn):
    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
            self.norm1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
            self.norm2 = nn.BatchNorm2d(cout)
            self.shortcut = None
            if stride != 1 or cin != cout:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = torch.relu(self.norm1(self.conv1(x)))
            y = self.norm2(self.conv2(y))
            return torch.relu(y + (self.shortcut(x) if self.shortcut is not None else x))

    class ResNet(nn.Module):
        def __init__(self, depth=20, in_channels=1, num_classes=10, width=16):
            super().__init__()
            n = (depth - 2) // 6
            self.stem = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
            self.stem_norm = nn.BatchNorm2d(width)
            blocks, channels = [], width
            for stage in range(3):
                out = width << stage
                for b in range(n):
                    blocks.append(BasicBlock(channels, out, 2 if stage > 0 and b == 0 else 1))
                    channels = out
            self.body = nn.Sequential(*blocks)
            self.fc = nn.Linear(channels, num_classes)

        def forward(self, x):
            y = self.body(torch.relu(self.stem_norm(self.stem(x))))
            return self.fc(torch.flatten(y.mean(dim=(2, 3)), 1))

    return ResNet()


def build_gpt(torch, nn, vocab, context, layers, d, heads):
    import math

    class CausalSelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(d, 3 * d)
            self.proj = nn.Linear(d, d)
            self.register_buffer("mask", torch.ones(context, context, dtype=torch.bool).triu(1), persistent=False)

        def forward(self, x):
            b, t, _ = x.shape
            dh = d // heads
            q, k, v = self.qkv(x).view(b, t, 3, heads, dh).permute(2, 0, 3, 1, 4)  # 3 x [B, H, T, Dh]
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(dh))
            att = torch.softmax(att.masked_fill(self.mask[:t, :t], float("-inf")), dim=-1)
            y = (att @ v).transpose(1, 2).reshape(b, t, d)
            return self.proj(y)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1 = nn.LayerNorm(d)
            self.attn = CausalSelfAttention()
            self.norm2 = nn.LayerNorm(d)
            self.fc = nn.Linear(d, 4 * d)
            self.act = nn.GELU(approximate="tanh")
            self.proj = nn.Linear(4 * d, d)

        def forward(self, x):
            h = x + self.attn(self.norm1(x))
            return h + self.proj(self.act(self.fc(self.norm2(h))))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.token = nn.Embedding(vocab, d)
            self.position = nn.Embedding(context, d)
            self.blocks = nn.Sequential(*[Block() for _ in range(layers)])
            self.norm = nn.LayerNorm(d)
            self.head = nn.Linear(d, vocab)  # untied
            for m in self.modules():
                if isinstance(m, (nn.Linear, nn.Embedding)):
                    nn.init.normal_(m.weight, std=0.02)
                    if isinstance(m, nn.Linear):
                        nn.init.zeros_(m.bias)

        def forward(self, tokens):
            t = tokens.shape[1]
            pos = self.position(torch.arange(t, device=tokens.device))
            return self.head(self.norm(self.blocks(self.token(tokens) + pos)))

    return GPT()


def matmul_gflops(torch, n=512, reps=5):
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def run_case(args):
    start_rss_before_import = rss_mib()
    try:
        import torch
        import torch.nn as nn
        import torch.nn.functional as F
    except ImportError as e:
        sys.exit(f"train_step.py: cannot import torch ({e}); install Debian's python3-torch and run with /usr/bin/python3 "
                 f"(this is {sys.executable})")
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    start_rss = rss_mib()

    if args.model == "resnet20":
        batch, unit = 128, "images"
        model = build_resnet(torch, nn)
        x = torch.randn(batch, 1, 28, 28)
        y = torch.randint(0, 10, (batch,))
        if args.memory_format == "channels_last":
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        items = batch
        clip = None
    else:
        vocab, context, batch, unit = 65, 128, 32, "tokens"
        model = build_gpt(torch, nn, vocab, context, layers=4, d=256, heads=4)
        x = torch.randint(0, vocab, (batch, context))
        y = torch.randint(0, vocab, (batch * context,))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
        items = batch * context
        clip = 1.0
    model.train()
    params = list(model.parameters())

    def step():
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y)
        value = loss.item()
        optimizer.zero_grad()
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        return value

    for _ in range(args.warmup):
        step()
    times, loss = [], float("nan")
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = step()
        times.append((time.perf_counter() - t0) * 1e3)
    peak = peak_rss_mib()
    gflops = matmul_gflops(torch)  # after the timed steps: it does not raise the peak RSS noticeably
    config = torch.__config__.show()
    capability = re.search(r"CPU capability usage: (\S+)", config)  # the ATen kernels' ISA (AVX2 by default)
    capability = capability.group(1) if capability else "?"
    median = statistics.median(times)
    result = {
        "model": args.model,
        "threads": args.threads,
        "torch_threads": torch.get_num_threads(),
        "memory_format": args.memory_format if args.model == "resnet20" else "contiguous",
        "batch": batch,
        "items_per_step": items,
        "item_unit": unit,
        "warmup": args.warmup,
        "steps": args.steps,
        "ms_per_step_median": median,
        "ms_per_step_mean": statistics.fmean(times),
        "ms_per_step_min": min(times),
        "ms_per_step_max": max(times),
        "items_per_second": items / (median / 1e3),
        "peak_rss_mib": peak,
        "start_rss_mib": start_rss,
        "rss_before_import_mib": start_rss_before_import,
        "loss": loss,
        "command": " ".join([sys.executable] + sys.argv),
        "context": {
            "torch": torch.__version__,
            "python": sys.executable + " " + platform.python_version(),
            "cpu": cpu_model(),
            "num_cpus": os.cpu_count(),
            "mkldnn": torch.backends.mkldnn.is_available(),
            "cpu_capability": capability,
            "aten_cpu_capability_env": os.environ.get("ATEN_CPU_CAPABILITY", ""),
            "matmul_512_gflops": gflops,
            "loaded_libraries": loaded_libraries(),
            "config": config,
            "parallel_info": torch.__config__.parallel_info(),
        },
    }
    ctx = result["context"]
    print(f"case={args.model}/{result['memory_format']}/threads:{args.threads}")
    for key in ("ms_per_step_median", "ms_per_step_mean", "ms_per_step_min", "ms_per_step_max", "items_per_second",
                "peak_rss_mib", "start_rss_mib", "loss"):
        print(f"{key}={result[key]:.3f}")
    print(f"item_unit={unit} steps={args.steps} warmup={args.warmup} torch_threads={result['torch_threads']}")
    print(f"torch={ctx['torch']} cpu_capability={capability} mkldnn={ctx['mkldnn']} matmul_512_gflops={gflops:.1f}")
    print("blas_libraries=" + ",".join(l for l in ctx["loaded_libraries"] if "blas" in l or "lapack" in l))
    if gflops < 10 * args.threads:
        print(f"WARNING: fp32 matmul at {gflops:.1f} GFLOPS: this looks like the reference BLAS; "
              "install libopenblas0-openmp (update-alternatives --display libblas.so.3-x86_64-linux-gnu)")
    if args.show_config:
        print(ctx["config"])
    print(RESULT_PREFIX + json.dumps(result))
    sys.stdout.flush()


def run_all(args):
    """Every case in its own child process; collects their results into one JSON document."""
    env = dict(os.environ)
    if args.aten_cpu_capability:
        env["ATEN_CPU_CAPABILITY"] = args.aten_cpu_capability
    cases = []
    for threads in [int(t) for t in args.threads_list.split(",")]:
        if "resnet20" in args.models:
            cases += [("resnet20", threads, fmt) for fmt in ("contiguous", "channels_last")]
        if "gpt" in args.models:
            cases.append(("gpt", threads, "contiguous"))
    runs = []
    for model, threads, fmt in cases:
        cmd = [sys.executable, os.path.abspath(__file__), "--model", model, "--threads", str(threads),
               "--memory-format", fmt, "--steps", str(args.steps), "--warmup", str(args.warmup)]
        if not runs:
            cmd.append("--show-config")  # torch.__config__.show() once, from the first child
        print("$ " + " ".join(cmd), flush=True)
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
        result = None
        for line in proc.stdout.splitlines():
            if line.startswith(RESULT_PREFIX):
                result = json.loads(line[len(RESULT_PREFIX):])
            else:
                print(line)
        if proc.returncode != 0 or result is None:
            sys.exit(f"train_step.py: case {model}/{fmt}/threads:{threads} failed (exit {proc.returncode})")
        runs.append(result)
        sys.stdout.flush()
    doc = {
        "command": " ".join([sys.executable] + sys.argv),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "context": runs[0]["context"] if runs else {},
        "runs": [{k: v for k, v in r.items() if k != "context"} for r in runs],
    }
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=1)
        print(f"wrote {args.out}")
    # The faster ResNet memory format per thread count.
    for threads in sorted({r["threads"] for r in runs}):
        res = [r for r in runs if r["model"] == "resnet20" and r["threads"] == threads]
        if len(res) == 2:
            fast = min(res, key=lambda r: r["ms_per_step_median"])
            other = max(res, key=lambda r: r["ms_per_step_median"])
            print(f"resnet20 threads:{threads}: {fast['memory_format']} is faster "
                  f"({fast['ms_per_step_median']:.1f} vs {other['ms_per_step_median']:.1f} ms/step)")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("resnet20", "gpt"), help="run one case in this process")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (one case)")
    p.add_argument("--memory-format", choices=("contiguous", "channels_last"), default="contiguous",
                   help="ResNet input and weight layout (one case)")
    p.add_argument("--steps", type=int, default=20, help="timed steps (the median is reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--show-config", action="store_true", help="print torch.__config__.show()")
    p.add_argument("--all", action="store_true", help="run every case, each in its own process")
    p.add_argument("--threads-list", default="1,2", help="with --all: thread counts")
    p.add_argument("--models", default="resnet20,gpt", help="with --all: resnet20,gpt")
    p.add_argument("--aten-cpu-capability", default="",
                   help="with --all: ATEN_CPU_CAPABILITY for the children (default, avx2, avx512; empty: inherit)")
    p.add_argument("--out", help="with --all: write the JSON document here")
    args = p.parse_args()
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    if args.all:
        run_all(args)
    elif args.model:
        run_case(args)
    else:
        p.error("give --model or --all")


if __name__ == "__main__":
    main()
