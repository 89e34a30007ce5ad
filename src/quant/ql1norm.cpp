// Fully quantized L1 BatchNorm2d / LayerNorm: int8 codes in, integer statistics, int8 saved input,
// int8 output gradient in, integer channel sums in backward. BatchNorm runs NCHW (a channel is
// runs of H*W codes, one pass per channel or per range of channels) or NHWC (a channel is a
// column of [N*H*W, C], passes over row blocks with column sums).
#include "shiftq/quant/ql1norm.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "core/parallel_for.hpp"
#include "quant/qlayers_internal.hpp"
#include "shiftq/kernels/activation.hpp"
#include "shiftq/kernels/gemm.hpp"
#include "shiftq/kernels/l1norm.hpp"
#include "shiftq/kernels/quantize.hpp"
#include "shiftq/kernels/transpose.hpp"

namespace shiftq::quant {
namespace {
// x viewed as [outer, groups, inner]; statistics per group.
struct Layout {
  std::int64_t outer, groups, inner;
  std::int64_t count() const { return outer * inner; }
};

// Group g of codes viewed as [outer, groups, inner]: `outer` runs of `inner` codes.
kernels::L1GroupSums group_sums(const std::int8_t* q, const Layout& l, std::int64_t g) {
  return kernels::l1_group_sums_s8(q + g * l.inner, l.outer, l.inner, l.groups * l.inner);
}

void check_layout(const Layout& l, const char* op) {
  SHIFTQ_CHECK(l.count() > 1 && l.count() < (std::int64_t{1} << 23), ShapeError, op,
               ": each normalization group needs 2 .. 8388607 elements for the int32 statistics, got ", l.count());
}

// A tensor viewed as [outer * groups, inner], quantized to int8 with one scale per normalization
// group (a BatchNorm channel: `outer` rows, `groups` apart; a LayerNorm row). The callers quantize
// each group inside their own pass over it: its range, then its pack while the group is in cache,
// then their integer sums over the fresh codes. Per-group scales keep every statistic exact in the
// group's integer units and need no whole-tensor range pass first.
class GroupQuantizer {
 public:
  GroupQuantizer(const Tensor& x, const Layout& l, int bits, Rounding rounding, StochasticKey key, const char* what)
      : x_(x), l_(l), what_(what) {
    const std::int64_t rows = l.outer * l.groups;
    row_max_.resize(rows);
    row_inv_.resize(rows);
    ones_.assign(std::max(rows, l.inner), 1.0f);
    codes = Tensor::uninitialized({rows, l.inner}, DType::s8);
    scales = Tensor::uninitialized({l.groups});
    group_max.assign(static_cast<std::size_t>(l.groups), 0.0f);
    qmax_ = static_cast<float>((1 << (bits - 1)) - 1);
    args_.x = x.data<float>();
    args_.rows = rows;
    args_.cols = l.inner;
    args_.row_mul = row_inv_.data();
    args_.col_mul = ones_.data();
    args_.row_pack = ones_.data();
    args_.col_pack = ones_.data();
    args_.qmax = qmax_;
    args_.stochastic = rounding == Rounding::stochastic;
    args_.key = key.derive();
    args_.xor_mask = 0;
    args_.out = codes.data<std::int8_t>();
    args_.unit_factors = true;
  }
  GroupQuantizer(const GroupQuantizer&) = delete;  // the pack arguments point into the members
  GroupQuantizer& operator=(const GroupQuantizer&) = delete;

  // Sets scales[g] = max |x| / qmax over group g and packs its rows. Returns false (group left
  // unpacked, remembered for throw_if_nonfinite) if it holds NaN or Inf.
  bool quantize_group(std::int64_t g) {
    const std::int64_t rows = l_.outer * l_.groups;
    if (!kernels::absmax_rows_f32(args_.x, g, rows, l_.inner, nullptr, row_max_.data(), nullptr, l_.groups)) {
      nonfinite_ = true;
      return false;
    }
    float mx = 0.0f;
    for (std::int64_t r = g; r < rows; r += l_.groups) mx = std::max(mx, row_max_[r]);
    const float inv = set_scale(g, mx);
    for (std::int64_t r = g; r < rows; r += l_.groups) row_inv_[r] = inv;
    kernels::quantize_pack_f32_s8(args_, g, rows, l_.groups);
    return true;
  }
  // Whether groups are quantized a range at a time (quantize_groups) instead of one by one: for
  // BatchNorm runs shorter than one 64-code store (7x7: 49 values, four 16-lane steps, a quarter
  // of them one lane wide, and per-run setup for every 49 values). Longer runs (14x14, 28x28) are
  // packed one group at a time.
  bool packs_group_ranges() const { return l_.outer > 1 && l_.inner < 64; }

  // Quantizes groups [g0, g1) (BatchNorm channels): in each sample their runs are one contiguous
  // stretch of (g1 - g0) * inner values, so the range and pack kernels run on rows that long, with
  // the group's 1/s per column ((x * 1) * inv is x * inv, and each element keeps its index for the
  // stochastic draws, so the codes equal quantize_group's). The callers pass their thread's range
  // of groups, so the input, its codes and the statistics stay in the same core's cache. Returns
  // false (codes unset, remembered for throw_if_nonfinite) on NaN or Inf.
  bool quantize_groups(std::int64_t g0, std::int64_t g1) {
    const std::int64_t width = (g1 - g0) * l_.inner, sample_stride = l_.groups * l_.inner, first = g0 * l_.inner;
    std::vector<float> col_max(static_cast<std::size_t>(width), 0.0f);  // per column of the stretch
    for (std::int64_t n = 0; n < l_.outer; ++n)
      if (!kernels::absmax_cols_f32(args_.x + n * sample_stride + first, 0, 1, width, nullptr, col_max.data())) {
        nonfinite_ = true;
        return false;
      }
    std::vector<float> col_inv(static_cast<std::size_t>(width)), col_ones(static_cast<std::size_t>(width), 1.0f);
    for (std::int64_t g = g0; g < g1; ++g) {
      const auto run = col_max.begin() + (g - g0) * l_.inner;
      std::fill_n(col_inv.begin() + (g - g0) * l_.inner, l_.inner, set_scale(g, *std::max_element(run, run + l_.inner)));
    }
    kernels::QuantizePackArgs stretch = args_;  // one sample's stretch: [1, width]
    stretch.rows = 1;
    stretch.cols = width;
    stretch.row_mul = ones_.data();
    stretch.row_pack = ones_.data();
    stretch.col_mul = col_inv.data();
    stretch.col_pack = col_ones.data();
    stretch.unit_factors = false;
    stretch.col_mul_only = true;
    for (std::int64_t n = 0; n < l_.outer; ++n) {
      const std::int64_t offset = n * sample_stride + first;
      stretch.x = args_.x + offset;
      stretch.out = args_.out + offset;
      stretch.index_base = static_cast<std::uint64_t>(offset);
      kernels::quantize_pack_f32_s8(stretch, 0, 1);
    }
    return true;
  }
  // Throws NumericError naming the tensor if some quantize_group met NaN or Inf. Called after the
  // parallel region (exceptions must not leave an OpenMP region).
  void throw_if_nonfinite() const {
    if (!nonfinite_) return;
    x_.check_finite(std::string("quantized L1 norm: ") + what_);
    throw NumericError(std::string("quantized L1 norm: non-finite ") + what_);  // unreachable
  }

  Tensor codes;   // s8 [outer * groups, inner]
  Tensor scales;  // f32 [groups]
  std::vector<float> group_max;  // [groups]: max |x| of each group

