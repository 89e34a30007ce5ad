// Runtime ISA dispatch of the activation kernels, and the scalar references.
#include "kernels/fast_math.hpp"
#include "isa.hpp"
#include "kernels/activation_isa.hpp"
#include "shiftq/kernels/activation.hpp"

namespace shiftq::kernels {

void relu_f32(const float* x, float* y, std::int64_t n) { SHIFTQ_KERNEL_DISPATCH(relu_f32, x, y, n) }

void relu_mask_f32(const float* x, float* y, std::uint8_t* mask, std::int64_t n) {
  SHIFTQ_KERNEL_DISPATCH(relu_mask_f32, x, y, mask, n)
}

void relu_backward_mask_f32(const float* g, const std::uint8_t* mask, float* dx, std::int64_t n) {
  SHIFTQ_KERNEL_DISPATCH(relu_backward_mask_f32, g, mask, dx, n)
}

void gelu_f32(const float* x, float* y, std::int64_t n) { SHIFTQ_KERNEL_DISPATCH(gelu_f32, x, y, n) }

void gelu_backward_f32(const float* g, const float* x, float* dx, std::int64_t n) {
  SHIFTQ_KERNEL_DISPATCH(gelu_backward_f32, g, x, dx, n)
}

void softmax_rows_f32(const float* x, float* y, std::int64_t r0, std::int64_t r1, std::int64_t cols, float scale,
                      std::int64_t causal_rows) {
  SHIFTQ_KERNEL_DISPATCH(softmax_rows_f32, x, y, r0, r1, cols, scale, causal_rows)
}

void softmax_backward_rows_f32(const float* y, const float* g, float* dx, std::int64_t r0, std::int64_t r1,
                               std::int64_t cols, float scale, std::int64_t causal_rows) {
  SHIFTQ_KERNEL_DISPATCH(softmax_backward_rows_f32, y, g, dx, r0, r1, cols, scale, causal_rows)
}

// The references: the same formulas, compiled for the baseline x86-64 ISA.
void relu_f32_ref(const float* x, float* y, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

void relu_mask_f32_ref(const float* x, float* y, std::uint8_t* mask, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) {
    const bool on = x[i] > 0.0f;
    y[i] = on ? x[i] : 0.0f;
    if (i % 8 == 0) mask[i / 8] = 0;
    mask[i / 8] = static_cast<std::uint8_t>(mask[i / 8] | (static_cast<unsigned>(on) << (i % 8)));
  }
}

void relu_backward_mask_f32_ref(const float* g, const std::uint8_t* mask, float* dx, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) dx[i] = (mask[i / 8] >> (i % 8)) & 1u ? g[i] : 0.0f;
}

void gelu_f32_ref(const float* x, float* y, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) y[i] = detail::gelu(x[i]);
}

void gelu_backward_f32_ref(const float* g, const float* x, float* dx, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) dx[i] = g[i] * detail::gelu_derivative(x[i]);
}

void softmax_rows_f32_ref(const float* x, float* y, std::int64_t r0, std::int64_t r1, std::int64_t cols, float scale,
                          std::int64_t causal_rows) {
  detail::softmax_rows(x, y, r0, r1, cols, scale, causal_rows);
}

void softmax_backward_rows_f32_ref(const float* y, const float* g, float* dx, std::int64_t r0, std::int64_t r1,
                                   std::int64_t cols, float scale, std::int64_t causal_rows) {
  detail::softmax_backward_rows(y, g, dx, r0, r1, cols, scale, causal_rows);
}

}  // namespace shiftq::kernels
