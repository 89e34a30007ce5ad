// Quantization kernels on raw row-major f32 buffers (the math is in docs/shiftquant.md).
// Each kernel works on the row range [r0, r1) so callers can split rows across threads. The
// `_ref` variants are plain scalar loops; the others are written for auto-vectorization and
// compiled for AVX-512, AVX2 and baseline x86-64 with runtime selection (cpuid).
// Both produce bit-identical results.
#pragma once

#include <cstdint>

namespace shiftq::kernels {

// A 32-bit integer hash (Wellons' lowbias32): the counter-based generator of stochastic rounding.
constexpr std::uint32_t hash32(std::uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

// Uniform in [0, 1) (24-bit resolution) for element `index` under a 64-bit key. Depends only on
// (key, index): the same element gets the same draw whatever the thread split.
constexpr float stochastic_uniform(std::uint64_t key, std::uint64_t index) {
  const std::uint32_t h = hash32(hash32(static_cast<std::uint32_t>(index) ^ static_cast<std::uint32_t>(key)) ^
                                 static_cast<std::uint32_t>(key >> 32) ^ static_cast<std::uint32_t>(index >> 32));
  return static_cast<float>(static_cast<std::int32_t>(h >> 8)) * (1.0f / 16777216.0f);
}

// col_max[c] = max(col_max[c], max_{r in [r0,r1)} |x[r,c]| * row_weight[r]) (row_weight may be
// null = 1). Returns false if a non-finite x was seen. When `negative` is given, sets *negative =
// true if some x < 0 was seen (never resets it).
bool absmax_cols_f32(const float* x, std::int64_t r0, std::int64_t r1, std::int64_t cols,
                     const float* row_weight, float* col_max, bool* negative = nullptr);
// row_max[r] = max_c |x[r,c]| * col_weight[c] for r = r0, r0 + row_step, ... below r1 (col_weight
// may be null = 1). Returns false if a non-finite x was seen. When `negative` is given, sets
// *negative = true if some x < 0 was seen (never resets it).
bool absmax_rows_f32(const float* x, std::int64_t r0, std::int64_t r1, std::int64_t cols,
                     const float* col_weight, float* row_max, bool* negative = nullptr, std::int64_t row_step = 1);

struct QuantizePackArgs {
  const float* x;          // [rows, cols]
  std::int64_t rows, cols;
  const float* row_mul;    // [rows] y = (x * row_mul[r]) * col_mul[c]
  const float* col_mul;    // [cols]
  const float* row_pack;   // [rows] v = (q * row_pack[r]) * col_pack[c]  (powers of two)
  const float* col_pack;   // [cols]
  float qmax;              // q in [-qmax, qmax]
  bool stochastic;         // q = min(floor(y + u), qmax), u = stochastic_uniform(key, element_index(r, c))
  std::uint64_t key;
  std::uint8_t xor_mask;   // 0: store v as s8; 0x80: store v + 128 as u8
  std::int8_t* out;        // [rows, cols] packed values
  // Promise that every col_mul, row_pack and col_pack entry is 1 (the pointers must still be
  // valid): kernels may skip those multiplies, which changes nothing (x * 1 == x exactly).
  bool unit_factors = false;
  // Promise that every row_mul, row_pack and col_pack entry is 1 (y = x * col_mul, v = q): the
  // same kind of shortcut for one scale per column.
  bool col_mul_only = false;
  // Added to every element's index for the stochastic draws: a caller packing a piece of a larger
  // tensor (one row's run of channels) gives the piece's first element index in that tensor, so
  // the draws do not depend on how the tensor was cut into calls.
  std::uint64_t index_base = 0;
  // 0: element (r, c) has index index_base + r * cols + c. P > 0: the rows are the pixels of
  // channels-last images of P pixels each ([N * P, C]), and element (r, c) takes the index it has
  // in the channels-first tensor [N, C, P]: index_base + ((r / P) * cols + c) * P + r % P. A
  // channels-last layer then draws what its channels-first form draws, element for element.
  std::int64_t index_plane = 0;

  // The stochastic-draw index of element (r, c).
  std::uint64_t element_index(std::int64_t r, std::int64_t c) const {
    if (index_plane == 0) return index_base + static_cast<std::uint64_t>(r * cols + c);
    return index_base + static_cast<std::uint64_t>(((r / index_plane) * cols + c) * index_plane + r % index_plane);
  }
  // The index step from one column to the next.
  std::int64_t column_stride() const { return index_plane == 0 ? 1 : index_plane; }
};
// Nearest-even: q = round(clamp(y, -qmax, qmax)); stochastic: q = min(floor(clamp(y, -qmax, qmax) + u),
// qmax): the float sum rounds up to qmax + 1 when y is at (or within a few ulps of) qmax and u is
// within 2^-18 of 1, a code outside the range that wrapped to -128 in int8 (a sign flip).
// Packs rows r0, r0 + row_step, r0 + 2 row_step, ... below r1 (row_step >= 1: the rows of one
// BatchNorm channel are C apart).
void quantize_pack_f32_s8(const QuantizePackArgs& args, std::int64_t r0, std::int64_t r1, std::int64_t row_step = 1);
void quantize_pack_f32_s8_ref(const QuantizePackArgs& args, std::int64_t r0, std::int64_t r1,
                              std::int64_t row_step = 1);

// Sums of packed s8 values v: [rows, cols] over rows [r0, r1): row_sums[r] = sum_c v[r, c] and
// col_sums[c] += sum_r v[r, c] (accumulates: callers split rows across threads and add partials).
// The compensation terms of the u8 x s8 GEMM for a weight packed once per step.
void code_sums_s8(const std::int8_t* v, std::int64_t r0, std::int64_t r1, std::int64_t cols, std::int32_t* row_sums,
                  std::int32_t* col_sums);
void code_sums_s8_ref(const std::int8_t* v, std::int64_t r0, std::int64_t r1, std::int64_t cols,
                      std::int32_t* row_sums, std::int32_t* col_sums);

// Squared rounding errors of one quantization group at two candidate steps (QuantizeParams::mse_clip):
// with y_i = x[i] * a and q(t) = round_half_even(min(qmax, max(lo, t))),
//   errors[0] = sum_i (q(y_i) - y_i)^2    (the group's exponent e)
//   errors[1] = sum_i (q(2 y_i) - 2 y_i)^2  (e + 1: half the range, the top values saturating)
// Element i is summed into lane i % 8 (multiply, then add: never fused), and the eight lanes are
// then added in order from 0, so every variant returns the same bits. x must be finite.
void shift_clip_errors_f32(const float* x, std::int64_t n, float a, float lo, float qmax, float errors[2]);
void shift_clip_errors_f32_ref(const float* x, std::int64_t n, float a, float lo, float qmax, float errors[2]);
// shift_clip_errors_f32 of every column of x: [rows, cols] at once (a channels-last sample: column
// c is one group, row i its element i) with a[c]: keep[c] and halve[c] have the bits of
// shift_clip_errors_f32 on column c gathered. lanes: scratch of max(16 * cols, rows) floats.
void shift_clip_errors_cols_f32(const float* x, std::int64_t rows, std::int64_t cols, const float* a, float lo,
                                float qmax, float* lanes, float* keep, float* halve);
void shift_clip_errors_cols_f32_ref(const float* x, std::int64_t rows, std::int64_t cols, const float* a, float lo,
                                    float qmax, float* lanes, float* keep, float* halve);
// The candidates of the MSE clipping search, in one pass over x[0, n): errors[k] = the squared error
// of quantizing x with step scale[k] (inv[k] = 1 / scale[k]) to codes clamped to [lo, qmax],
// sum (round(clamp(x * inv[k], lo, qmax)) * scale[k] - x)^2, rounding half to even, for k <
// candidates <= kMaxClipCandidates. Each candidate is summed like shift_clip_errors_f32 (lane i % 8,
// then the lanes in order), so every variant returns the same bits, whatever the number of
// candidates. x must be finite.
inline constexpr int kMaxClipCandidates = 16;
void clip_errors_f32(const float* x, std::int64_t n, const float* inv, const float* scale, int candidates, float lo,
                     float qmax, float* errors);
void clip_errors_f32_ref(const float* x, std::int64_t n, const float* inv, const float* scale, int candidates,
                         float lo, float qmax, float* errors);
// One row of block-multiplier codes (quant::QuantizeParams::row_block): x[0, n) cut into blocks of
// `block` values (the last one may be shorter). Block j, with b = max |x| over it, takes
//   m = clamp(ceil(b / (unit * qmax)), 1, top),
// or with candidates > 1 the one of m, m - 1, ..., m - candidates + 1 (>= 1) whose squared error
// sum_i (round_half_even(clamp(x_i * inv, -qmax, qmax)) * step - x_i)^2, step = unit * m',
// inv = 1 / step, is least (ties: the larger m). Each candidate's sum is clip_errors_f32's (lane
// i % 8, then the lanes in order). Codes: v = round_half_even(clamp(x_i * inv, -qmax, qmax)) * m,
// stored as (v ^ xor_mask) in s8 (0x80: u8 = v + 128); m_out[j] = m. x must be finite. Throws
// ValueError unless block >= 1, unit is a normal finite float (>= FLT_MIN: 1 / unit is finite),
// top * qmax <= 127 and candidates is in [1, kMaxBlockCandidates].
inline constexpr int kMaxBlockCandidates = 4;
void quantize_row_blocks_f32(const float* x, std::int64_t n, std::int64_t block, float unit, float qmax, int top,
                             int candidates, std::uint8_t xor_mask, std::int8_t* out, std::uint8_t* m_out);
void quantize_row_blocks_f32_ref(const float* x, std::int64_t n, std::int64_t block, float unit, float qmax, int top,
                                 int candidates, std::uint8_t xor_mask, std::int8_t* out, std::uint8_t* m_out);

// The instruction set the dispatched kernels use here: "avx512", "avx2" or "x86-64".
const char* quantize_isa_name();

}  // namespace shiftq::kernels
