// The implicit-GEMM forward and dW of the channels-last int8 convolution (ConvForwardU8S8 and
// ConvWeightGradU8S8 on CPUs with AVX-512 VNNI). Compiled with -mavx512vnni; only called after
// cpuid says the CPU has it.
//
// Forward: the input rows a block of output pixels reads are first copied into a padded buffer
// [rows][W + 2 pad_w][C] (padding = the zero code), so that every window is in bounds: kernel row ky
// of output pixel (oy, ox) is the run of KW*C bytes at ((oy*stride_h + ky - first row) * Wp +
// ox*stride_w) * C. A register tile of MR pixels x 16*NJ output channels accumulates, per kernel row
// and per 4 bytes of its run, one broadcast of the pixel's 4 bytes times the packed weight's
// 4 x 16*NJ block (vpdpbusd: u8 x s8, four products summed into each int32 lane). Runs are read in
// whole 4-byte lanes; the bytes past a run's end meet zero weights (and the buffer has 64 bytes of
// slack), so they add nothing. The tile is then scaled in registers as scale_s32_f32 does it
// (float(acc) * (row * col), then + bias; no FMA), and stored.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/conv_int_impl.hpp"
#include "kernels/conv_rows.hpp"

// GCC 12 reports the _mm512_undefined_*() pass-through operands inside its own intrinsics as
// (maybe) uninitialized.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace shiftq::kernels::vnni {
namespace {
constexpr std::int64_t kSlack = 64;

// Tile heights that keep MR * NJ accumulators, NJ weight vectors and a broadcast within 32 registers.
template <int NJ>
constexpr int tile_rows() {
  return NJ == 1 ? 16 : NJ == 2 ? 12 : NJ == 3 ? 8 : 6;
}

struct Tile {
  const std::uint8_t* base;   // the padded rows
  std::int64_t row_bytes;     // one padded input row: Wp * C
  std::int64_t kernel_h;
  const std::int64_t* a_off;  // [MR]: each pixel's window start in base
  int rows;                   // valid pixels (<= MR); the others repeat the first
};

struct Columns {
  const std::int8_t* packed;    // the weight at this chunk's first column
  std::int64_t quad_stride;     // bytes between consecutive 4-byte lanes: padded_channels * 4
  std::int64_t run_quads;
  const std::int32_t* offsets;  // [16 * NJ]
  const float* col;             // [16 * NJ] column scales
  const float* bias;            // [16 * NJ] or null
  int cols;                     // valid columns (<= 16 * NJ)
};

inline __m512i broadcast_u32(const std::uint8_t* p) {
  std::int32_t v;
  std::memcpy(&v, p, sizeof v);
  return _mm512_set1_epi32(v);
}

inline __mmask16 column_mask(int valid) { return valid >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << valid) - 1u); }

template <int NJ>
void tile_kernel(const Tile& t, const Columns& c, const float* row_scale, std::int64_t row_step, float shift,
                 float* out, std::int64_t ldo) {
  constexpr int MR = tile_rows<NJ>();
  __m512i acc[MR][NJ];
  for (int j = 0; j < NJ; ++j) {
    const __m512i offset = _mm512_loadu_si512(c.offsets + 16 * j);
    for (int r = 0; r < MR; ++r) acc[r][j] = offset;
  }
  const std::int64_t kq = c.run_quads;
  for (std::int64_t ky = 0; ky < t.kernel_h; ++ky) {
    const std::uint8_t* a = t.base + ky * t.row_bytes;
    const std::int8_t* b = c.packed + ky * kq * c.quad_stride;
    for (std::int64_t q = 0; q < kq; ++q, b += c.quad_stride) {
      __m512i bv[NJ];
      for (int j = 0; j < NJ; ++j) bv[j] = _mm512_loadu_si512(b + 64 * j);
      for (int r = 0; r < MR; ++r) {
        const __m512i av = broadcast_u32(a + t.a_off[r] + 4 * q);
        for (int j = 0; j < NJ; ++j) acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], av, bv[j]);
      }
    }
  }
  __m512 col[NJ], bias[NJ];
  __mmask16 mask[NJ];
  for (int j = 0; j < NJ; ++j) {
    mask[j] = column_mask(c.cols - 16 * j);
    col[j] = _mm512_maskz_loadu_ps(mask[j], c.col + 16 * j);
    bias[j] = c.bias ? _mm512_maskz_loadu_ps(mask[j], c.bias + 16 * j) : _mm512_setzero_ps();
  }
  for (int r = 0; r < t.rows; ++r) {
    const __m512 row = _mm512_set1_ps(row_scale[r * row_step] * shift);
    for (int j = 0; j < NJ; ++j) {
      __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(acc[r][j]), _mm512_mul_ps(row, col[j]));
      if (c.bias) v = _mm512_add_ps(v, bias[j]);
      _mm512_mask_storeu_ps(out + r * ldo + 16 * j, mask[j], v);
    }
  }
}

