// Integer kernels of the fully quantized L1 normalization (docs/l1norm.md) on raw int8
// code buffers. A normalization group (a BatchNorm channel, a LayerNorm row) is `runs` runs of
// `len` codes, run i starting at q + i * stride (BatchNorm: runs = N, len = H*W, stride = C*H*W;
// LayerNorm: runs = 1, len = D), m = runs * len elements, m < 2^23.
//
// Each kernel has a plain scalar `_ref` beside the optimized one; the optimized ones are written
// for the auto-vectorizer and compiled for AVX-512, AVX2 and baseline x86-64 with runtime selection
// (the ISA quantize_isa_name() names). Results are bit-identical to the references: the sums are integer
// (order-free), the float outputs elementwise without FMA contraction, and the one float reduction
// (l1_ln_backward_sums_s8) runs in a fixed 16-lane order on every ISA.
#pragma once

#include <cstdint>

namespace shiftq::kernels {

// s1 = sum q, abs_dev = sum |m q - s1|, sign = sum sgn(m q - s1): the group's mean (s1 / m) and
// mean absolute deviation (abs_dev / m^2) in code units, exactly.
struct L1GroupSums {
  std::int64_t s1 = 0, abs_dev = 0, sign = 0;
};
L1GroupSums l1_group_sums_s8(const std::int8_t* q, std::int64_t runs, std::int64_t len, std::int64_t stride);
L1GroupSums l1_group_sums_s8_ref(const std::int8_t* q, std::int64_t runs, std::int64_t len, std::int64_t stride);

// sum_d = sum d, sum_dq = sum d * q over a group of output-gradient codes d and input codes q
// (same layout).
struct L1GradientSums {
  std::int64_t sum_d = 0, sum_dq = 0;
};
L1GradientSums l1_gradient_sums_s8(const std::int8_t* d, const std::int8_t* q, std::int64_t runs, std::int64_t len,
                                   std::int64_t stride);
L1GradientSums l1_gradient_sums_s8_ref(const std::int8_t* d, const std::int8_t* q, std::int64_t runs,
                                       std::int64_t len, std::int64_t stride);

// y[i] = a * q[i] + b over a group (a BatchNorm channel's output; y has the layout of q).
void affine_s8_f32(const std::int8_t* q, std::int64_t runs, std::int64_t len, std::int64_t stride, float a, float b,
                   float* y);
void affine_s8_f32_ref(const std::int8_t* q, std::int64_t runs, std::int64_t len, std::int64_t stride, float a,
                       float b, float* y);

// BatchNorm input gradient over a group: dx[i] = k_d * d[i] + (k_s * sgn(m q[i] - s1) + k_0) (d and
// dx have the layout of q). The sign thresholds are derived once per group, not once per run.
struct L1BatchNormBackward {
  std::int32_t m, s1;
  float k_d, k_s, k_0;
};
void l1_bn_backward_s8_f32(const L1BatchNormBackward& k, const std::int8_t* q, const std::int8_t* d, std::int64_t runs,
                           std::int64_t len, std::int64_t stride, float* dx);
void l1_bn_backward_s8_f32_ref(const L1BatchNormBackward& k, const std::int8_t* q, const std::int8_t* d,
                               std::int64_t runs, std::int64_t len, std::int64_t stride, float* dx);

// For m > 0 and integer q: m q > s1 <=> q > above and m q < s1 <=> q < below, with above =
// floor(s1 / m) and below = ceil(s1 / m): the sign of a code's deviation is two compares.
struct L1SignThresholds {
  std::int32_t above, below;  // sgn(m q - s1) = (q > above) - (q < below)
};
inline L1SignThresholds l1_sign_thresholds(std::int64_t s1, std::int64_t m) {
  std::int64_t fl = s1 / m;
  if (s1 % m != 0 && s1 < 0) --fl;
  return {static_cast<std::int32_t>(fl), static_cast<std::int32_t>(s1 % m == 0 ? fl : fl + 1)};
}

// The same two maps on `rows` stretches of n codes, `stride` apart (q, d, y and dx alike), each
// column j with its own group's coefficients: a range of NCHW BatchNorm channels in each sample
// (one contiguous stretch per sample), or the [N*H*W, C] rows of a channels-last BatchNorm.
//   affine:   y[j] = a[j] * q[j] + b[j]
//   backward: dx[j] = k_d[j] * d[j] + (k_s[j] * sgn_j + k_0[j]),
//             sgn_j = (q[j] > above[j]) - (q[j] < below[j])  (the group's l1_sign_thresholds)
// Full-width vector steps instead of one short run at a time.
void affine_cols_s8_f32(const std::int8_t* q, std::int64_t rows, std::int64_t n, std::int64_t stride, const float* a,
                        const float* b, float* y);
void affine_cols_s8_f32_ref(const std::int8_t* q, std::int64_t rows, std::int64_t n, std::int64_t stride,
                            const float* a, const float* b, float* y);
struct L1BatchNormBackwardCols {
  const float* k_d;
  const float* k_s;
  const float* k_0;
  const std::int32_t* above;
  const std::int32_t* below;
};
void l1_bn_backward_cols_s8_f32(const L1BatchNormBackwardCols& k, const std::int8_t* q, const std::int8_t* d,
                                std::int64_t rows, std::int64_t n, std::int64_t stride, float* dx);
void l1_bn_backward_cols_s8_f32_ref(const L1BatchNormBackwardCols& k, const std::int8_t* q, const std::int8_t* d,
                                    std::int64_t rows, std::int64_t n, std::int64_t stride, float* dx);

// The group sums of a channels-last BatchNorm: codes q, d: [rows, cols], column c a part of
// channel c's codes. Each adds its sums into int64 arrays of `cols`, so callers split the rows
// among threads and add the partials (integer sums: exact in any order).
//   l1_col_sums_s8:          s1[c] += sum_r q[r, c]
//   l1_col_deviation_s8:     given column c's total s1[c] over its m codes (all parts),
//                            abs_dev[c] += sum_r |m q[r, c] - s1[c]|, sign[c] += sum_r sgn(m q[r, c] - s1[c])
//   l1_col_gradient_sums_s8: sum_d[c] += sum_r d[r, c], sum_dq[c] += sum_r d[r, c] q[r, c]
// (l1_group_sums_s8 and l1_gradient_sums_s8 per column, the first in two passes.)
void l1_col_sums_s8(const std::int8_t* q, std::int64_t rows, std::int64_t cols, std::int64_t* s1);
void l1_col_sums_s8_ref(const std::int8_t* q, std::int64_t rows, std::int64_t cols, std::int64_t* s1);
void l1_col_deviation_s8(const std::int8_t* q, std::int64_t rows, std::int64_t cols, std::int64_t m,
                         const std::int64_t* s1, std::int64_t* abs_dev, std::int64_t* sign);
void l1_col_deviation_s8_ref(const std::int8_t* q, std::int64_t rows, std::int64_t cols, std::int64_t m,
                             const std::int64_t* s1, std::int64_t* abs_dev, std::int64_t* sign);
void l1_col_gradient_sums_s8(const std::int8_t* d, const std::int8_t* q, std::int64_t rows, std::int64_t cols,
                             std::int64_t* sum_d, std::int64_t* sum_dq);
void l1_col_gradient_sums_s8_ref(const std::int8_t* d, const std::int8_t* q, std::int64_t rows, std::int64_t cols,
                                 std::int64_t* sum_d, std::int64_t* sum_dq);

// LayerNorm row forward: y[j] = gamma[j] * (a * (q[j] - mu)) + beta[j] for j < D (gamma, beta may
// be null: 1 and 0).
void l1_ln_forward_row_s8_f32(const std::int8_t* q, std::int64_t D, float a, float mu, const float* gamma,
                              const float* beta, float* y);
void l1_ln_forward_row_s8_f32_ref(const std::int8_t* q, std::int64_t D, float a, float mu, const float* gamma,
                                  const float* beta, float* y);

// LayerNorm row backward. Sums: w_j = gamma[j] (or 1) * d[j]; sum_g = sum w_j and
// sum_gd = sum w_j * (D q[j] - s1), accumulated in 16 lanes (lane j % 16) added in lane order.
struct L1RowGradientSums {
  float sum_g = 0.0f, sum_gd = 0.0f;
};
L1RowGradientSums l1_ln_backward_sums_s8(const std::int8_t* q, const std::int8_t* d, std::int64_t D, std::int32_t s1,
                                         const float* gamma);
L1RowGradientSums l1_ln_backward_sums_s8_ref(const std::int8_t* q, const std::int8_t* d, std::int64_t D,
                                             std::int32_t s1, const float* gamma);

// dx[j] = inv * (gamma[j] * sg * d[j] - mean_g - k_s * (sgn(D q[j] - s1) - mean_sign)); when
// dgamma/dbeta are given, also dgamma[j] += (sg * d[j]) * (a * (q[j] - mu)), dbeta[j] += sg * d[j].
struct L1LayerNormBackward {
  std::int32_t s1;
  float sg, inv, mean_g, k_s, mean_sign, a, mu;
};
void l1_ln_backward_row_s8_f32(const L1LayerNormBackward& k, const std::int8_t* q, const std::int8_t* d,
                               std::int64_t D, const float* gamma, float* dx, float* dgamma, float* dbeta);
void l1_ln_backward_row_s8_f32_ref(const L1LayerNormBackward& k, const std::int8_t* q, const std::int8_t* d,
                                   std::int64_t D, const float* gamma, float* dx, float* dgamma, float* dbeta);

}  // namespace shiftq::kernels
