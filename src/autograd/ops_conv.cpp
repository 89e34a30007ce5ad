// 2-D convolution (im2col + GEMM) and pooling, NCHW.
#include "autograd/conv_layout.hpp"
#include "ops_util.hpp"
#include "shiftq/kernels/gemm.hpp"
#include "shiftq/kernels/im2col.hpp"

namespace shiftq {
namespace {
using kernels::Conv2dGeometry;
using kernels::Trans;

Conv2dGeometry conv_geometry(const Tensor& x, std::int64_t kh, std::int64_t kw, std::int64_t stride,
                             std::int64_t padding, const char* op) {
  check_rank(x, 4, op, "x");
  SHIFTQ_CHECK(stride >= 1 && padding >= 0 && kh >= 1 && kw >= 1, ValueError, op, ": stride (",
               stride, ") must be >= 1, padding (", padding, ") >= 0, kernel >= 1");
  const Conv2dGeometry g{x.size(1), x.size(2), x.size(3), kh, kw, stride, stride, padding, padding};
  SHIFTQ_CHECK(x.size(2) + 2 * padding >= kh && x.size(3) + 2 * padding >= kw, ShapeError, op,
               ": kernel ", kh, "x", kw, " larger than the padded input ", x.str());
  return g;
}

// cols: [N*OH*OW, C*KH*KW] for the whole batch.
Tensor im2col_batch(const Conv2dGeometry& g, const Tensor& x) {
  const std::int64_t N = x.size(0), P = g.out_h() * g.out_w(), image = g.channels * g.height * g.width;
  Tensor cols = Tensor::uninitialized({N * P, g.patch()});
  const float* px = x.data<float>();
  float* pc = cols.data<float>();
  detail::parallel_for(N, 1, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t n = b; n < e; ++n) kernels::im2col_f32(g, px + n * image, pc + n * P * g.patch());
  });
  return cols;
}
}  // namespace

Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dParams& params) {
  if (params.layout == ImageLayout::nhwc) {  // the NCHW path between two permutes
    check_rank(x, 4, "conv2d", "x");
    Conv2dParams nchw = params;
    nchw.layout = ImageLayout::nchw;
    return permute(conv2d(permute(x, {0, 3, 1, 2}), weight, bias, nchw), {0, 2, 3, 1});
  }
  detail::check_f32(x, "conv2d", "x");
  detail::check_f32(weight, "conv2d", "weight");
  check_rank(weight, 4, "conv2d", "weight");
  const Conv2dGeometry g = conv_geometry(x, weight.size(2), weight.size(3), params.stride, params.padding, "conv2d");
  const std::int64_t N = x.size(0), O = weight.size(0), P = g.out_h() * g.out_w(), patch = g.patch();
  SHIFTQ_CHECK(weight.size(1) == g.channels, ShapeError, "conv2d: weight ", weight.str(),
               " expects ", weight.size(1), " input channels, input is ", x.str());
  if (bias.defined()) {
    detail::check_f32(bias, "conv2d", "bias");
    SHIFTQ_CHECK(bias.shape() == Shape{O}, ShapeError, "conv2d: bias ", bias.str(), " must be [", O, "]");
  }
  Tensor y_rows = Tensor::uninitialized({N * P, O});
  {
    const Tensor cols = im2col_batch(g, x);
    // y_rows: [N*P, O] = cols: [N*P, patch] · W^T
    kernels::gemm_f32(Trans::N, Trans::T, N * P, O, patch, 1.0f, cols.data<float>(), patch,
                      weight.data<float>(), patch, 0.0f, y_rows.data<float>(), O);
  }
  Tensor out = detail::rows_to_nchw(y_rows, bias, N, O, g.out_h(), g.out_w());
  const bool gx = x.requires_grad(), gw = weight.requires_grad(), gb = bias.defined() && bias.requires_grad();
  return record("conv2d", out, {&x, &weight, &bias},
                [x = x.detach(), w = weight.detach(), g, gx, gw, gb, N, O, P, patch](const Tensor& grad) {
    const Tensor g_rows = detail::nchw_to_rows(grad, N, O, P);  // [N*P, O]
    const float* pgr = g_rows.data<float>();
    Tensor dx, dw, db;
    if (gw) {  // dW: [O, patch] = g_rows^T · cols (cols recomputed: saves N*P*patch floats)
      const Tensor cols = im2col_batch(g, x);
      dw = Tensor::uninitialized(w.shape());
      kernels::gemm_f32(Trans::T, Trans::N, O, patch, N * P, 1.0f, pgr, O, cols.data<float>(), patch,
                        0.0f, dw.data<float>(), patch);
    }
    if (gx) {  // dcols: [N*P, patch] = g_rows · W, then col2im
      Tensor dcols = Tensor::uninitialized({N * P, patch});
      kernels::gemm_f32(Trans::N, Trans::N, N * P, patch, O, 1.0f, pgr, O, w.data<float>(), patch,
                        0.0f, dcols.data<float>(), patch);
      dx = detail::col2im_batch(g, dcols, x.shape());
    }
    if (gb) db = sum(g_rows, {0});
    return std::vector<Tensor>{dx, dw, db};
  });
}