// Rows [p0, p1) for the columns of one chunk of up to 64 output channels.
template <int NJ>
void chunk_rows(const Conv2dGeometry& g, const std::uint8_t* base, std::int64_t row_bytes, std::int64_t first_row,
                std::int64_t p0, std::int64_t p1, const Columns& c, const ScaleEpilogue& e, float* out,
                std::int64_t ldo) {
  constexpr int MR = tile_rows<NJ>();
  const std::int64_t ow = g.out_w();
  std::int64_t a_off[MR];
  for (std::int64_t t0 = p0; t0 < p1; t0 += MR) {
    const int rows = static_cast<int>(std::min<std::int64_t>(MR, p1 - t0));
    for (int r = 0; r < MR; ++r) {
      const std::int64_t p = t0 + std::min(r, rows - 1), oy = p / ow, ox = p - oy * ow;
      a_off[r] = (oy * g.stride_h - first_row) * row_bytes + ox * g.stride_w * g.channels;
    }
    const Tile t{base, row_bytes, g.kernel_h, a_off, rows};
    tile_kernel<NJ>(t, c, e.row_scale + (t0 - p0) * e.row_step, e.row_step, e.shift, out + (t0 - p0) * ldo, ldo);
  }
}
}  // namespace

namespace {
struct PaddedRows {
  std::int64_t first, count;  // padded input rows [first, first + count) (row 0 = the first padding row)
};

// Copies the padded input rows that output pixels [p0, p1) read into dst: [count][W + 2 pad_w][C],
// the padding taps set to `pad`.
PaddedRows pad_rows(const Conv2dGeometry& g, const std::uint8_t* x, std::uint8_t pad, std::int64_t p0,
                    std::int64_t p1, std::uint8_t* dst) {
  const std::int64_t ow = g.out_w(), C = g.channels, row_bytes = (g.width + 2 * g.pad_w) * C;
  const PaddedRows rows{(p0 / ow) * g.stride_h, ((p1 - 1) / ow - p0 / ow) * g.stride_h + g.kernel_h};
  for (std::int64_t i = 0; i < rows.count; ++i) {
    std::uint8_t* row = dst + i * row_bytes;
    const std::int64_t iy = rows.first + i - g.pad_h;
    if (iy < 0 || iy >= g.height) {
      std::memset(row, pad, static_cast<std::size_t>(row_bytes));
      continue;
    }
    std::memset(row, pad, static_cast<std::size_t>(g.pad_w * C));
    std::memcpy(row + g.pad_w * C, x + iy * g.width * C, static_cast<std::size_t>(g.width * C));
    std::memset(row + (g.pad_w + g.width) * C, pad, static_cast<std::size_t>(g.pad_w * C));
  }
  return rows;
}

// The padded rows output pixels [p0, p0 + rows) of one image can read, at most.
std::int64_t max_padded_rows(const Conv2dGeometry& g, std::int64_t rows) {
  return ((rows + g.out_w() - 1) / g.out_w() + 1) * g.stride_h + g.kernel_h;
}
}  // namespace

std::int64_t implicit_conv_workspace_bytes(const Conv2dGeometry& g, std::int64_t rows) {
  return max_padded_rows(g, rows) * (g.width + 2 * g.pad_w) * g.channels + kSlack;
}

