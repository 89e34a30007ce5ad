// Integer GEMMs for AVX2 CPUs without int8 dot products (AVX-512 VNNI / AVX-VNNI): exact int16
// multiply-adds. oneDNN's non-VNNI int8 kernels multiply u8 x s8 pairs with vpmaddubsw, whose int16
// sums saturate (255 * 127 * 2 > 32767), so they cannot serve codes that use the whole int8 range.
// Here both operands are widened to int16 while they are packed, and vpmaddwd multiplies pairs of
// k values into exact int32 sums (|a0 b0 + a1 b1| <= 2 * 255 * 128): the result equals the
// reference loops bit for bit whenever the int32 accumulation cannot overflow (K <= kMaxGemm*).
//
// Layout (GotoBLAS-style, one level of blocking):
//   - K is cut into blocks of kc values (kp = kc/2 pairs, padded with a zero partner);
//   - op(B)[k-block, :] is packed into panels of 8 columns: panel[kk][j] = int16 pair
//     (b(2kk, j), b(2kk+1, j)) as one int32 (shared by the threads, read from L2);
//   - op(A) is packed 8 rows at a time the same way: tile[kk][i] = (a(i, 2kk), a(i, 2kk+1));
//   - the 4x16 micro-kernel keeps eight int32 accumulators (4 rows x 2 panels of C): per pair kk,
//     two panel loads, and per row a broadcast of the A pair, two vpmaddwd and two adds.
// Threads take 8-row tiles of C (static chunks); inside an OpenMP region (the quantized
// convolution's per-sample blocks) everything runs on the calling thread.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "detail/parallel.hpp"
#include "shiftq/kernels/gemm_int.hpp"

namespace shiftq::kernels {
namespace {
constexpr std::int64_t kTile = 8;  // rows of an A tile = columns of a B panel = int32 lanes

// The k-block: the packed B block (kc * N * 2 bytes) should stay in L2 while every A tile reads it.
std::int64_t k_block(std::int64_t K, std::int64_t N) {
  constexpr std::int64_t kPackedBBytes = 256 * 1024;
  const std::int64_t kc = std::clamp<std::int64_t>(kPackedBBytes / (2 * std::max<std::int64_t>(N, 1)), 64, 512);
  return std::min(K, kc & ~std::int64_t{15});
}

// 16 bytes widened to 16 int16 (zero- or sign-extended).
template <class T>
__m256i widen16(const T* p) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  if constexpr (std::is_same_v<T, std::uint8_t>)
    return _mm256_cvtepu8_epi16(v);
  else
    return _mm256_cvtepi8_epi16(v);
}
// 8 bytes widened to 8 int16.
template <class T>
__m128i widen8(const T* p) {
  const __m128i v = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  if constexpr (std::is_same_v<T, std::uint8_t>)
    return _mm_cvtepu8_epi16(v);
  else
    return _mm_cvtepi8_epi16(v);
}

std::int32_t pair(std::int32_t lo, std::int32_t hi) {
  return static_cast<std::int32_t>((static_cast<std::uint32_t>(static_cast<std::uint16_t>(hi)) << 16) |
                                   static_cast<std::uint16_t>(lo));
}

// r[i] (8 int32 each, row i) -> r[j] = column j.
void transpose8x8_epi32(__m256i r[8]) {
  __m256i t[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  __m256i u[8];
  for (int h = 0; h < 2; ++h)
    for (int i = 0; i < 2; ++i) {
      u[4 * h + i] = _mm256_unpacklo_epi64(t[4 * h + i], t[4 * h + i + 2]);
      u[4 * h + i + 2] = _mm256_unpackhi_epi64(t[4 * h + i], t[4 * h + i + 2]);
    }
  // u[0]: rows 0,1 x cols {0,1}|{4,5}... after the 128-bit lane swap: row j of the result.
  const int order[4] = {0, 2, 1, 3};  // u index for output columns 0,1,2,3 of each half
  for (int j = 0; j < 4; ++j) {
    r[j] = _mm256_permute2x128_si256(u[order[j]], u[4 + order[j]], 0x20);
    r[j + 4] = _mm256_permute2x128_si256(u[order[j]], u[4 + order[j]], 0x31);
  }
}

// Packs `lines` (<= 8) lines l0.. of a matrix over k in [k0, k0 + kc) into out[kp][8] int32 pairs
// (zero beyond the lines and beyond kc). x(l, k) = src[l * ld + k] when k_contiguous, else
// src[k * ld + l].
template <class T>
void pack_lines(const T* src, std::int64_t ld, bool k_contiguous, std::int64_t l0, std::int64_t lines,
                std::int64_t k0, std::int64_t kc, std::int32_t* out) {
  const std::int64_t kp = (kc + 1) / 2;
  std::int64_t kk = 0;
  if (lines == kTile && k_contiguous) {
    // 8 pairs of each line per step, then an 8x8 transpose: [line][pair] -> [pair][line].
    for (; 2 * kk + 16 <= kc; kk += 8) {
      __m256i r[8];
      for (int l = 0; l < 8; ++l) r[l] = widen16(src + (l0 + l) * ld + k0 + 2 * kk);
      transpose8x8_epi32(r);
      for (int j = 0; j < 8; ++j) _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + (kk + j) * kTile), r[j]);
    }
  } else if (lines == kTile) {
    // rows k and k + 1 hold the 8 lines contiguously: widen both and interleave.
    for (; 2 * kk + 2 <= kc; ++kk) {
      const __m128i a = widen8(src + (k0 + 2 * kk) * ld + l0), b = widen8(src + (k0 + 2 * kk + 1) * ld + l0);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + kk * kTile), _mm_unpacklo_epi16(a, b));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + kk * kTile + 4), _mm_unpackhi_epi16(a, b));
    }
  }
  const auto at = [&](std::int64_t l, std::int64_t k) -> std::int32_t {
    if (l >= lines || k >= kc) return 0;
    return k_contiguous ? src[(l0 + l) * ld + k0 + k] : src[(k0 + k) * ld + l0 + l];
  };
  for (; kk < kp; ++kk)
    for (std::int64_t l = 0; l < kTile; ++l) out[kk * kTile + l] = pair(at(l, 2 * kk), at(l, 2 * kk + 1));
}

