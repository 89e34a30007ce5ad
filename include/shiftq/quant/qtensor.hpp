// Quantized tensors and the quantizers of docs/shiftquant.md (per-tensor, per-row, ShiftQuant).
//
// A matrix X[R, C] is quantized along an *inner* axis (the GEMM contraction axis it will be used
// with) whose indices get power-of-two group exponents e, and an *outer* axis with free float
// scales s (one per outer index, or one per tensor):
//     v = round(X * 2^e / s) << (S - e),    X^ = s * 2^-S * v,    |v| <= qmax * 2^S <= 127.
// With S = 0 this is plain per-row (or per-column) or per-tensor symmetric quantization.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "shiftq/core/tensor.hpp"

namespace shiftq::quant {

enum class Rounding : std::uint8_t { nearest_even, stochastic };

// How the outer (non-contraction) axis is scaled.
enum class OuterScale : std::uint8_t {
  per_index,   // one scale per outer index (per row when inner_axis = 1)
  per_tensor,  // one scale for the whole tensor
};

// The largest shift budget S with which b-bit codes shifted by up to S still fit one int8 operand:
// symmetric codes need (2^(b-1) - 1) 2^S <= 127, i.e. b + S <= 8; unsigned codes (the
// non-negative range) (2^b - 1) 2^S <= 127, i.e. b + S <= 7. Negative when no S fits.
constexpr int max_shift_budget(int bits, bool unsigned_range) { return (unsigned_range ? 7 : 8) - bits; }

// Key of the counter-based generator behind stochastic rounding: each element's draw depends only
// on (seed, step, tensor_id, element index), never on the thread count.
struct StochasticKey {
  std::uint64_t seed = 0;
  std::uint64_t step = 0;
  std::uint64_t tensor_id = 0;
  std::uint64_t derive() const;  // the 64-bit kernel key
};

struct QuantizeParams {
  int bits = 8;                 // b in [2, 8]
  int shift_budget = 0;         // S >= 0 with b + S <= 8 (S = 0: no power-of-two groups)
  int inner_axis = 1;           // 1: groups along columns, scales per row; 0: the transpose
  OuterScale outer = OuterScale::per_index;
  Rounding rounding = Rounding::nearest_even;
  StochasticKey key;            // used when rounding == stochastic
  // Store codes as u8 = v + 128 (the A operand of the fast u8·s8 GEMM) instead of s8 = v.
  bool unsigned_codes = false;
  // When x has no negative element, use the unsigned range v in [0, min(2^b - 1, 127)]: 2^b levels
  // where the symmetric range spends half of its 2^b - 1 on values that never occur (post-ReLU
  // activations). Taken when the range pass runs over rows (S = 0 with a per-tensor or per-column
  // scale; S > 0 with groups along rows, inner_axis = 0, and b + S <= 7 so that (2^b - 1) 2^S
  // still fits int8); otherwise, or when x has a negative element, the range stays symmetric.
  bool nonnegative_range = false;
  // Per-tensor scale with S = 0 only: clip the range to the alpha <= max |x| that minimizes the
  // quantization error sum (Q(x) - x)^2, searched over alpha = max |x| * 2^(-k/4), k = 0..8, on a
  // fixed strided sample of 16384 elements (deterministic, independent of the thread count).
  // Values beyond alpha saturate at the top code (straight-through in backward). At 4 bits the
  // finer step inside the range outweighs the clipping of the rare large values. Per-row scales
  // with S = 0 (inner_axis = 1) clip each row's range the same way, over the whole row.
  // S > 0 with a per-tensor base: the base stays max |x| (over the groups, as without clipping),
  // and each group with e < S keeps e or takes e + 1 (half its range, its largest values
  // saturating), whichever has the smaller squared error over the group (ties keep e). The pow2
  // rounding of a group's range wastes up to one bit (its top code may sit at up to 2x its max);
  // this takes that bit back where clipping costs less. Deterministic, independent of the thread
  // count; one more read of each group (from L1 for groups along rows: the pack loop makes the
  // choice for the tile of rows it is about to pack).
  bool mse_clip = false;
  // Delayed scaling (quant::RangeObserver): a per-tensor base fixed beforehand. The base range is
  // `observed_range` instead of this call's max |x| (with S > 0 the group exponents are taken
  // against it too), and the unsigned range applies iff `observed_nonnegative` (and
  // nonnegative_range allows it): the codes of an element then depend on that element alone (and,
  // with S > 0, on its group). Values beyond the range saturate at the top code. mse_clip with S = 0
  // does not clip an observed range (the observer records clipped ranges instead: see
  // QTensor::input_range). Needs a per-tensor outer scale; negative = off.
  float observed_range = -1.0f;
  bool observed_nonnegative = false;
  // Delayed scaling of the groups too (S > 0, with observed_range): the observed range of each inner
  // index replaces this call's maxima in the group exponents, so an element's code depends on its
  // own value, its group's observed range and the base. Values beyond their group's range saturate.
  // One entry per inner index, each finite and <= observed_range; must outlive the quantize() call.
  // Empty = the groups follow this call's input.
  std::span<const float> observed_group_ranges;
  // Block multipliers (> 0: the block length B): per-row scales (inner_axis 1, per-index outer)
  // whose rows are cut into blocks of B columns (the last one may be shorter), each with an integer
  // multiplier m in [1, 2^S] folded into its codes: v = q * m with q in [-qmax, qmax], so
  // X^ = s * 2^-S * v is one ordinary int8 operand, like ShiftQuant's power-of-two groups, with
  // 2^S group steps instead of S + 1. The row's scale is s = max |row| / qmax; block j takes
  // m_j = ceil(2^S max |block| / max |row|) (its largest value at the top code or just below),
  // or with mse_clip the one of m_j, m_j - 1, ..., m_j - 3 (>= 1) with the least squared error
  // over the block (ties: the larger m; its largest values may saturate). Symmetric codes,
  // nearest rounding, no observed range; needs S > 0. A row's codes depend on that row alone.
  std::int64_t row_block = 0;

