#!/usr/bin/env bash
# Installs shiftq's build, test and demo dependencies from Debian 12 packages.
# A no-op when everything is present. Needs root (or sudo) only when something is missing.
#   scripts/install-deps.sh                # build, tests, benchmarks, examples
#   scripts/install-deps.sh --sanitizers   # also clang, libFuzzer and LLVM's OpenMP runtime (the
#                                          # TSan build and the fuzzers: scripts/sanitize.sh, fuzz.sh)
set -euo pipefail

packages=(
  build-essential cmake pkg-config
  libeigen3-dev      # Eigen 3.4: reference fp32 GEMM
  libdnnl-dev        # oneDNN 2.6.3: optimized GEMMs
  ocl-icd-opencl-dev # OpenCL loader + headers: Debian's dnnl-config.cmake find_package(OpenCL REQUIRED)s
                     # (its GPU runtime is OCL); only a Recommends of libdnnl-dev, which we skip
  libgtest-dev       # GoogleTest
  libbenchmark-dev   # Google Benchmark
  zlib1g-dev         # .gz datasets
  nlohmann-json3-dev # nlohmann/json 3.11 (header-only): the safetensors header, the trainers' metrics lines
  libcli11-dev       # CLI11 2.1 (header-only): the example trainers' command lines
  dataset-fashion-mnist  # demo / example data
  python3            # scripts/check_layers.py (ctest layers.includes), the bench reports
  libopenmpi-dev openmpi-bin  # Open MPI 4.1: data-parallel training (shiftq/dist, SHIFTQ_WITH_MPI)
)
case "${1:-}" in
  "") ;;
  --sanitizers) packages+=(
      clang              # TSan build and libFuzzer targets
      libclang-rt-14-dev # libFuzzer and the clang sanitizer runtimes
      libomp-dev         # OpenMP under clang, with the Archer TSan tool (libarcher.so)
    ) ;;
  *) echo "usage: scripts/install-deps.sh [--sanitizers]" >&2; exit 2 ;;
esac

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$p")
done

if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
sudo_cmd=()
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then sudo_cmd=(sudo); else
    echo "install-deps: missing packages (${missing[*]}) and not root; run as root or install them yourself" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update
"${sudo_cmd[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
