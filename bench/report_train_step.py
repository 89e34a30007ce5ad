#!/usr/bin/env python3
"""Markdown report of whole training steps: shiftq fp32 vs shiftq integer vs PyTorch fp32.
Standard library only.

Reads the Google Benchmark JSON of bench_train_step (run with --benchmark_repetitions=N
--benchmark_report_aggregates_only=true: the median aggregate is used; without aggregates, the
median of the repetitions) and the JSON of bench/pytorch/train_step.py --all.

Rounds: scripts/bench-train-step.sh can repeat the whole set (every shiftq case, then every
PyTorch case) ROUNDS times, so that shiftq and PyTorch alternate instead of running minutes apart.
Each benchmark then carries its round; a case's time is the median over rounds of its per-round
median, and a ratio against PyTorch is the median of the per-round ratios, shown with their range.

usage:
  bench/report_train_step.py [--shiftq bench/results/train_step.json] [--pytorch bench/results/train_step_pytorch.json]
  bench/report_train_step.py merge OUT.json IN1.json IN2.json ...
      merges bench_train_step JSON files written by separate processes (one case each, so that each
      case's peak RSS is its own) into one file: the first file's context, every benchmark, and the
      command line, date and load average of each process under "processes". A file named
      r<N>_*.json belongs to round N (default 1).
  bench/report_train_step.py merge-pytorch OUT.json IN1.json IN2.json ...
      merges train_step.py --all documents, the k-th file being round k.
"""
import argparse
import json
import os
import re
import statistics
import sys

MODELS = {"ResNet20": ("ResNet-20", "resnet20", "images"), "GPT": ("char-GPT", "gpt", "tokens")}
NAME_RE = re.compile(r"BM_TrainStep_(ResNet20|GPT)/(fp32_l2|int\d+_l1[a-z0-9_]*)/threads:(\d+)")


def round_of(path):
    m = re.match(r"r(\d+)_", os.path.basename(path))
    return int(m.group(1)) if m else 1


def merge(out_path, in_paths):
    doc = {"context": None, "processes": [], "benchmarks": []}
    for path in in_paths:
        with open(path) as f:
            data = json.load(f)
        ctx = data.get("context", {})
        ctx.pop("host_name", None)  # a machine's name, not its CPU: the flags and clock describe it
        if doc["context"] is None:
            doc["context"] = ctx
        doc["processes"].append({"command": ctx.get("command", "?"), "date": ctx.get("date", "?"),
                                 "load_avg": ctx.get("load_avg", [])})
        for b in data.get("benchmarks", []):
            b["round"] = round_of(path)
            doc["benchmarks"].append(b)
    doc["context"] = doc["context"] or {}
    with open(out_path, "w") as f:
        json.dump(doc, f, indent=1)


def merge_pytorch(out_path, in_paths):
    doc = None
    for k, path in enumerate(in_paths, start=1):
        with open(path) as f:
            data = json.load(f)
        for r in data.get("runs", []):
            r["round"] = k
        if doc is None:
            doc = data
        else:
            doc["runs"].extend(data.get("runs", []))
    with open(out_path, "w") as f:
        json.dump(doc or {"runs": []}, f, indent=1)


def ms(b):
    scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[b.get("time_unit", "ns")]
    return b["real_time"] * scale


def shiftq_round_row(entries):
    """One round of one case: the median aggregate, or the median of the repetitions."""
    medians = [b for b in entries if b.get("aggregate_name") == "median"]
    iterations = [b for b in entries if b.get("run_type", "iteration") == "iteration"]
    if medians:
        b = medians[0]
        row = {"ms": ms(b), "items_per_second": b.get("items_per_second"), "peak_rss": b.get("peak_rss_MiB"),
               "start_rss": b.get("start_rss_MiB"), "peak_tensor": b.get("peak_tensor_MiB"), "label": b.get("label", "")}
    elif iterations:
        row = {"ms": statistics.median(ms(b) for b in iterations),
               "items_per_second": statistics.median(b.get("items_per_second", 0) for b in iterations),
               "peak_rss": max(b.get("peak_rss_MiB", 0) for b in iterations),
               "start_rss": iterations[0].get("start_rss_MiB"),
               "peak_tensor": max((b.get("peak_tensor_MiB") for b in iterations if "peak_tensor_MiB" in b), default=None),
               "label": iterations[0].get("label", "")}
    else:
        return None
    row["label"] = next((b.get("label") for b in iterations if b.get("label")), row["label"]) or ""
    return row