  // The three quantizers of the spec.
  static QuantizeParams per_tensor(int bits);
  static QuantizeParams per_row(int bits);  // per outer index, inner_axis = 1
  static QuantizeParams shiftquant(int bits, int shift_budget, int inner_axis = 1,
                                   OuterScale outer = OuterScale::per_index);
  // Per-row scales with block multipliers (row_block = block, S = 8 - bits: 2^S multipliers).
  static QuantizeParams row_blocks(int bits, std::int64_t block);
  QuantizeParams& with_rounding(Rounding r, StochasticKey k = {}) {
    rounding = r;
    key = k;
    return *this;
  }
  QuantizeParams& with_unsigned_codes(bool on = true) {
    unsigned_codes = on;
    return *this;
  }
  QuantizeParams& with_nonnegative_range(bool on = true) {
    nonnegative_range = on;
    return *this;
  }
  QuantizeParams& with_mse_clip(bool on = true) {
    mse_clip = on;
    return *this;
  }
  QuantizeParams& with_observed_range(float range, bool nonnegative) {
    observed_range = range;
    observed_nonnegative = nonnegative;
    return *this;
  }
  QuantizeParams& with_observed_group_ranges(std::span<const float> ranges) {
    observed_group_ranges = ranges;
    return *this;
  }
  // Throws ValueError for bits outside [2, 8], S < 0, b + S > 8, inner_axis not 0/1, an observed
  // range that is not finite or comes with per-index outer scales, or block multipliers with
  // another layout, S = 0, stochastic rounding, the unsigned range or an observed range.
  void validate() const;
};

// An int8 matrix with its metadata. codes: [R, C] packed values, s8 = v or u8 = v + 128;
// scales: f32 outer scales ([R] when inner_axis = 1, [C] when inner_axis = 0, [1] per tensor);
// exponents: s8 e along the inner axis ([C] or [R]), kept for inspection (folded into v); with
// sample_groups > 0 (inner_axis 0), one per (sample, column) instead: [sample_groups * C], group
// n * C + c over rows [n * R / sample_groups, (n + 1) * R / sample_groups) of column c.
// row_sums / col_sums: optional s32 sums of v over each row ([R]) / column ([C]), precomputed by
// compute_sums() for operands reused across GEMMs (weights): they give the u8 GEMM's compensation.
// block_multipliers: with row_block > 0 (QuantizeParams::row_block), u8 m of each (row, block):
// [R, ceil(C / row_block)], kept for inspection (folded into v); no exponents then.
struct QTensor {
  Tensor codes;
  Tensor scales;
  Tensor exponents;
  Tensor row_sums;
  Tensor col_sums;
  Tensor block_multipliers;
  std::int64_t row_block = 0;
  int bits = 8;
  int shift_budget = 0;
  int inner_axis = 1;
  std::int64_t sample_groups = 0;  // samples of the per-(sample, column) exponents; 0: along the inner axis
  OuterScale outer = OuterScale::per_index;
  bool nonnegative = false;  // quantized with the unsigned range: v in [0, qmax()]
  // What the quantizer saw of its input, for an observer (per-tensor outer scales only; -1 otherwise):
  // the range this input would have been quantized with on its own (max |x|, or its MSE-clipped
  // range with mse_clip and S = 0), and whether the sign pass met a negative value (true when no
  // sign pass ran: the input is then treated as signed).
  float input_range = -1.0f;
  bool input_negative = true;

  std::int64_t rows() const { return codes.size(0); }
  std::int64_t cols() const { return codes.size(1); }
  // Axis the outer scales run along (0: one per row, 1: one per column), or -1 for per-tensor.
  int scale_axis() const { return outer == OuterScale::per_tensor ? -1 : 1 - inner_axis; }
  int qmax() const { return nonnegative ? std::min((1 << bits) - 1, 127) : (1 << (bits - 1)) - 1; }
  bool unsigned_codes() const { return codes.dtype() == DType::u8; }
  // The packed values v as s8 (a copy when the codes are stored as u8).
  Tensor signed_codes() const;
  // Fills row_sums and col_sums.
  QTensor& compute_sums();
  // X^[r, c] = s * 2^-S * v[r, c] (f32 [R, C]).
  Tensor dequantize() const;
};

// Quantizes x: f32 [R, C]. Throws ShapeError for a non-2-D or empty x, ValueError for invalid
// params, NumericError (naming `name` when given) if x holds NaN or Inf.
QTensor quantize(const Tensor& x, const QuantizeParams& params, const char* name = nullptr);
// The same, for a producer that already knows the inner ranges: inner_ranges[k] = max |x| over
// group k of the inner axis (a column when inner_axis = 1, a row when 0), exactly. With S > 0,
// per-index outer scales and no nonnegative_range they replace quantize's first pass over x (the
// result is bit-identical); otherwise they are not needed and the first pass runs as usual.
// Throws ShapeError if inner_ranges does not have one entry per group, ValueError if one is NaN,
// infinite or negative.
QTensor quantize(const Tensor& x, const QuantizeParams& params, std::span<const float> inner_ranges,
                 const char* name = nullptr);
// max |x| of each inner index of x: f32 [R, C] (each column when inner_axis = 1, each row when 0):
// what an observer of ShiftQuant group ranges records. Throws NumericError (naming `name`) for NaN/Inf.
std::vector<float> inner_absmax(const Tensor& x, int inner_axis, const char* name = nullptr);

}  // namespace shiftq::quant
