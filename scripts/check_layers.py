#!/usr/bin/env python3
"""Fails when a layer of shiftq includes a higher one (docs/architecture.md, "Layers").

Scans include/shiftq/<layer>/ and src/<layer>/ for `#include "shiftq/<other>/..."` (public headers)
and `#include "<other>/..."` (the library's private headers, relative to src/), and checks each
<other> against the layers that <layer> may use. Usage: scripts/check_layers.py [REPO_ROOT]
"""
import pathlib
import re
import sys

# layer -> the layers its files may include (itself included); the order of docs/architecture.md.
ALLOWED = {
    "core": {"core"},
    "kernels": {"core", "kernels"},
    "autograd": {"core", "kernels", "autograd"},
    "quant": {"core", "kernels", "autograd", "quant"},
    "nn": {"core", "kernels", "autograd", "quant", "nn"},
    "optim": {"core", "kernels", "autograd", "optim"},
    "data": {"core", "data"},
    "io": {"core", "nn", "optim", "io"},
    "dist": {"core", "kernels", "autograd", "nn", "dist"},
}
INCLUDE = re.compile(r'^\s*#\s*include\s+"(?:shiftq/)?([a-z_]+)/[^"]+"', re.M)

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parent.parent)
problems, scanned = [], 0
for layer, allowed in ALLOWED.items():
    for base in (root / "include" / "shiftq" / layer, root / "src" / layer):
        for path in sorted(base.rglob("*")):
            if path.suffix not in {".hpp", ".cpp", ".inc", ".h"}:
                continue
            scanned += 1
            for match in INCLUDE.finditer(path.read_text()):
                other = match.group(1)
                if other in ALLOWED and other not in allowed:
                    line = path.read_text()[: match.start()].count("\n") + 1
                    problems.append(f"{path.relative_to(root)}:{line}: layer '{layer}' includes '{other}' "
                                    f"(allowed: {', '.join(sorted(allowed))})")
    for stray in (root / "src").iterdir():
        if stray.is_dir() and stray.name not in ALLOWED:
            problems.append(f"src/{stray.name}/: not a layer of docs/architecture.md")
if scanned == 0:
    problems.append(f"no source files found under {root}")
for p in problems:
    print(p)
print(f"check_layers: {scanned} files, {len(problems)} problem(s)")
sys.exit(1 if problems else 0)
