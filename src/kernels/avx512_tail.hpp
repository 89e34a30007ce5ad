// Internal, for the AVX-512 builds of the per-ISA kernels: the lane mask of a row's last, partial
// 16-lane step. Short rows (a 7x7 BatchNorm channel: 49 values) take masked steps instead of
// leaving up to 63 values to the auto-vectorizer's scalar loop.
#pragma once

#if defined(__AVX512F__)
#include <immintrin.h>

#include <cstdint>

namespace shiftq::kernels {
namespace {
// The first min(left, 16) lanes.
inline __mmask16 tail_mask(std::int64_t left) {
  return left >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << left) - 1u);
}
}  // namespace
}  // namespace shiftq::kernels
#endif
