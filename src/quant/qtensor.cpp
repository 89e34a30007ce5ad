// The quantizers: three passes over x (inner ranges, outer scales, quantize + pack), each split
// over row blocks.
#include "shiftq/quant/qtensor.hpp"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <optional>
#include <vector>

#include "core/parallel_for.hpp"
#include "quant/qlayers_internal.hpp"
#include "quant/shiftmm_internal.hpp"
#include "shiftq/kernels/gemm.hpp"
#include "shiftq/kernels/quantize.hpp"
#include "shiftq/kernels/transpose.hpp"

namespace shiftq::quant {
namespace {
constexpr std::int64_t kParallelElements = 1 << 15;

std::uint64_t splitmix64(std::uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// floor(log2(m / r)) for 0 < r <= m, exactly (no rounding of the quotient).
// Normal floats compare their exponent and mantissa fields directly (what frexp would return).
int floor_log2_ratio(float m, float r) {
  const std::uint32_t bm = std::bit_cast<std::uint32_t>(m), br = std::bit_cast<std::uint32_t>(r);
  const int xm = static_cast<int>(bm >> 23), xr = static_cast<int>(br >> 23);  // sign bits are 0
  constexpr std::uint32_t kMantissa = 0x7fffff;
  if (xm != 0 && xr != 0) return xm - xr - ((bm & kMantissa) < (br & kMantissa) ? 1 : 0);
  int em = 0, er = 0;  // subnormal
  const float fm = std::frexp(m, &em), fr = std::frexp(r, &er);
  return em - er - (fm < fr ? 1 : 0);
}

// A group's exponent e = min(S, floor(log2(m / r))) for its range r under the base m (0 <= e: a
// range beyond the base saturates); S for an empty group or base.
int group_exponent(float m, float r, int S) {
  return (r == 0.0f || m == 0.0f) ? S : std::clamp(floor_log2_ratio(m, r), 0, S);
}

// 2^e for 0 <= e <= 8 (shift budgets fit int8).
float pow2(int e) {
  static constexpr float kPow2[9] = {1, 2, 4, 8, 16, 32, 64, 128, 256};
  return kPow2[e];
}

// Groups k in [k0, k1) under the base m: e_k = group_exponent(m, range[k], S) (0 <= e <= S; a
// range beyond the base gets 0 and saturates), 2^e_k and 2^(S - e_k). For a normal base and
// normal ranges floor(log2(m / r)) is the exponent fields' difference less a mantissa comparison:
// a branch-free loop the compiler vectorizes. A zero or subnormal base, and subnormal ranges, take
// group_exponent itself (the same values).
void set_group_exponents(float m, const float* range, std::int64_t k0, std::int64_t k1, int S, std::int8_t* e_out,
                         float* pow_e, float* pack) {
  auto scalar = [&](std::int64_t k) {
    const int e = group_exponent(m, range[k], S);
    e_out[k] = static_cast<std::int8_t>(e);
    pow_e[k] = pow2(e);
    pack[k] = pow2(S - e);
  };
  constexpr std::uint32_t kMagnitude = 0x7fffffff, kMantissa = 0x7fffff;
  const std::uint32_t bm = std::bit_cast<std::uint32_t>(m) & kMagnitude;
  const std::int32_t xm = static_cast<std::int32_t>(bm >> 23);
  if (xm == 0) {  // zero or subnormal base
    for (std::int64_t k = k0; k < k1; ++k) scalar(k);
    return;
  }
  const std::uint32_t mm = bm & kMantissa;
  std::int32_t subnormal = 0;
  for (std::int64_t k = k0; k < k1; ++k) {
    const std::uint32_t br = std::bit_cast<std::uint32_t>(range[k]) & kMagnitude;
    const std::int32_t xr = static_cast<std::int32_t>(br >> 23);
    std::int32_t e = std::clamp(xm - xr - ((br & kMantissa) > mm ? 1 : 0), 0, S);
    e = br == 0 ? S : e;
    subnormal |= (xr == 0) & (br != 0);
    e_out[k] = static_cast<std::int8_t>(e);
    pow_e[k] = std::bit_cast<float>(static_cast<std::uint32_t>(127 + e) << 23);
    pack[k] = std::bit_cast<float>(static_cast<std::uint32_t>(127 + S - e) << 23);
  }
  if (subnormal)
    for (std::int64_t k = k0; k < k1; ++k)
      if ((std::bit_cast<std::uint32_t>(range[k]) & kMagnitude) >> 23 == 0) scalar(k);
}

// Outer scales i in [i0, i1) from their maxima: scales[i] = max[i] / qmax (1 where max[i] = 0) and
// inv[i] = 1 / scales[i], in a loop that vectorizes (the same IEEE divisions as one by one).
void set_outer_scales(const float* __restrict max, std::int64_t i0, std::int64_t i1, float qmax,
                      float* __restrict scales, float* __restrict inv) {
  for (std::int64_t i = i0; i < i1; ++i) {
    const float sc = max[i] > 0.0f ? max[i] / qmax : 1.0f;
    scales[i] = sc;
    inv[i] = 1.0f / sc;
  }
}

// The pack kernel's arguments for x: [R, C] into q's codes: groups along p.inner_axis with factors
// 2^e (pow_e) and 2^(S - e) (pack) per inner index, one reciprocal scale (inv_scale) per outer
// index, and `ones` (at least the outer length) for the factors that are 1.
kernels::QuantizePackArgs pack_args(const QuantizeParams& p, const float* x, QTensor& q, const float* pow_e,
                                    const float* pack, const float* inv_scale, const float* ones) {
  const bool groups_on_cols = p.inner_axis == 1;
  kernels::QuantizePackArgs a{};
  a.x = x;
  a.rows = q.rows();
  a.cols = q.cols();
  a.row_mul = groups_on_cols ? inv_scale : pow_e;
  a.col_mul = groups_on_cols ? pow_e : inv_scale;
  a.row_pack = groups_on_cols ? ones : pack;
  a.col_pack = groups_on_cols ? pack : ones;
  a.qmax = static_cast<float>(q.qmax());
  a.stochastic = p.rounding == Rounding::stochastic;
  a.key = p.key.derive();
  a.xor_mask = p.unsigned_codes ? 0x80 : 0x00;
  a.out = p.unsigned_codes ? reinterpret_cast<std::int8_t*>(q.codes.data<std::uint8_t>()) : q.codes.data<std::int8_t>();
  return a;
}

// Calls fn(r0, r1) on row blocks of x, in parallel for large tensors (rows are independent).
template <class F>
void for_row_blocks(std::int64_t rows, std::int64_t cols, F fn) {
  if (rows * cols < kParallelElements) {
    fn(std::int64_t{0}, rows);
    return;
  }
  detail::parallel_for(rows, std::max<std::int64_t>(1, kParallelElements / std::max<std::int64_t>(cols, 1)), fn);
}

// max over rows of |x[r, c]| * row_weight[r], per column, with per-block partial maxima.
std::vector<float> column_absmax(const float* x, std::int64_t rows, std::int64_t cols, const float* row_weight,
                                 bool& finite) {
  const std::int64_t blocks = rows * cols < kParallelElements ? 1 : std::min<std::int64_t>(get_num_threads(), rows);
  std::vector<std::vector<float>> partial(blocks, std::vector<float>(cols, 0.0f));
  std::vector<char> ok(blocks, 1);
  detail::parallel_for(blocks, 1, [&](std::int64_t b0, std::int64_t b1) {
    for (std::int64_t b = b0; b < b1; ++b) {
      const std::int64_t r0 = rows * b / blocks, r1 = rows * (b + 1) / blocks;
      ok[b] = kernels::absmax_cols_f32(x, r0, r1, cols, row_weight, partial[b].data());
    }
  });
  finite = std::all_of(ok.begin(), ok.end(), [](char v) { return v != 0; });
  for (std::int64_t b = 1; b < blocks; ++b)
    for (std::int64_t c = 0; c < cols; ++c) partial[0][c] = std::max(partial[0][c], partial[b][c]);
  return std::move(partial[0]);
}

// Per-row max |x| * col_weight; `negative` (when given) becomes true if some x < 0.
void row_absmax(const float* x, std::int64_t rows, std::int64_t cols, const float* col_weight, bool& finite,
                bool* negative, std::vector<float>& out) {
  out.resize(static_cast<std::size_t>(rows));
  std::atomic<bool> all_finite{true}, any_negative{false};
  for_row_blocks(rows, cols, [&](std::int64_t r0, std::int64_t r1) {
    bool block_negative = false;
    if (!kernels::absmax_rows_f32(x, r0, r1, cols, col_weight, out.data(), negative ? &block_negative : nullptr))
      all_finite = false;
    if (block_negative) any_negative = true;
  });
  finite = all_finite;
  if (negative) *negative = any_negative;
}

// quantize()'s per-row and per-column temporaries, kept per thread across calls: the inner axis
// can be 10^5 long (conv gradients), and fresh vectors that size would fault in new pages each call.
struct QuantizeScratch {
  std::vector<float> ranges, pow_e, pack, inv_scale, ones_outer, row_max;
};
QuantizeScratch& quantize_scratch() {
  thread_local QuantizeScratch scratch;
  return scratch;
}

// Round half to even for |y| < 2^22 without libm (1.5 * 2^23 pushes the fraction out of the
// mantissa): loops that use it vectorize, and it equals nearbyint.
inline float round_half_even(float y) {
  constexpr float kMagic = 12582912.0f;
  return (y + kMagic) - kMagic;
}

// Among alpha = m * 2^(-k/4), k = 0..8, the one with the least squared quantization error over every
// element of `sample` (ties: the larger alpha); the candidates' errors come from one per-ISA pass
// (clip_errors_f32).
float mse_clipped_range_of(std::span<const float> sample, float m, float qmax, bool nonnegative) {
  constexpr int kCandidates = 9;
  static_assert(kCandidates <= kernels::kMaxClipCandidates);
  const float lo = nonnegative ? 0.0f : -qmax;
  float alpha[kCandidates], scale[kCandidates], inv[kCandidates], error[kCandidates];
  for (int k = 0; k < kCandidates; ++k) {
    alpha[k] = m * std::exp2(-0.25f * static_cast<float>(k));
    scale[k] = alpha[k] / qmax;
    inv[k] = 1.0f / scale[k];
  }
  kernels::clip_errors_f32(sample.data(), static_cast<std::int64_t>(sample.size()), inv, scale, kCandidates, lo, qmax,
                           error);
  int best = 0;
  for (int k = 1; k < kCandidates; ++k)
    if (error[k] < error[best]) best = k;
  return alpha[best];
}

// The clipped range of QuantizeParams::mse_clip: mse_clipped_range_of every stride-th element of x,
// stride = max(1, n / 16384) (gathered once; x itself, in place, when the stride is 1).
float mse_clipped_range(const float* x, std::int64_t n, float m, float qmax, bool nonnegative) {
  constexpr std::int64_t kSample = 16384;
  const std::int64_t stride = std::max<std::int64_t>(1, n / kSample);
  if (stride == 1) return mse_clipped_range_of({x, static_cast<std::size_t>(n)}, m, qmax, nonnegative);
  std::vector<float> sample;
  sample.reserve(static_cast<std::size_t>(std::min(n, kSample + 1)));
  for (std::int64_t i = 0; i < n; i += stride) sample.push_back(x[i]);
  return mse_clipped_range_of(sample, m, qmax, nonnegative);
}

// QuantizeParams::mse_clip with S > 0 and a per-tensor base: each group k with e_k < S keeps e_k or
// takes e_k + 1 (its range halved: its largest values saturate), whichever gives the group the
// smaller squared quantization error. With y = x * 2^e / s the errors are s^2 4^-e sum (q(y) - y)^2
// and s^2 4^-e sum (q(2y) - 2y)^2 / 4 (kernels::shift_clip_errors_f32); ties keep e_k. Each group's
// sums run in a fixed order, so the choice does not depend on the thread count.
struct ShiftClip {
  int S;
  float inv_scale, lo, qmax;
  std::int8_t* e_out;
  float* pow_e;
  float* pack;
  // Group k, given its two error sums.
  void choose(std::int64_t k, float keep, float halve) const {
    if (0.25f * halve >= keep) return;
    const int e = e_out[k] + 1;
    e_out[k] = static_cast<std::int8_t>(e);
    pow_e[k] = pow2(e);
    pack[k] = pow2(S - e);
  }
  // Groups along rows: rows [r0, r1) of x: [R, C], one kernel call each (run by the pack loop on
  // its tile, so that the pack reads the rows from L1).
  void rows(const float* x, std::int64_t C, std::int64_t r0, std::int64_t r1) const {
    for (std::int64_t r = r0; r < r1; ++r) {
      if (e_out[r] >= S) continue;
      float errors[2];
      kernels::shift_clip_errors_f32(x + r * C, C, pow_e[r] * inv_scale, lo, qmax, errors);
      choose(r, errors[0], errors[1]);
    }
  }
  // Groups along columns: column blocks in parallel, each column's sums running over the rows in
  // order.
  void columns(const float* x, std::int64_t R, std::int64_t C) const {
    constexpr std::int64_t kBlock = 64;
    detail::parallel_for((C + kBlock - 1) / kBlock, 1, [&](std::int64_t b0, std::int64_t b1) {
      for (std::int64_t b = b0; b < b1; ++b) {
        const std::int64_t c0 = b * kBlock, c1 = std::min(C, c0 + kBlock);
        float keep[kBlock] = {}, halve[kBlock] = {}, a[kBlock];
        for (std::int64_t c = c0; c < c1; ++c) a[c - c0] = pow_e[c] * inv_scale;
        for (std::int64_t r = 0; r < R; ++r)
          for (std::int64_t c = c0; c < c1; ++c) {
            const float y = x[r * C + c] * a[c - c0], y2 = y + y;
            const float d0 = round_half_even(std::min(qmax, std::max(lo, y))) - y;
            const float d1 = round_half_even(std::min(qmax, std::max(lo, y2))) - y2;
            keep[c - c0] += d0 * d0;
            halve[c - c0] += d1 * d1;
          }
        for (std::int64_t c = c0; c < c1; ++c)
          if (e_out[c] < S) choose(c, keep[c - c0], halve[c - c0]);
      }
    });
  }
};

// " ('name')" for error messages, or nothing.
std::string name_suffix(const char* name) { return name ? std::string(" ('") + name + "')" : std::string(); }

[[noreturn]] void throw_nonfinite(const Tensor& x, const char* name) {
  x.check_finite(std::string("quantize: input") + (name ? std::string(" '") + name + "'" : std::string()));
  throw NumericError("quantize: non-finite input");  // unreachable: check_finite throws
}
}  // namespace

std::uint64_t StochasticKey::derive() const {
  return splitmix64(seed ^ splitmix64(step ^ splitmix64(tensor_id)));
}

QuantizeParams QuantizeParams::per_tensor(int bits) {
  QuantizeParams p;
  p.bits = bits;
  p.outer = OuterScale::per_tensor;
  return p;
}

QuantizeParams QuantizeParams::per_row(int bits) {
  QuantizeParams p;
  p.bits = bits;
  return p;
}

QuantizeParams QuantizeParams::shiftquant(int bits, int shift_budget, int inner_axis, OuterScale outer) {
  QuantizeParams p;
  p.bits = bits;
  p.shift_budget = shift_budget;
  p.inner_axis = inner_axis;
  p.outer = outer;
  return p;
}

QuantizeParams QuantizeParams::row_blocks(int bits, std::int64_t block) {
  QuantizeParams p = shiftquant(bits, max_shift_budget(bits, false), 1, OuterScale::per_index);
  p.row_block = block;
  return p;
}

void QuantizeParams::validate() const {
  SHIFTQ_CHECK(bits >= 2 && bits <= 8, ValueError, "quantize: bits must be in [2, 8], got ", bits);
  SHIFTQ_CHECK(shift_budget >= 0 && shift_budget <= max_shift_budget(bits, false), ValueError, "quantize: shift budget S=", shift_budget,
               " with b=", bits, " bits needs S >= 0 and b + S <= 8 (int8 operands)");
  SHIFTQ_CHECK(inner_axis == 0 || inner_axis == 1, ValueError, "quantize: inner_axis must be 0 or 1, got ",
               inner_axis);
  if (!observed_group_ranges.empty()) {
    SHIFTQ_CHECK(shift_budget > 0 && observed_range >= 0.0f, ValueError,
                 "quantize: observed group ranges need S > 0 and an observed base range");
    SHIFTQ_CHECK(std::all_of(observed_group_ranges.begin(), observed_group_ranges.end(),
                             [this](float r) { return std::isfinite(r) && r >= 0.0f && r <= observed_range; }),
                 ValueError, "quantize: observed group ranges must be finite, >= 0 and <= the base range ",
                 observed_range);
  }
  if (row_block != 0)
    SHIFTQ_CHECK(row_block > 0 && row_block <= (std::int64_t{1} << 31) && shift_budget > 0 && inner_axis == 1 && outer == OuterScale::per_index &&
                     rounding == Rounding::nearest_even && !nonnegative_range && observed_range < 0.0f &&
                     !observed_nonnegative && observed_group_ranges.empty(),
                 ValueError, "quantize: block multipliers (row_block = ", row_block,
                 ") need 0 < row_block <= 2^31, S > 0, per-row scales (inner_axis 1, per-index outer), nearest rounding, "
                 "symmetric codes and no observed range");
  if (observed_range >= 0.0f || observed_nonnegative)
    SHIFTQ_CHECK(std::isfinite(observed_range) && observed_range >= 0.0f && outer == OuterScale::per_tensor, ValueError,
                 "quantize: an observed range must be finite, >= 0 and come with a per-tensor outer scale, got ",
                 observed_range);
}

namespace {
// x_known_finite: the caller has already looked for NaN/Inf (inner_absmax).
void check_quantize_input(const Tensor& x, const QuantizeParams& p, const char* name, bool x_known_finite = false) {
  check_dtype(x, DType::f32, "quantize", name ? name : "x");
  SHIFTQ_CHECK(x.dim() == 2 && x.numel() > 0, ShapeError, "quantize: expects a non-empty 2-D tensor, got ", x.str(),
               name_suffix(name));
  p.validate();
  if (p.observed_group_ranges.empty()) return;
  const std::int64_t inner_len = x.size(p.inner_axis == 1 ? 1 : 0);
  SHIFTQ_CHECK(static_cast<std::int64_t>(p.observed_group_ranges.size()) == inner_len, ShapeError, "quantize: ",
               p.observed_group_ranges.size(), " observed group ranges for an inner axis of ", inner_len,
               name_suffix(name));
  // Observed group ranges skip quantize's first pass, the one that meets a NaN or Inf: look for them here.
  if (!x_known_finite) (void)inner_absmax(x, p.inner_axis, name);
}

// Whether quantize() can take the inner ranges from its caller (see qtensor.hpp).
bool takes_given_ranges(const QuantizeParams& p) {
  return p.shift_budget > 0 && p.outer == OuterScale::per_index && !p.nonnegative_range && p.row_block == 0;
}

// QuantizeParams::row_block > 0 (qtensor.hpp): one pass, row by row (its range, then its blocks'
// multipliers and codes from L1: kernels::quantize_row_blocks_f32).
QTensor quantize_row_blocks_impl(const Tensor& x, const QuantizeParams& p, const char* name) {
  const std::int64_t R = x.size(0), C = x.size(1), blocks = (C - 1) / p.row_block + 1;
  QTensor q;
  q.bits = p.bits;
  q.shift_budget = p.shift_budget;
  q.inner_axis = 1;
  q.outer = OuterScale::per_index;
  q.row_block = p.row_block;
  const float qmax = static_cast<float>(q.qmax()), unit_shift = std::ldexp(1.0f, -p.shift_budget);
  const float min_scale = std::ldexp(std::numeric_limits<float>::min(), p.shift_budget);
  const int candidates = p.mse_clip ? kernels::kMaxBlockCandidates : 1;
  q.scales = Tensor::uninitialized({R});
  q.block_multipliers = Tensor::uninitialized({R, blocks}, DType::u8);
  q.codes = Tensor::uninitialized({R, C}, p.unsigned_codes ? DType::u8 : DType::s8);
  const float* px = x.data<float>();
  float* scales = q.scales.data<float>();
  std::uint8_t* multipliers = q.block_multipliers.data<std::uint8_t>();
  std::int8_t* out = p.unsigned_codes ? reinterpret_cast<std::int8_t*>(q.codes.data<std::uint8_t>()) : q.codes.data<std::int8_t>();
  std::atomic<bool> finite{true};
  for_row_blocks(R, C, [&](std::int64_t r0, std::int64_t r1) {
    for (std::int64_t r = r0; r < r1; ++r) {
      float row_max = 0.0f;  // max |x| over row r (passed as the kernel's row 0)
      if (!kernels::absmax_rows_f32(px + r * C, 0, 1, C, nullptr, &row_max)) {
        finite = false;  // reported after the loop; never convert NaN/Inf to integers
        continue;
      }
      // At least 2^S FLT_MIN, so that the unit s 2^-S stays a normal float (its reciprocal finite):
      // only rows of max |x| below ~1e-37 get a coarser scale.
      const float s = row_max > 0.0f ? std::max(row_max / qmax, min_scale) : 1.0f;
      scales[r] = s;
      kernels::quantize_row_blocks_f32(px + r * C, C, p.row_block, s * unit_shift, qmax, 1 << p.shift_budget, candidates,
                                       p.unsigned_codes ? 0x80 : 0x00, out + r * C, multipliers + r * blocks);
    }
  });
  if (!finite) throw_nonfinite(x, name);
  return q;
}

QTensor quantize_impl(const Tensor& x, const QuantizeParams& p, const float* given_ranges, const char* name) {
  if (p.row_block > 0) return quantize_row_blocks_impl(x, p, name);
  // Observed group ranges stand in for the first pass (x's finiteness is checked by the callers).
  if (!p.observed_group_ranges.empty()) given_ranges = p.observed_group_ranges.data();
  const std::int64_t R = x.size(0), C = x.size(1);
  const int S = p.shift_budget;
  const bool groups_on_cols = p.inner_axis == 1;
  const std::int64_t inner_len = groups_on_cols ? C : R, outer_len = groups_on_cols ? R : C;
  const float* px = x.data<float>();

  const bool per_tensor = p.outer == OuterScale::per_tensor;
  const bool fused_row_scales = groups_on_cols && !per_tensor;  // per-row scales taken tile by tile
  const bool observed = p.observed_range >= 0.0f;
  // An observed per-tensor base (delayed scaling) with groups along rows, or none (S = 0): a row's
  // codes depend on that row alone, so its range is taken tile by tile in the pack loop, from L1,
  // instead of in a pass of its own. The input's own range (for the observer) comes from there too.
  const bool tile_ranges =
      observed && p.observed_range > 0.0f && per_tensor && !given_ranges && (S == 0 || !groups_on_cols);
  // Where the unsigned range can apply: the row pass that looks for negative values runs.
  const bool sign_applies = p.nonnegative_range && (S == 0 ? !fused_row_scales
                                                           : !groups_on_cols && S <= max_shift_budget(p.bits, true));

  // 1. Inner ranges r_k and their max m. With S = 0 every exponent is 0 and only m matters: a row
  // pass (register reductions) gives it, and per-row scaling needs no first pass at all.
  bool finite = true, negative = true;
  QuantizeScratch& scratch = quantize_scratch();
  std::vector<float>& ranges = scratch.ranges;
  float m = 1.0f;  // unknown but irrelevant when the first pass is skipped (S = 0, per-row)
  if (given_ranges) {  // exact maxima from the caller, read in place; later passes still check finiteness
    m = *std::max_element(given_ranges, given_ranges + inner_len);
  } else if (tile_ranges) {  // filled by the pack loop, row by row
    ranges.resize(static_cast<std::size_t>(R));
  } else if (S > 0) {
    const bool sign_pass = p.nonnegative_range && S <= max_shift_budget(p.bits, true);
    if (groups_on_cols)
      ranges = column_absmax(px, R, C, nullptr, finite);
    else
      row_absmax(px, R, C, nullptr, finite, sign_pass ? &negative : nullptr, ranges);
    m = *std::max_element(ranges.begin(), ranges.end());
  } else if (!fused_row_scales) {
    row_absmax(px, R, C, nullptr, finite, p.nonnegative_range ? &negative : nullptr, scratch.row_max);
    m = *std::max_element(scratch.row_max.begin(), scratch.row_max.end());
  }
  if (!finite) throw_nonfinite(x, name);
  const float* range = given_ranges ? given_ranges : ranges.data();  // r_k (when S > 0)

  QTensor q;
  q.bits = p.bits;
  q.shift_budget = S;
  q.inner_axis = p.inner_axis;
  q.outer = p.outer;
  q.nonnegative = observed ? sign_applies && p.observed_nonnegative : !negative;  // only a sign pass clears `negative`
  q.input_negative = negative;
  const float qmax = static_cast<float>(q.qmax());
  // This input's own range, for an observer: MSE-clipped with the qmax its own sign would give.
  auto own_range = [&](float own_max) {
    const float own_qmax = static_cast<float>(sign_applies && !negative ? std::min((1 << p.bits) - 1, 127)
                                                                         : (1 << (p.bits - 1)) - 1);
    return p.mse_clip && S == 0 && own_max > 0.0f ? mse_clipped_range(px, R * C, own_max, own_qmax, !negative)
                                                   : own_max;
  };
  if (per_tensor && !tile_ranges) q.input_range = own_range(m);
  if (observed) m = p.observed_range;
  const DType code_type = p.unsigned_codes ? DType::u8 : DType::s8;
  q.exponents = Tensor::empty({inner_len}, DType::s8);
  q.scales = Tensor::ones({per_tensor ? 1 : outer_len});

  // 2. Exponents e_k = min(S, floor(log2(m / r_k))) (S where r_k = 0), as factors 2^e and 2^(S-e).
  std::vector<float>& pow_e = scratch.pow_e;
  std::vector<float>& pack = scratch.pack;
  pow_e.assign(static_cast<std::size_t>(inner_len), 1.0f);
  pack.assign(static_cast<std::size_t>(inner_len), 1.0f);
  std::int8_t* e_out = q.exponents.data<std::int8_t>();
  auto set_exponents = [&](std::int64_t k0, std::int64_t k1) {
    set_group_exponents(m, range, k0, k1, S, e_out, pow_e.data(), pack.data());
  };
  if (S > 0 && !tile_ranges) detail::parallel_for(inner_len, kParallelElements, set_exponents);
  if (m == 0.0f) {  // all zero: v = 0
    q.codes = Tensor::empty({R, C}, code_type);
    if (p.unsigned_codes) std::memset(q.codes.data<std::uint8_t>(), 0x80, static_cast<std::size_t>(R * C));
    return q;
  }
  q.codes = Tensor::uninitialized({R, C}, code_type);

  // 3. Outer scales s = max(|x| * 2^e) / qmax, and 4. v = round(x * 2^e / s) * 2^(S - e), computed
  // as y = (x * row_mul) * col_mul, v = (q * row_pack) * col_pack.
  float* scales = q.scales.data<float>();
  std::vector<float>& inv_scale = scratch.inv_scale;
  inv_scale.assign(static_cast<std::size_t>(outer_len), 1.0f);
  auto set_scales = [&](const float* max, std::int64_t i0, std::int64_t i1) {
    set_outer_scales(max, i0, i1, qmax, scales, inv_scale.data());
  };
  std::optional<ShiftClip> shift_clip;  // QuantizeParams::mse_clip's group exponents (S > 0)
  if (per_tensor) {
    float mx = 0.0f;
    if (observed)
      mx = m;  // the observed base
    else if (S == 0)
      mx = p.mse_clip ? q.input_range : m;  // max |x|, maybe clipped
    else
      for (std::int64_t k = 0; k < inner_len; ++k) mx = std::max(mx, range[k] * pow_e[k]);
    set_scales(&mx, 0, 1);
    if (S > 0 && p.mse_clip)  // the base stays that of the unclipped groups
      shift_clip = ShiftClip{S, inv_scale[0], q.nonnegative ? 0.0f : -qmax, qmax, e_out, pow_e.data(), pack.data()};
    if (shift_clip && groups_on_cols) shift_clip->columns(px, R, C);
    std::fill(inv_scale.begin(), inv_scale.end(), inv_scale[0]);
  } else if (!groups_on_cols) {  // one scale per column: needs every row first
    const std::vector<float> col_max = column_absmax(px, R, C, pow_e.data(), finite);
    if (!finite) throw_nonfinite(x, name);
    set_scales(col_max.data(), 0, C);
  }
  std::vector<float>& ones_outer = scratch.ones_outer;
  ones_outer.assign(static_cast<std::size_t>(outer_len), 1.0f);
  kernels::QuantizePackArgs args = pack_args(p, px, q, pow_e.data(), pack.data(), inv_scale.data(), ones_outer.data());
  args.unit_factors = S == 0 && groups_on_cols;  // every 2^e and 2^(S-e) is 1 and col_mul = pow_e
  std::vector<float>& row_max = scratch.row_max;
  row_max.resize(static_cast<std::size_t>(fused_row_scales ? R : 0));
  std::atomic<bool> rows_finite{true};
  float own_max = 0.0f;        // tile_ranges: max |x| over the rows
  bool own_negative = false;   // tile_ranges: some x < 0 (looked for when sign_applies)
  std::mutex own_mutex;
  // Rows go in tiles of ~16 KiB of input: per-row scales and ranges are taken while the tile is in L1.
  const std::int64_t tile = std::max<std::int64_t>(1, 4096 / C);
  for_row_blocks(R, C, [&](std::int64_t r0, std::int64_t r1) {
    float block_max = 0.0f;
    bool block_negative = false;
    for (std::int64_t t0 = r0; t0 < r1; t0 += tile) {
      const std::int64_t t1 = std::min(r1, t0 + tile);
      if (tile_ranges) {
        if (!kernels::absmax_rows_f32(px, t0, t1, C, nullptr, ranges.data(), sign_applies ? &block_negative : nullptr)) {
          rows_finite = false;
          continue;
        }
        block_max = std::max(block_max, *std::max_element(ranges.data() + t0, ranges.data() + t1));
        if (S > 0) set_exponents(t0, t1);
      }
      if (fused_row_scales) {
        if (!kernels::absmax_rows_f32(px, t0, t1, C, pow_e.data(), row_max.data())) {
          rows_finite = false;  // reported after the loop; never convert NaN/Inf to integers
          continue;
        }
        if (p.mse_clip && S == 0)  // each row's range clipped over the row (in L1)
          for (std::int64_t r = t0; r < t1; ++r)
            if (row_max[r] > 0.0f) row_max[r] = mse_clipped_range(px + r * C, C, row_max[r], qmax, false);
        set_scales(row_max.data(), t0, t1);
      }
      if (shift_clip && !groups_on_cols) shift_clip->rows(px, C, t0, t1);
      kernels::quantize_pack_f32_s8(args, t0, t1);
    }
    if (!tile_ranges) return;
    const std::lock_guard<std::mutex> lock(own_mutex);
    own_max = std::max(own_max, block_max);
    own_negative = own_negative || block_negative;
  });
  if (!rows_finite) throw_nonfinite(x, name);  // the first pass was skipped (S = 0, per-row, given or tile ranges)
  if (tile_ranges) {
    negative = sign_applies ? own_negative : true;  // as the row pass reports it
    q.input_negative = negative;
    q.input_range = own_range(own_max);
  }
  return q;
}
}  // namespace

QTensor quantize(const Tensor& x, const QuantizeParams& p, const char* name) {
  check_quantize_input(x, p, name);
  return quantize_impl(x, p, nullptr, name);
}

namespace {
// quantize_sample_channels on x: [N * P, C] (see qlayers_internal.hpp). Groups k = n * C + c;
// each pass runs per sample, on the sample's [P, C] block while it is in cache. Without x (an
// undefined tensor), `produce` writes each sample's block into a per-thread tile instead (a known
// base only: every sample then goes through all passes at once), or, with channels_first_tiles,
// its [C, P] transpose, quantized with quantize_impl's row-group kernels and the u8/s8 codes
// transposed.
QTensor quantize_sample_channels_impl(const Tensor& x, std::int64_t samples, std::int64_t P, std::int64_t C,
                                      const QuantizeParams& p, const internal::SampleProducer& produce,
                                      bool channels_first_tiles, const char* name) {
  const std::int64_t groups = samples * C;
  const int S = p.shift_budget;
  const float* px = x.defined() ? x.data<float>() : nullptr;
  const bool observed = p.observed_range >= 0.0f;
  const bool sign_applies = p.nonnegative_range && S <= max_shift_budget(p.bits, true);
  QTensor q;
  q.bits = p.bits;
  q.shift_budget = S;
  q.inner_axis = 0;
  q.sample_groups = samples;
  q.outer = OuterScale::per_tensor;
  q.exponents = Tensor::empty({groups}, DType::s8);
  q.scales = Tensor::ones({1});
  std::vector<float> ranges(static_cast<std::size_t>(groups), 0.0f), pow_e(ranges.size(), 1.0f), pack(ranges.size(), 1.0f);
  std::int8_t* e_out = q.exponents.data<std::int8_t>();
  std::atomic<bool> finite{true}, any_negative{false};
  // 1. The group ranges of sample n (its block: `sample`): its column maxima. False (and remembered)
  // on NaN/Inf.
  auto sample_ranges = [&](std::int64_t n, const float* sample) {
    bool negative = false;
    const bool ok = kernels::absmax_cols_f32(sample, 0, P, C, nullptr, ranges.data() + n * C,
                                             sign_applies ? &negative : nullptr);
    if (negative) any_negative = true;
    if (!ok) finite = false;
    return ok;
  };
  // 2. Exponents against the base m, as quantize_impl's set_exponents.
  auto set_exponents = [&](float m, std::int64_t k0, std::int64_t k1) {
    set_group_exponents(m, ranges.data(), k0, k1, S, e_out, pow_e.data(), pack.data());
  };
  // 3. Each sample's MSE-clipped exponents and 4. its codes: y = (x * inv_scale) * 2^e per column.
  float inv_scale = 1.0f, qmax = 0.0f, lo = 0.0f;
  std::vector<float> ones(static_cast<std::size_t>(P), 1.0f), row_mul;
  kernels::QuantizePackArgs args{};
  args.rows = P;
  args.cols = C;
  args.row_pack = ones.data();
  args.stochastic = p.rounding == Rounding::stochastic;
  args.key = p.key.derive();
  args.xor_mask = p.unsigned_codes ? 0x80 : 0x00;
  auto pack_sample = [&](std::int64_t n, const float* sample) {
    thread_local std::vector<float> clip;  // lanes, keep, halve, a
    if (p.mse_clip) clip.resize(static_cast<std::size_t>(std::max(16 * C, P) + 3 * C));
    const std::int64_t k0 = n * C;
    if (p.mse_clip) {
      float* keep = clip.data() + std::max(16 * C, P);
      float* halve = keep + C;
      float* a = halve + C;
      for (std::int64_t c = 0; c < C; ++c) a[c] = pow_e[k0 + c] * inv_scale;
      kernels::shift_clip_errors_cols_f32(sample, P, C, a, lo, qmax, clip.data(), keep, halve);
      const ShiftClip shift_clip{S, inv_scale, lo, qmax, e_out, pow_e.data(), pack.data()};
      for (std::int64_t c = 0; c < C; ++c)
        if (e_out[k0 + c] < S) shift_clip.choose(k0 + c, keep[c], halve[c]);
    }
    kernels::QuantizePackArgs sample_args = args;
    sample_args.x = sample;
    sample_args.row_mul = row_mul.data();
    sample_args.col_mul = pow_e.data() + k0;
    sample_args.col_pack = pack.data() + k0;
    sample_args.index_base = static_cast<std::uint64_t>(n * P * C);
    sample_args.out = p.unsigned_codes ? reinterpret_cast<std::int8_t*>(q.codes.data<std::uint8_t>()) + n * P * C
                                       : q.codes.data<std::int8_t>() + n * P * C;
    kernels::quantize_pack_f32_s8(sample_args, 0, P);
  };
  // The same for a [C, P] tile (channels_first_tiles): each row one group, as quantize_impl's
  // tile loop runs groups along rows under a known base; then the codes moved to [P, C].
  auto pack_sample_rows = [&](std::int64_t n, const float* tile) {
    float* cols_inv = internal::thread_scratch<float, 6>(2 * P);  // [P] inv_scale, [P] ones
    float* cols_ones = cols_inv + P;
    std::fill_n(cols_inv, P, inv_scale);
    std::fill_n(cols_ones, P, 1.0f);
    std::uint8_t* codes_tile = internal::thread_scratch<std::uint8_t, 5>(P * C);
    const std::int64_t k0 = n * C;
    if (p.mse_clip) {
      const ShiftClip shift_clip{S, inv_scale, lo, qmax, e_out + k0, pow_e.data() + k0, pack.data() + k0};
      shift_clip.rows(tile, P, 0, C);
    }
    kernels::QuantizePackArgs tile_args = args;
    tile_args.x = tile;
    tile_args.rows = C;
    tile_args.cols = P;
    tile_args.row_mul = pow_e.data() + k0;
    tile_args.col_mul = cols_inv;
    tile_args.row_pack = pack.data() + k0;
    tile_args.col_pack = cols_ones;
    tile_args.index_base = static_cast<std::uint64_t>(n * P * C);  // stochastic draws keyed as in [N * C, P]
    tile_args.out = reinterpret_cast<std::int8_t*>(codes_tile);
    kernels::quantize_pack_f32_s8(tile_args, 0, C);
    std::uint8_t* out = p.unsigned_codes ? q.codes.data<std::uint8_t>() : reinterpret_cast<std::uint8_t*>(q.codes.data<std::int8_t>());
    kernels::transpose_u8(codes_tile, out + n * P * C, C, P);
  };
  auto set_scale = [&](float base, bool nonnegative) {
    q.nonnegative = nonnegative;
    qmax = static_cast<float>(q.qmax());
    const float scale = base > 0.0f ? base / qmax : 1.0f;
    q.scales.data<float>()[0] = scale;
    inv_scale = 1.0f / scale;
    lo = nonnegative ? 0.0f : -qmax;
    args.qmax = qmax;
    row_mul.assign(static_cast<std::size_t>(P), inv_scale);
  };
  q.codes = Tensor::uninitialized({samples * P, C}, p.unsigned_codes ? DType::u8 : DType::s8);
  const std::int64_t grain = std::max<std::int64_t>(1, kParallelElements / std::max<std::int64_t>(P * C, 1));
  if (observed && p.observed_range > 0.0f) {
    // Delayed scaling: the base is known, so each sample goes through all passes while in cache.
    set_scale(p.observed_range, sign_applies && p.observed_nonnegative);
    detail::parallel_for(samples, grain, [&](std::int64_t n0, std::int64_t n1) {
      float* tile = px ? nullptr : internal::thread_scratch<float, 5>(P * C);  // the produced sample
      for (std::int64_t n = n0; n < n1; ++n) {
        const float* sample = px ? px + n * P * C : tile;
        if (!px) produce(n, tile);
        if (channels_first_tiles) {
          bool negative = false;
          if (!kernels::absmax_rows_f32(sample, 0, C, P, nullptr, ranges.data() + n * C, sign_applies ? &negative : nullptr)) {
            finite = false;
            continue;
          }
          if (negative) any_negative = true;
          set_exponents(p.observed_range, n * C, (n + 1) * C);
          pack_sample_rows(n, sample);
          continue;
        }
        if (!sample_ranges(n, sample)) continue;  // reported after the loop; never convert NaN/Inf to integers
        set_exponents(p.observed_range, n * C, (n + 1) * C);
        pack_sample(n, sample);
      }
    });
    if (!finite) {
      if (px) throw_nonfinite(x, name);
      throw NumericError(std::string("quantize: non-finite input") + name_suffix(name));
    }
    q.input_range = *std::max_element(ranges.begin(), ranges.end());
    q.input_negative = sign_applies ? any_negative.load() : true;
    return q;
  }
  detail::parallel_for(samples, grain, [&](std::int64_t n0, std::int64_t n1) {
    for (std::int64_t n = n0; n < n1; ++n) sample_ranges(n, px + n * P * C);
  });
  if (!finite) throw_nonfinite(x, name);
  const bool negative = sign_applies ? any_negative.load() : true;
  q.input_negative = negative;
  float m = *std::max_element(ranges.begin(), ranges.end());
  q.input_range = m;
  if (observed) m = p.observed_range;  // an observed range of 0
  set_exponents(m, 0, groups);
  float base = m;
  if (!observed) {
    base = 0.0f;
    for (std::int64_t k = 0; k < groups; ++k) base = std::max(base, ranges[k] * pow_e[k]);
  }
  set_scale(base, observed ? sign_applies && p.observed_nonnegative : !negative);
  if (m == 0.0f) {  // all zero: v = 0
    if (p.unsigned_codes)
      std::memset(q.codes.data<std::uint8_t>(), 0x80, static_cast<std::size_t>(q.codes.numel()));
    else
      std::memset(q.codes.data<std::int8_t>(), 0, static_cast<std::size_t>(q.codes.numel()));
    return q;
  }
  detail::parallel_for(samples, grain, [&](std::int64_t n0, std::int64_t n1) {
    for (std::int64_t n = n0; n < n1; ++n) pack_sample(n, px + n * P * C);
  });
  return q;
}
}  // namespace

namespace internal {
QTensor quantize_sample_channels(const Tensor& x, std::int64_t samples, const QuantizeParams& p, const char* name) {
  check_quantize_input(x, p, name);
  SHIFTQ_CHECK(samples >= 1 && x.size(0) % samples == 0, ShapeError, "quantize: ", x.str(), " does not split into ",
               samples, " samples", name_suffix(name));
  SHIFTQ_CHECK(p.shift_budget > 0 && p.inner_axis == 0 && p.outer == OuterScale::per_tensor &&
                   p.observed_group_ranges.empty(),
               ValueError, "quantize: per-(sample, channel) groups need S > 0, inner_axis 0, a per-tensor base "
               "and no observed group ranges", name_suffix(name));
  return quantize_sample_channels_impl(x, samples, x.size(0) / samples, x.size(1), p, {}, false, name);
}

QTensor quantize_produced_sample_channels(std::int64_t samples, std::int64_t P, std::int64_t C, const QuantizeParams& p,
                                          const SampleProducer& produce, bool channels_first_tiles, const char* name) {
  p.validate();
  SHIFTQ_CHECK(samples >= 1 && P >= 1 && C >= 1, ShapeError, "quantize: ", samples, " samples of [", P, ", ", C,
               "] values", name_suffix(name));
  SHIFTQ_CHECK(p.shift_budget > 0 && p.inner_axis == 0 && p.outer == OuterScale::per_tensor &&
                   p.observed_group_ranges.empty() && p.observed_range > 0.0f,
               ValueError, "quantize: produced per-(sample, channel) groups need S > 0, inner_axis 0, an observed "
               "per-tensor base > 0 and no observed group ranges", name_suffix(name));
  return quantize_sample_channels_impl(Tensor(), samples, P, C, p, produce, channels_first_tiles, name);
}

namespace {
// One operand's per-row and per-column factors in quantize_gradient_pair, kept per thread across
// calls as QuantizeScratch is (fresh vectors of 10^5 floats fault in new pages every call).
struct OperandFactors {
  std::vector<float> pow_e, pack, inv_scale, ones;
};

// One operand's metadata and factors in quantize_gradient_pair: ShiftQuant groups along inner_axis
// under the base max(ranges), exponents as quantize_impl's set_exponents.
struct GradientOperand {
  QTensor q;
  std::vector<float>& pow_e;
  std::vector<float>& pack;
  std::vector<float>& inv_scale;
  std::vector<float>& ones;