def over_rounds(per_round, time_key):
    """Median time and rate over rounds, the largest peak; per_round: {round: row}."""
    rows = list(per_round.values())
    out = dict(rows[0])
    out[time_key] = statistics.median(r[time_key] for r in rows)
    rate_key = "items_per_second"
    if all(r.get(rate_key) is not None for r in rows):
        out[rate_key] = statistics.median(r[rate_key] for r in rows)
    peak_key = "peak_rss" if "peak_rss" in out else "peak_rss_mib"
    for key in (peak_key, "peak_tensor"):
        if all(r.get(key) is not None for r in rows):
            out[key] = max(r[key] for r in rows)
    out["by_round"] = {k: r[time_key] for k, r in per_round.items()}
    return out


def shiftq_runs(data):
    """{(model key, variant, threads): {"ms", "items_per_second", "peak_rss", "start_rss", "by_round"}}"""
    groups = {}
    for b in data.get("benchmarks", []):
        m = NAME_RE.match(b.get("run_name", b["name"]))
        if not m or b.get("error_occurred"):
            continue
        key = (m.group(1), m.group(2), int(m.group(3)))
        groups.setdefault(key, {}).setdefault(b.get("round", 1), []).append(b)
    out = {}
    for key, rounds in groups.items():
        per_round = {k: row for k, row in ((k, shiftq_round_row(e)) for k, e in rounds.items()) if row}
        if per_round:
            out[key] = over_rounds(per_round, "ms")
    return out


def pytorch_runs(doc):
    """{(model, threads): fastest memory format per round, over rounds}, and the slower runs for a note."""
    best, others = {}, []
    for r in doc.get("runs", []):
        key, k = (r["model"], r["threads"]), r.get("round", 1)
        current = best.setdefault(key, {}).get(k)
        if current is None or r["ms_per_step_median"] < current["ms_per_step_median"]:
            if current is not None:
                others.append(current)
            best[key][k] = r
        else:
            others.append(r)
    out = {}
    for key, per_round in best.items():
        out[key] = over_rounds(per_round, "ms_per_step_median")
        formats = sorted({r.get("memory_format", "?") for r in per_round.values()})
        out[key]["memory_format"] = formats[0] if len(formats) == 1 else "fastest of " + " / ".join(formats) + " per round"
    return out, others


def round_ratio(num_run, den_run, num_key, den_key, bold=False):
    """Median over the rounds both ran of num / den, with the range when there are several."""
    if num_run is None or den_run is None:
        return "-"
    common = sorted(set(num_run["by_round"]) & set(den_run["by_round"]))
    if not common:
        return ratio(num_run[num_key], den_run[den_key], bold)
    values = [num_run["by_round"][k] / den_run["by_round"][k] for k in common]
    s = f"{statistics.median(values):.2f}x"
    s = f"**{s}**" if bold else s
    return s if len(values) == 1 else f"{s} ({min(values):.2f}-{max(values):.2f}, {len(values)} rounds)"


def fmt(x, digits=1):
    return "-" if x is None else f"{x:,.{digits}f}"


def ratio(num, den, bold=False):
    if num is None or den is None or den == 0:
        return "-"
    s = f"{num / den:.2f}x"
    return f"**{s}**" if bold else s


