#!/usr/bin/env bash
# Builds the libFuzzer targets of shiftq's file parsers with clang (ASan + UBSan, the library
# instrumented too) and runs each one for SECONDS_PER_TARGET seconds on a copy of its seed corpus.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [BUILD_DIR]     # defaults: 60, build-fuzz
#
# Environment: CXX (default clang++), JOBS (build parallelism, default nproc), BUILD_TYPE (default
# RelWithDebInfo), TARGETS (default "idx cifar text checkpoint"), FUZZ_ARGS (extra libFuzzer flags).
# SECONDS_PER_TARGET=0 only replays the seed corpora.
#
# The seed corpora (tests/fuzz/corpus/<target>/) are copied to BUILD_DIR/fuzz-work/<target>/corpus
# first (afresh on every run): new inputs found while fuzzing, and crash reproducers (crash-*,
# leak-*, oom-*, timeout-*; kept across runs), are written under BUILD_DIR/fuzz-work/<target>/,
# never into the source tree. Prints the number of
# executions per target; exits 1 when any target crashed (or failed to run), 0 otherwise.
set -euo pipefail

seconds=${1:-60}
root=$(cd "$(dirname "$0")/.." && pwd)
build=${2:-build-fuzz}
[[ "$build" = /* ]] || build="$root/$build"
cxx=${CXX:-clang++}
jobs=${JOBS:-$(nproc)}
build_type=${BUILD_TYPE:-RelWithDebInfo}
targets=(${TARGETS:-idx cifar text checkpoint})
extra=(${FUZZ_ARGS:-})

if ! [[ "$seconds" =~ ^[0-9]+$ ]]; then
  echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [BUILD_DIR]" >&2
  exit 2
fi
if ! command -v "$cxx" >/dev/null 2>&1; then
  echo "fuzz.sh: '$cxx' not found: the fuzzers need clang with libFuzzer (Debian: apt-get install clang" \
       "libclang-rt-14-dev), or set CXX=clang++-NN" >&2
  exit 2
fi

echo "== configure $build ($cxx, $build_type)"
CXX="$cxx" cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE="$build_type" -DSHIFTQ_BUILD_FUZZERS=ON \
  -DSHIFTQ_BUILD_TESTS=OFF -DSHIFTQ_BUILD_BENCHMARKS=OFF -DSHIFTQ_BUILD_EXAMPLES=OFF >/dev/null
echo "== build (-j$jobs): ${targets[*]/#/fuzz_}"
cmake --build "$build" -j "$jobs" --target "${targets[@]/#/fuzz_}"

declare -A runs status
failed=0
for t in "${targets[@]}"; do
  work="$build/fuzz-work/$t"
  rm -rf "$work/corpus" "$work/fuzz.log"  # reproducers of earlier runs stay
  mkdir -p "$work/corpus"
  cp "$root/tests/fuzz/corpus/$t/"* "$work/corpus/"
  # 2 CIFAR-10 records need 6146 bytes; the other formats are explored within 4 KB.
  max_len=4096
  [[ "$t" == cifar ]] && max_len=8192
  if [[ "$seconds" -eq 0 ]]; then
    limit=(-runs=0)
  else
    limit=(-max_total_time="$seconds")
  fi
  echo "== fuzz_$t: ${seconds}s on a copy of tests/fuzz/corpus/$t ($(ls "$work/corpus" | wc -l) seeds), log $work/fuzz.log"
  rc=0
  (cd "$work" && "$build/tests/fuzz/fuzz_$t" "${limit[@]}" -max_len="$max_len" -timeout=30 \
     -rss_limit_mb=2048 -artifact_prefix="$work/" -print_final_stats=1 "${extra[@]}" corpus) \
    >"$work/fuzz.log" 2>&1 || rc=$?
  runs[$t]=$(grep -oE 'Done [0-9]+ runs in [0-9]+ second' "$work/fuzz.log" | tail -1 || true)
  execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$work/fuzz.log" | grep -oE '[0-9]+$' | tail -1 || true)
  if [[ $rc -ne 0 ]]; then
    status[$t]="FAILED (exit $rc)"
    failed=1
    echo "---- fuzz_$t failed (exit $rc); end of $work/fuzz.log:"
    tail -n 60 "$work/fuzz.log"
    grep -oE 'Test unit written to .*' "$work/fuzz.log" | sed 's/^Test unit written to /reproducer: /' || true
    echo "   (rerun one: $build/tests/fuzz/fuzz_$t REPRODUCER)"
  else
    status[$t]=ok
  fi
  echo "   fuzz_$t: ${status[$t]}, ${runs[$t]:-no 'Done' line}${execs:+ (executed units: $execs)}," \
       "corpus now $(ls "$work/corpus" | wc -l) files"
done

echo "== summary (${seconds}s per target)"
for t in "${targets[@]}"; do
  printf '  fuzz_%-11s %-18s %s\n' "$t" "${status[$t]}" "${runs[$t]:-}"
done
exit $failed