void implicit_conv_forward(const Conv2dGeometry& g, const ImplicitConvWeight& w, const std::uint8_t* x,
                           std::uint8_t pad, std::int64_t p0, std::int64_t p1, const ScaleEpilogue& e, float* out,
                           std::int64_t ldo, std::uint8_t* workspace) {
  if (p1 <= p0) return;
  const std::int64_t row_bytes = (g.width + 2 * g.pad_w) * g.channels;
  const PaddedRows rows = pad_rows(g, x, pad, p0, p1, workspace);
  std::memset(workspace + rows.count * row_bytes, 0, kSlack);
  const std::int64_t first_row = rows.first;

  // The column scales as an array (col_step 0 or > 1 expanded), in 64-column chunks.
  alignas(64) float col[64];
  for (std::int64_t c0 = 0; c0 < w.out_channels; c0 += 64) {
    const int cols = static_cast<int>(std::min<std::int64_t>(64, w.out_channels - c0));
    for (int o = 0; o < cols; ++o) col[o] = e.col_scale[(c0 + o) * e.col_step];
    const Columns c{w.packed + c0 * 4, w.padded_channels * 4, w.run_quads, w.offsets + c0, col,
                    e.bias ? e.bias + c0 : nullptr, cols};
    float* dst = out + c0;
    switch ((cols + 15) / 16) {
      case 1: chunk_rows<1>(g, workspace, row_bytes, first_row, p0, p1, c, e, dst, ldo); break;
      case 2: chunk_rows<2>(g, workspace, row_bytes, first_row, p0, p1, c, e, dst, ldo); break;
      case 3: chunk_rows<3>(g, workspace, row_bytes, first_row, p0, p1, c, e, dst, ldo); break;
      default: chunk_rows<4>(g, workspace, row_bytes, first_row, p0, p1, c, e, dst, ldo); break;
    }
  }
}

// dW^T: the block's windows are first interleaved by quads of rows into blocks of 16 patch
// columns, a: [patch / 16][quads][16][4] (column j of rows 4q..4q+3 as one int32 lane), and dY
// likewise, dyq: [quads][O rounded up to 16][4]. A register tile of MR patch columns (inside one
// block of 16) x 16*NJ output channels then accumulates, per quad, a broadcast of each column's 4
// bytes times NJ vectors of dY (vpdpbusd), as the forward's tiles do with pixels and weights; a
// block's quads (64 bytes each) stay in L1 while its tiles read them.
namespace {
constexpr std::int64_t kPatchPad = 32;  // interleaved columns past the patch: 16-byte overrun + tail block

struct WeightGradOperands {
  const std::uint8_t* a;      // [patch / 16][quads][16][4]
  const std::uint8_t* dy;     // [quads][dy_stride / 4][4]
  std::int64_t dy_stride;     // bytes per quad: O rounded up to 16, * 4
  std::int64_t quads;
  const std::int32_t* col_sum;  // [O]: the column sums of dY (x = v + 128)
  std::int64_t out_channels;
};

// 16 bytes at each of four windows -> lane l = (p0[l], p1[l], p2[l], p3[l]).
inline __m512i interleave4(const std::uint8_t* p0, const std::uint8_t* p1, const std::uint8_t* p2,
                           const std::uint8_t* p3) {
  const __m128i x0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p0));
  const __m128i x1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p1));
  const __m128i x2 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p2));
  const __m128i x3 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p3));
  const __m128i lo01 = _mm_unpacklo_epi8(x0, x1), hi01 = _mm_unpackhi_epi8(x0, x1);
  const __m128i lo23 = _mm_unpacklo_epi8(x2, x3), hi23 = _mm_unpackhi_epi8(x2, x3);
  __m512i v = _mm512_castsi128_si512(_mm_unpacklo_epi16(lo01, lo23));
  v = _mm512_inserti32x4(v, _mm_unpackhi_epi16(lo01, lo23), 1);
  v = _mm512_inserti32x4(v, _mm_unpacklo_epi16(hi01, hi23), 2);
  return _mm512_inserti32x4(v, _mm_unpackhi_epi16(hi01, hi23), 3);
}

// Tile heights of the dW kernel, one row shorter than the forward's: with the forward's 6 x 4
// tile GCC 12 keeps the dW accumulators in memory (a store after every vpdpbusd).
template <int NJ>
constexpr int weight_grad_rows() {
  return NJ == 1 ? 16 : NJ == 2 ? 10 : NJ == 3 ? 7 : 5;
}