  GradientOperand(const QuantizeParams& p, std::int64_t R, std::int64_t C, std::span<const float> ranges,
                  OperandFactors& factors)
      : pow_e(factors.pow_e), pack(factors.pack), inv_scale(factors.inv_scale), ones(factors.ones) {
    const std::int64_t inner_len = p.inner_axis == 1 ? C : R, outer_len = p.inner_axis == 1 ? R : C;
    q.bits = p.bits;
    q.shift_budget = p.shift_budget;
    q.inner_axis = p.inner_axis;
    q.outer = p.outer;
    q.nonnegative = false;  // as quantize_impl with given ranges: no sign pass
    q.input_negative = true;
    q.exponents = Tensor::empty({inner_len}, DType::s8);
    q.scales = Tensor::ones({outer_len});
    q.codes = Tensor::uninitialized({R, C}, p.unsigned_codes ? DType::u8 : DType::s8);
    const float m = *std::max_element(ranges.begin(), ranges.end());
    pow_e.resize(static_cast<std::size_t>(inner_len));
    pack.resize(static_cast<std::size_t>(inner_len));
    std::int8_t* e_out = q.exponents.data<std::int8_t>();
    detail::parallel_for(inner_len, kParallelElements, [&](std::int64_t k0, std::int64_t k1) {
      set_group_exponents(m, ranges.data(), k0, k1, p.shift_budget, e_out, pow_e.data(), pack.data());
    });
    inv_scale.assign(static_cast<std::size_t>(outer_len), 1.0f);
    ones.assign(static_cast<std::size_t>(outer_len), 1.0f);
  }