 private:
  // scales[g] = max |x| / qmax over group g (1 when all zero: v = 0); returns 1 / scales[g].
  float set_scale(std::int64_t g, float max_abs) {
    group_max[static_cast<std::size_t>(g)] = max_abs;
    const float scale = max_abs > 0.0f ? max_abs / qmax_ : 1.0f;
    scales.data<float>()[g] = scale;
    return 1.0f / scale;
  }

  Tensor x_;
  Layout l_;
  const char* what_;
  float qmax_ = 127.0f;
  std::vector<float> row_max_, row_inv_, ones_;
  kernels::QuantizePackArgs args_{};
  std::atomic<bool> nonfinite_{false};
};

// Per-group statistics in real units from the integer sums.
struct GroupStats {
  std::vector<std::int64_t> s1;
  std::vector<float> scale;      // the group's input scale s
  std::vector<float> mean_q;     // S1 / m (code units)
  std::vector<float> sigma;      // c * s * D / m^2 + eps (real units)
  std::vector<float> mean_sign;  // SG / m

  GroupStats() = default;
  explicit GroupStats(std::int64_t groups)
      : s1(groups), scale(groups), mean_q(groups), sigma(groups), mean_sign(groups) {}
  // Group g's statistics from its integer sums over m codes of scale s.
  void set(std::int64_t g, const kernels::L1GroupSums& sums, float s, std::int64_t m, float c, float eps) {
    const double md = static_cast<double>(m);
    s1[g] = sums.s1;
    scale[g] = s;
    mean_q[g] = static_cast<float>(static_cast<double>(sums.s1) / md);
    sigma[g] = static_cast<float>(c * s * static_cast<double>(sums.abs_dev) / (md * md) + eps);
    mean_sign[g] = static_cast<float>(static_cast<double>(sums.sign) / md);
  }
};

// The per-channel affine map y = a q + b of channel c's codes (scale s):
//   batch statistics (training): a = gamma s / sigma, b = beta - a mean_q
//   running statistics (eval):   a = gamma s / sigma_c, b = beta - gamma mean_c / sigma_c
struct ChannelAffine {
  float a, b;
};
ChannelAffine batch_affine(const float* gamma, const float* beta, const GroupStats& st, std::int64_t c) {
  const float a = (gamma ? gamma[c] : 1.0f) * st.scale[c] / st.sigma[c];
  return {a, (beta ? beta[c] : 0.0f) - a * st.mean_q[c]};
}
ChannelAffine running_affine(const float* gamma, const float* beta, const L1BatchNormState& state, float scale,
                             std::int64_t c) {
  const float g = gamma ? gamma[c] : 1.0f, rm = state.running_mean.data<float>()[c],
              rs = state.running_sigma.data<float>()[c];
  return {g * scale / rs, (beta ? beta[c] : 0.0f) - g * rm / rs};
}

// The running statistics' update from a training batch's statistics.
void update_running_stats(L1BatchNormState& state, const GroupStats& st) {
  if (!state.running_mean.defined()) return;
  float* rm = state.running_mean.data<float>();
  float* rs = state.running_sigma.data<float>();
  for (std::size_t g = 0; g < st.s1.size(); ++g) {
    rm[g] = (1.0f - state.momentum) * rm[g] + state.momentum * st.mean_q[g] * st.scale[g];
    rs[g] = (1.0f - state.momentum) * rs[g] + state.momentum * st.sigma[g];
  }
  state.running_mean.bump_version();
  state.running_sigma.bump_version();
}

// Channel g's input gradient dx = k_d * dq + k_s * sgn(m q - S1) + k_0 and its dgamma, dbeta, from
// the integer sums G1 = sum dq, sum dq q over its m codes, the gradient scale sg and gamma_g = w:
// G2 = sum dq * (m q - S1) = m * sum(dq q) - S1 * G1,
// mean(g) = w sg G1 / m; mean(g xhat) = w sg s G2 / (m^2 sigma).
struct ChannelBackward {
  kernels::L1BatchNormBackward coef;
  float dgamma, dbeta;
};
ChannelBackward channel_backward(const GroupStats& st, std::int64_t g, std::int64_t mi, const kernels::L1GradientSums& sums,
                                 float sg, float w, float c) {
  const double m = static_cast<double>(mi);
  const std::int64_t s1 = st.s1[g], g1s = sums.sum_d, g2s = mi * sums.sum_dq - s1 * g1s;
  const float s = st.scale[g], sigma = st.sigma[g], inv = 1.0f / sigma;
  const float mean_g = static_cast<float>(w * sg * static_cast<double>(g1s) / m);
  const float mean_gx = static_cast<float>(w * sg * s * static_cast<double>(g2s) / (m * m * sigma));
  return {{static_cast<std::int32_t>(mi), static_cast<std::int32_t>(s1), inv * w * sg, -inv * c * mean_gx,
           inv * (-mean_g + c * mean_gx * st.mean_sign[g])},
          static_cast<float>(sg * s * static_cast<double>(g2s) / (m * sigma)),
          static_cast<float>(sg * static_cast<double>(g1s))};
}

// Quantizes group g of the input (7x7 BatchNorm: the thread's range of groups first, see
// quantize_groups), computes its statistics, then calls `then(g, stats)` on the same thread while
// the group's codes are in cache; after the thread's last group, `then_range(g0, g1, stats)` for
// its range [g0, g1).
template <class Then, class ThenRange>
GroupStats statistics(GroupQuantizer& xq, const Layout& l, float c, float eps, Then then, ThenRange then_range) {
  GroupStats st(l.groups);
  const std::int8_t* q = xq.codes.data<std::int8_t>();
  const float* scales = xq.scales.data<float>();
  const bool ranges = xq.packs_group_ranges();
  detail::parallel_for(l.groups, std::max<std::int64_t>(1, 4096 / l.count()), [&](std::int64_t g0, std::int64_t g1) {
    if (ranges && !xq.quantize_groups(g0, g1)) return;
    for (std::int64_t g = g0; g < g1; ++g) {
      if (!ranges && !xq.quantize_group(g)) continue;
      st.set(g, group_sums(q, l, g), scales[g], l.count(), c, eps);
      then(g, st);
    }
    then_range(g0, g1, st);
  });
  xq.throw_if_nonfinite();
  return st;
}
}  // namespace

namespace {
// The norm's code bits: config.norm_bits, checked.
int norm_bits(const QConfig& config, const char* op) {
  SHIFTQ_CHECK(config.norm_bits >= 2 && config.norm_bits <= 8, ValueError, op,
               ": QConfig::norm_bits must be in [2, 8] (0 means a float norm: do not quantize it), got ",
               config.norm_bits);
  config.observer.validate();
  return config.norm_bits;
}

// The stochastic key of a norm's output gradient.
StochasticKey norm_gradient_key(const QuantCall& call) { return {call.seed, call.step, call.layer_id}; }
}  // namespace

L1Statistics l1_integer_statistics(const QTensor& x, std::int64_t outer, std::int64_t groups, std::int64_t inner) {
  const Layout l{outer, groups, inner};
  check_layout(l, "l1_integer_statistics");
  SHIFTQ_CHECK(x.codes.dtype() == DType::s8 && x.codes.numel() == outer * groups * inner && x.scales.numel() == 1,
               ValueError, "l1_integer_statistics: needs s8 codes of ", outer * groups * inner,
               " elements with a per-tensor scale");
  L1Statistics out;
  const double s = x.scales.data<float>()[0], m = static_cast<double>(l.count());
  for (std::int64_t g = 0; g < groups; ++g) {
    const kernels::L1GroupSums sums = group_sums(x.codes.data<std::int8_t>(), l, g);
    out.mean.push_back(s * static_cast<double>(sums.s1) / m);
    out.mean_abs_dev.push_back(s * static_cast<double>(sums.abs_dev) / (m * m));
  }
  return out;
}

namespace {
// ---- BatchNorm: the input codes and each channel's affine map of them --------------------------
// Every forward (training or eval, NCHW or NHWC) first finds the int8 codes q of its input and a
// per-channel map y = a_c q + b_c; its output is then that map written as f32 (the norm's output),
// relu of it quantized as the next convolution's input codes, or relu(y + shortcut) (a ResNet
// block's output), the last two per sample while the codes are in cache.

// x viewed as [N, C, P] (NCHW) or [N, P, C] (NHWC, channels_last).
struct ImageShape {
  std::int64_t N, C, P;
  bool channels_last;
  Layout layout() const { return channels_last ? Layout{N * P, C, 1} : Layout{N, C, P}; }
};

struct ChannelMaps {
  Tensor codes;             // s8, x's layout: [N*C, P] or [N*P, C]
  std::vector<float> a, b;  // [C]
};

// y = a_c q + b_c, f32 in x's layout.
Tensor affine_output(const ChannelMaps& m, const ImageShape& s, const Shape& shape) {
  Tensor y = Tensor::uninitialized(shape);
  const std::int8_t* q = m.codes.data<std::int8_t>();
  float* py = y.data<float>();
  if (s.channels_last) {
    detail::parallel_for(s.N * s.P, std::max<std::int64_t>(1, 4096 / s.C), [&](std::int64_t r0, std::int64_t r1) {
      kernels::affine_cols_s8_f32(q + r0 * s.C, r1 - r0, s.C, s.C, m.a.data(), m.b.data(), py + r0 * s.C);
    });
    return y;
  }
  detail::parallel_for(s.N, 1, [&](std::int64_t n0, std::int64_t n1) {
    for (std::int64_t n = n0; n < n1; ++n)
      for (std::int64_t c = 0; c < s.C; ++c) {
        const std::int64_t offset = (n * s.C + c) * s.P;
        kernels::affine_s8_f32(q + offset, 1, s.P, s.P, m.a[c], m.b[c], py + offset);
      }
  });
  return y;
}

// Sample n's y = a_c q + b_c in x's layout ([C, P] or [P, C]), with the kernels of affine_output
// (the same bits).
void sample_affine(const ChannelMaps& m, const ImageShape& s, std::int64_t n, float* y) {
  const std::int8_t* q = m.codes.data<std::int8_t>() + n * s.C * s.P;
  if (s.channels_last) {
    kernels::affine_cols_s8_f32(q, s.P, s.C, s.C, m.a.data(), m.b.data(), y);
    return;
  }
  for (std::int64_t c = 0; c < s.C; ++c) kernels::affine_s8_f32(q + c * s.P, 1, s.P, s.P, m.a[c], m.b[c], y + c * s.P);
}

// relu(a_c q + b_c) quantized as a convolution's input (`params`: S > 0, the observed base), one
// sample at a time while it is in cache: the codes equal those quantized_conv2d would make of
// relu(affine_output(m)) (quantize_produced_sample_channels; NCHW tiles stay channels-first).
QTensor relu_codes(const ChannelMaps& m, const ImageShape& s, const QuantizeParams& params) {
  return internal::quantize_produced_sample_channels(
      s.N, s.P, s.C, params,
      [&](std::int64_t n, float* tile) {
        float* y = internal::thread_scratch<float, 3>(s.P * s.C);
        sample_affine(m, s, n, y);
        kernels::relu_f32(y, tile, s.P * s.C);
      },
      /*channels_first_tiles=*/!s.channels_last, "conv2d input");
}

// A ReLU's gradient through the norm's output: dy = mask ? g : 0 in x's layout, with, in
// channels-last, each channel's max |dy| taken while a sample is in cache (empty when dy holds
// NaN or Inf): the ranges of the norm's gradient quantizer, so that it needs no pass of its own.
struct ReluGradient {
  Tensor dy;
  std::vector<float> channel_max;  // [C], channels-last only
};

// Runs fn(n, part) for each sample on the threads, `part` a thread's [C] maxima (channels-last),
// and merges the parts into r.channel_max.
template <class F>
void for_each_masked_sample(ReluGradient& r, const ImageShape& s, F fn) {
  if (s.channels_last) r.channel_max.assign(static_cast<std::size_t>(s.C), 0.0f);
  std::mutex mutex;
  std::atomic<bool> finite{true};
  float* pdy = r.dy.data<float>();
  detail::parallel_for(s.N, 1, [&](std::int64_t n0, std::int64_t n1) {
    std::vector<float> part(r.channel_max.size(), 0.0f);
    for (std::int64_t n = n0; n < n1; ++n) {
      float* dy = pdy + n * s.C * s.P;
      fn(n, dy);
      if (s.channels_last && !kernels::absmax_cols_f32(dy, 0, s.P, s.C, nullptr, part.data())) finite = false;
    }
    const std::lock_guard<std::mutex> lock(mutex);  // max: exact in any order
    for (std::size_t c = 0; c < part.size(); ++c) r.channel_max[c] = std::max(r.channel_max[c], part[c]);
  });
  if (!finite) r.channel_max.clear();  // the norm's own range pass reports it
}

// The gradient through relu(a_c q + b_c) from g, the gradient of the codes relu_codes made: g is
// channels-last [N, P, C]; dy has x's layout (NCHW: g transposed per sample). The mask is relu's
// (y > 0) on the same y, recomputed from the codes.
ReluGradient relu_gradient(const ChannelMaps& m, const ImageShape& s, const Tensor& g, const Shape& shape) {
  ReluGradient out{Tensor::uninitialized(shape), {}};
  const float* pg = g.data<float>();
  const std::int64_t block = s.P * s.C;
  for_each_masked_sample(out, s, [&](std::int64_t n, float* dy) {
    float* y = internal::thread_scratch<float, 3>(block);
    float* scratch = internal::thread_scratch<float, 4>(block);
    std::uint8_t* mask = internal::thread_scratch<std::uint8_t, 3>(block / 8 + 1);
    sample_affine(m, s, n, y);
    if (!s.channels_last) kernels::transpose_f32(pg + n * block, scratch, s.P, s.C);  // g in [C, P] order
    kernels::relu_mask_f32(y, y, mask, block);
    kernels::relu_backward_mask_f32(s.channels_last ? pg + n * block : scratch, mask, dy, block);
  });
  return out;
}

// relu(a_c q + b_c + shortcut) in x's layout, one sample at a time while its codes are in cache,
// with the bits of add() then relu(). `mask` (when defined: u8 [N, mask_stride]) gets relu's mask,
// sample n's bits from byte n * mask_stride.
Tensor add_relu_output(const ChannelMaps& m, const ImageShape& s, const Tensor& shortcut, Tensor mask) {
  Tensor out = Tensor::uninitialized(shortcut.shape());
  const std::int64_t block = s.P * s.C;
  const float* sc = shortcut.data<float>();
  float* po = out.data<float>();
  std::uint8_t* bits = mask.defined() ? mask.data<std::uint8_t>() : nullptr;
  const std::int64_t mask_stride = mask.defined() ? mask.size(1) : 0;
  detail::parallel_for(s.N, 1, [&](std::int64_t n0, std::int64_t n1) {
    float* y = internal::thread_scratch<float, 3>(block);
    for (std::int64_t n = n0; n < n1; ++n) {
      sample_affine(m, s, n, y);
      const float* sn = sc + n * block;
      for (std::int64_t i = 0; i < block; ++i) y[i] += sn[i];
      if (bits)
        kernels::relu_mask_f32(y, po + n * block, bits + n * mask_stride, block);
      else
        kernels::relu_f32(y, po + n * block, block);
    }
  });
  return out;
}

// ---- Eval with observed channel ranges ----
// q = round(x / s_c), s_c = range_c / qmax (the codes of a value depend on it alone), then
// y = a_c q + b_c with the running statistics: a_c = gamma s_c / sigma_c, b_c = beta - gamma mean_c / sigma_c.
ChannelMaps eval_maps(const Tensor& x, const Tensor& gamma, const Tensor& beta, const L1BatchNormState& state,
                      const ImageShape& s, int bits, const RangeObserver& ranges) {
  x.check_finite("quantized_l1_batch_norm2d: input");
  const std::int64_t C = s.C, rows = s.channels_last ? s.N * s.P : s.N * C, cols = s.channels_last ? C : s.P;
  const float qmax = static_cast<float>((1 << (bits - 1)) - 1);
  const float* gm = gamma.defined() ? gamma.data<float>() : nullptr;
  const float* bt = beta.defined() ? beta.data<float>() : nullptr;
  ChannelMaps m{Tensor::uninitialized({rows, cols}, DType::s8), std::vector<float>(static_cast<std::size_t>(C)),
                std::vector<float>(static_cast<std::size_t>(C))};
  // 1 / s_c per row (NCHW: row n*C + c) or per column (NHWC), ones for the other factors.
  std::vector<float> inv(static_cast<std::size_t>(C)), per_row(static_cast<std::size_t>(rows), 1.0f),
      ones(static_cast<std::size_t>(std::max(rows, cols)), 1.0f);
  for (std::int64_t c = 0; c < C; ++c) {
    const float range = ranges.range(c), scale = range > 0.0f ? range / qmax : 1.0f;
    const ChannelAffine map = running_affine(gm, bt, state, scale, c);
    m.a[c] = map.a;
    m.b[c] = map.b;
    inv[c] = 1.0f / scale;
  }
  if (!s.channels_last)
    for (std::int64_t r = 0; r < rows; ++r) per_row[r] = inv[r % C];
  kernels::QuantizePackArgs args{};
  args.x = x.data<float>();
  args.rows = rows;
  args.cols = cols;
  args.row_mul = s.channels_last ? ones.data() : per_row.data();
  args.col_mul = s.channels_last ? inv.data() : ones.data();
  args.row_pack = ones.data();
  args.col_pack = ones.data();
  args.qmax = qmax;
  args.out = m.codes.data<std::int8_t>();
  args.unit_factors = !s.channels_last;
  args.col_mul_only = s.channels_last;
  detail::parallel_for(rows, std::max<std::int64_t>(1, 4096 / cols), [&](std::int64_t r0, std::int64_t r1) {
    kernels::quantize_pack_f32_s8(args, r0, r1);
  });
  return m;
}
}  // namespace

namespace {
// ---- Channels-last (NHWC) BatchNorm: x viewed as [R, C], R = N*H*W, channel c = column c ----
// Every pass runs over the same static row blocks (parallel_for), so a thread reads back the rows
// it wrote; per-block column sums are integers, added in any order.

// Codes of a [R, C] tensor with one scale per column: scale[c] = range[c] / qmax (1 where the range
// is 0), q = round(x / scale[c]) (stochastic: keyed by the element's index in the NCHW tensor, so
// the draws are the NCHW layer's).
struct ColumnCodes {
  Tensor codes;              // s8 [R, C]
  std::vector<float> scale;  // [C]
  std::vector<float> range;  // [C]: max |x| per column, or the given ranges
};

// Each column's max |x| (NumericError naming `what` on NaN or Inf).
std::vector<float> column_ranges(const Tensor& x, std::int64_t R, std::int64_t C, const char* what) {
  std::vector<float> range(static_cast<std::size_t>(C), 0.0f);
  std::mutex mutex;
  std::atomic<bool> finite{true};
  const float* px = x.data<float>();
  detail::parallel_for(R, std::max<std::int64_t>(1, 4096 / C), [&](std::int64_t r0, std::int64_t r1) {
    std::vector<float> part(static_cast<std::size_t>(C), 0.0f);
    if (!kernels::absmax_cols_f32(px, r0, r1, C, nullptr, part.data())) finite = false;
    const std::lock_guard<std::mutex> lock(mutex);  // max: exact in any order
    for (std::int64_t c = 0; c < C; ++c) range[c] = std::max(range[c], part[c]);
  });
  if (!finite) {
    x.check_finite(std::string("quantized L1 norm: ") + what);
    throw NumericError(std::string("quantized L1 norm: non-finite ") + what);  // unreachable
  }
  return range;
}

// Scales from `range`; the packing itself runs in the callers' row passes (pack_rows).
ColumnCodes column_codes(std::int64_t R, std::int64_t C, int bits, std::vector<float> range) {
  ColumnCodes out{Tensor::uninitialized({R, C}, DType::s8), std::vector<float>(static_cast<std::size_t>(C)), std::move(range)};
  const float qmax = static_cast<float>((1 << (bits - 1)) - 1);
  for (std::int64_t c = 0; c < C; ++c) out.scale[c] = out.range[c] > 0.0f ? out.range[c] / qmax : 1.0f;
  return out;
}

// The pack arguments of x (viewed as [R, C], the shape of `codes`, R = N * pixels) into `codes`
// with y = x * (1 / scale[c]). The kernel reads row_mul[r] and row_pack[r] of every row even when
// it skips them (col_mul_only): `ones` covers all R rows. Stochastic draws take each element's
// NCHW index ([N, C, pixels]; pixels = 0: the NHWC index), so that the gradient codes are those of
// the NCHW layer.
struct ColumnPack {
  std::vector<float> inv, ones;
  kernels::QuantizePackArgs args{};
  ColumnPack(const Tensor& x, ColumnCodes& codes, int bits, Rounding rounding, const StochasticKey& key,
             std::int64_t pixels)
      : inv(codes.scale.size()),
        ones(static_cast<std::size_t>(std::max(codes.codes.size(0), codes.codes.size(1))), 1.0f) {
    for (std::size_t c = 0; c < inv.size(); ++c) inv[c] = 1.0f / codes.scale[c];
    args.x = x.data<float>();
    args.rows = codes.codes.size(0);
    args.cols = codes.codes.size(1);
    args.row_mul = ones.data();
    args.col_mul = inv.data();
    args.row_pack = ones.data();
    args.col_pack = ones.data();
    args.qmax = static_cast<float>((1 << (bits - 1)) - 1);
    args.stochastic = rounding == Rounding::stochastic;
    args.key = rounding == Rounding::stochastic ? key.derive() : 0;
    args.out = codes.codes.data<std::int8_t>();
    args.col_mul_only = true;
    args.index_plane = pixels;
  }
  void pack_rows(std::int64_t r0, std::int64_t r1) const { kernels::quantize_pack_f32_s8(args, r0, r1); }
};

// Adds `part` into `total` under `mutex`.
void add_partial(std::vector<std::int64_t>& total, const std::vector<std::int64_t>& part, std::mutex& mutex) {
  const std::lock_guard<std::mutex> lock(mutex);
  for (std::size_t i = 0; i < total.size(); ++i) total[i] += part[i];
}

}  // namespace

namespace {
// ---- Training: batch statistics ----
struct TrainingForward {
  ChannelMaps maps;
  GroupStats st;
  std::vector<float> ranges;  // [C]: each channel's input range (what the norm's observer records)
};

// NCHW: one pass per channel (7x7: per thread's range, see quantize_groups): quantize it, sum its
// codes, set a_c = gamma * s_c / sigma, b_c = beta - a_c * mean_q, and, when y is given, write
// y = a_c q + b_c while the channel's codes are in cache.
TrainingForward nchw_training_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                      const L1BatchNormState& state, const Layout& l, int bits, float* y) {
  check_layout(l, "quantized_l1_batch_norm2d");
  GroupQuantizer xq(x, l, bits, Rounding::nearest_even, {}, "l1_batch_norm2d input");
  const std::int64_t C = l.groups;
  TrainingForward f{{xq.codes, std::vector<float>(static_cast<std::size_t>(C)), std::vector<float>(static_cast<std::size_t>(C))}, {}, {}};
  const std::int8_t* q = xq.codes.data<std::int8_t>();
  const float* gm = gamma.defined() ? gamma.data<float>() : nullptr;
  const float* bt = beta.defined() ? beta.data<float>() : nullptr;
  // Ranges of short channels (7x7): one affine_cols call per sample over the range's contiguous
  // stretch (full vector steps) instead of a call per channel.
  const bool ranges = xq.packs_group_ranges();
  const auto per_channel = [&](std::int64_t g, const GroupStats& stats) {
    const auto [a, b] = batch_affine(gm, bt, stats, g);
    f.maps.a[g] = a;
    f.maps.b[g] = b;
    if (y && !ranges) kernels::affine_s8_f32(q + g * l.inner, l.outer, l.inner, C * l.inner, a, b, y + g * l.inner);
  };
  const auto per_range = [&](std::int64_t g0, std::int64_t g1, const GroupStats&) {
    if (!y || !ranges) return;
    const std::int64_t width = (g1 - g0) * l.inner, first = g0 * l.inner;
    std::vector<float> a(static_cast<std::size_t>(width)), b(static_cast<std::size_t>(width));
    for (std::int64_t g = g0; g < g1; ++g) {
      std::fill_n(a.begin() + (g - g0) * l.inner, l.inner, f.maps.a[g]);
      std::fill_n(b.begin() + (g - g0) * l.inner, l.inner, f.maps.b[g]);
    }
    kernels::affine_cols_s8_f32(q + first, l.outer, width, C * l.inner, a.data(), b.data(), y + first);
  };
  f.st = statistics(xq, l, state.c, state.eps, per_channel, per_range);
  f.ranges = xq.group_max;
  return f;
}

// NHWC: ranges; codes and S1 per row block; the deviation sums; a_c and b_c.
TrainingForward nhwc_training_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                      const L1BatchNormState& state, const Layout& l, int bits) {
  check_layout(l, "quantized_l1_batch_norm2d");
  const std::int64_t R = l.outer, C = l.groups, grain = std::max<std::int64_t>(1, 4096 / C);
  ColumnCodes xq = column_codes(R, C, bits, column_ranges(x, R, C, "l1_batch_norm2d input"));
  const ColumnPack pack(x, xq, bits, Rounding::nearest_even, {}, /*pixels=*/0);  // no draws
  const std::int8_t* q = xq.codes.data<std::int8_t>();
  std::vector<std::int64_t> s1(static_cast<std::size_t>(C), 0), abs_dev(s1), sign(s1);
  std::mutex mutex;
  detail::parallel_for(R, grain, [&](std::int64_t r0, std::int64_t r1) {
    pack.pack_rows(r0, r1);
    std::vector<std::int64_t> part(static_cast<std::size_t>(C), 0);
    kernels::l1_col_sums_s8(q + r0 * C, r1 - r0, C, part.data());
    add_partial(s1, part, mutex);
  });
  detail::parallel_for(R, grain, [&](std::int64_t r0, std::int64_t r1) {
    std::vector<std::int64_t> dev(static_cast<std::size_t>(C), 0), sgn(dev);
    kernels::l1_col_deviation_s8(q + r0 * C, r1 - r0, C, R, s1.data(), dev.data(), sgn.data());
    add_partial(abs_dev, dev, mutex);
    add_partial(sign, sgn, mutex);
  });
  const float* gm = gamma.defined() ? gamma.data<float>() : nullptr;
  const float* bt = beta.defined() ? beta.data<float>() : nullptr;
  TrainingForward f{{xq.codes, std::vector<float>(static_cast<std::size_t>(C)), std::vector<float>(static_cast<std::size_t>(C))},
                    GroupStats(C), std::move(xq.range)};
  for (std::int64_t c = 0; c < C; ++c) {
    f.st.set(c, {s1[c], abs_dev[c], sign[c]}, xq.scale[c], R, state.c, state.eps);
    const ChannelAffine map = batch_affine(gm, bt, f.st, c);
    f.maps.a[c] = map.a;
    f.maps.b[c] = map.b;
  }
  return f;
}

