// Runtime ISA dispatch of the L1-norm kernels, and their scalar references.
#include "shiftq/kernels/l1norm.hpp"

#include <algorithm>

#include "isa.hpp"

namespace shiftq::kernels {

#define SHIFTQ_DECLARE_ISA(ns)                                                                                     \
  namespace ns {                                                                                                   \
  L1GroupSums l1_group_sums_s8(const std::int8_t*, std::int64_t, std::int64_t, std::int64_t);                     \
  L1GradientSums l1_gradient_sums_s8(const std::int8_t*, const std::int8_t*, std::int64_t, std::int64_t,          \
                                     std::int64_t);                                                                \
  void affine_s8_f32(const std::int8_t*, std::int64_t, std::int64_t, std::int64_t, float, float, float*);         \
  void l1_bn_backward_s8_f32(const L1BatchNormBackward&, const std::int8_t*, const std::int8_t*, std::int64_t,    \
                             std::int64_t, std::int64_t, float*);                                                  \
  void affine_cols_s8_f32(const std::int8_t*, std::int64_t, std::int64_t, std::int64_t, const float*, const float*, \
                          float*);                                                                                 \
  void l1_bn_backward_cols_s8_f32(const L1BatchNormBackwardCols&, const std::int8_t*, const std::int8_t*,         \
                                  std::int64_t, std::int64_t, std::int64_t, float*);                               \
  void l1_col_sums_s8(const std::int8_t*, std::int64_t, std::int64_t, std::int64_t*);                              \
  void l1_col_deviation_s8(const std::int8_t*, std::int64_t, std::int64_t, std::int64_t, const std::int64_t*,      \
                           std::int64_t*, std::int64_t*);                                                           \
  void l1_col_gradient_sums_s8(const std::int8_t*, const std::int8_t*, std::int64_t, std::int64_t, std::int64_t*, \
                               std::int64_t*);                                                                     \
  void l1_ln_forward_row_s8_f32(const std::int8_t*, std::int64_t, float, float, const float*, const float*,       \
                                float*);                                                                           \
  L1RowGradientSums l1_ln_backward_sums_s8(const std::int8_t*, const std::int8_t*, std::int64_t, std::int32_t,    \
                                           const float*);                                                          \
  void l1_ln_backward_row_s8_f32(const L1LayerNormBackward&, const std::int8_t*, const std::int8_t*,              \
                                 std::int64_t, const float*, float*, float*, float*);                              \
  }
SHIFTQ_DECLARE_ISA(avx512)
SHIFTQ_DECLARE_ISA(avx2)
SHIFTQ_DECLARE_ISA(base)
#undef SHIFTQ_DECLARE_ISA

L1GroupSums l1_group_sums_s8(const std::int8_t* q, std::int64_t runs, std::int64_t len, std::int64_t stride) {
  SHIFTQ_KERNEL_DISPATCH(l1_group_sums_s8, q, runs, len, stride)
}
L1GradientSums l1_gradient_sums_s8(const std::int8_t* d, const std::int8_t* q, std::int64_t runs, std::int64_t len,
                                   std::int64_t stride) {
  SHIFTQ_KERNEL_DISPATCH(l1_gradient_sums_s8, d, q, runs, len, stride)
}
void affine_s8_f32(const std::int8_t* q, std::int64_t runs, std::int64_t len, std::int64_t stride, float a, float b,
                   float* y) {
  SHIFTQ_KERNEL_DISPATCH(affine_s8_f32, q, runs, len, stride, a, b, y)
}
void l1_bn_backward_s8_f32(const L1BatchNormBackward& k, const std::int8_t* q, const std::int8_t* d, std::int64_t runs,
                           std::int64_t len, std::int64_t stride, float* dx) {
  SHIFTQ_KERNEL_DISPATCH(l1_bn_backward_s8_f32, k, q, d, runs, len, stride, dx)
}
void affine_cols_s8_f32(const std::int8_t* q, std::int64_t rows, std::int64_t n, std::int64_t stride, const float* a,
                        const float* b, float* y) {
  SHIFTQ_KERNEL_DISPATCH(affine_cols_s8_f32, q, rows, n, stride, a, b, y)
}
void l1_bn_backward_cols_s8_f32(const L1BatchNormBackwardCols& k, const std::int8_t* q, const std::int8_t* d,
                                std::int64_t rows, std::int64_t n, std::int64_t stride, float* dx) {
  SHIFTQ_KERNEL_DISPATCH(l1_bn_backward_cols_s8_f32, k, q, d, rows, n, stride, dx)
}
void l1_col_sums_s8(const std::int8_t* q, std::int64_t rows, std::int64_t cols, std::int64_t* s1) {
  SHIFTQ_KERNEL_DISPATCH(l1_col_sums_s8, q, rows, cols, s1)
}
void l1_col_deviation_s8(const std::int8_t* q, std::int64_t rows, std::int64_t cols, std::int64_t m,
                         const std::int64_t* s1, std::int64_t* abs_dev, std::int64_t* sign) {
  SHIFTQ_KERNEL_DISPATCH(l1_col_deviation_s8, q, rows, cols, m, s1, abs_dev, sign)
}
void l1_col_gradient_sums_s8(const std::int8_t* d, const std::int8_t* q, std::int64_t rows, std::int64_t cols,
                             std::int64_t* sum_d, std::int64_t* sum_dq) {
  SHIFTQ_KERNEL_DISPATCH(l1_col_gradient_sums_s8, d, q, rows, cols, sum_d, sum_dq)
}
void l1_ln_forward_row_s8_f32(const std::int8_t* q, std::int64_t D, float a, float mu, const float* gamma,
                              const float* beta, float* y) {
  SHIFTQ_KERNEL_DISPATCH(l1_ln_forward_row_s8_f32, q, D, a, mu, gamma, beta, y)
}
L1RowGradientSums l1_ln_backward_sums_s8(const std::int8_t* q, const std::int8_t* d, std::int64_t D, std::int32_t s1,
                                         const float* gamma) {
  SHIFTQ_KERNEL_DISPATCH(l1_ln_backward_sums_s8, q, d, D, s1, gamma)
}
void l1_ln_backward_row_s8_f32(const L1LayerNormBackward& k, const std::int8_t* q, const std::int8_t* d,
                               std::int64_t D, const float* gamma, float* dx, float* dgamma, float* dbeta) {
  SHIFTQ_KERNEL_DISPATCH(l1_ln_backward_row_s8_f32, k, q, d, D, gamma, dx, dgamma, dbeta)
}

// References: one element at a time, int64 sums, the definitions of l1norm.hpp.
namespace {
int sign_of(std::int64_t v) { return (v > 0) - (v < 0); }
}  // namespace

L1GroupSums l1_group_sums_s8_ref(const std::int8_t* q, std::int64_t runs, std::int64_t len, std::int64_t stride) {
  L1GroupSums s;
  for (std::int64_t o = 0; o < runs; ++o)
    for (std::int64_t i = 0; i < len; ++i) s.s1 += q[o * stride + i];
  const std::int64_t m = runs * len;
  for (std::int64_t o = 0; o < runs; ++o)
    for (std::int64_t i = 0; i < len; ++i) {
      const std::int64_t dev = m * q[o * stride + i] - s.s1;
      s.abs_dev += dev < 0 ? -dev : dev;
      s.sign += sign_of(dev);
    }
  return s;
}

L1GradientSums l1_gradient_sums_s8_ref(const std::int8_t* d, const std::int8_t* q, std::int64_t runs,
                                       std::int64_t len, std::int64_t stride) {
  L1GradientSums s;
  for (std::int64_t o = 0; o < runs; ++o)
    for (std::int64_t i = 0; i < len; ++i) {
      s.sum_d += d[o * stride + i];
      s.sum_dq += std::int64_t{d[o * stride + i]} * q[o * stride + i];
    }
  return s;
}

void affine_s8_f32_ref(const std::int8_t* q, std::int64_t runs, std::int64_t len, std::int64_t stride, float a,
                       float b, float* y) {
  for (std::int64_t o = 0; o < runs; ++o)
    for (std::int64_t i = o * stride; i < o * stride + len; ++i) y[i] = a * static_cast<float>(q[i]) + b;
}

void l1_bn_backward_s8_f32_ref(const L1BatchNormBackward& k, const std::int8_t* q, const std::int8_t* d,
                               std::int64_t runs, std::int64_t len, std::int64_t stride, float* dx) {
  for (std::int64_t o = 0; o < runs; ++o)
    for (std::int64_t i = o * stride; i < o * stride + len; ++i) {
      const float sgn = static_cast<float>(sign_of(std::int64_t{k.m} * q[i] - k.s1));
      dx[i] = k.k_d * static_cast<float>(d[i]) + (k.k_s * sgn + k.k_0);
    }
}

void affine_cols_s8_f32_ref(const std::int8_t* q, std::int64_t rows, std::int64_t n, std::int64_t stride,
                            const float* a, const float* b, float* y) {
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t i = 0; i < n; ++i) y[r * stride + i] = a[i] * static_cast<float>(q[r * stride + i]) + b[i];
}