  void set_scales(const float* max, std::int64_t i0, std::int64_t i1) {
    set_outer_scales(max, i0, i1, static_cast<float>(q.qmax()), q.scales.data<float>(), inv_scale.data());
  }

  kernels::QuantizePackArgs args(const QuantizeParams& p, const float* x) {
    return pack_args(p, x, q, pow_e.data(), pack.data(), inv_scale.data(), ones.data());
  }
};
}  // namespace

GradientCodes quantize_gradient_pair(const Tensor& dy, const QuantizeParams& for_input, std::span<const float> col_max,
                                     const QuantizeParams& for_weight, std::span<const float> row_max, const char* name) {
  check_quantize_input(dy, for_input, name);
  check_quantize_input(dy, for_weight, name, /*x_known_finite=*/true);
  const std::int64_t R = dy.size(0), C = dy.size(1);
  SHIFTQ_CHECK(for_input.inner_axis == 1 && for_weight.inner_axis == 0, ValueError,
               "quantize_gradient_pair: the input-gradient codes need groups over the columns (inner_axis 1), the "
               "weight-gradient codes over the rows (inner_axis 0)", name_suffix(name));
  SHIFTQ_CHECK(static_cast<std::int64_t>(col_max.size()) == C && static_cast<std::int64_t>(row_max.size()) == R,
               ShapeError, "quantize_gradient_pair: ", col_max.size(), " column and ", row_max.size(),
               " row ranges for ", dy.str(), name_suffix(name));
  const auto valid = [](float r) { return std::isfinite(r) && r >= 0.0f; };
  SHIFTQ_CHECK(std::all_of(col_max.begin(), col_max.end(), valid) && std::all_of(row_max.begin(), row_max.end(), valid),
               ValueError, "quantize_gradient_pair: ranges must be finite and >= 0", name_suffix(name));
  const bool fused = takes_given_ranges(for_input) && takes_given_ranges(for_weight) && !for_input.mse_clip &&
                     !for_weight.mse_clip && for_input.observed_group_ranges.empty() &&
                     for_weight.observed_group_ranges.empty();
  const bool all_zero = *std::max_element(col_max.begin(), col_max.end()) == 0.0f;
  if (!fused || all_zero) return {quantize(dy, for_input, col_max, name), quantize(dy, for_weight, row_max, name)};

  const float* px = dy.data<float>();
  thread_local OperandFactors in_factors, wt_factors;
  thread_local std::vector<float> in_row_max;
  GradientOperand in(for_input, R, C, col_max, in_factors);  // dX's operand: scale per row, found tile by tile
  GradientOperand wt(for_weight, R, C, row_max, wt_factors);  // dW's operand: scale per column, over all rows
  const kernels::QuantizePackArgs in_args = in.args(for_input, px);
  in_row_max.resize(static_cast<std::size_t>(R));
  float* const row_max_w = in_row_max.data();  // the caller's buffer (the blocks run on other threads)
  std::vector<float> wt_col_max(static_cast<std::size_t>(C), 0.0f);
  std::atomic<bool> finite{true};
  std::mutex col_mutex;
  // Pass 1, tiles of ~16 KiB while in L1: each row's scale and dX codes, and the column maxima of
  // |dY| 2^e_r that dW's scales need.
  const std::int64_t tile = std::max<std::int64_t>(1, 4096 / C);
  for_row_blocks(R, C, [&](std::int64_t r0, std::int64_t r1) {
    std::vector<float> block_col_max(static_cast<std::size_t>(C), 0.0f);
    float* const cols = block_col_max.data();
    for (std::int64_t t0 = r0; t0 < r1; t0 += tile) {
      const std::int64_t t1 = std::min(r1, t0 + tile);
      if (!kernels::absmax_rows_f32(px, t0, t1, C, in.pow_e.data(), row_max_w) ||
          !kernels::absmax_cols_f32(px, t0, t1, C, wt.pow_e.data(), cols)) {
        finite = false;  // reported after the loop; never convert NaN/Inf to integers
        return;
      }
      in.set_scales(row_max_w, t0, t1);
      kernels::quantize_pack_f32_s8(in_args, t0, t1);
    }
    const std::lock_guard<std::mutex> lock(col_mutex);  // max: exact in any order
    float* const merged = wt_col_max.data();
    for (std::int64_t c = 0; c < C; ++c) merged[c] = std::max(merged[c], cols[c]);
  });
  if (!finite) throw_nonfinite(dy, name);
  // Pass 2: dW's codes.
  wt.set_scales(wt_col_max.data(), 0, C);
  const kernels::QuantizePackArgs wt_args = wt.args(for_weight, px);
  for_row_blocks(R, C, [&](std::int64_t r0, std::int64_t r1) { kernels::quantize_pack_f32_s8(wt_args, r0, r1); });
  return {std::move(in.q), std::move(wt.q)};
}

QTensor quantize_checked_input(const Tensor& x, const QuantizeParams& p, const char* name) {
  check_quantize_input(x, p, name, /*x_known_finite=*/true);
  return quantize_impl(x, p, nullptr, name);
}
}  // namespace internal

QTensor quantize(const Tensor& x, const QuantizeParams& p, std::span<const float> inner_ranges, const char* name) {
  check_quantize_input(x, p, name);
  const std::int64_t inner_len = x.size(p.inner_axis == 1 ? 1 : 0);
  SHIFTQ_CHECK(static_cast<std::int64_t>(inner_ranges.size()) == inner_len, ShapeError, "quantize: ",
               inner_ranges.size(), " inner ranges given for an inner axis of ", inner_len,
               name_suffix(name));
  SHIFTQ_CHECK(std::all_of(inner_ranges.begin(), inner_ranges.end(), [](float r) { return std::isfinite(r) && r >= 0.0f; }),
               ValueError, "quantize: inner ranges must be finite and >= 0",
               name_suffix(name));
  return quantize_impl(x, p, takes_given_ranges(p) ? inner_ranges.data() : nullptr, name);
}

std::vector<float> inner_absmax(const Tensor& x, int inner_axis, const char* name) {
  check_dtype(x, DType::f32, "inner_absmax", name ? name : "x");
  SHIFTQ_CHECK(x.dim() == 2 && x.numel() > 0, ShapeError, "inner_absmax: expects a non-empty 2-D tensor, got ", x.str(),
               name_suffix(name));
  SHIFTQ_CHECK(inner_axis == 0 || inner_axis == 1, ValueError, "inner_absmax: inner_axis must be 0 or 1, got ", inner_axis);
  bool finite = true;
  std::vector<float> ranges;
  if (inner_axis == 1)
    ranges = column_absmax(x.data<float>(), x.size(0), x.size(1), nullptr, finite);
  else
    row_absmax(x.data<float>(), x.size(0), x.size(1), nullptr, finite, nullptr, ranges);
  if (!finite) throw_nonfinite(x, name);
  return ranges;
}

Tensor QTensor::signed_codes() const {
  return unsigned_codes() ? internal::flip_code_form(codes, DType::s8) : codes;
}

QTensor& QTensor::compute_sums() {
  const Tensor v = signed_codes();
  const std::int64_t R = rows(), C = cols();
  row_sums = Tensor::empty({R}, DType::s32);
  col_sums = Tensor::empty({C}, DType::s32);
  const std::int8_t* pv = v.data<std::int8_t>();
  std::int32_t* rs = row_sums.data<std::int32_t>();
  // Row sums in parallel; column sums from per-block partials (integer adds: order-independent).
  const std::int64_t blocks = R * C < kParallelElements ? 1 : std::min<std::int64_t>(get_num_threads(), R);
  std::vector<std::vector<std::int32_t>> partial(blocks, std::vector<std::int32_t>(C, 0));
  detail::parallel_for(blocks, 1, [&](std::int64_t b0, std::int64_t b1) {
    for (std::int64_t b = b0; b < b1; ++b)
      kernels::code_sums_s8(pv, R * b / blocks, R * (b + 1) / blocks, C, rs, partial[b].data());
  });
  std::int32_t* cs = col_sums.data<std::int32_t>();
  for (std::int64_t b = 0; b < blocks; ++b)
    for (std::int64_t c = 0; c < C; ++c) cs[c] += partial[b][c];
  return *this;
}

Tensor QTensor::dequantize() const {
  const Tensor v = signed_codes();
  check_dtype(v, DType::s8, "QTensor::dequantize", "codes");
  const std::int64_t R = rows(), C = cols();
  Tensor out = Tensor::empty({R, C});
  const std::int8_t* pv = v.data<std::int8_t>();
  const float* s = scales.data<float>();
  const float shift = std::ldexp(1.0f, -shift_budget);
  float* o = out.data<float>();
  const int axis = scale_axis();
  for (std::int64_t r = 0; r < R; ++r)
    for (std::int64_t c = 0; c < C; ++c) {
      const float scale = axis < 0 ? s[0] : (axis == 0 ? s[r] : s[c]);
      o[r * C + c] = scale * shift * static_cast<float>(pv[r * C + c]);
    }
  return out;
}

}  // namespace shiftq::quant