// What the backward keeps of a training forward, and the backward itself.
struct NormBackward {
  Tensor codes;  // the input codes, x's layout
  GroupStats st;
  Layout l;
  bool channels_last;
  std::int64_t pixels;  // P, the pixels of an image
  float c;
  Tensor gamma;
  bool need_gamma, need_beta;
  int bits;
  StochasticKey key;
};

// NCHW: one pass per channel: quantize its gradient, the two integer sums, dx. Short channels
// (7x7) go by the thread's range (quantize_groups): the sums per channel, the coefficients per
// column of the range, then one bn_backward_cols call per sample over its contiguous stretch.
std::vector<Tensor> nchw_backward(const NormBackward& nb, const Tensor& dy) {
  const Layout& l = nb.l;
  GroupQuantizer dq(dy, l, nb.bits, Rounding::stochastic, nb.key, "l1_batch_norm2d output gradient");
  const std::int8_t* q = nb.codes.data<std::int8_t>();
  const std::int8_t* d = dq.codes.data<std::int8_t>();
  const float* gm = nb.gamma.defined() ? nb.gamma.data<float>() : nullptr;
  Tensor dx = Tensor::uninitialized(dy.shape());
  Tensor dgamma = nb.need_gamma ? Tensor::empty({l.groups}) : Tensor();
  Tensor dbeta = nb.need_beta ? Tensor::empty({l.groups}) : Tensor();
  float* pdx = dx.data<float>();
  const bool ranges = dq.packs_group_ranges();
  detail::parallel_for(l.groups, 1, [&](std::int64_t g0, std::int64_t g1) {
    if (ranges && !dq.quantize_groups(g0, g1)) return;
    const std::int64_t width = ranges ? (g1 - g0) * l.inner : 0;
    std::vector<float> k_d(width), k_s(width), k_0(width);
    std::vector<std::int32_t> above(width), below(width);
    for (std::int64_t g = g0; g < g1; ++g) {
      if (!ranges && !dq.quantize_group(g)) continue;
      const kernels::L1GradientSums sums =
          kernels::l1_gradient_sums_s8(d + g * l.inner, q + g * l.inner, l.outer, l.inner, l.groups * l.inner);
      const ChannelBackward cb =
          channel_backward(nb.st, g, l.count(), sums, dq.scales.data<float>()[g], gm ? gm[g] : 1.0f, nb.c);
      if (nb.need_gamma) dgamma.data<float>()[g] = cb.dgamma;
      if (nb.need_beta) dbeta.data<float>()[g] = cb.dbeta;
      const kernels::L1BatchNormBackward& coef = cb.coef;
      if (!ranges) {
        kernels::l1_bn_backward_s8_f32(coef, q + g * l.inner, d + g * l.inner, l.outer, l.inner, l.groups * l.inner,
                                       pdx + g * l.inner);
        continue;
      }
      const kernels::L1SignThresholds t = kernels::l1_sign_thresholds(coef.s1, coef.m);
      const std::int64_t col = (g - g0) * l.inner;
      std::fill_n(k_d.begin() + col, l.inner, coef.k_d);
      std::fill_n(k_s.begin() + col, l.inner, coef.k_s);
      std::fill_n(k_0.begin() + col, l.inner, coef.k_0);
      std::fill_n(above.begin() + col, l.inner, t.above);
      std::fill_n(below.begin() + col, l.inner, t.below);
    }
    if (!ranges) return;
    const kernels::L1BatchNormBackwardCols cols{k_d.data(), k_s.data(), k_0.data(), above.data(), below.data()};
    const std::int64_t sample = l.groups * l.inner, first = g0 * l.inner;
    kernels::l1_bn_backward_cols_s8_f32(cols, q + first, d + first, l.outer, width, sample, pdx + first);
  });
  dq.throw_if_nonfinite();
  return {dx, dgamma, dbeta};
}

