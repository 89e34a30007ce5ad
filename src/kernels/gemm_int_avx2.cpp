// Integer GEMMs for AVX2 CPUs without int8 dot products (AVX-512 VNNI / AVX-VNNI). oneDNN's non-VNNI
// int8 kernels multiply u8 x s8 pairs with vpmaddubsw, whose int16 sums saturate (255 * 127 * 2 >
// 32767), so they cannot serve codes that use the whole int8 range. Two exact paths instead, chosen
// per call from the operands' value ranges (a scan of both, ~1/N and ~1/M of the multiply-adds):
//   - int16 pairs (any values): both operands are widened to int16 while they are packed, and
//     vpmaddwd multiplies pairs of k values into exact int32 sums (|a0 b0 + a1 b1| <= 2 * 255 * 128);
//   - int8 quads (narrow values, e.g. 4-bit activation codes against ShiftQuant weights or
//     gradients): op(A) is shifted to a' = a - min(a) >= 0 and packed as u8, op(B) stays s8, and
//     vpmaddubsw multiplies 32 pairs per instruction. DU of its int16 results are summed with
//     vpaddw before one vpmaddwd by ones widens them to int32; avx2_byte_path_depth() picks DU so
//     that neither the pairs nor their DU-fold sums can leave int16 (DU * 2 * span(a) * max|b| <=
//     32767), which makes every step exact. The shift comes back as min(a) * column sums of op(B),
//     added with the column offsets; int32 sums wrap (vpaddd), and the result is exact whenever
//     it fits int32 (guaranteed for K <= kMaxGemm* while |a|, |b| <= 127).
// The result equals the reference loops bit for bit on either path.
//
// Layout (GotoBLAS-style, one level of blocking), "lane" = one int32 of packed k values (a pair of
// int16 or a quad of bytes):
//   - K is cut into blocks of kc values (padded with zeros to whole lanes, and for the quads to a
//     multiple of DU lanes);
//   - op(B)[k-block, :] is packed into panels of 8 columns: panel[lane][j] (shared by the threads,
//     read from L2);
//   - op(A) is packed 8 rows at a time the same way: tile[lane][i];
//   - the micro-kernels compute 4 rows x 8 * NP columns of C with 4 * NP int32 accumulators: per
//     lane, NP panel loads and per row a broadcast of the A lane.
// Threads take 8-row tiles of C (static chunks); inside an OpenMP region (the quantized
// convolution's per-sample blocks) everything runs on the calling thread.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "core/parallel_for.hpp"
#include "kernels/gemm_impl.hpp"

