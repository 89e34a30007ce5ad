#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets: small VALID files (each < 4 KB), deterministic.

    python3 tests/fuzz/make_corpus.py [OUT_DIR]   # default: tests/fuzz/corpus next to this script

corpus/idx/         IDX files: u8/s8/s32/f32, ranks 1..3, one gzip-compressed
corpus/cifar/       CIFAR-10 binary batches of one record (3073 bytes)
corpus/text/        UTF-8 texts (ASCII, multi-byte, a vocabulary string)
corpus/checkpoint/  safetensors files: shiftq checkpoints and a plain tensor file
"""
import gzip
import json
import os
import random
import struct
import sys


def idx(code, fmt, dims, values):
    head = bytes([0, 0, code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims)
    return head + b"".join(struct.pack(">" + fmt, v) for v in values)


def safetensors(tensors, metadata=None, ensure_ascii=False):
    """tensors: {name: (dtype, shape, raw bytes)}, written in sorted-name order like shiftq."""
    header, data = {}, b""
    for name in sorted(tensors):
        dtype, shape, raw = tensors[name]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=ensure_ascii).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


def f32(*values):
    return b"".join(struct.pack("<f", v) for v in values)


def i32(*values):
    return b"".join(struct.pack("<i", v) for v in values)


def corpus():
    rng = random.Random(2024)
    files = {}

    # ---- IDX ----
    files["idx/labels-u8-10"] = idx(0x08, "B", [10], [i % 10 for i in range(10)])
    files["idx/images-u8-2x4x4"] = idx(0x08, "B", [2, 4, 4], [(i * 37) % 256 for i in range(32)])
    files["idx/s8-6"] = idx(0x09, "b", [6], [-128, -1, 0, 1, 64, 127])
    files["idx/s32-2x3"] = idx(0x0C, "i", [2, 3], [0, 1, -1, 2**31 - 1, -(2**31), 123456])
    files["idx/f32-1x2x2"] = idx(0x0D, "f", [1, 2, 2], [0.0, -1.5, 3.25, 1e-30])
    files["idx/images-u8-3x5x5.gz"] = gzip.compress(
        idx(0x08, "B", [3, 5, 5], [rng.randrange(256) for _ in range(75)]), mtime=0)

    # ---- CIFAR-10 (one 3073-byte record each) ----
    files["cifar/label3-gradient.bin"] = bytes([3]) + bytes(i % 256 for i in range(3072))
    files["cifar/label9-random.bin"] = bytes([9]) + bytes(rng.randrange(256) for _ in range(3072))
    files["cifar/label0-zeros.bin"] = bytes(3073)

    # ---- text ----
    files["text/ascii.txt"] = (b"First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
                               b"All:\nSpeak, speak.\n")
    files["text/utf8.txt"] = "h\u00e9llo w\u00f6rld \u20ac\U0001d11e! na\u00efve caf\u00e9\n".encode("utf-8")
    files["text/kjv.txt"] = (b"In the beginning God created the heaven and the earth. And the earth was without "
                             b"form, and void; and darkness was upon the face of the deep.\n" * 3)
    files["text/vocab.txt"] = "\n !,.:;ABCabcdefghijklmnopqrstuvwxyz\u00e9\u20ac".encode("utf-8")
    files["text/short.txt"] = b"ab"

    # ---- safetensors / checkpoints ----
    fmt = {"format": "shiftq-checkpoint-v1"}
    files["checkpoint/linear-sgd.safetensors"] = safetensors(
        {"model/weight": ("F32", [3, 4], f32(*[0.25 * (i - 6) for i in range(12)])),
         "model/bias": ("F32", [3], f32(0.5, -0.5, 0.0)),
         "optim/momentum/weight": ("F32", [3, 4], f32(*[0.01 * i for i in range(12)])),
         "optim/momentum/bias": ("F32", [3], f32(1.0, 2.0, 3.0)),
         "optim/step": ("I32", [], i32(7))},
        {**fmt, "rng/data": "5:1:3", "rng/init": "42:0:4", "info/epoch": "2", "info/step": "14"})
    files["checkpoint/gpt-like.safetensors"] = safetensors(
        {"model/embed": ("F32", [4, 2], f32(0.1, 0.2, 0.3, 0.4, -0.1, -0.2, -0.3, -0.4)),
         "model/counters": ("I32", [2], i32(0, 99))},
        {**fmt, "info/vocab": "\n !abc\u00e9\u20ac", "info/config": "{\"layers\": 2, \"heads\": 4}",
         "rng/dropout": "18446744073709551615:18446744073709551615:0"},
        ensure_ascii=True)
    files["checkpoint/empty-checkpoint.safetensors"] = safetensors({}, fmt)
    files["checkpoint/all-dtypes.safetensors"] = safetensors(
        {"f": ("F32", [2, 1], f32(1.0, -2.0)),
         "i": ("I32", [3], i32(-1, 0, 1)),
         "s": ("I8", [2, 2], bytes([0x80, 0xFF, 0, 0x7F])),
         "u": ("U8", [5], bytes([0, 1, 2, 254, 255])),
         "zero": ("F32", [0, 3], b"")},
        {"note": "not a checkpoint: load_checkpoint rejects it"})
    return files


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
    for rel, content in sorted(corpus().items()):
        assert len(content) < 4096, rel
        path = os.path.join(out, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(content)
        print(f"{path}: {len(content)} bytes")


if __name__ == "__main__":
    main()