// NHWC: ranges (unless the caller took them: dy_ranges); codes and the two integer sums per row
// block; dx = k_d dq + k_s sgn + k_0.
std::vector<Tensor> nhwc_backward(const NormBackward& nb, const Tensor& dy, std::vector<float> dy_ranges = {}) {
  const std::int64_t R = nb.l.outer, C = nb.l.groups, grain = std::max<std::int64_t>(1, 4096 / C);
  if (dy_ranges.empty()) dy_ranges = column_ranges(dy, R, C, "l1_batch_norm2d output gradient");
  ColumnCodes dq = column_codes(R, C, nb.bits, std::move(dy_ranges));
  const ColumnPack pack(dy, dq, nb.bits, Rounding::stochastic, nb.key, nb.pixels);
  const std::int8_t* q = nb.codes.data<std::int8_t>();
  const std::int8_t* d = dq.codes.data<std::int8_t>();
  std::vector<std::int64_t> sum_d(static_cast<std::size_t>(C), 0), sum_dq(sum_d);
  std::mutex mutex;
  detail::parallel_for(R, grain, [&](std::int64_t r0, std::int64_t r1) {
    pack.pack_rows(r0, r1);
    std::vector<std::int64_t> part_d(static_cast<std::size_t>(C), 0), part_dq(part_d);
    kernels::l1_col_gradient_sums_s8(d + r0 * C, q + r0 * C, r1 - r0, C, part_d.data(), part_dq.data());
    add_partial(sum_d, part_d, mutex);
    add_partial(sum_dq, part_dq, mutex);
  });
  const float* gm = nb.gamma.defined() ? nb.gamma.data<float>() : nullptr;
  Tensor dgamma = nb.need_gamma ? Tensor::empty({C}) : Tensor();
  Tensor dbeta = nb.need_beta ? Tensor::empty({C}) : Tensor();
  std::vector<float> k_d(static_cast<std::size_t>(C)), k_s(k_d), k_0(k_d);
  std::vector<std::int32_t> above(static_cast<std::size_t>(C)), below(above);
  for (std::int64_t g = 0; g < C; ++g) {
    const ChannelBackward cb = channel_backward(nb.st, g, R, {sum_d[g], sum_dq[g]}, dq.scale[g], gm ? gm[g] : 1.0f, nb.c);
    if (nb.need_gamma) dgamma.data<float>()[g] = cb.dgamma;
    if (nb.need_beta) dbeta.data<float>()[g] = cb.dbeta;
    const kernels::L1SignThresholds t = kernels::l1_sign_thresholds(cb.coef.s1, cb.coef.m);
    k_d[g] = cb.coef.k_d;
    k_s[g] = cb.coef.k_s;
    k_0[g] = cb.coef.k_0;
    above[g] = t.above;
    below[g] = t.below;
  }
  // dx, tile by tile; each tile's row and column maxima are taken while it is in L1 and noted for
  // the convolution whose output gradient dx is (internal::find_gradient_ranges), which then
  // needs no range pass over it.
  Tensor dx = Tensor::uninitialized(dy.shape());
  float* pdx = dx.data<float>();
  const kernels::L1BatchNormBackwardCols cols{k_d.data(), k_s.data(), k_0.data(), above.data(), below.data()};
  internal::GradientRanges& ranges = internal::gradient_ranges_slot(dx, R, C);
  std::fill(ranges.col_max.begin(), ranges.col_max.end(), 0.0f);
  float* const row_max = ranges.row_max.data();
  float* const col_max = ranges.col_max.data();
  std::atomic<bool> finite{true};
  detail::parallel_for(R, grain, [&](std::int64_t r0, std::int64_t r1) {
    std::vector<float> part(static_cast<std::size_t>(C), 0.0f);
    bool ok = true;
    for (std::int64_t t0 = r0; t0 < r1; t0 += grain) {
      const std::int64_t t1 = std::min(r1, t0 + grain);
      kernels::l1_bn_backward_cols_s8_f32(cols, q + t0 * C, d + t0 * C, t1 - t0, C, C, pdx + t0 * C);
      ok &= kernels::absmax_rows_f32(pdx, t0, t1, C, nullptr, row_max);
      ok &= kernels::absmax_cols_f32(pdx, t0, t1, C, nullptr, part.data());
    }
    if (!ok) finite = false;
    const std::lock_guard<std::mutex> lock(mutex);  // max: exact in any order
    for (std::int64_t c = 0; c < C; ++c) col_max[c] = std::max(col_max[c], part[static_cast<std::size_t>(c)]);
  });
  if (finite) internal::note_gradient_ranges_done(dx);  // NaN/Inf: the consumer's own pass reports it
  return {dx, dgamma, dbeta};
}