// C block [rows, cols] (rows <= 4, cols <= 8 * NP) = or += rows 0..3 of an A tile (a: the tile
// plus the block's first row; pairs kk*8 apart) . NP consecutive B panels (+ co on the first
// k-block). 4 x NP accumulators; per pair kk: NP panel loads, 4 broadcasts, 4 * NP vpmaddwd. NP = 2
// (8 accumulators); at NP = 3 (12 of the 16 ymm registers) GCC 12 spills accumulators to the stack
// and the kernel ran 1.4x slower (bench_gemm, 1024^3, Zen 3).
template <int NP>
void micro_kernel(const std::int32_t* a, const std::int32_t* b, std::int64_t panel_stride, std::int64_t kp,
                  std::int32_t* c, std::int64_t ldc, std::int64_t rows, std::int64_t cols, bool accumulate,
                  const std::int32_t* co) {
  constexpr int MR = 4;
  __m256i acc[MR][NP];
  for (auto& row : acc)
    for (auto& v : row) v = _mm256_setzero_si256();
  for (std::int64_t kk = 0; kk < kp; ++kk) {
    __m256i bv[NP];
    for (int j = 0; j < NP; ++j)
      bv[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + j * panel_stride + kk * kTile));
    const std::int32_t* ak = a + kk * kTile;
    for (int i = 0; i < MR; ++i) {
      const __m256i av = _mm256_set1_epi32(ak[i]);
      for (int j = 0; j < NP; ++j) acc[i][j] = _mm256_add_epi32(acc[i][j], _mm256_madd_epi16(av, bv[j]));
    }
  }
  if (rows == MR && cols == NP * kTile) {
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NP; ++j) {
        __m256i* dst = reinterpret_cast<__m256i*>(c + i * ldc + j * kTile);
        const __m256i base = accumulate ? _mm256_loadu_si256(dst)
                             : co       ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(co + j * kTile))
                                        : _mm256_setzero_si256();
        _mm256_storeu_si256(dst, _mm256_add_epi32(base, acc[i][j]));
      }
    return;
  }
  alignas(32) std::int32_t block[MR][NP * kTile];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NP; ++j) _mm256_store_si256(reinterpret_cast<__m256i*>(&block[i][j * kTile]), acc[i][j]);
  for (std::int64_t i = 0; i < rows; ++i)
    for (std::int64_t j = 0; j < cols; ++j)
      c[i * ldc + j] = (accumulate ? c[i * ldc + j] : (co ? co[j] : 0)) + block[i][j];
}

