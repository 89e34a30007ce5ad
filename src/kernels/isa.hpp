// Internal: the instruction set the per-ISA kernels (quantize_*, l1norm_*) run with, from cpuid,
// and the dispatch of every kernel op's entry point (dispatch.hpp).
#pragma once

#include <cstdlib>
#include <string_view>

#include "shiftq/core/error.hpp"
#include "shiftq/kernels/dispatch.hpp"

namespace shiftq::kernels::dispatch {

enum class Isa { avx512, avx2, base };  // in decreasing order

// SHIFTQ_MAX_ISA=avx2|x86-64 (the names of kernels::quantize_isa_name()) caps the choice below what
// the CPU runs, as ONEDNN_MAX_CPU_ISA does for oneDNN's kernels: the AVX2 and baseline builds then
// run (and are tested) on an AVX-512 CPU.
inline Isa max_isa_from_env() {
  const char* env = std::getenv("SHIFTQ_MAX_ISA");
  if (env == nullptr || std::string_view(env).empty() || std::string_view(env) == "avx512") return Isa::avx512;
  if (std::string_view(env) == "avx2") return Isa::avx2;
  if (std::string_view(env) == "x86-64") return Isa::base;
  throw ValueError(detail::cat("SHIFTQ_MAX_ISA='", env, "': expected avx512, avx2 or x86-64"));
}

inline Isa detect_isa() {
  __builtin_cpu_init();
  Isa isa = Isa::base;
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
    isa = Isa::avx512;
  else if (__builtin_cpu_supports("avx2"))
    isa = Isa::avx2;
  const Isa cap = max_isa_from_env();
  return static_cast<int>(isa) < static_cast<int>(cap) ? cap : isa;
}

inline Isa cpu_isa() {
  static const Isa isa = detect_isa();
  return isa;
}

// AVX-512 with VNNI (vpdpbusd): the implicit-GEMM convolution kernels (conv_int_vnni.cpp).
inline bool cpu_has_avx512_vnni() {
  static const bool has = cpu_isa() == Isa::avx512 && __builtin_cpu_supports("avx512vnni");
  return has;
}

}  // namespace shiftq::kernels::dispatch

// return avx512::fn(...) / avx2::fn(...) / base::fn(...) by cpu_isa().
#define SHIFTQ_ISA_DISPATCH(fn, ...)                              \
  switch (::shiftq::kernels::dispatch::cpu_isa()) {                 \
    case ::shiftq::kernels::dispatch::Isa::avx512:                  \
      return avx512::fn(__VA_ARGS__);                             \
    case ::shiftq::kernels::dispatch::Isa::avx2:                    \
      return avx2::fn(__VA_ARGS__);                               \
    default:                                                      \
      return base::fn(__VA_ARGS__);                               \
  }

// The whole choice of an op with a reference: fn_ref(...) on the reference path, else the ISA's build.
#define SHIFTQ_KERNEL_DISPATCH(fn, ...)                                            \
  if (::shiftq::kernels::kernel_path() == ::shiftq::kernels::KernelPath::reference) \
    return fn##_ref(__VA_ARGS__);                                                  \
  SHIFTQ_ISA_DISPATCH(fn, __VA_ARGS__)