std::vector<Tensor> norm_backward(const NormBackward& nb, const Tensor& dy, std::vector<float> dy_ranges = {}) {
  return nb.channels_last ? nhwc_backward(nb, dy, std::move(dy_ranges)) : nchw_backward(nb, dy);
}

// The checks shared by both BatchNorm entry points; returns the input's shape as [N, C, P].
ImageShape checked_batch_norm_shape(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                    const L1BatchNormState& state, const RangeObserver* input_range, ImageLayout layout) {
  check_dtype(x, DType::f32, "quantized_l1_batch_norm2d", "x");
  check_rank(x, 4, "quantized_l1_batch_norm2d", "x");
  const bool channels_last = layout == ImageLayout::nhwc;
  const std::int64_t C = x.size(channels_last ? 3 : 1);
  SHIFTQ_CHECK(C > 0, ShapeError, "quantized_l1_batch_norm2d: input ", x.str(), " has no channels");
  for (const Tensor* p : {&gamma, &beta, static_cast<const Tensor*>(&state.running_mean), static_cast<const Tensor*>(&state.running_sigma)})
    if (p->defined())
      SHIFTQ_CHECK(p->dtype() == DType::f32 && p->shape() == Shape{C}, ShapeError, "quantized_l1_batch_norm2d: ",
                   "per-channel tensor ", p->str(), " must be f32 [", C, "]");
  if (input_range)
    SHIFTQ_CHECK(input_range->channels() == C, ShapeError, "quantized_l1_batch_norm2d: the input observer has ",
                 input_range->channels(), " channels, the input ", x.str(), " has ", C);
  return {x.size(0), C, channels_last ? x.size(1) * x.size(2) : x.size(2) * x.size(3), channels_last};
}

