// Transposes: full blocks through SSE2 registers (the x86-64 baseline), the edges element by
// element, in 16-row bands (transpose_blocked).
#include "shiftq/kernels/transpose.hpp"

#include <emmintrin.h>

#include <algorithm>

namespace shiftq::kernels {
namespace {
template <class T>
void transpose_elements(const T* src, T* dst, std::int64_t rows, std::int64_t cols, std::int64_t r0, std::int64_t r1,
                        std::int64_t c0, std::int64_t c1) {
  for (std::int64_t r = r0; r < r1; ++r)
    for (std::int64_t c = c0; c < c1; ++c) dst[c * rows + r] = src[r * cols + c];
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
void transpose_blocked(const T* src, T* dst, std::int64_t rows, std::int64_t cols, Block block) {
  constexpr std::int64_t kBand = B >= 16 ? B : 16;
  const std::int64_t full_rows = rows / B * B, full_cols = cols / B * B;
  if (cols <= 64 || kBand == B) {
    for (std::int64_t r0 = 0; r0 < full_rows; r0 += B)
      for (std::int64_t c0 = 0; c0 < full_cols; c0 += B) block(src + r0 * cols + c0, cols, dst + c0 * rows + r0, rows);
  } else {
    for (std::int64_t band = 0; band < full_rows; band += kBand) {
      const std::int64_t band_end = std::min(full_rows, band + kBand);
      for (std::int64_t c0 = 0; c0 < full_cols; c0 += B)
        for (std::int64_t r0 = band; r0 < band_end; r0 += B)
          block(src + r0 * cols + c0, cols, dst + c0 * rows + r0, rows);
    }
  }
  transpose_elements(src, dst, rows, cols, 0, full_rows, full_cols, cols);
  transpose_elements(src, dst, rows, cols, full_rows, rows, 0, cols);
}

void block_f32(const float* s, std::int64_t sld, float* d, std::int64_t dld) {
  __m128 r0 = _mm_loadu_ps(s), r1 = _mm_loadu_ps(s + sld), r2 = _mm_loadu_ps(s + 2 * sld),
         r3 = _mm_loadu_ps(s + 3 * sld);
  _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
  _mm_storeu_ps(d, r0);
  _mm_storeu_ps(d + dld, r1);
  _mm_storeu_ps(d + 2 * dld, r2);
  _mm_storeu_ps(d + 3 * dld, r3);
}

// 16x16 bytes in four unpack rounds (8-, 16-, 32-, 64-bit units): after round k each register
// holds 2^(k+1) source rows' values of a few columns, interleaved.
void block_u8(const std::uint8_t* s, std::int64_t sld, std::uint8_t* d, std::int64_t dld) {
  __m128i a[16], b[16];
  for (int i = 0; i < 16; ++i) a[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i * sld));
  for (int j = 0; j < 8; ++j) {  // b[j]: rows 2j, 2j+1 of columns 0-7; b[j+8]: columns 8-15
    b[j] = _mm_unpacklo_epi8(a[2 * j], a[2 * j + 1]);
    b[j + 8] = _mm_unpackhi_epi8(a[2 * j], a[2 * j + 1]);
  }
  for (int h = 0; h < 2; ++h)  // a[4g + j]: rows 4j..4j+3 of columns 4g..4g+3
    for (int j = 0; j < 4; ++j) {
      a[8 * h + j] = _mm_unpacklo_epi16(b[8 * h + 2 * j], b[8 * h + 2 * j + 1]);
      a[8 * h + j + 4] = _mm_unpackhi_epi16(b[8 * h + 2 * j], b[8 * h + 2 * j + 1]);
    }
  for (int g = 0; g < 4; ++g) {  // b[4g + i]: columns 4g + {0,1} or {2,3}, rows 0-7 or 8-15
    b[4 * g + 0] = _mm_unpacklo_epi32(a[4 * g + 0], a[4 * g + 1]);
    b[4 * g + 1] = _mm_unpackhi_epi32(a[4 * g + 0], a[4 * g + 1]);
    b[4 * g + 2] = _mm_unpacklo_epi32(a[4 * g + 2], a[4 * g + 3]);
    b[4 * g + 3] = _mm_unpackhi_epi32(a[4 * g + 2], a[4 * g + 3]);
  }
  for (int g = 0; g < 4; ++g) {  // column 4g + i, rows 0-15
    const __m128i c0 = _mm_unpacklo_epi64(b[4 * g + 0], b[4 * g + 2]), c1 = _mm_unpackhi_epi64(b[4 * g + 0], b[4 * g + 2]);
    const __m128i c2 = _mm_unpacklo_epi64(b[4 * g + 1], b[4 * g + 3]), c3 = _mm_unpackhi_epi64(b[4 * g + 1], b[4 * g + 3]);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + (4 * g + 0) * dld), c0);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + (4 * g + 1) * dld), c1);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + (4 * g + 2) * dld), c2);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + (4 * g + 3) * dld), c3);
  }
}
}  // namespace

void transpose_f32(const float* src, float* dst, std::int64_t rows, std::int64_t cols) {
  transpose_blocked<4>(src, dst, rows, cols, block_f32);
}

void transpose_u8(const std::uint8_t* src, std::uint8_t* dst, std::int64_t rows, std::int64_t cols) {
  transpose_blocked<16>(src, dst, rows, cols, block_u8);
}

void transpose_f32_ref(const float* src, float* dst, std::int64_t rows, std::int64_t cols) {
  transpose_elements(src, dst, rows, cols, 0, rows, 0, cols);
}

void transpose_u8_ref(const std::uint8_t* src, std::uint8_t* dst, std::int64_t rows, std::int64_t cols) {
  transpose_elements(src, dst, rows, cols, 0, rows, 0, cols);
}

}  // namespace shiftq::kernels
