// The implicit-GEMM forward of the channels-last int8 convolution (ConvForwardU8S8 on CPUs with
// AVX-512 VNNI). Compiled with -mavx512vnni; only called after cpuid says the CPU has it.
//
// The input rows a block of output pixels reads are first copied into a padded buffer
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

// GCC 12 reports the _mm512_undefined_ps() inside its own intrinsics as maybe uninitialized.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
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

std::int64_t implicit_conv_workspace_bytes(const Conv2dGeometry& g, std::int64_t rows) {
  const std::int64_t ow = g.out_w(), row_bytes = (g.width + 2 * g.pad_w) * g.channels;
  const std::int64_t input_rows = ((rows + ow - 1) / ow + 1) * g.stride_h + g.kernel_h;
  return input_rows * row_bytes + kSlack;
}

void implicit_conv_forward(const Conv2dGeometry& g, const ImplicitConvWeight& w, const std::uint8_t* x,
                           std::uint8_t pad, std::int64_t p0, std::int64_t p1, const ScaleEpilogue& e, float* out,
                           std::int64_t ldo, std::uint8_t* workspace) {
  if (p1 <= p0) return;
  const std::int64_t ow = g.out_w(), C = g.channels, wp = g.width + 2 * g.pad_w, row_bytes = wp * C;
  // The padded input rows of output rows p0 / ow .. (p1 - 1) / ow.
  const std::int64_t first_row = (p0 / ow) * g.stride_h;
  const std::int64_t input_rows = ((p1 - 1) / ow) * g.stride_h + g.kernel_h - first_row;
  for (std::int64_t i = 0; i < input_rows; ++i) {
    std::uint8_t* row = workspace + i * row_bytes;
    const std::int64_t iy = first_row + i - g.pad_h;
    if (iy < 0 || iy >= g.height) {
      std::memset(row, pad, static_cast<std::size_t>(row_bytes));
      continue;
    }
    std::memset(row, pad, static_cast<std::size_t>(g.pad_w * C));
    std::memcpy(row + g.pad_w * C, x + iy * g.width * C, static_cast<std::size_t>(g.width * C));
    std::memset(row + (g.pad_w + g.width) * C, pad, static_cast<std::size_t>(g.pad_w * C));
  }
  std::memset(workspace + input_rows * row_bytes, 0, kSlack);

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

}  // namespace shiftq::kernels::vnni