// dwt rows [j0, j0 + rows) x columns [o0, o0 + cols) = the sums over every quad, minus 128 * col_sum;
// rows j0.. lie in one block of 16.
template <int NJ>
void weight_grad_tile(const WeightGradOperands& w, std::int64_t j0, int rows, std::int64_t o0, int cols,
                      std::int32_t* dwt) {
  constexpr int MR = weight_grad_rows<NJ>();
  const std::uint8_t* a = w.a + (j0 / 16) * w.quads * 64 + (j0 % 16) * 4;
  const std::uint8_t* dy = w.dy + o0 * 4;
  __m512i acc[MR][NJ];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NJ; ++j) acc[r][j] = _mm512_setzero_si512();
  for (std::int64_t q = 0; q < w.quads; ++q, a += 64, dy += w.dy_stride) {
    __m512i bv[NJ];
    for (int j = 0; j < NJ; ++j) bv[j] = _mm512_loadu_si512(dy + 64 * j);
    for (int r = 0; r < MR; ++r) {
      const __m512i av = broadcast_u32(a + 4 * r);
      for (int j = 0; j < NJ; ++j) acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], av, bv[j]);
    }
  }
  for (int j = 0; j < NJ; ++j) {
    const __mmask16 mask = column_mask(cols - 16 * j);
    const __m512i offset = _mm512_slli_epi32(_mm512_maskz_loadu_epi32(mask, w.col_sum + o0 + 16 * j), 7);
    for (int r = 0; r < MR; ++r)
      if (r < rows)
        _mm512_mask_storeu_epi32(dwt + (j0 + r) * w.out_channels + o0 + 16 * j, mask,
                                 _mm512_sub_epi32(acc[r][j], offset));
  }
}

template <int NJ>
void weight_grad_columns(const WeightGradOperands& w, std::int64_t patch, std::int64_t o0, int cols,
                         std::int32_t* dwt) {
  constexpr int MR = weight_grad_rows<NJ>();
  for (std::int64_t b0 = 0; b0 < patch; b0 += 16) {
    const std::int64_t b1 = std::min(patch, b0 + 16);
    for (std::int64_t j0 = b0; j0 < b1; j0 += MR)
      weight_grad_tile<NJ>(w, j0, static_cast<int>(std::min<std::int64_t>(MR, b1 - j0)), o0, cols, dwt);
  }
}

// Bytes of the padded rows of a block of `rows` rows over its image parts, at most.
std::int64_t max_block_padded_bytes(const Conv2dGeometry& g, std::int64_t rows) {
  const std::int64_t parts = rows / (g.out_h() * g.out_w()) + 2;
  const std::int64_t padded_rows = (rows / g.out_w() + 2 * parts) * g.stride_h + parts * g.kernel_h;
  return padded_rows * (g.width + 2 * g.pad_w) * g.channels + kSlack;
}
}  // namespace

std::int64_t implicit_conv_weight_grad_workspace_bytes(const Conv2dGeometry& g, std::int64_t out_channels,
                                                       std::int64_t rows) {
  const std::int64_t rows4 = (rows + 3) / 4 * 4, o16 = (out_channels + 15) / 16 * 16;
  return rows4 * 8 + o16 * 4 + rows4 * o16 + rows4 * (g.patch() + 16) + (g.patch() + kPatchPad) * 4 +
         max_block_padded_bytes(g, rows);
}

