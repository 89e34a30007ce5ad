#include "shiftq/kernels/im2col.hpp"

#include "conv_rows.hpp"
#include "isa.hpp"

namespace shiftq::kernels {

namespace {
// Whether the window of output pixel (oy, ox) lies inside the input (no padding taps).
bool interior(const Conv2dGeometry& g, std::int64_t oy, std::int64_t ox) {
  const std::int64_t y0 = oy * g.stride_h - g.pad_h, x0 = ox * g.stride_w - g.pad_w;
  return y0 >= 0 && y0 + g.kernel_h <= g.height && x0 >= 0 && x0 + g.kernel_w <= g.width;
}

template <class T>
void im2col(const Conv2dGeometry& g, const T* x, T* cols, T pad) {
  const std::int64_t oh = g.out_h(), ow = g.out_w(), patch = g.patch();
  const std::int64_t plane = g.height * g.width;
  for (std::int64_t oy = 0; oy < oh; ++oy) {
    for (std::int64_t ox = 0; ox < ow; ++ox) {
      T* row = cols + (oy * ow + ox) * patch;
      if (interior(g, oy, ox)) {  // no bounds checks: kernel_w contiguous values per (c, ky)
        const T* src = x + (oy * g.stride_h - g.pad_h) * g.width + (ox * g.stride_w - g.pad_w);
        for (std::int64_t c = 0; c < g.channels; ++c)
          for (std::int64_t ky = 0; ky < g.kernel_h; ++ky) {
            const T* line = src + c * plane + ky * g.width;
            for (std::int64_t kx = 0; kx < g.kernel_w; ++kx) *row++ = line[kx];
          }
        continue;
      }
      for (std::int64_t c = 0; c < g.channels; ++c) {
        const T* xc = x + c * g.height * g.width;
        for (std::int64_t ky = 0; ky < g.kernel_h; ++ky) {
          const std::int64_t iy = oy * g.stride_h - g.pad_h + ky;
          const bool row_in = iy >= 0 && iy < g.height;
          for (std::int64_t kx = 0; kx < g.kernel_w; ++kx) {
            const std::int64_t ix = ox * g.stride_w - g.pad_w + kx;
            *row++ = row_in && ix >= 0 && ix < g.width ? xc[iy * g.width + ix] : pad;
          }
        }
      }
    }
  }
}
}  // namespace

void im2col_f32(const Conv2dGeometry& g, const float* x, float* cols) { im2col(g, x, cols, 0.0f); }

void im2col_u8(const Conv2dGeometry& g, const std::uint8_t* x, std::uint8_t* cols, std::uint8_t pad) {
  im2col(g, x, cols, pad);
}

#define SHIFTQ_DECLARE_ISA(ns)                                                                              \
  namespace ns {                                                                                            \
  void im2col_nhwc_u8(const Conv2dGeometry&, const std::uint8_t*, std::uint8_t*, std::uint8_t, std::int64_t, \
                      std::int64_t);                                                                        \
  void col2im_nhwc_s32_f32(const Conv2dGeometry&, const std::int32_t*, const float*, const float*,           \
                           std::int64_t, float*, std::int64_t, std::int64_t);                               \
  }
SHIFTQ_DECLARE_ISA(avx512)
SHIFTQ_DECLARE_ISA(avx2)
SHIFTQ_DECLARE_ISA(base)
#undef SHIFTQ_DECLARE_ISA

void im2col_nhwc_u8(const Conv2dGeometry& g, const std::uint8_t* x, std::uint8_t* cols, std::uint8_t pad,
                    std::int64_t p_begin, std::int64_t p_end) {
  SHIFTQ_KERNEL_DISPATCH(im2col_nhwc_u8, g, x, cols, pad, p_begin, p_end)
}

void col2im_nhwc_s32_f32(const Conv2dGeometry& g, const std::int32_t* acc, const float* row_scale,
                         const float* col_scale, std::int64_t col_step, float* dx, std::int64_t p_begin,
                         std::int64_t p_end) {
  SHIFTQ_KERNEL_DISPATCH(col2im_nhwc_s32_f32, g, acc, row_scale, col_scale, col_step, dx, p_begin, p_end)
}

namespace {
// The references' walk: fn(row, j, input_index) for every output pixel p in [p_begin, p_end) (p_end
// < 0: all), kernel tap and channel, row = p - p_begin, j the patch column (ky, kx, c), input_index
// the element of x: [H, W, C] it reads, or -1 on the padding.
template <class F>
void for_each_patch_element(const Conv2dGeometry& g, std::int64_t p_begin, std::int64_t p_end, F fn) {
  const std::int64_t ow = g.out_w();
  if (p_end < 0) p_end = g.out_h() * ow;
  for (std::int64_t p = p_begin; p < p_end; ++p)
    for (std::int64_t ky = 0; ky < g.kernel_h; ++ky)
      for (std::int64_t kx = 0; kx < g.kernel_w; ++kx)
        for (std::int64_t c = 0; c < g.channels; ++c) {
          const std::int64_t iy = (p / ow) * g.stride_h - g.pad_h + ky, ix = (p % ow) * g.stride_w - g.pad_w + kx;
          fn(p - p_begin, (ky * g.kernel_w + kx) * g.channels + c,
             conv_rows::inside(g, iy, ix) ? (iy * g.width + ix) * g.channels + c : -1);
        }
}
}  // namespace

// The references: every output pixel, kernel tap and channel on its own, from the definitions.
void im2col_nhwc_u8_ref(const Conv2dGeometry& g, const std::uint8_t* x, std::uint8_t* cols, std::uint8_t pad,
                        std::int64_t p_begin, std::int64_t p_end) {
  const std::int64_t patch = g.patch();
  for_each_patch_element(g, p_begin, p_end, [&](std::int64_t row, std::int64_t j, std::int64_t in) {
    cols[row * patch + j] = in >= 0 ? x[in] : pad;
  });
}

void col2im_nhwc_s32_f32_ref(const Conv2dGeometry& g, const std::int32_t* acc, const float* row_scale,
                             const float* col_scale, std::int64_t col_step, float* dx, std::int64_t p_begin,
                             std::int64_t p_end) {
  const std::int64_t patch = g.patch();
  for_each_patch_element(g, p_begin, p_end, [&](std::int64_t row, std::int64_t j, std::int64_t in) {
    if (in >= 0) dx[in] += static_cast<float>(acc[row * patch + j]) * (row_scale[row] * col_scale[j * col_step]);
  });
}

void col2im_f32(const Conv2dGeometry& g, const float* cols, float* dx) {
  const std::int64_t oh = g.out_h(), ow = g.out_w(), patch = g.patch();
  for (std::int64_t oy = 0; oy < oh; ++oy) {
    for (std::int64_t ox = 0; ox < ow; ++ox) {
      const float* row = cols + (oy * ow + ox) * patch;
      if (interior(g, oy, ox)) {
        float* dst = dx + (oy * g.stride_h - g.pad_h) * g.width + (ox * g.stride_w - g.pad_w);
        for (std::int64_t c = 0; c < g.channels; ++c)
          for (std::int64_t ky = 0; ky < g.kernel_h; ++ky) {
            float* line = dst + c * g.height * g.width + ky * g.width;
            for (std::int64_t kx = 0; kx < g.kernel_w; ++kx) line[kx] += *row++;
          }
        continue;
      }
      for (std::int64_t c = 0; c < g.channels; ++c) {
        float* dxc = dx + c * g.height * g.width;
        for (std::int64_t ky = 0; ky < g.kernel_h; ++ky) {
          const std::int64_t iy = oy * g.stride_h - g.pad_h + ky;
          for (std::int64_t kx = 0; kx < g.kernel_w; ++kx, ++row) {
            const std::int64_t ix = ox * g.stride_w - g.pad_w + kx;
            if (iy >= 0 && iy < g.height && ix >= 0 && ix < g.width) dxc[iy * g.width + ix] += *row;
          }
        }
      }
    }
  }
}

}  // namespace shiftq::kernels
