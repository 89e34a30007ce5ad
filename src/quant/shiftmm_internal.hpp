// Internal: shiftmm into a caller's buffer (the batched matmuls write each product into its slot of
// the batch output); the u8 GEMM's compensation, shared by shiftmm (shiftmm.cpp) and the blocked quantized
// convolution (qconv.cpp); the code-form conversion shared by shiftmm and QTensor::signed_codes.
#pragma once

#include <cstdint>
#include <vector>

#include "shiftq/core/tensor.hpp"
#include "shiftq/kernels/gemm.hpp"
#include "shiftq/quant/qtensor.hpp"

namespace shiftq::quant::internal {

// -128 * sum_k op(B)[k, n] for n < N: compensates A stored as u8 = v + 128 in
// gemm_u8s8s32. B: [K, N] (tb = N) or [N, K] (tb = T), contiguous s8. Uses `cached_sums` (s32 [N],
// e.g. a packed weight's sums) when it is defined with N entries.
std::vector<std::int32_t> u8_compensation(const Tensor& cached_sums, const std::int8_t* B, kernels::Trans tb,
                                          std::int64_t K, std::int64_t N);

// The same codes in the other form: s8 v <-> u8 v + 128 (each byte XOR 0x80), as a new tensor of
// dtype `to` (s8 or u8) and the shape of `codes`.
Tensor flip_code_form(const Tensor& codes, DType to);

// shiftmm(a, ta, b, tb) with an optional column bias ([N] or null), written to out: [M, N] f32.
void shiftmm_into(const QTensor& a, kernels::Trans ta, const QTensor& b, kernels::Trans tb, const float* bias,
                  float* out);

}  // namespace shiftq::quant::internal
