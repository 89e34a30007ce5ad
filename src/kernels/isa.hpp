// Internal: the instruction set the per-ISA kernels (quantize_*, l1norm_*) run with, from cpuid,
// and the dispatch of every kernel op's entry point (dispatch.hpp).
#pragma once

#include "shiftq/kernels/dispatch.hpp"

namespace shiftq::kernels::dispatch {

enum class Isa { avx512, avx2, base };

inline Isa detect_isa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
    return Isa::avx512;
  if (__builtin_cpu_supports("avx2")) return Isa::avx2;
  return Isa::base;
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