namespace shiftq::kernels {
namespace {
constexpr std::int64_t kTile = 8;  // rows of an A tile = columns of a B panel = int32 lanes

// The k-block: the packed B block (kc * N * bytes_per_value) should stay in L2 while every A tile
// reads it; an A tile (kc * 8 * bytes_per_value, at most 8 KiB) stays in L1.
std::int64_t k_block(std::int64_t K, std::int64_t N, std::int64_t bytes_per_value) {
  constexpr std::int64_t kPackedBBytes = 256 * 1024;
  const std::int64_t kc = std::clamp<std::int64_t>(kPackedBBytes / (bytes_per_value * std::max<std::int64_t>(N, 1)),
                                                   128 / bytes_per_value, 1024 / bytes_per_value);
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

// Packs `lines` (<= 8) lines l0.. of a matrix over k in [k0, k0 + kc) into out[lanes][8] int32
// pairs of int16 (zero beyond the lines and beyond kc). x(l, k) = src[l * ld + k] when
// k_contiguous, else src[k * ld + l].
template <class T>
void pack_pairs(const T* src, std::int64_t ld, bool k_contiguous, std::int64_t l0, std::int64_t lines,
                std::int64_t k0, std::int64_t kc, std::int64_t lanes, std::int32_t* out) {
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
  for (; kk < lanes; ++kk)
    for (std::int64_t l = 0; l < kTile; ++l) out[kk * kTile + l] = pair(at(l, 2 * kk), at(l, 2 * kk + 1));
}

// As pack_pairs, into quads of bytes x(l, k) - base (mod 256: the caller's base makes them the
// u8 values a - min(a), or 0 for op(B)'s s8 values kept as they are); zero beyond the lines and kc.
template <class T>
void pack_quads(const T* src, std::int64_t ld, bool k_contiguous, std::int64_t l0, std::int64_t lines,
                std::int64_t k0, std::int64_t kc, std::int64_t lanes, int base, std::int32_t* out) {
  std::int64_t kq = 0;
  if (lines == kTile && k_contiguous) {
    // 8 quads of each line per step, then an 8x8 transpose: [line][quad] -> [quad][line].
    const __m256i shift = _mm256_set1_epi8(static_cast<char>(base));
    for (; 4 * kq + 32 <= kc; kq += 8) {
      __m256i r[8];
      for (int l = 0; l < 8; ++l)
        r[l] = _mm256_sub_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + (l0 + l) * ld + k0 + 4 * kq)),
                               shift);
      transpose8x8_epi32(r);
      for (int j = 0; j < 8; ++j) _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + (kq + j) * kTile), r[j]);
    }
  } else if (lines == kTile) {
    // rows k .. k + 3 hold the 8 lines contiguously: interleave bytes, then byte pairs.
    const __m128i shift = _mm_set1_epi8(static_cast<char>(base));
    const auto row = [&](std::int64_t k) { return _mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + k * ld + l0)); };
    for (; 4 * kq + 4 <= kc; ++kq) {
      const std::int64_t k = k0 + 4 * kq;
      const __m128i x01 = _mm_unpacklo_epi8(row(k), row(k + 1)), x23 = _mm_unpacklo_epi8(row(k + 2), row(k + 3));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + kq * kTile), _mm_sub_epi8(_mm_unpacklo_epi16(x01, x23), shift));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + kq * kTile + 4),
                       _mm_sub_epi8(_mm_unpackhi_epi16(x01, x23), shift));
    }
  }
  const auto at = [&](std::int64_t l, std::int64_t k) -> std::uint32_t {
    if (l >= lines || k >= kc) return 0;
    const int x = k_contiguous ? src[(l0 + l) * ld + k0 + k] : src[(k0 + k) * ld + l0 + l];
    return static_cast<std::uint8_t>(x - base);
  };
  for (; kq < lanes; ++kq)
    for (std::int64_t l = 0; l < kTile; ++l) {
      const std::uint32_t quad = at(l, 4 * kq) | at(l, 4 * kq + 1) << 8 | at(l, 4 * kq + 2) << 16 | at(l, 4 * kq + 3) << 24;
      out[kq * kTile + l] = static_cast<std::int32_t>(quad);
    }
}

// C block [rows, cols] (rows <= 4, cols <= 8 * NP) = acc, or += acc (accumulate), or = co + acc
// (co given, first k-block). The additions wrap, as vpaddd does.
template <int NP>
void store_block(const __m256i (&acc)[4][NP], std::int32_t* c, std::int64_t ldc, std::int64_t rows, std::int64_t cols,
                 bool accumulate, const std::int32_t* co) {
  if (rows == 4 && cols == NP * kTile) {
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < NP; ++j) {
        __m256i* dst = reinterpret_cast<__m256i*>(c + i * ldc + j * kTile);
        const __m256i base = accumulate ? _mm256_loadu_si256(dst)
                             : co       ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(co + j * kTile))
                                        : _mm256_setzero_si256();
        _mm256_storeu_si256(dst, _mm256_add_epi32(base, acc[i][j]));
      }
    return;
  }
  alignas(32) std::int32_t block[4][NP * kTile];
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < NP; ++j) _mm256_store_si256(reinterpret_cast<__m256i*>(&block[i][j * kTile]), acc[i][j]);
  for (std::int64_t i = 0; i < rows; ++i)
    for (std::int64_t j = 0; j < cols; ++j) {
      const std::int32_t base = accumulate ? c[i * ldc + j] : (co ? co[j] : 0);
      c[i * ldc + j] = static_cast<std::int32_t>(static_cast<std::uint32_t>(base) + static_cast<std::uint32_t>(block[i][j]));
    }
}

// The int16 path. Micro-kernel: C block = rows 0..3 of an A tile (a: the tile plus the block's
// first row; lanes 8 apart) . NP consecutive B panels. Per pair: NP panel loads, 4 broadcasts,
// 4 * NP vpmaddwd. NP = 2 (8 accumulators); at NP = 3 (12 of the 16 ymm registers) GCC 12 spills
// accumulators to the stack and the kernel ran 1.4x slower (bench_gemm, 1024^3, on an AVX2-only CPU).
struct Int16Pairs {
  static constexpr std::int64_t kValuesPerLane = 2, kLaneMultiple = 1, kPanels = 2;

  template <class T>
  static void pack(const T* src, std::int64_t ld, bool k_contiguous, std::int64_t l0, std::int64_t lines,
                   std::int64_t k0, std::int64_t kc, std::int64_t lanes, int /*base: always 0*/, std::int32_t* out) {
    pack_pairs(src, ld, k_contiguous, l0, lines, k0, kc, lanes, out);
  }