namespace {
// Visits every (n*C + c, oy, ox) output cell with the window's valid input range.
template <class F>
void for_each_pool_window(const Conv2dGeometry& g, std::int64_t planes, F f) {
  const std::int64_t oh = g.out_h(), ow = g.out_w();
  detail::parallel_for(planes, 4, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t plane = b; plane < e; ++plane)
      for (std::int64_t oy = 0; oy < oh; ++oy)
        for (std::int64_t ox = 0; ox < ow; ++ox) {
          const std::int64_t y0 = oy * g.stride_h - g.pad_h, x0 = ox * g.stride_w - g.pad_w;
          f(plane, (plane * oh + oy) * ow + ox, std::max<std::int64_t>(y0, 0),
            std::min(y0 + g.kernel_h, g.height), std::max<std::int64_t>(x0, 0),
            std::min(x0 + g.kernel_w, g.width));
        }
  });
}

Conv2dGeometry pool_geometry(const Tensor& x, const Pool2dParams& p, const char* op) {
  detail::check_f32(x, op, "x");
  SHIFTQ_CHECK(p.padding * 2 <= p.kernel, ValueError, op, ": padding ", p.padding,
               " must be at most half the kernel ", p.kernel);
  return conv_geometry(x, p.kernel, p.kernel, p.stride, p.padding, op);
}
}  // namespace

Tensor max_pool2d(const Tensor& x, const Pool2dParams& params) {
  const Conv2dGeometry g = pool_geometry(x, params, "max_pool2d");
  const std::int64_t planes = x.size(0) * x.size(1), hw = g.height * g.width;
  Tensor out = Tensor::uninitialized({x.size(0), x.size(1), g.out_h(), g.out_w()});
  Tensor argmax = Tensor::uninitialized(out.shape(), DType::s32);  // flat index within the input plane
  const float* px = x.data<float>();
  float* po = out.data<float>();
  std::int32_t* pa = argmax.data<std::int32_t>();
  for_each_pool_window(g, planes, [&](std::int64_t plane, std::int64_t o, std::int64_t ya, std::int64_t yb,
                                      std::int64_t xa, std::int64_t xb) {
    float best = -INFINITY;
    std::int64_t best_index = ya * g.width + xa;
    for (std::int64_t y = ya; y < yb; ++y)
      for (std::int64_t xx = xa; xx < xb; ++xx)
        if (px[plane * hw + y * g.width + xx] > best) best = px[plane * hw + y * g.width + xx], best_index = y * g.width + xx;
    po[o] = best;
    pa[o] = static_cast<std::int32_t>(best_index);
  });
  const std::int64_t out_hw = g.out_h() * g.out_w();
  return record("max_pool2d", out, {&x}, [argmax, in_shape = x.shape(), planes, hw, out_hw](const Tensor& grad) {
    Tensor dx = Tensor::zeros(in_shape);
    const float* pg = grad.data<float>();
    const std::int32_t* pa = argmax.data<std::int32_t>();
    float* pd = dx.data<float>();
    detail::parallel_for(planes, 4, [&](std::int64_t b, std::int64_t e) {
      for (std::int64_t plane = b; plane < e; ++plane)
        for (std::int64_t o = plane * out_hw; o < (plane + 1) * out_hw; ++o) pd[plane * hw + pa[o]] += pg[o];
    });
    return std::vector<Tensor>{dx};
  });
}

Tensor avg_pool2d(const Tensor& x, const Pool2dParams& params) {
  const Conv2dGeometry g = pool_geometry(x, params, "avg_pool2d");
  const std::int64_t planes = x.size(0) * x.size(1), hw = g.height * g.width;
  const float inv_area = 1.0f / static_cast<float>(params.kernel * params.kernel);
  Tensor out = Tensor::uninitialized({x.size(0), x.size(1), g.out_h(), g.out_w()});
  const float* px = x.data<float>();
  float* po = out.data<float>();
  for_each_pool_window(g, planes, [&](std::int64_t plane, std::int64_t o, std::int64_t ya, std::int64_t yb,
                                      std::int64_t xa, std::int64_t xb) {
    float acc = 0.0f;
    for (std::int64_t y = ya; y < yb; ++y)
      for (std::int64_t xx = xa; xx < xb; ++xx) acc += px[plane * hw + y * g.width + xx];
    po[o] = acc * inv_area;
  });
  return record("avg_pool2d", out, {&x}, [g, in_shape = x.shape(), planes, hw, inv_area](const Tensor& grad) {
    Tensor dx = Tensor::zeros(in_shape);
    const float* pg = grad.data<float>();
    float* pd = dx.data<float>();
    // Windows of one plane overlap, but planes are disjoint: parallel over planes is race-free.
    for_each_pool_window(g, planes, [&](std::int64_t plane, std::int64_t o, std::int64_t ya, std::int64_t yb,
                                        std::int64_t xa, std::int64_t xb) {
      for (std::int64_t y = ya; y < yb; ++y)
        for (std::int64_t xx = xa; xx < xb; ++xx) pd[plane * hw + y * g.width + xx] += pg[o] * inv_area;
    });
    return std::vector<Tensor>{dx};
  });
}

Tensor global_avg_pool2d(const Tensor& x, ImageLayout layout) {
  detail::check_f32(x, "global_avg_pool2d", "x");
  check_rank(x, 4, "global_avg_pool2d", "x");
  // Channels-last input is moved to NCHW first (a small tensor: the last feature map), so that both
  // layouts sum each channel in the same order and give the same bits.
  return mean(layout == ImageLayout::nhwc ? permute(x, {0, 3, 1, 2}) : x, {2, 3});
}

}  // namespace shiftq
