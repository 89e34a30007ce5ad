#include "shiftq/kernels/im2col.hpp"

namespace shiftq::kernels {

namespace {
template <class T>
void im2col(const Conv2dGeometry& g, const T* x, T* cols, T pad) {
  const std::int64_t oh = g.out_h(), ow = g.out_w(), patch = g.patch();
  for (std::int64_t oy = 0; oy < oh; ++oy) {
    for (std::int64_t ox = 0; ox < ow; ++ox) {
      T* row = cols + (oy * ow + ox) * patch;
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

void col2im_f32(const Conv2dGeometry& g, const float* cols, float* dx) {
  const std::int64_t oh = g.out_h(), ow = g.out_w(), patch = g.patch();
  for (std::int64_t oy = 0; oy < oh; ++oy) {
    for (std::int64_t ox = 0; ox < ow; ++ox) {
      const float* row = cols + (oy * ow + ox) * patch;
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