  template <int NP>
  static void micro_kernel(const std::int32_t* a, const std::int32_t* b, std::int64_t panel_stride, std::int64_t lanes,
                           std::int32_t* c, std::int64_t ldc, std::int64_t rows, std::int64_t cols, bool accumulate,
                           const std::int32_t* co) {
    __m256i acc[4][NP];
    for (auto& row : acc)
      for (auto& v : row) v = _mm256_setzero_si256();
    for (std::int64_t kk = 0; kk < lanes; ++kk) {
      __m256i bv[NP];
      for (int j = 0; j < NP; ++j)
        bv[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + j * panel_stride + kk * kTile));
      const std::int32_t* ak = a + kk * kTile;
      for (int i = 0; i < 4; ++i) {
        const __m256i av = _mm256_set1_epi32(ak[i]);
        for (int j = 0; j < NP; ++j) acc[i][j] = _mm256_add_epi32(acc[i][j], _mm256_madd_epi16(av, bv[j]));
      }
    }
    store_block<NP>(acc, c, ldc, rows, cols, accumulate, co);
  }
};

// The int8 path. Micro-kernel as above, DU lanes (4 * DU values of k) per step: per row and
// panel, DU vpmaddubsw summed with vpaddw, one vpmaddwd by ones, one vpaddd. DU = 4 with NP = 1
// (4 accumulators, 4 panel registers) and DU = 2 with NP = 2 (8 and 4) fit the 16 ymm registers.
template <int DU>
struct Int8Quads {
  static constexpr std::int64_t kValuesPerLane = 4, kLaneMultiple = DU, kPanels = DU == 4 ? 1 : 2;

  template <class T>
  static void pack(const T* src, std::int64_t ld, bool k_contiguous, std::int64_t l0, std::int64_t lines,
                   std::int64_t k0, std::int64_t kc, std::int64_t lanes, int base, std::int32_t* out) {
    pack_quads(src, ld, k_contiguous, l0, lines, k0, kc, lanes, base, out);
  }

  template <int NP>
  static void micro_kernel(const std::int32_t* a, const std::int32_t* b, std::int64_t panel_stride, std::int64_t lanes,
                           std::int32_t* c, std::int64_t ldc, std::int64_t rows, std::int64_t cols, bool accumulate,
                           const std::int32_t* co) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc[4][NP];
    for (auto& row : acc)
      for (auto& v : row) v = _mm256_setzero_si256();
    for (std::int64_t kq = 0; kq < lanes; kq += DU) {
      __m256i bv[DU][NP];
      for (int u = 0; u < DU; ++u)
        for (int j = 0; j < NP; ++j)
          bv[u][j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + j * panel_stride + (kq + u) * kTile));
      const std::int32_t* ak = a + kq * kTile;
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < NP; ++j) {
          __m256i sum16 = _mm256_maddubs_epi16(_mm256_set1_epi32(ak[i]), bv[0][j]);
          for (int u = 1; u < DU; ++u)
            sum16 = _mm256_add_epi16(sum16, _mm256_maddubs_epi16(_mm256_set1_epi32(ak[u * kTile + i]), bv[u][j]));
          acc[i][j] = _mm256_add_epi32(acc[i][j], _mm256_madd_epi16(sum16, ones));
        }
    }
    store_block<NP>(acc, c, ldc, rows, cols, accumulate, co);
  }
};

// C rows [m0, m0 + rows) (rows <= 8, the packed tile pa) over every column: 4-row halves of the
// tile times groups of Path::kPanels panels (the last ones one at a time).
template <class Path>
void tile_times_panels(const std::int32_t* pa, const std::int32_t* pb, std::int64_t lanes, std::int64_t N,
                       std::int32_t* c, std::int64_t ldc, std::int64_t rows, bool accumulate, const std::int32_t* co) {
  constexpr std::int64_t NP = Path::kPanels;
  const std::int64_t panels = (N + kTile - 1) / kTile, panel_stride = lanes * kTile;
  for (std::int64_t h = 0; h < rows; h += 4) {
    const std::int64_t half_rows = std::min<std::int64_t>(4, rows - h);
    for (std::int64_t p = 0; p < panels;) {
      const std::int64_t group = panels - p >= NP ? NP : 1;
      const std::int64_t n0 = p * kTile, cols = std::min(group * kTile, N - n0);
      const std::int32_t* bp = pb + p * panel_stride;
      std::int32_t* cp = c + h * ldc + n0;
      const std::int32_t* cop = co ? co + n0 : nullptr;
      if (group == NP)
        Path::template micro_kernel<NP>(pa + h, bp, panel_stride, lanes, cp, ldc, half_rows, cols, accumulate, cop);
      else
        Path::template micro_kernel<1>(pa + h, bp, panel_stride, lanes, cp, ldc, half_rows, cols, accumulate, cop);
      p += group;
    }
  }
}

