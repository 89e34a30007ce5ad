// Internal: layout moves shared by the fp32 and quantized convolutions.
#pragma once

#include "detail/parallel.hpp"
#include "shiftq/core/tensor.hpp"
#include "shiftq/kernels/im2col.hpp"

namespace shiftq::detail {

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
      for (std::int64_t p = 0; p < P; ++p)
        for (std::int64_t o = 0; o < O; ++o) po[(n * O + o) * P + p] = pr[(n * P + p) * O + o] + (pb ? pb[o] : 0.0f);
  });
  return out;
}

// grad: [N, O, P] -> [N*P, O]
inline Tensor nchw_to_rows(const Tensor& grad, std::int64_t N, std::int64_t O, std::int64_t P) {
  Tensor rows = Tensor::uninitialized({N * P, O});
  const float* pg = grad.data<float>();
  float* pr = rows.data<float>();
  parallel_for(N, 1, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t n = b; n < e; ++n)
      for (std::int64_t o = 0; o < O; ++o)
        for (std::int64_t p = 0; p < P; ++p) pr[(n * P + p) * O + o] = pg[(n * O + o) * P + p];
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
