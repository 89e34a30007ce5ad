// ShiftMM: the product of two quantized matrices in one int8 GEMM with int32 accumulation,
//     C[m, n] = s_m * t_n * 2^-(S_A + S_B) * sum_k vA[m, k] * vB[k, n],
// equal to the float GEMM of the dequantized operands up to the fp32 rounding of the final scaling.
#pragma once

#include "shiftq/kernels/gemm.hpp"
#include "shiftq/quant/qtensor.hpp"

namespace shiftq::quant {

using kernels::Trans;

// The int32 accumulator and the factors that turn it into the product.
struct ShiftMMResult {
  Tensor acc;        // s32 [M, N]: sum_k vA vB
  Tensor row_scale;  // f32 [M] or [1]: A's outer scales
  Tensor col_scale;  // f32 [N] or [1]: B's outer scales
  float shift_scale; // 2^-(S_A + S_B)
};

// op(A) = A (Trans::N) or A^T: [M, K]; op(B): [K, N]. The outer scales of op(A) must run along M
// and those of op(B) along N (or be per-tensor): scales along K cannot be factored out of the sum,
// which is exactly what ShiftQuant's power-of-two groups avoid. Throws ValueError otherwise,
// ShapeError when K differs; shiftmm_s32 throws ValueError when K exceeds kMaxGemmKs8s8 (int32
// bound).
ShiftMMResult shiftmm_s32(const QTensor& a, Trans ta, const QTensor& b, Trans tb);
// The f32 product [M, N]. Any K: beyond the int32 bound the GEMM runs over K chunks summed in int64.
// `col_bias` (f32 [N] or undefined) is added to every row in the same pass (a Linear's bias).
Tensor shiftmm(const QTensor& a, Trans ta, const QTensor& b, Trans tb, const Tensor& col_bias = Tensor());

}  // namespace shiftq::quant