// C = op(A - a_base) . op(B) (+ co) on the packed path `Path`.
template <class Path, class TA>
void gemm_blocked(Trans ta, Trans tb, std::int64_t M, std::int64_t N, std::int64_t K, const TA* A, std::int64_t lda,
                  int a_base, const std::int8_t* B, std::int64_t ldb, std::int32_t* C, std::int64_t ldc,
                  const std::int32_t* co) {
  const std::int64_t kc_max = k_block(K, N, 4 / Path::kValuesPerLane),  // a lane is 4 bytes
                     panels = (N + kTile - 1) / kTile,
                     tiles = (M + kTile - 1) / kTile;
  const auto lanes_of = [](std::int64_t kc) {
    const std::int64_t lanes = (kc + Path::kValuesPerLane - 1) / Path::kValuesPerLane;
    return (lanes + Path::kLaneMultiple - 1) / Path::kLaneMultiple * Path::kLaneMultiple;
  };
  thread_local std::vector<std::int32_t> packed_b;  // the calling thread's; read by all in the region
  packed_b.resize(static_cast<std::size_t>(panels * lanes_of(kc_max) * kTile));
  std::int32_t* pb = packed_b.data();
  for (std::int64_t k0 = 0; k0 < K; k0 += kc_max) {
    const std::int64_t kc = std::min(kc_max, K - k0), lanes = lanes_of(kc);
    // op(B)[k, n] = B[k * ldb + n] (N) or B[n * ldb + k] (T): lines are columns n.
    detail::parallel_for(panels, 16, [&](std::int64_t p0, std::int64_t p1) {
      for (std::int64_t p = p0; p < p1; ++p)
        Path::pack(B, ldb, tb == Trans::T, p * kTile, std::min(kTile, N - p * kTile), k0, kc, lanes, 0,
                   pb + p * lanes * kTile);
    });
    const bool accumulate = k0 > 0;
    detail::parallel_for(tiles, 4, [&](std::int64_t t0, std::int64_t t1) {
      thread_local std::vector<std::int32_t> packed_a;
      packed_a.resize(static_cast<std::size_t>(lanes * kTile));
      std::int32_t* pa = packed_a.data();
      for (std::int64_t t = t0; t < t1; ++t) {
        const std::int64_t m0 = t * kTile, rows = std::min(kTile, M - m0);
        // op(A)[m, k] = A[m * lda + k] (N) or A[k * lda + m] (T): lines are rows m.
        Path::pack(A, lda, ta == Trans::N, m0, rows, k0, kc, lanes, a_base, pa);
        tile_times_panels<Path>(pa, pb, lanes, N, C + m0 * ldc, ldc, rows, accumulate, co);
      }
    });
  }
}

// The smallest and largest value of a [lines, len] block with leading dimension ld. Contiguous
// lines are scanned as one run. The scan may stop early, once max - min exceeds `max_span`: the
// range returned then spans more than max_span but may not be the whole block's.
struct ValueRange {
  int min, max;
};
template <class T>
ValueRange value_range(const T* p, std::int64_t lines, std::int64_t len, std::int64_t ld, int max_span = 255) {
  constexpr bool is_u8 = std::is_same_v<T, std::uint8_t>;
  constexpr std::int64_t kCheckBytes = 4096;  // how often the vector lanes are folded into [slo, shi]
  if (ld == len) {
    len *= lines;
    lines = 1;
  }
  const __m256i lo_start = _mm256_set1_epi8(static_cast<char>(is_u8 ? 0xff : 0x7f));
  const __m256i hi_start = _mm256_set1_epi8(static_cast<char>(is_u8 ? 0x00 : 0x80));
  __m256i lo = lo_start, hi = hi_start;
  int slo = is_u8 ? 255 : 127, shi = is_u8 ? 0 : -128;
  const auto fold = [&] {
    alignas(32) T los[32], his[32];
    _mm256_store_si256(reinterpret_cast<__m256i*>(los), lo);
    _mm256_store_si256(reinterpret_cast<__m256i*>(his), hi);
    for (int i = 0; i < 32; ++i) {
      slo = std::min<int>(slo, los[i]);
      shi = std::max<int>(shi, his[i]);
    }
    lo = lo_start;
    hi = hi_start;
    return shi - slo > max_span;
  };
  std::int64_t since_fold = 0;
  for (std::int64_t l = 0; l < lines; ++l) {
    const T* row = p + l * ld;
    std::int64_t i = 0;
    for (; i + 32 <= len; i += 32) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + i));
      lo = is_u8 ? _mm256_min_epu8(lo, v) : _mm256_min_epi8(lo, v);
      hi = is_u8 ? _mm256_max_epu8(hi, v) : _mm256_max_epi8(hi, v);
      if ((since_fold += 32) >= kCheckBytes) {
        since_fold = 0;
        if (fold()) return {slo, shi};
      }
    }
    since_fold += len - i + 1;  // the scalar tail (all of a short line), +1 for the line itself
    for (; i < len; ++i) {
      slo = std::min<int>(slo, row[i]);
      shi = std::max<int>(shi, row[i]);
    }
    if (since_fold >= kCheckBytes) {  // short lines: fold every ~4 KiB too
      since_fold = 0;
      if (fold()) return {slo, shi};
    }
  }
  fold();
  return {slo, shi};
}

