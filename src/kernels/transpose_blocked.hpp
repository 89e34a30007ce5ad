// Internal: the blocked transpose walk shared by transpose.cpp (u8, and the references) and the
// per-ISA f32 transposes (transpose_impl.inc).
#pragma once

#include <algorithm>
#include <cstdint>

namespace shiftq::kernels::transpose_walk {

// dst[c * dst_ld + r] = src[r * src_ld + c] for r in [r0, r1), c in [c0, c1).
template <class T>
void elements(const T* src, std::int64_t src_ld, T* dst, std::int64_t dst_ld, std::int64_t r0, std::int64_t r1,
              std::int64_t c0, std::int64_t c1) {
  for (std::int64_t r = r0; r < r1; ++r)
    for (std::int64_t c = c0; c < c1; ++c) dst[c * dst_ld + r] = src[r * src_ld + c];
}

// Full B x B blocks with block(src, src_ld, dst, dst_ld), the rest element by element. Wide
// sources go in bands of 16 rows, each band column block by column block: the band's source rows
// stay in L1, and each destination row gets its 16 values (a whole 64-byte line for f32) in
// consecutive blocks. (Block row by block row, [16, 784] f32 ran at 23 GB/s against 47 GB/s for
// the other ResNet shapes: every destination line was written in four pieces, far apart in time.)
// Narrow sources (<= 64 columns) keep block rows: their few column blocks already finish each
// destination line within a few consecutive blocks, and the bands measured slower there
// ([784, 16]: 2.6 against 2.1 us).
template <std::int64_t B, class T, class Block>
void blocked(const T* src, std::int64_t src_ld, T* dst, std::int64_t dst_ld, std::int64_t rows, std::int64_t cols,
             Block block) {
  constexpr std::int64_t kBand = B >= 16 ? B : 16;
  const std::int64_t full_rows = rows / B * B, full_cols = cols / B * B;
  if (cols <= 64 || kBand == B) {
    for (std::int64_t r0 = 0; r0 < full_rows; r0 += B)
      for (std::int64_t c0 = 0; c0 < full_cols; c0 += B)
        block(src + r0 * src_ld + c0, src_ld, dst + c0 * dst_ld + r0, dst_ld);
  } else {
    for (std::int64_t band = 0; band < full_rows; band += kBand) {
      const std::int64_t band_end = std::min(full_rows, band + kBand);
      for (std::int64_t c0 = 0; c0 < full_cols; c0 += B)
        for (std::int64_t r0 = band; r0 < band_end; r0 += B)
          block(src + r0 * src_ld + c0, src_ld, dst + c0 * dst_ld + r0, dst_ld);
    }
  }
  elements(src, src_ld, dst, dst_ld, 0, full_rows, full_cols, cols);
  elements(src, src_ld, dst, dst_ld, full_rows, rows, 0, cols);
}

}  // namespace shiftq::kernels::transpose_walk