void l1_bn_backward_cols_s8_f32_ref(const L1BatchNormBackwardCols& k, const std::int8_t* q, const std::int8_t* d,
                                    std::int64_t rows, std::int64_t n, std::int64_t stride, float* dx) {
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t i = 0; i < n; ++i) {
      const std::int64_t e = r * stride + i;
      const float sgn = static_cast<float>((q[e] > k.above[i]) - (q[e] < k.below[i]));
      dx[e] = k.k_d[i] * static_cast<float>(d[e]) + (k.k_s[i] * sgn + k.k_0[i]);
    }
}

void l1_col_sums_s8_ref(const std::int8_t* q, std::int64_t rows, std::int64_t cols, std::int64_t* s1) {
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) s1[c] += q[r * cols + c];
}

void l1_col_deviation_s8_ref(const std::int8_t* q, std::int64_t rows, std::int64_t cols, std::int64_t m,
                             const std::int64_t* s1, std::int64_t* abs_dev, std::int64_t* sign) {
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) {
      const std::int64_t dev = m * q[r * cols + c] - s1[c];
      abs_dev[c] += dev < 0 ? -dev : dev;
      sign[c] += sign_of(dev);
    }
}

void l1_col_gradient_sums_s8_ref(const std::int8_t* d, const std::int8_t* q, std::int64_t rows, std::int64_t cols,
                                 std::int64_t* sum_d, std::int64_t* sum_dq) {
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) {
      sum_d[c] += d[r * cols + c];
      sum_dq[c] += std::int64_t{d[r * cols + c]} * q[r * cols + c];
    }
}