def report(shiftq_path, pytorch_path, made_by=None):
    sq, sq_ctx, processes = {}, {}, []
    if shiftq_path:
        with open(shiftq_path) as f:
            data = json.load(f)
        sq, sq_ctx, processes = shiftq_runs(data), data.get("context", {}), data.get("processes", [])
    pt, pt_others, pt_doc = {}, [], {}
    if pytorch_path:
        with open(pytorch_path) as f:
            pt_doc = json.load(f)
        pt, pt_others = pytorch_runs(pt_doc)
    pt_ctx = pt_doc.get("context", {})

    print("### Training step: shiftq fp32 vs shiftq integer vs PyTorch fp32\n")
    print("Median ms per optimizer step (forward + loss + backward + update) on a fixed random batch; "
          "peak RSS = getrusage ru_maxrss of a process that ran only that case; "
          "'above start' = peak RSS minus the RSS before the model was built (shiftq: at main(); "
          "PyTorch: after `import torch`); peak tensors = the most bytes live shiftq tensors held during the timed "
          "steps (no idle cache, fragmentation or non-tensor memory).\n")
    print("| model | threads | implementation | ms/step | items/s | peak RSS (MiB) | above start (MiB) | peak tensors (MiB) |")
    print("|---|---|---|---|---|---|---|---|")
    ratio_rows = []
    threads_all = sorted({k[2] for k in sq} | {k[1] for k in pt})
    for model_key, (model_name, pt_model, unit) in MODELS.items():
        for threads in threads_all:
            fp32 = sq.get((model_key, "fp32_l2", threads))
            ints = sorted(v for (mk, v, t) in sq if mk == model_key and t == threads and v != "fp32_l2")
            torch_run = pt.get((pt_model, threads))
            rows = []
            if fp32:
                rows.append(("shiftq fp32, L2 norm", fp32["ms"], fp32["items_per_second"], fp32["peak_rss"],
                             fp32["start_rss"], fp32.get("peak_tensor")))
            for v in ints:
                r = sq[(model_key, v, threads)]
                bits, variant = re.match(r"int(\d+)_l1_?(.*)", v).groups()
                extra = f", {variant}" if variant else ""  # e.g. actsq_mse: the trainer's best 4-bit options
                rows.append((f"shiftq int{bits} (W{bits}A{bits}G{bits}, first/last 8-bit{extra}), L1 norm", r["ms"],
                             r["items_per_second"], r["peak_rss"], r["start_rss"], r.get("peak_tensor")))
            if torch_run:
                layout = f", {torch_run['memory_format']}" if pt_model == "resnet20" else ""
                rows.append((f"PyTorch {pt_ctx.get('torch', '?')} fp32{layout}", torch_run["ms_per_step_median"],
                             torch_run["items_per_second"], torch_run["peak_rss_mib"], torch_run["start_rss_mib"], None))
            for name, t_ms, ips, peak, start, tensors in rows:
                above = peak - start if peak is not None and start is not None else None
                print(f"| {model_name} | {threads} | {name} | {fmt(t_ms)} | {fmt(ips, 0)} {unit}/s | {fmt(peak, 0)} | "
                      f"{fmt(above, 0)} | {fmt(tensors, 0)} |")
            for v in ints:
                r = sq[(model_key, v, threads)]
                ratio_rows.append((model_name, threads, v, r, fp32, torch_run))
    if ratio_rows:
        print("\nRatios of the integer run: speed = baseline ms / integer ms (> 1: shiftq integer is faster); "
              "memory = integer / baseline (< 1: shiftq integer uses less).\n")
        print("| model | threads | integer | speed vs PyTorch fp32 | speed vs shiftq fp32 | "
              "shiftq fp32 speed vs PyTorch fp32 | peak RSS vs PyTorch | above-start vs PyTorch | "
              "peak RSS vs shiftq fp32 |")
        print("|---|---|---|---|---|---|---|---|---|")
        for model_name, threads, v, r, fp32, torch_run in ratio_rows:
            t_peak = torch_run["peak_rss_mib"] if torch_run else None
            t_above = torch_run["peak_rss_mib"] - torch_run["start_rss_mib"] if torch_run else None
            r_above = r["peak_rss"] - r["start_rss"] if r["peak_rss"] is not None and r["start_rss"] is not None else None
            print(f"| {model_name} | {threads} | {v} | {round_ratio(torch_run, r, 'ms_per_step_median', 'ms', True)} | "
                  f"{round_ratio(fp32, r, 'ms', 'ms', True)} | "
                  f"{round_ratio(torch_run, fp32, 'ms_per_step_median', 'ms')} | {ratio(r['peak_rss'], t_peak)} | "
                  f"{ratio(r_above, t_above)} | {ratio(r['peak_rss'], fp32['peak_rss'] if fp32 else None)} |")
    if pt_others:
        slower = "; ".join(f"{r['model']} threads:{r['threads']} {r['memory_format']}"
                           f"{' round ' + str(r['round']) if 'round' in r else ''}: {r['ms_per_step_median']:.1f} ms/step"
                           for r in pt_others)
        print(f"\nPyTorch ResNet-20 ran in both memory formats; the table shows the faster. Slower: {slower}.")
    rounds = max((len(r["by_round"]) for r in list(sq.values()) + list(pt.values())), default=1)
    if rounds > 1:
        print(f"\nEach time is the median over {rounds} rounds of that round's median; each round ran every shiftq "
              "case, then every PyTorch case. A ratio is the median of the per-round ratios (range in brackets), "
              "so shiftq and PyTorch are compared minutes apart at most, not across the whole run.")
    print("\nshiftq integer vs shiftq fp32 are measured by the same binary back to back (same-run ratio); "
          "PyTorch ran in separate processes in the same round, so its ratios also carry the machine's "
          "drift between processes (up to +-30% on a shared machine).")

    print("\nMachine and libraries:\n")
    if sq_ctx:
        print(f"- shiftq {sq_ctx.get('shiftq', '?')} ({sq_ctx.get('shiftq_build', '?')}): "
              f"{sq_ctx.get('num_cpus', '?')} CPUs at {sq_ctx.get('mhz_per_cpu', '?')} MHz; "
              f"CPU flags: {sq_ctx.get('cpu_flags', '?')}; oneDNN {sq_ctx.get('onednn', '?')} "
              f"(ISA {sq_ctx.get('onednn_isa', '?')}); int8 dot product: {sq_ctx.get('int8_dot_product', '?')}; "
              f"integer GEMM: {sq_ctx.get('int_gemm_kernel', '?')}; quantizer ISA: {sq_ctx.get('quantize_isa', '?')}; {sq_ctx.get('warmup_steps', '?')} warmup steps per case.")
    if pt_ctx:
        blas = [l for l in pt_ctx.get("loaded_libraries", []) if "blas" in l or "lapack" in l]
        build = re.search(r"BLAS_INFO=([^,]*)", pt_ctx.get("config", ""))
        print(f"- PyTorch {pt_ctx.get('torch', '?')} ({pt_ctx.get('python', '?')}), CPU: {pt_ctx.get('cpu', '?')}; "
              f"ATen CPU capability {pt_ctx.get('cpu_capability', '?')}; oneDNN (mkldnn) available: "
              f"{pt_ctx.get('mkldnn', '?')}; BLAS_INFO={build.group(1) if build else '?'}, loaded: "
              f"{', '.join(blas) or '?'}; 512^3 fp32 matmul {fmt(pt_ctx.get('matmul_512_gflops'))} GFLOPS "
              "(the reference BLAS gives ~2).")

    print("\nCommands:\n")
    if made_by:
        print(f"Made by `{made_by}`, which ran:\n")
    print("```sh")
    for p in processes:
        print(p["command"])
    if not processes and sq_ctx.get("command"):
        print(sq_ctx["command"])
    if pt_doc.get("command"):
        print(pt_doc["command"])
    print("```")
    if processes:
        loads = ", ".join("/".join(f"{x:.1f}" for x in p.get("load_avg", [])) or "?" for p in processes)
        print(f"\nLoad average when each shiftq process started: {loads}.")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "merge-pytorch":
        if len(sys.argv) < 4:
            sys.exit("usage: report_train_step.py merge-pytorch OUT.json IN.json [IN.json ...]")
        merge_pytorch(sys.argv[2], sys.argv[3:])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "merge":
        if len(sys.argv) < 4:
            sys.exit("usage: report_train_step.py merge OUT.json IN.json [IN.json ...]")
        merge(sys.argv[2], sys.argv[3:])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shiftq", default="bench/results/train_step.json", help="bench_train_step JSON ('' to skip)")
    p.add_argument("--pytorch", default="bench/results/train_step_pytorch.json", help="train_step.py --all JSON ('' to skip)")
    p.add_argument("--made-by", help="the command that produced the JSON files (printed above the commands)")
    args = p.parse_args()
    report(args.shiftq or None, args.pytorch or None, args.made_by)


if __name__ == "__main__":
    main()
