// Elementwise activation kernels: ReLU, GPT-2's tanh GELU, and their derivatives. Compiled once per ISA
// (AVX-512 / AVX2 / x86-64, picked at run time like the quantization kernels) beside a scalar
// reference; every build gives the same bits (the same branch-free exp, no FMA contraction).
#pragma once

#include <cstdint>

namespace shiftq::kernels {

// y[i] = x[i] > 0 ? x[i] : 0 (NaN and -0 give +0), i in [0, n).
void relu_f32(const float* x, float* y, std::int64_t n);
void relu_f32_ref(const float* x, float* y, std::int64_t n);
// dx[i] = y[i] > 0 ? g[i] : 0, from the forward's output y.
void relu_backward_f32(const float* g, const float* y, float* dx, std::int64_t n);
void relu_backward_f32_ref(const float* g, const float* y, float* dx, std::int64_t n);

// y[i] = gelu(x[i]) = x sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3)), i in [0, n).
void gelu_f32(const float* x, float* y, std::int64_t n);
void gelu_f32_ref(const float* x, float* y, std::int64_t n);
// dx[i] = g[i] * gelu'(x[i]).
void gelu_backward_f32(const float* g, const float* x, float* dx, std::int64_t n);
void gelu_backward_f32_ref(const float* g, const float* x, float* dx, std::int64_t n);

}  // namespace shiftq::kernels