// Whether eval runs on codes: observed channel ranges and running statistics (else the float map).
bool eval_on_codes(const RangeObserver* input_range, const L1BatchNormState& state) {
  return input_range && input_range->observed() && state.running_mean.defined();
}

// The training forward's bookkeeping: the observed input ranges and the running statistics.
void record_statistics(const TrainingForward& f, RangeObserver* input_range, L1BatchNormState& state) {
  if (input_range) input_range->update(f.ranges, /*negative=*/true, /*saturated=*/false);
  update_running_stats(state, f.st);
}

NormBackward backward_state(const TrainingForward& f, const ImageShape& s, const L1BatchNormState& state,
                            const Tensor& gamma, const Tensor& beta, int bits, const QuantCall& call) {
  return {f.maps.codes, f.st, s.layout(), s.channels_last, s.P, state.c, gamma.detach(),
          gamma.defined() && gamma.requires_grad(), beta.defined() && beta.requires_grad(), bits, norm_gradient_key(call)};
}
}  // namespace

Tensor quantized_l1_batch_norm2d(const Tensor& x, const Tensor& gamma, const Tensor& beta, L1BatchNormState& state,
                                 const QConfig& config, const QuantCall& call, ImageLayout layout) {
  const ImageShape s = checked_batch_norm_shape(x, gamma, beta, state, call.input_range, layout);
  const int bits = norm_bits(config, "quantized_l1_batch_norm2d");
  if (!call.training) {
    // eval: a per-channel affine map, on codes when the channel ranges are observed
    if (!eval_on_codes(call.input_range, state)) return l1_batch_norm2d(x, gamma, beta, state, false, layout);
    SHIFTQ_CHECK(x.numel() > 0, ShapeError, "quantized_l1_batch_norm2d: empty input ", x.str());
    const Tensor y = affine_output(eval_maps(x, gamma, beta, state, s, bits, *call.input_range), s, x.shape());
    if (!any_requires_grad({&x, &gamma, &beta})) return y;
    // Gradients (a probe through an eval model): straight through the quantizer, those of the float
    // map f; y + (f - f.detach()) has exactly y's values.
    const Tensor f = l1_batch_norm2d(x, gamma, beta, state, false, layout);
    return add(y, sub(f, f.detach()));
  }
  Tensor y;
  TrainingForward f;
  if (s.channels_last) {
    f = nhwc_training_forward(x, gamma, beta, state, s.layout(), bits);
    y = affine_output(f.maps, s, x.shape());
  } else {
    y = Tensor::uninitialized(x.shape());
    f = nchw_training_forward(x, gamma, beta, state, s.layout(), bits, y.data<float>());
  }
  record_statistics(f, call.input_range, state);
  return record("quantized_l1_batch_norm2d", y, {&x, &gamma, &beta},
                [nb = backward_state(f, s, state, gamma, beta, bits, call)](const Tensor& dy) { return norm_backward(nb, dy); });
}

