// Transposes: full blocks through SIMD registers, the edges element by element, in 16-row bands
// (transpose_walk::blocked). f32 is compiled per ISA (transpose_impl.inc) and dispatched here; u8
// moves 16x16 byte blocks through SSE2 registers (the x86-64 baseline).
#include "shiftq/kernels/transpose.hpp"

#include <emmintrin.h>

#include "isa.hpp"
#include "shiftq/core/error.hpp"
#include "transpose_blocked.hpp"

#define SHIFTQ_DECLARE_ISA(ns)                                                                  \
  namespace shiftq::kernels::ns {                                                               \
  void transpose_f32(const float*, std::int64_t, float*, std::int64_t, std::int64_t, std::int64_t); \
  }
SHIFTQ_DECLARE_ISA(avx512)
SHIFTQ_DECLARE_ISA(avx2)
SHIFTQ_DECLARE_ISA(base)
#undef SHIFTQ_DECLARE_ISA

namespace shiftq::kernels {
namespace {
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

void transpose_f32(const float* src, std::int64_t src_ld, float* dst, std::int64_t dst_ld, std::int64_t rows,
                   std::int64_t cols) {
  SHIFTQ_CHECK(rows >= 0 && cols >= 0 && src_ld >= cols && dst_ld >= rows, ShapeError, "transpose_f32: rows=", rows,
               " cols=", cols, " need src_ld >= cols and dst_ld >= rows, got src_ld=", src_ld, " dst_ld=", dst_ld);
  if (kernel_path() == KernelPath::reference) return transpose_walk::elements(src, src_ld, dst, dst_ld, 0, rows, 0, cols);
  SHIFTQ_ISA_DISPATCH(transpose_f32, src, src_ld, dst, dst_ld, rows, cols)
}

void transpose_f32(const float* src, float* dst, std::int64_t rows, std::int64_t cols) {
  transpose_f32(src, cols, dst, rows, rows, cols);
}

void transpose_u8(const std::uint8_t* src, std::uint8_t* dst, std::int64_t rows, std::int64_t cols) {
  if (kernel_path() == KernelPath::reference) return transpose_u8_ref(src, dst, rows, cols);
  transpose_walk::blocked<16>(src, cols, dst, rows, rows, cols, block_u8);
}

void transpose_f32_ref(const float* src, float* dst, std::int64_t rows, std::int64_t cols) {
  transpose_walk::elements(src, cols, dst, rows, 0, rows, 0, cols);
}

void transpose_u8_ref(const std::uint8_t* src, std::uint8_t* dst, std::int64_t rows, std::int64_t cols) {
  transpose_walk::elements(src, cols, dst, rows, 0, rows, 0, cols);
}

}  // namespace shiftq::kernels