// C rows [m0, m0 + rows) (rows <= 8, the packed tile pa) over every column: 4-row halves of the
// tile times pairs of panels (the last one alone when their count is odd).
void tile_times_panels(const std::int32_t* pa, const std::int32_t* pb, std::int64_t kp, std::int64_t N,
                       std::int32_t* c, std::int64_t ldc, std::int64_t rows, bool accumulate, const std::int32_t* co) {
  const std::int64_t panels = (N + kTile - 1) / kTile, panel_stride = kp * kTile;
  for (std::int64_t h = 0; h < rows; h += 4) {
    const std::int64_t half_rows = std::min<std::int64_t>(4, rows - h);
    for (std::int64_t p = 0; p < panels; p += 2) {
      const std::int64_t n0 = p * kTile, cols = std::min(2 * kTile, N - n0);
      const std::int32_t* bp = pb + p * panel_stride;
      std::int32_t* cp = c + h * ldc + n0;
      const std::int32_t* cop = co ? co + n0 : nullptr;
      switch (std::min<std::int64_t>(2, panels - p)) {
        case 2: micro_kernel<2>(pa + h, bp, panel_stride, kp, cp, ldc, half_rows, cols, accumulate, cop); break;
        default: micro_kernel<1>(pa + h, bp, panel_stride, kp, cp, ldc, half_rows, cols, accumulate, cop); break;
      }
    }
  }
}

template <class TA>
void gemm_avx2(Trans ta, Trans tb, std::int64_t M, std::int64_t N, std::int64_t K, const TA* A, std::int64_t lda,
               const std::int8_t* B, std::int64_t ldb, std::int32_t* C, std::int64_t ldc, const std::int32_t* co) {
  if (M <= 0 || N <= 0) return;
  if (K == 0) {
    for (std::int64_t m = 0; m < M; ++m)
      for (std::int64_t n = 0; n < N; ++n) C[m * ldc + n] = co ? co[n] : 0;
    return;
  }
  const std::int64_t kc_max = k_block(K, N), panels = (N + kTile - 1) / kTile, tiles = (M + kTile - 1) / kTile;
  thread_local std::vector<std::int32_t> packed_b;  // the calling thread's; read by all in the region
  packed_b.resize(static_cast<std::size_t>(panels * ((kc_max + 1) / 2) * kTile));
  std::int32_t* pb = packed_b.data();
  for (std::int64_t k0 = 0; k0 < K; k0 += kc_max) {
    const std::int64_t kc = std::min(kc_max, K - k0), kp = (kc + 1) / 2;
    // op(B)[k, n] = B[k * ldb + n] (N) or B[n * ldb + k] (T): lines are columns n.
    detail::parallel_for(panels, 16, [&](std::int64_t p0, std::int64_t p1) {
      for (std::int64_t p = p0; p < p1; ++p)
        pack_lines(B, ldb, tb == Trans::T, p * kTile, std::min(kTile, N - p * kTile), k0, kc, pb + p * kp * kTile);
    });
    const bool accumulate = k0 > 0;
    detail::parallel_for(tiles, 4, [&](std::int64_t t0, std::int64_t t1) {
      thread_local std::vector<std::int32_t> packed_a;
      packed_a.resize(static_cast<std::size_t>(kp * kTile));
      std::int32_t* pa = packed_a.data();
      for (std::int64_t t = t0; t < t1; ++t) {
        const std::int64_t m0 = t * kTile, rows = std::min(kTile, M - m0);
        // op(A)[m, k] = A[m * lda + k] (N) or A[k * lda + m] (T): lines are rows m.
        pack_lines(A, lda, ta == Trans::N, m0, rows, k0, kc, pa);
        tile_times_panels(pa, pb, kp, N, C + m0 * ldc, ldc, rows, accumulate, co);
      }
    });
  }
}
}  // namespace

void gemm_s8s8s32_avx2(Trans ta, Trans tb, std::int64_t M, std::int64_t N, std::int64_t K, const std::int8_t* A,
                       std::int64_t lda, const std::int8_t* B, std::int64_t ldb, std::int32_t* C, std::int64_t ldc) {
  gemm_avx2(ta, tb, M, N, K, A, lda, B, ldb, C, ldc, nullptr);
}

void gemm_u8s8s32_avx2(Trans ta, Trans tb, std::int64_t M, std::int64_t N, std::int64_t K, const std::uint8_t* A,
                       std::int64_t lda, const std::int8_t* B, std::int64_t ldb, std::int32_t* C, std::int64_t ldc,
                       const std::int32_t* col_offset) {
  gemm_avx2(ta, tb, M, N, K, A, lda, B, ldb, C, ldc, col_offset);
}

}  // namespace shiftq::kernels