bool writes_conv_input_codes(const QConfig& consumer, const RangeObserver* consumer_range) {
  const TensorQConfig& a = consumer.activations;
  return a.kind == QuantizerKind::shiftquant && a.shift_budget > 0 && consumer_range &&
         consumer_range->channels() == 1 && consumer_range->observed() && consumer_range->range() > 0.0f;
}

CodedActivation quantized_l1_batch_norm2d_relu(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                               L1BatchNormState& state, const QConfig& config, const QuantCall& call,
                                               ImageLayout layout, const QConfig& consumer, RangeObserver& consumer_range) {
  const ImageShape s = checked_batch_norm_shape(x, gamma, beta, state, call.input_range, layout);
  const int bits = norm_bits(config, "quantized_l1_batch_norm2d_relu");
  consumer.validate();
  SHIFTQ_CHECK(writes_conv_input_codes(consumer, &consumer_range), ValueError,
               "quantized_l1_batch_norm2d_relu: the consumer needs ShiftQuant activations (S > 0) and an observed "
               "input range > 0 with one channel (delayed scaling after a training call)");
  SHIFTQ_CHECK(call.training || eval_on_codes(call.input_range, state), ValueError,
               "quantized_l1_batch_norm2d_relu: eval on codes needs observed input ranges and running statistics");
  SHIFTQ_CHECK(call.training || !any_requires_grad({&x, &gamma, &beta}), ValueError,
               "quantized_l1_batch_norm2d_relu: eval codes carry no gradient; under grad mode run the norm, relu and "
               "convolution one by one (their straight-through gradients)");
  SHIFTQ_CHECK(x.numel() > 0, ShapeError, "quantized_l1_batch_norm2d_relu: empty input ", x.str());
  // The consumer's quantizer with its observed base: the codes of quantized_conv2d's own input pass.
  const float base = consumer_range.range();
  const QuantizeParams params = internal::activation_params(consumer.activations, 0)
                                    .with_observed_range(base, consumer_range.nonnegative());
  TrainingForward f;
  if (!call.training) {
    f.maps = eval_maps(x, gamma, beta, state, s, bits, *call.input_range);
  } else {
    f = s.channels_last ? nhwc_training_forward(x, gamma, beta, state, s.layout(), bits)
                        : nchw_training_forward(x, gamma, beta, state, s.layout(), bits, nullptr);
    record_statistics(f, call.input_range, state);  // as the norm's own call: before its consumer's quantizer
  }
  CodedActivation out;
  out.q = relu_codes(f.maps, s, params);
  const std::int64_t H = x.size(s.channels_last ? 1 : 2), W = x.size(s.channels_last ? 2 : 3);
  out.codes = out.q.codes.view({s.N, H, W, s.C});
  out.observer = &consumer_range;
  if (!call.training) return out;
  const float own = out.q.input_range;
  consumer_range.update(std::span<const float>(&own, 1), out.q.input_negative, own > base);
  if (!any_requires_grad({&x, &gamma, &beta})) return out;
  out.codes = record("quantized_l1_batch_norm2d_relu", out.codes, {&x, &gamma, &beta},
                     [nb = backward_state(f, s, state, gamma, beta, bits, call), maps = f.maps, s,
                      x_shape = x.shape()](const Tensor& g) {
                       ReluGradient r = relu_gradient(maps, s, g, x_shape);
                       return norm_backward(nb, r.dy, std::move(r.channel_max));
                     });
  return out;
}