void l1_ln_forward_row_s8_f32_ref(const std::int8_t* q, std::int64_t D, float a, float mu, const float* gamma,
                                  const float* beta, float* y) {
  for (std::int64_t j = 0; j < D; ++j)
    y[j] = (gamma ? gamma[j] : 1.0f) * (a * (static_cast<float>(q[j]) - mu)) + (beta ? beta[j] : 0.0f);
}

L1RowGradientSums l1_ln_backward_sums_s8_ref(const std::int8_t* q, const std::int8_t* d, std::int64_t D,
                                             std::int32_t s1, const float* gamma) {
  float lane_g[16] = {}, lane_gd[16] = {};
  for (std::int64_t j = 0; j < D; ++j) {
    const float w = (gamma ? gamma[j] : 1.0f) * static_cast<float>(d[j]);
    lane_g[j % 16] += w;
    lane_gd[j % 16] += w * static_cast<float>(D * q[j] - s1);
  }
  L1RowGradientSums s;
  for (int l = 0; l < 16; ++l) {
    s.sum_g += lane_g[l];
    s.sum_gd += lane_gd[l];
  }
  return s;
}

void l1_ln_backward_row_s8_f32_ref(const L1LayerNormBackward& k, const std::int8_t* q, const std::int8_t* d,
                                   std::int64_t D, const float* gamma, float* dx, float* dgamma, float* dbeta) {
  for (std::int64_t j = 0; j < D; ++j) {
    const float sgn = static_cast<float>(sign_of(D * q[j] - k.s1));
    const float g = (gamma ? gamma[j] : 1.0f) * k.sg * static_cast<float>(d[j]);
    dx[j] = k.inv * (g - k.mean_g - k.k_s * (sgn - k.mean_sign));
    if (dgamma && dbeta) {
      const float dy = k.sg * static_cast<float>(d[j]);
      dgamma[j] += dy * (k.a * (static_cast<float>(q[j]) - k.mu));
      dbeta[j] += dy;
    }
  }
}

}  // namespace shiftq::kernels