void implicit_conv_weight_grad(const Conv2dGeometry& g, std::int64_t out_channels, const std::uint8_t* x,
                               std::int64_t image_stride, std::int64_t r0, std::int64_t r1, const std::int8_t* dy,
                               std::int32_t* dwt, std::uint8_t* workspace) {
  const std::int64_t O = out_channels, o16 = (O + 15) / 16 * 16, rows = r1 - r0, rows4 = (rows + 3) / 4 * 4;
  const std::int64_t ow = g.out_w(), P = g.out_h() * ow, C = g.channels, patch = g.patch();
  const std::int64_t row_bytes = (g.width + 2 * g.pad_w) * C, run = g.kernel_w * C;
  auto* off = reinterpret_cast<std::int64_t*>(workspace);                           // [rows4]
  auto* col_sum = reinterpret_cast<std::int32_t*>(workspace + rows4 * 8);           // [o16]
  std::uint8_t* dyq = workspace + rows4 * 8 + o16 * 4;                               // [rows4 / 4][o16][4]
  std::uint8_t* a = dyq + rows4 * o16;                                   // [blocks][rows4 / 4][16][4]
  std::uint8_t* row = a + rows4 * (patch + 16);                          // one quad's columns: [patch + pad][4]
  std::uint8_t* padded = row + (patch + kPatchPad) * 4;

  // The padded rows of each image part, one after the other, and every row's window.
  std::int64_t cursor = 0;
  conv_rows::for_each_image_part(r0, r1, P, [&](std::int64_t n, std::int64_t p0, std::int64_t p1, std::int64_t row) {
    const PaddedRows part = pad_rows(g, x + n * image_stride, 0x80, p0, p1, padded + cursor);
    for (std::int64_t p = p0; p < p1; ++p) {
      const std::int64_t oy = p / ow, ox = p - oy * ow;
      off[row + p - p0] = cursor + (oy * g.stride_h - part.first) * row_bytes + ox * g.stride_w * C;
    }
    cursor += part.count * row_bytes;
  });
  std::memset(padded + cursor, 0, kSlack);
  for (std::int64_t r = rows; r < rows4; ++r) off[r] = off[rows - 1];  // their dY codes are 0

  // dY in quads of rows (zero past the rows), interleaved 16 channels at a time like the windows,
  // and its column sums (vpdpbusd with ones: the 4 rows of each lane summed). A quad that would
  // read past the block's last row or O goes through a zero-padded copy.
  alignas(64) std::int8_t tail[4][16];
  const __m512i ones = _mm512_set1_epi8(1);
  for (std::int64_t o0 = 0; o0 < o16; o0 += 16) {
    __m512i sums = _mm512_setzero_si512();
    for (std::int64_t q = 0; q < rows4 / 4; ++q) {
      const std::int8_t* src[4];
      const bool whole = 4 * q + 4 <= rows && o0 + 16 <= O;
      for (std::int64_t i = 0; i < 4; ++i) {
        const std::int64_t r = 4 * q + i;
        if (whole) {
          src[i] = dy + r * O + o0;
          continue;
        }
        std::memset(tail[i], 0, 16);
        if (r < rows) std::memcpy(tail[i], dy + r * O + o0, static_cast<std::size_t>(std::min<std::int64_t>(16, O - o0)));
        src[i] = tail[i];
      }
      const auto* u = reinterpret_cast<const std::uint8_t* const*>(src);
      const __m512i v = interleave4(u[0], u[1], u[2], u[3]);
      _mm512_storeu_si512(dyq + q * o16 * 4 + o0 * 4, v);
      sums = _mm512_dpbusd_epi32(sums, ones, v);
    }
    _mm512_storeu_si512(col_sum + o0, sums);
  }

  // The windows of each quad of rows, interleaved (16 patch columns of the four rows per vector)
  // into a row of the quad's patch columns, then moved into the blocks of 16.
  const std::int64_t quads = rows4 / 4, blocks = (patch + 15) / 16;
  for (std::int64_t q = 0; q < quads; ++q) {
    const std::uint8_t* p0 = padded + off[4 * q];
    const std::uint8_t* p1 = padded + off[4 * q + 1];
    const std::uint8_t* p2 = padded + off[4 * q + 2];
    const std::uint8_t* p3 = padded + off[4 * q + 3];
    for (std::int64_t ky = 0; ky < g.kernel_h; ++ky)
      for (std::int64_t c0 = 0; c0 < run; c0 += 16) {  // the last vector may run into the next kernel row's columns
        const std::int64_t k = ky * row_bytes + c0;
        _mm512_storeu_si512(row + (ky * run + c0) * 4, interleave4(p0 + k, p1 + k, p2 + k, p3 + k));
      }
    for (std::int64_t b = 0; b < blocks; ++b)
      _mm512_storeu_si512(a + (b * quads + q) * 64, _mm512_loadu_si512(row + b * 64));
  }

  const WeightGradOperands w{a, dyq, o16 * 4, quads, col_sum, O};
  for (std::int64_t o0 = 0; o0 < O; o0 += 64) {
    const int cols = static_cast<int>(std::min<std::int64_t>(64, O - o0));
    switch ((cols + 15) / 16) {
      case 1: weight_grad_columns<1>(w, patch, o0, cols, dwt); break;
      case 2: weight_grad_columns<2>(w, patch, o0, cols, dwt); break;
      case 3: weight_grad_columns<3>(w, patch, o0, cols, dwt); break;
      default: weight_grad_columns<4>(w, patch, o0, cols, dwt); break;
    }
  }
}

}  // namespace shiftq::kernels::vnni