// sums[n] = sum_k op(B)[k, n] (|sum| <= K * 128: no overflow for K <= kMaxGemmKs8s8).
void column_sums(Trans tb, std::int64_t K, std::int64_t N, const std::int8_t* B, std::int64_t ldb, std::int32_t* sums) {
  if (tb == Trans::T) {  // column n is row n of B: contiguous over k
    const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
    for (std::int64_t n = 0; n < N; ++n) {
      const std::int8_t* row = B + n * ldb;
      __m256i acc = _mm256_setzero_si256();
      std::int64_t k = 0;
      for (; k + 32 <= K; k += 32) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + k));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, v), ones16));
      }
      alignas(32) std::int32_t lanes[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc);
      std::int32_t sum = 0;
      for (std::int32_t v : lanes) sum += v;
      for (; k < K; ++k) sum += row[k];
      sums[n] = sum;
    }
    return;
  }
  std::fill_n(sums, N, 0);  // rows k of B are contiguous over n
  for (std::int64_t k = 0; k < K; ++k) {
    const std::int8_t* row = B + k * ldb;
    std::int64_t n = 0;
    for (; n + 8 <= N; n += 8) {
      __m256i* dst = reinterpret_cast<__m256i*>(sums + n);
      const __m256i v = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + n)));
      _mm256_storeu_si256(dst, _mm256_add_epi32(_mm256_loadu_si256(dst), v));
    }
    for (; n < N; ++n) sums[n] += row[n];
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
  // op(B) first: its range caps the span of op(A) worth scanning for (DU >= 2), so A's scan stops
  // early where the int16 path is certain (e.g. gradients against weights).
  const ValueRange b = tb == Trans::N ? value_range(B, K, N, ldb) : value_range(B, N, K, ldb);
  const int b_absmax = std::max(-b.min, b.max);
  const int max_span = b_absmax == 0 ? 255 : std::min(255, 32767 / (4 * b_absmax));
  const ValueRange a = ta == Trans::N ? value_range(A, M, K, lda, max_span) : value_range(A, K, M, lda, max_span);
  const int depth = avx2_byte_path_depth(a.max - a.min, b_absmax);
  if (depth == 0) return gemm_blocked<Int16Pairs>(ta, tb, M, N, K, A, lda, 0, B, ldb, C, ldc, co);
  // op(A) = A' + a.min with A' >= 0: C = op(A') op(B) + (co + a.min * column sums of op(B)), mod 2^32.
  const std::int32_t* offsets = co;
  if (a.min != 0) {
    thread_local std::vector<std::int32_t> shifted;
    shifted.resize(static_cast<std::size_t>(N));
    column_sums(tb, K, N, B, ldb, shifted.data());
    for (std::int64_t n = 0; n < N; ++n) {
      const std::uint32_t base = co ? static_cast<std::uint32_t>(co[n]) : 0u;
      shifted[n] = static_cast<std::int32_t>(base + static_cast<std::uint32_t>(std::int64_t{a.min} * shifted[n]));
    }
    offsets = shifted.data();
  }
  if (depth >= 4) return gemm_blocked<Int8Quads<4>>(ta, tb, M, N, K, A, lda, a.min, B, ldb, C, ldc, offsets);
  gemm_blocked<Int8Quads<2>>(ta, tb, M, N, K, A, lda, a.min, B, ldb, C, ldc, offsets);
}
}  // namespace

int avx2_byte_path_depth(int a_span, int b_absmax) {
  const int pair_bound = 2 * a_span * b_absmax;  // |a'0 b0 + a'1 b1|, one vpmaddubsw lane
  if (pair_bound == 0) return 4;
  const int depth = 32767 / pair_bound;
  return depth >= 4 ? 4 : depth >= 2 ? 2 : 0;
}

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
