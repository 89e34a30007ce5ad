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
// Visits the KH kernel rows of output pixels [p_begin, p_end) (p_end < 0: all) in channels-last
// patch order. A kernel row whose KW taps all lie inside the input is one contiguous run of KW*C
// values in both the input [H, W, C] and the cols row: full(row, j, x_offset, KW*C), where row
// counts pixels from p_begin and j is the run's column in the patch. A kernel row that touches
// the padding is visited tap by tap: tap(row, j, iy, ix), (iy, ix) possibly outside the input.
template <class Full, class Tap>
void for_each_kernel_row(const Conv2dGeometry& g, std::int64_t p_begin, std::int64_t p_end, Full full, Tap tap) {
  const std::int64_t C = g.channels, run = g.kernel_w * C, ow = g.out_w();
  if (p_end < 0) p_end = g.out_h() * ow;
  for (std::int64_t p = p_begin; p < p_end; ++p) {
    const std::int64_t oy = p / ow, ox = p - oy * ow, ix0 = ox * g.stride_w - g.pad_w;
    for (std::int64_t ky = 0; ky < g.kernel_h; ++ky) {
      const std::int64_t iy = oy * g.stride_h - g.pad_h + ky, j = ky * run;
      if (iy >= 0 && iy < g.height && ix0 >= 0 && ix0 + g.kernel_w <= g.width) {
        full(p - p_begin, j, (iy * g.width + ix0) * C, run);
        continue;
      }
      for (std::int64_t kx = 0; kx < g.kernel_w; ++kx) tap(p - p_begin, j + kx * C, iy, ix0 + kx);
    }
  }
}

bool inside(const Conv2dGeometry& g, std::int64_t iy, std::int64_t ix) {
  return iy >= 0 && iy < g.height && ix >= 0 && ix < g.width;
}

// Inline 16-byte moves: the runs are short (KW*C bytes), too short for a libc call each.
void copy_bytes(std::uint8_t* dst, const std::uint8_t* src, std::int64_t n) {
  std::int64_t i = 0;
  for (; i + 16 <= n; i += 16) std::memcpy(dst + i, src + i, 16);
  for (; i < n; ++i) dst[i] = src[i];
}

// dx[i] += float(acc[i]) * (row_scale * col_scale[i * col_step]), i < n.
void add_scaled(float* dx, const std::int32_t* acc, float row_scale, const float* col_scale, std::int64_t col_step,
                std::int64_t n) {
  if (col_step == 0) {
    const float scale = row_scale * col_scale[0];
    for (std::int64_t i = 0; i < n; ++i) dx[i] += static_cast<float>(acc[i]) * scale;
  } else {
    for (std::int64_t i = 0; i < n; ++i) dx[i] += static_cast<float>(acc[i]) * (row_scale * col_scale[i]);
  }
}
}  // namespace

void im2col_nhwc_u8(const Conv2dGeometry& g, const std::uint8_t* x, std::uint8_t* cols, std::uint8_t pad,
                    std::int64_t p_begin, std::int64_t p_end) {
  const std::int64_t C = g.channels, patch = g.patch();
  for_each_kernel_row(
      g, p_begin, p_end,
      [&](std::int64_t row, std::int64_t j, std::int64_t src, std::int64_t n) {
        copy_bytes(cols + row * patch + j, x + src, n);
      },
      [&](std::int64_t row, std::int64_t j, std::int64_t iy, std::int64_t ix) {
        std::uint8_t* dst = cols + row * patch + j;
        if (inside(g, iy, ix))
          copy_bytes(dst, x + (iy * g.width + ix) * C, C);
        else
          std::memset(dst, pad, static_cast<std::size_t>(C));
      });
}

void col2im_nhwc_s32_f32(const Conv2dGeometry& g, const std::int32_t* acc, const float* row_scale,
                         const float* col_scale, std::int64_t col_step, float* dx, std::int64_t p_begin,
                         std::int64_t p_end) {
  const std::int64_t C = g.channels, patch = g.patch();
  for_each_kernel_row(
      g, p_begin, p_end,
      [&](std::int64_t row, std::int64_t j, std::int64_t dst, std::int64_t n) {
        add_scaled(dx + dst, acc + row * patch + j, row_scale[row], col_scale + j * col_step, col_step, n);
      },
      [&](std::int64_t row, std::int64_t j, std::int64_t iy, std::int64_t ix) {
        if (!inside(g, iy, ix)) return;
        add_scaled(dx + (iy * g.width + ix) * C, acc + row * patch + j, row_scale[row], col_scale + j * col_step,
                   col_step, C);
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
