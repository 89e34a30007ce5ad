#include "shiftq/kernels/im2col.hpp"

#include <cstring>

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

namespace {
// Visits the KH*KW taps of every output pixel in channels-last patch order: fn(tap, iy, ix), where
// `tap` counts taps from 0 (row offset = tap * C) and (iy, ix) may lie in the padding.
template <class F>
void for_each_tap(const Conv2dGeometry& g, F fn) {
  std::int64_t tap = 0;
  for (std::int64_t oy = 0; oy < g.out_h(); ++oy)
    for (std::int64_t ox = 0; ox < g.out_w(); ++ox)
      for (std::int64_t ky = 0; ky < g.kernel_h; ++ky)
        for (std::int64_t kx = 0; kx < g.kernel_w; ++kx, ++tap)
          fn(tap, oy * g.stride_h - g.pad_h + ky, ox * g.stride_w - g.pad_w + kx);
}
}  // namespace

void im2col_nhwc_u8(const Conv2dGeometry& g, const std::uint8_t* x, std::uint8_t* cols, std::uint8_t pad) {
  const std::int64_t C = g.channels;
  for_each_tap(g, [&](std::int64_t tap, std::int64_t iy, std::int64_t ix) {
    std::uint8_t* dst = cols + tap * C;
    if (iy >= 0 && iy < g.height && ix >= 0 && ix < g.width)
      std::memcpy(dst, x + (iy * g.width + ix) * C, static_cast<std::size_t>(C));
    else
      std::memset(dst, pad, static_cast<std::size_t>(C));
  });
}

void col2im_nhwc_f32(const Conv2dGeometry& g, const float* cols, float* dx) {
  const std::int64_t C = g.channels;
  for_each_tap(g, [&](std::int64_t tap, std::int64_t iy, std::int64_t ix) {
    if (iy < 0 || iy >= g.height || ix < 0 || ix >= g.width) return;
    const float* src = cols + tap * C;
    float* dst = dx + (iy * g.width + ix) * C;
    for (std::int64_t c = 0; c < C; ++c) dst[c] += src[c];
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
