// Internal: the per-ISA builds of the activation kernels (activation_{avx512,avx2,base}.cpp), for
// the dispatch in activation.cpp and for the kernel tests, which compare every build the CPU runs
// with the scalar references.
#pragma once

#include <cstdint>

namespace shiftq::kernels {

#define SHIFTQ_DECLARE_ISA(ns)                                                        \
  namespace ns {                                                                      \
  void relu_f32(const float*, float*, std::int64_t);                                  \
  void relu_mask_f32(const float*, float*, std::uint8_t*, std::int64_t);              \
  void relu_backward_mask_f32(const float*, const std::uint8_t*, float*, std::int64_t); \
  void gelu_f32(const float*, float*, std::int64_t);                                  \
  void gelu_backward_f32(const float*, const float*, float*, std::int64_t);           \
  void softmax_rows_f32(const float*, float*, std::int64_t, std::int64_t, std::int64_t, float, std::int64_t); \
  void softmax_backward_rows_f32(const float*, const float*, float*, std::int64_t, std::int64_t, std::int64_t, \
                                 float, std::int64_t);                                                       \
  }
SHIFTQ_DECLARE_ISA(avx512)
SHIFTQ_DECLARE_ISA(avx2)
SHIFTQ_DECLARE_ISA(base)
#undef SHIFTQ_DECLARE_ISA

}  // namespace shiftq::kernels
