// Internal helpers shared by the op implementations.
#pragma once

#include <cmath>

#include "core/parallel_for.hpp"
#include "shiftq/autograd/ops.hpp"

namespace shiftq::detail {

// out[i] = f(x[i]) for an f32 tensor, in parallel.
template <class F>
Tensor map_unary(const Tensor& x, F f) {
  Tensor out = Tensor::uninitialized(x.shape());
  const float* px = x.data<float>();
  float* po = out.data<float>();
  parallel_for(x.numel(), kElementwiseGrain, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t i = b; i < e; ++i) po[i] = f(px[i]);
  });
  return out;
}

// out[i] = f(x[i], y[i]) for two f32 tensors of the same shape, in parallel.
template <class F>
Tensor map_binary_same(const Tensor& x, const Tensor& y, F f) {
  Tensor out = Tensor::uninitialized(x.shape());
  const float* px = x.data<float>();
  const float* py = y.data<float>();
  float* po = out.data<float>();
  parallel_for(x.numel(), kElementwiseGrain, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t i = b; i < e; ++i) po[i] = f(px[i], py[i]);
  });
  return out;
}

// Strides of `shape` seen from a broadcast `out_shape` (0 along broadcast dims).
inline Shape broadcast_strides(const Shape& shape, const Shape& out_shape) {
  const std::size_t rank = out_shape.size(), offset = rank - shape.size();
  const Shape own = contiguous_strides(shape);
  Shape strides(rank, 0);
  for (std::size_t d = offset; d < rank; ++d)
    strides[d] = shape[d - offset] == 1 ? 0 : own[d - offset];
  return strides;
}

// out = f(a, b) with NumPy broadcasting.
template <class F>
Tensor map_binary(const Tensor& a, const Tensor& b, F f) {
  if (a.shape() == b.shape()) return map_binary_same(a, b, f);
  const Shape out_shape = broadcast_shapes(a.shape(), b.shape());
  Tensor out = Tensor::uninitialized(out_shape);
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  float* po = out.data<float>();
  if (out.numel() == 0) return out;
  const Shape sa = broadcast_strides(a.shape(), out_shape), sb = broadcast_strides(b.shape(), out_shape);
  const std::int64_t rank = static_cast<std::int64_t>(out_shape.size());
  const std::int64_t inner = out_shape.back(), rows = out.numel() / inner;
  const std::int64_t ia = sa.back(), ib = sb.back();
  parallel_for(rows, std::max<std::int64_t>(1, kElementwiseGrain / inner), [&](std::int64_t r0, std::int64_t r1) {
    for (std::int64_t r = r0; r < r1; ++r) {
      std::int64_t rest = r, oa = 0, ob = 0;
      for (std::int64_t d = rank - 2; d >= 0; --d) {
        const std::int64_t i = rest % out_shape[d];
        rest /= out_shape[d];
        oa += i * sa[d];
        ob += i * sb[d];
      }
      float* o = po + r * inner;
      for (std::int64_t j = 0; j < inner; ++j) o[j] = f(pa[oa + j * ia], pb[ob + j * ib]);
    }
  });
  return out;
}

// [outer, dim, inner] view of a tensor around one axis.
struct AxisSplit {
  std::int64_t outer = 1, dim = 1, inner = 1;
};
inline AxisSplit split_at(const Shape& shape, std::int64_t axis) {
  AxisSplit s;
  for (std::int64_t d = 0; d < static_cast<std::int64_t>(shape.size()); ++d) {
    if (d < axis) s.outer *= shape[d];
    else if (d == axis) s.dim = shape[d];
    else s.inner *= shape[d];
  }
  return s;
}

inline void check_f32(const Tensor& t, const char* op, const char* arg) {
  check_dtype(t, DType::f32, op, arg);
}

}  // namespace shiftq::detail
