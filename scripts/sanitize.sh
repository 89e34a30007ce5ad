#!/usr/bin/env bash
# Builds shiftq's tests with sanitizers in their own build directory and runs them.
#
#   scripts/sanitize.sh address [BUILD_DIR]   # ASan + UBSan (fatal), g++, the whole ctest suite
#                                             # but the consumer.* install cases; default build-asan
#   scripts/sanitize.sh thread  [BUILD_DIR]   # TSan, clang++ with LLVM's OpenMP runtime and its
#                                             # Archer tool (TSan-aware OpenMP barriers), the
#                                             # threaded kernels' tests (nproc threads); default build-tsan
#
# Environment: JOBS (build and ctest parallelism, default nproc), CXX (default g++ for address,
# clang++ for thread), CTEST_ARGS (extra ctest flags, e.g. "-R Gemm").
# Needs: address: g++ (libasan/libubsan come with it); thread: clang, libclang-rt-14-dev, libomp-dev
# (scripts/install-deps.sh --sanitizers installs them). Exits non-zero on any sanitizer report: every
# report aborts the test that raised it (halt_on_error / -fno-sanitize-recover).
set -euo pipefail

mode=${1:-}
root=$(cd "$(dirname "$0")/.." && pwd)
jobs=${JOBS:-$(nproc)}
extra=(${CTEST_ARGS:-})

case "$mode" in
  address)
    build=${2:-build-asan}
    cxx=${CXX:-g++}
    sanitizers="address;undefined"
    # Left out: the consumer.* cases (they install the build and compile programs against it:
    # packaging, which the Release suite covers) and the two trainer accuracy runs (hundreds of
    # steps: over 10 minutes instrumented; the short trainer tests run the same code paths).
    select=(-E '^(consumer\.|TrainerTest\.(ResNet|Gpt)Learns)')
    export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1}
    export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
    ;;
  thread)
    build=${2:-build-tsan}
    cxx=${CXX:-clang++}
    sanitizers="thread"
    # Every test that runs a parallel_for region, an OpenMP-threaded oneDNN primitive or the shared
    # memory cache from several threads: the kernels, quantizers, layers, autograd ops, modules,
    # the channels-last layers, the fused attention and GELU, the data loader and a short in-process
    # training run.
    select=(-R '^(Gemm|Hadamard|Quantize|ShiftMM|MemoryCache|ImageLoader|OpsValues|Modules|L1Norm|ChannelsLast|CodedActivation|Threads/RecomputeThreads|QuantizedAttention|EndToEnd)')
    # LLVM's lib directory (Debian: /usr/lib/llvm-14/lib), next to the compiler's bin directory.
    archer="$(dirname "$(readlink -f "$(command -v "$cxx" || echo /nonexistent)")")/../lib/libarcher.so"
    if [[ ! -f "$archer" ]]; then
      echo "sanitize.sh: libarcher.so not found next to $cxx's runtime (Debian: apt-get install libomp-dev)" >&2
      exit 2
    fi
    # Archer tells TSan about OpenMP's barriers and task dependences; without it every parallel
    # region's join looks like a race.
    export OMP_TOOL_LIBRARIES="$archer"
    export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1:ignore_noninstrumented_modules=1}
    ;;
  *)
    echo "usage: scripts/sanitize.sh address|thread [BUILD_DIR]" >&2
    exit 2
    ;;
esac
[[ "$build" = /* ]] || build="$root/$build"
if ! command -v "$cxx" >/dev/null 2>&1; then
  echo "sanitize.sh: '$cxx' not found (scripts/install-deps.sh --sanitizers installs clang)" >&2
  exit 2
fi

echo "== configure $build ($cxx, -fsanitize=${sanitizers//;/,})"
CXX="$cxx" cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSHIFTQ_SANITIZE="$sanitizers" \
  -DSHIFTQ_WERROR=ON -DSHIFTQ_BUILD_TESTS=ON -DSHIFTQ_BUILD_BENCHMARKS=OFF -DSHIFTQ_BUILD_EXAMPLES=ON >/dev/null
echo "== build (-j$jobs)"
cmake --build "$build" -j "$jobs"
echo "== ctest ${select[*]} ${extra[*]}"
cd "$build"
start=$(date +%s)
ctest --output-on-failure -j "$jobs" "${select[@]}" "${extra[@]}"
echo "== $mode sanitizer suite clean ($(( $(date +%s) - start )) s)"