Tensor quantized_l1_batch_norm2d_add_relu(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                          L1BatchNormState& state, const QConfig& config, const QuantCall& call,
                                          ImageLayout layout, const Tensor& shortcut) {
  const ImageShape s = checked_batch_norm_shape(x, gamma, beta, state, call.input_range, layout);
  const int bits = norm_bits(config, "quantized_l1_batch_norm2d_add_relu");
  check_dtype(shortcut, DType::f32, "quantized_l1_batch_norm2d_add_relu", "shortcut");
  SHIFTQ_CHECK(shortcut.shape() == x.shape(), ShapeError, "quantized_l1_batch_norm2d_add_relu: shortcut ",
               shortcut.str(), " must have the input's shape ", x.str());
  const bool need_grad = any_requires_grad({&x, &gamma, &beta, &shortcut});
  // Eval without observed ranges (the float map) or under grad mode (the straight-through probe):
  // the ops one by one.
  if (!call.training && (!eval_on_codes(call.input_range, state) || need_grad))
    return relu(add(quantized_l1_batch_norm2d(x, gamma, beta, state, config, call, layout), shortcut));
  if (!call.training) {
    SHIFTQ_CHECK(x.numel() > 0, ShapeError, "quantized_l1_batch_norm2d_add_relu: empty input ", x.str());
    return add_relu_output(eval_maps(x, gamma, beta, state, s, bits, *call.input_range), s, shortcut, Tensor());
  }
  TrainingForward f = s.channels_last ? nhwc_training_forward(x, gamma, beta, state, s.layout(), bits)
                                      : nchw_training_forward(x, gamma, beta, state, s.layout(), bits, nullptr);
  record_statistics(f, call.input_range, state);
  const std::int64_t block = s.P * s.C;
  Tensor mask = need_grad ? Tensor::uninitialized({s.N, (block + 7) / 8}, DType::u8) : Tensor();
  const Tensor out = add_relu_output(f.maps, s, shortcut, mask);
  if (!need_grad) return out;
  return record("quantized_l1_batch_norm2d_add_relu", out, {&x, &gamma, &beta, &shortcut},
                [nb = backward_state(f, s, state, gamma, beta, bits, call), mask, s](const Tensor& g) {
    ReluGradient r{Tensor::uninitialized(g.shape()), {}};
    const std::int64_t block = s.P * s.C, mask_stride = mask.size(1);
    const float* pg = g.data<float>();
    const std::uint8_t* bits = mask.data<std::uint8_t>();
    for_each_masked_sample(r, s, [&](std::int64_t n, float* dy) {
      kernels::relu_backward_mask_f32(pg + n * block, bits + n * mask_stride, dy, block);
    });
    std::vector<Tensor> grads = norm_backward(nb, r.dy, std::move(r.channel_max));
    grads.push_back(r.dy);  // the shortcut's: add() hands the same gradient to both inputs
    return grads;
  });
}

Tensor quantized_l1_layer_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps, float c,
                               const QConfig& config, const QuantCall& call) {
  check_dtype(x, DType::f32, "quantized_l1_layer_norm", "x");
  SHIFTQ_CHECK(x.dim() >= 1 && c > 0.0f && eps > 0.0f, ValueError, "quantized_l1_layer_norm: need rank >= 1, c > 0, eps > 0");
  const int bits = norm_bits(config, "quantized_l1_layer_norm");
  const std::int64_t D = x.size(-1), rows = x.numel() / std::max<std::int64_t>(D, 1);
  for (const Tensor* p : {&gamma, &beta})
    if (p->defined())
      SHIFTQ_CHECK(p->dtype() == DType::f32 && p->shape() == Shape{D}, ShapeError, "quantized_l1_layer_norm: ",
                   p->str(), " must be f32 [", D, "]");
  const Layout l{1, rows, D};
  check_layout(l, "quantized_l1_layer_norm");
  GroupQuantizer xq(x, l, bits, Rounding::nearest_even, {}, "l1_layer_norm input");
  Tensor y = Tensor::uninitialized(x.shape());
  const std::int8_t* q = xq.codes.data<std::int8_t>();
  const float* gm = gamma.defined() ? gamma.data<float>() : nullptr;
  const float* bt = beta.defined() ? beta.data<float>() : nullptr;
  float* py = y.data<float>();
  // One pass per row: quantize, statistics, y.
  const GroupStats st = statistics(
      xq, l, c, eps,
      [&](std::int64_t r, const GroupStats& stats) {
        kernels::l1_ln_forward_row_s8_f32(q + r * D, D, stats.scale[r] / stats.sigma[r], stats.mean_q[r], gm, bt, py + r * D);
      },
      [](std::int64_t, std::int64_t, const GroupStats&) {});
  const bool need_gamma = gamma.defined() && gamma.requires_grad(), need_beta = beta.defined() && beta.requires_grad();
  return record("quantized_l1_layer_norm", y, {&x, &gamma, &beta},
                [codes = xq.codes, st, l, c, gamma = gamma.detach(), need_gamma, need_beta, bits,
                 key = norm_gradient_key(call)](const Tensor& dy) {
    GroupQuantizer dq(dy, l, bits, Rounding::stochastic, key, "l1_layer_norm output gradient");
    const std::int8_t* q = codes.data<std::int8_t>();
    const std::int8_t* d = dq.codes.data<std::int8_t>();
    const float* sgs = dq.scales.data<float>();
    const std::int64_t rows = l.groups, D = l.inner;
    const float m = static_cast<float>(D);
    const float* gm = gamma.defined() ? gamma.data<float>() : nullptr;
    Tensor dx = Tensor::uninitialized(dy.shape());
    float* pdx = dx.data<float>();
    // Rows in fixed blocks (not per thread, so the sums do not depend on the thread count): each
    // row's gradient quantized, its dx, and the block's partial dgamma_j = sum dy xhat,
    // dbeta_j = sum dy in the same pass.
    const bool need_affine = need_gamma || need_beta;
    constexpr std::int64_t kBlockRows = 32;
    const std::int64_t blocks = (rows + kBlockRows - 1) / kBlockRows;
    std::vector<float> part_gamma(need_affine ? blocks * D : 0, 0.0f), part_beta(need_affine ? blocks * D : 0, 0.0f);
    detail::parallel_for(blocks, 1, [&](std::int64_t b0, std::int64_t b1) {
      for (std::int64_t b = b0; b < b1; ++b)
        for (std::int64_t r = b * kBlockRows; r < std::min(rows, (b + 1) * kBlockRows); ++r) {
          if (!dq.quantize_group(r)) continue;
          const std::int32_t s1 = static_cast<std::int32_t>(st.s1[r]);
          // gamma is per feature: the two means are gamma-weighted sums of int8 products.
          const kernels::L1RowGradientSums sums = kernels::l1_ln_backward_sums_s8(q + r * D, d + r * D, D, s1, gm);
          const float s = st.scale[r], sg = sgs[r], sigma = st.sigma[r];
          const float mean_g = sg * sums.sum_g / m, mean_gx = sg * s * sums.sum_gd / (m * m * sigma);
          const kernels::L1LayerNormBackward coef{s1, sg, 1.0f / sigma, mean_g, c * mean_gx, st.mean_sign[r],
                                                  s / sigma, st.mean_q[r]};
          kernels::l1_ln_backward_row_s8_f32(coef, q + r * D, d + r * D, D, gm, pdx + r * D,
                            need_affine ? part_gamma.data() + b * D : nullptr,
                            need_affine ? part_beta.data() + b * D : nullptr);
        }
    });
    dq.throw_if_nonfinite();
    Tensor dgamma, dbeta;
    if (need_affine) {  // the blocks' partial sums, in block order
      dgamma = Tensor::zeros({D});
      dbeta = Tensor::zeros({D});
      float* pg = dgamma.data<float>();
      float* pb = dbeta.data<float>();
      for (std::int64_t b = 0; b < blocks; ++b)
        for (std::int64_t j = 0; j < D; ++j) {
          pg[j] += part_gamma[b * D + j];
          pb[j] += part_beta[b * D + j];
        }
      if (!need_gamma) dgamma = Tensor();
      if (!need_beta) dbeta = Tensor();
    }
    return std::vector<Tensor>{dx, dgamma, dbeta};
  });
}

}  // namespace shiftq::quant
