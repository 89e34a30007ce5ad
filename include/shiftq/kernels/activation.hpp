// Activation kernels: ReLU, GPT-2's tanh GELU, row softmax, and their derivatives. Compiled once per ISA
// (AVX-512 / AVX2 / x86-64, picked at run time like the quantization kernels) beside a scalar
// reference; every build gives the same bits (the same branch-free exp, no FMA contraction).
#pragma once

#include <cstdint>

namespace shiftq::kernels {

// y[i] = x[i] > 0 ? x[i] : 0 (NaN and -0 give +0), i in [0, n).
void relu_f32(const float* x, float* y, std::int64_t n);
void relu_f32_ref(const float* x, float* y, std::int64_t n);
// relu_f32 that also records where x[i] > 0, one bit per element: bit i % 8 of mask[i / 8] (the
// last byte's unused bits are 0). The backward needs only those bits: 1/32 of the fp32 output. Callers that split the work start each piece at a multiple of 8 elements.
void relu_mask_f32(const float* x, float* y, std::uint8_t* mask, std::int64_t n);
void relu_mask_f32_ref(const float* x, float* y, std::uint8_t* mask, std::int64_t n);
// dx[i] = bit i of mask ? g[i] : 0.
void relu_backward_mask_f32(const float* g, const std::uint8_t* mask, float* dx, std::int64_t n);
void relu_backward_mask_f32_ref(const float* g, const std::uint8_t* mask, float* dx, std::int64_t n);

// y[i] = gelu(x[i]) = x sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3)), i in [0, n).
void gelu_f32(const float* x, float* y, std::int64_t n);
void gelu_f32_ref(const float* x, float* y, std::int64_t n);
// dx[i] = g[i] * gelu'(x[i]).
void gelu_backward_f32(const float* g, const float* x, float* dx, std::int64_t n);
void gelu_backward_f32_ref(const float* g, const float* x, float* dx, std::int64_t n);

// Softmax along the contiguous rows [r0, r1) of x: [rows, cols], of `scale` times x, optionally
// under a causal mask:
//   y[r, j] = e^(z[r, j] - m_r) / sum_{k < v_r} e^(z[r, k] - m_r) for j < v_r, 0 for j >= v_r,
//   z = scale * x, m_r = max_{j < v_r} z[r, j],
// with v_r = cols, or with causal_rows = Tq > 0 (rows in groups of Tq queries, cols = Tk >= Tq keys)
// v_r = r % Tq + 1 + Tk - Tq (clamped to [0, cols]): query i sees the keys up to its own position.
// The result has the bits
// of softmax(causal_mask(x * scale)) computed in separate passes. e^ is the branch-free exp of the
// GELU kernels (relative error < 2e-7), exactly 0 where z - m < -87 (masked -inf entries). The sum
// runs over 16 fixed lanes (element j into lane j % 16), then a fixed tree: the same bits from every
// build. A row of only -inf gives NaN (0 / 0).
void softmax_rows_f32(const float* x, float* y, std::int64_t r0, std::int64_t r1, std::int64_t cols, float scale,
                      std::int64_t causal_rows);
void softmax_rows_f32_ref(const float* x, float* y, std::int64_t r0, std::int64_t r1, std::int64_t cols, float scale,
                          std::int64_t causal_rows);
// Its backward from the output y: dx[r, j] = scale y[r, j] (g[r, j] - sum_k g[r, k] y[r, k]) for
// j < v_r, 0 after (the dot product summed over the same lanes).
void softmax_backward_rows_f32(const float* y, const float* g, float* dx, std::int64_t r0, std::int64_t r1,
                               std::int64_t cols, float scale, std::int64_t causal_rows);
void softmax_backward_rows_f32_ref(const float* y, const float* g, float* dx, std::int64_t r0, std::int64_t r1,
                                   std::int64_t cols, float scale, std::int64_t causal_rows);

}  // namespace shiftq::kernels
