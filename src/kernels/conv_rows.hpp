// Internal: the kernel-row walk shared by the channels-last im2col (im2col.cpp) and col2im
// (im2col_impl.inc, compiled per ISA), and the walk over the images of a block of rows shared by
// the convolution products (conv_int*.cpp, quant/qconv.cpp).
#pragma once

#include <algorithm>
#include <cstdint>

#include "shiftq/kernels/im2col.hpp"

namespace shiftq::kernels::conv_rows {

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

// Calls fn(n, p_begin, p_end, row) for each image's part of the rows [r0, r1) of a [N*P, *]
// matrix (row r: output pixel r % P of image r / P), `row` counting from r0.
template <class F>
void for_each_image_part(std::int64_t r0, std::int64_t r1, std::int64_t P, F fn) {
  for (std::int64_t r = r0; r < r1;) {
    const std::int64_t n = r / P, p0 = r - n * P, p1 = std::min(P, p0 + (r1 - r));
    fn(n, p0, p1, r - r0);
    r += p1 - p0;
  }
}

inline bool inside(const Conv2dGeometry& g, std::int64_t iy, std::int64_t ix) {
  return iy >= 0 && iy < g.height && ix >= 0 && ix < g.width;
}

}  // namespace shiftq::kernels::conv_rows
