#!/usr/bin/env bash
# Writes the King James Bible as plain text (one verse per line, verse references stripped), the
# default corpus of shiftq-train-gpt. Needs Debian's bible-kjv and bible-kjv-text packages
# (installed here when running as root and missing). Usage: scripts/prepare-kjv.sh [OUT] (default kjv.txt)
set -euo pipefail
out=${1:-kjv.txt}
if ! command -v bible >/dev/null 2>&1 || ! dpkg-query -W -f='${Status}' bible-kjv-text 2>/dev/null | grep -q "ok installed"; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "prepare-kjv: install the Debian packages bible-kjv and bible-kjv-text first (as root)" >&2
    exit 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends bible-kjv bible-kjv-text >/dev/null
fi
tmp=$(mktemp "${out}.XXXXXX")
trap 'rm -f "$tmp"' EXIT
# `bible -f` prints "Gen1:1 In the beginning ..."; drop the reference (book + chapter:verse) and blank lines.
bible -f Gen1:1-Rev22:21 | sed -E 's/^[1-3]?[A-Za-z]+[0-9]+:[0-9]+ +//' | sed -E '/^[[:space:]]*$/d' >"$tmp"
lines=$(wc -l <"$tmp")
if [[ $lines -lt 30000 ]]; then
  echo "prepare-kjv: expected ~31,000 verses, got $lines lines; is bible-kjv-text complete?" >&2
  exit 1
fi
mv "$tmp" "$out"
trap - EXIT
echo "prepare-kjv: wrote $out ($(wc -c <"$out") bytes, $lines verses)"
