// Branch-free float math that the compiler vectorizes inside elementwise loops (a libm call per
// element does not vectorize and dominated GELU-heavy models).
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>

namespace shiftq::detail {

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

}  // namespace shiftq::detail
