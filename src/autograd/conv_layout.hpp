// Internal: layout moves shared by the fp32 and quantized convolutions.
#pragma once

#include <algorithm>

#include "core/parallel_for.hpp"
#include "shiftq/core/tensor.hpp"
#include "shiftq/kernels/im2col.hpp"
#include "shiftq/kernels/transpose.hpp"

namespace shiftq::detail {

// dst[c * rows + r] = value(src[r * cols + c], c) for a [rows, cols] matrix, in 16x16 tiles so that
// both the strided reads and the strided writes stay within a few cache lines.
template <class T, class F>
void transpose_tiled(const T* src, T* dst, std::int64_t rows, std::int64_t cols, F value) {
  constexpr std::int64_t kTile = 16;
  for (std::int64_t r0 = 0; r0 < rows; r0 += kTile) {
    const std::int64_t r1 = std::min(rows, r0 + kTile);
    for (std::int64_t c0 = 0; c0 < cols; c0 += kTile) {
      const std::int64_t c1 = std::min(cols, c0 + kTile);
      for (std::int64_t c = c0; c < c1; ++c)
        for (std::int64_t r = r0; r < r1; ++r) dst[c * rows + r] = value(src[r * cols + c], c);
    }
  }
}

// y_rows: [N*P, O] (+ bias[O]) -> out: [N, O, OH, OW]
inline Tensor rows_to_nchw(const Tensor& y_rows, const Tensor& bias, std::int64_t N, std::int64_t O,
                           std::int64_t oh, std::int64_t ow) {
  const std::int64_t P = oh * ow;
  Tensor out = Tensor::uninitialized({N, O, oh, ow});
  const float* pr = y_rows.data<float>();
  const float* pb = bias.defined() ? bias.data<float>() : nullptr;
  float* po = out.data<float>();
  parallel_for(N, 1, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t n = b; n < e; ++n)
      transpose_tiled(pr + n * P * O, po + n * O * P, P, O,
                      [pb](float v, std::int64_t o) { return v + (pb ? pb[o] : 0.0f); });
  });
  return out;
}

// grad: [N, O, P] -> [N*P, O]
inline Tensor nchw_to_rows(const Tensor& grad, std::int64_t N, std::int64_t O, std::int64_t P) {
  Tensor rows = Tensor::uninitialized({N * P, O});
  const float* pg = grad.data<float>();
  float* pr = rows.data<float>();
  parallel_for(N, 1, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t n = b; n < e; ++n) kernels::transpose_f32(pg + n * O * P, pr + n * P * O, O, P);
  });
  return rows;
}

// dcols: [N*P, patch] -> dx: [N, C, H, W] (summed over overlapping windows)
inline Tensor col2im_batch(const kernels::Conv2dGeometry& g, const Tensor& dcols, const Shape& x_shape) {
  Tensor dx = Tensor::zeros(x_shape);
  const std::int64_t N = x_shape[0], P = g.out_h() * g.out_w(), image = g.channels * g.height * g.width;
  const float* pc = dcols.data<float>();
  float* pdx = dx.data<float>();
  parallel_for(N, 1, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t n = b; n < e; ++n) kernels::col2im_f32(g, pc + n * P * g.patch(), pdx + n * image);
  });
  return dx;
}

}  // namespace shiftq::detail
