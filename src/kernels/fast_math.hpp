// Branch-free float math that the compiler vectorizes inside elementwise loops (a libm call per
// element does not vectorize and dominated GELU-heavy models). Included by the per-ISA builds
// (different -m flags) and the baseline references: internal linkage gives each build its own
// copy, so the linker never merges an AVX-512 copy into the code that runs on other CPUs.
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>

namespace shiftq::detail {
namespace {

// e^x with a relative error below 2e-7 for x in [-87, 88] (inputs are clamped to that range, so
// the result never overflows to inf or underflows to a denormal).
inline float fast_exp(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693145751953125f;  // ln 2 split so n * kLn2Hi is exact
  constexpr float kLn2Lo = 1.428606765330187045e-06f;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float shifted = x * kLog2e + kRound;
  const float n = shifted - kRound;  // round(x / ln 2)
  const float r = (x - n * kLn2Hi) - n * kLn2Lo;  // |r| <= ln(2) / 2
  // Taylor series of e^r to r^6 (truncation error < 1.2e-7 relative on |r| <= 0.347)
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const std::int32_t exponent = std::bit_cast<std::int32_t>(shifted) - std::bit_cast<std::int32_t>(kRound);
  return p * std::bit_cast<float>((exponent + 127) << 23);  // p * 2^n
}

// 1 / (1 + e^-x)
inline float fast_sigmoid(float x) { return 1.0f / (1.0f + fast_exp(-x)); }

inline constexpr float kGeluC = 0.7978845608028654f;  // sqrt(2/pi)
inline constexpr float kGeluA = 0.044715f;
// GPT-2's tanh GELU, 0.5 x (1 + tanh(u)) with u = C (x + A x^3), written as x * sigmoid(2u)
// (the same function: 0.5 (1 + tanh(u)) = sigmoid(2u)) so it costs one vectorized exp.
inline float gelu(float x) { return x * fast_sigmoid(2.0f * kGeluC * (x + kGeluA * x * x * x)); }
// d/dx = s + 2 x s (1 - s) du/dx, s = sigmoid(2u)
inline float gelu_derivative(float x) {
  const float s = fast_sigmoid(2.0f * kGeluC * (x + kGeluA * x * x * x));
  const float du = kGeluC * (1.0f + 3.0f * kGeluA * x * x);
  return s + 2.0f * x * s * (1.0f - s) * du;
}

// Softmax rows (kernels::softmax_rows_f32): sums run over kSumLanes fixed lanes (element j into
// lane j % kSumLanes), then a fixed pairwise tree, so every ISA build adds in the same order.
inline constexpr int kSumLanes = 16;

// Calls body(j, j % kSumLanes) for j in [0, n): whole kSumLanes steps (the vectorized loop), then
// the tail.
template <class Body>
inline void for_lanes(std::int64_t n, Body body) {
  std::int64_t j = 0;
  for (; j + kSumLanes <= n; j += kSumLanes)
    for (int k = 0; k < kSumLanes; ++k) body(j + k, k);
  for (int k = 0; j + k < n; ++k) body(j + k, k);
}

inline float reduce_lanes(float* lanes) {
  for (int width = kSumLanes / 2; width >= 1; width /= 2)
    for (int k = 0; k < width; ++k) lanes[k] += lanes[k + width];
  return lanes[0];
}

// sum_j a[j] * b[j] over the lanes.
inline float lane_dot(const float* __restrict a, const float* __restrict b, std::int64_t n) {
  float lanes[kSumLanes] = {};
  for_lanes(n, [&](std::int64_t j, int k) { lanes[k] += a[j] * b[j]; });
  return reduce_lanes(lanes);
}

// The entries of row r that a softmax row sees: all cols, or with causal_rows = Tq > 0 the keys up
// to query r % Tq's own position (cols = Tk >= Tq keys).
inline std::int64_t softmax_valid(std::int64_t r, std::int64_t cols, std::int64_t causal_rows) {
  if (causal_rows <= 0) return cols;
  return std::clamp<std::int64_t>(r % causal_rows + 1 + cols - causal_rows, 0, cols);
}

// y = softmax(scale * x) over the first `valid` entries of one contiguous row of n, y = 0 after them
// (a causal mask's -inf entries: the same bits as masking them, as their exps are 0): e^(z - max)
// (0 below e^-87, so -inf entries give exactly 0), then scaled by 1 / their sum.
inline void softmax_row(const float* __restrict x, float* __restrict y, std::int64_t n, std::int64_t valid,
                        float scale) {
  float max_lanes[kSumLanes];
  std::fill_n(max_lanes, kSumLanes, -__builtin_inff());
  for_lanes(valid, [&](std::int64_t j, int k) {
    const float z = x[j] * scale;
    max_lanes[k] = max_lanes[k] < z ? z : max_lanes[k];
  });
  float m = max_lanes[0];
  for (int k = 1; k < kSumLanes; ++k) m = m < max_lanes[k] ? max_lanes[k] : m;
  if (m == -__builtin_inff()) m = 0.0f;  // all masked: avoid (-inf) - (-inf)
  float sum_lanes[kSumLanes] = {};
  for_lanes(valid, [&](std::int64_t j, int k) {
    const float d = x[j] * scale - m;
    const float e = d < -87.0f ? 0.0f : fast_exp(d);
    y[j] = e;
    sum_lanes[k] += e;
  });
  const float inv = 1.0f / reduce_lanes(sum_lanes);
  for (std::int64_t j = 0; j < valid; ++j) y[j] *= inv;
  for (std::int64_t j = valid; j < n; ++j) y[j] = 0.0f;
}

// dx = scale * (y * (g - sum_j g[j] y[j])) over the first `valid` entries of one row of n, 0 after
// them (softmax_row's backward).
inline void softmax_backward_row(const float* __restrict y, const float* __restrict g, float* __restrict dx,
                                 std::int64_t n, std::int64_t valid, float scale) {
  const float dot = lane_dot(g, y, valid);
  for (std::int64_t j = 0; j < valid; ++j) dx[j] = (y[j] * (g[j] - dot)) * scale;
  for (std::int64_t j = valid; j < n; ++j) dx[j] = 0.0f;
}

// Rows [r0, r1) of x, y: [rows, cols] (kernels::softmax_rows_f32 and its reference).
inline void softmax_rows(const float* x, float* y, std::int64_t r0, std::int64_t r1, std::int64_t cols, float scale,
                         std::int64_t causal_rows) {
  for (std::int64_t r = r0; r < r1; ++r)
    softmax_row(x + r * cols, y + r * cols, cols, softmax_valid(r, cols, causal_rows), scale);
}

inline void softmax_backward_rows(const float* y, const float* g, float* dx, std::int64_t r0, std::int64_t r1,
                                  std::int64_t cols, float scale, std::int64_t causal_rows) {
  for (std::int64_t r = r0; r < r1; ++r)
    softmax_backward_row(y + r * cols, g + r * cols, dx + r * cols, cols, softmax_valid(r, cols, causal_rows), scale);
}

}  // namespace
}  // namespace shiftq::detail
