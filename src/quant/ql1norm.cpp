// Fully quantized L1 BatchNorm2d / LayerNorm: int8 codes in, integer statistics, int8 saved input,
// int8 output gradient in, integer channel sums in backward.
#include "shiftq/quant/ql1norm.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "detail/parallel.hpp"
#include "shiftq/kernels/gemm.hpp"
#include "shiftq/kernels/l1norm.hpp"
#include "shiftq/kernels/quantize.hpp"

namespace shiftq::quant {
namespace {
// x viewed as [outer, groups, inner]; statistics per group.
struct Layout {
  std::int64_t outer, groups, inner;
  std::int64_t count() const { return outer * inner; }
};

// The kernel table of the current kernel path: the dispatched kernels or the scalar references.
struct L1Kernels {
  decltype(&kernels::l1_group_sums_s8) group_sums;
  decltype(&kernels::l1_gradient_sums_s8) gradient_sums;
  decltype(&kernels::affine_s8_f32) affine;
  decltype(&kernels::l1_bn_backward_s8_f32) bn_backward;
  decltype(&kernels::l1_ln_forward_row_s8_f32) ln_forward_row;
  decltype(&kernels::l1_ln_backward_sums_s8) ln_backward_sums;
  decltype(&kernels::l1_ln_backward_row_s8_f32) ln_backward_row;
};
const L1Kernels& l1_kernels() {
  static constexpr L1Kernels optimized{&kernels::l1_group_sums_s8,         &kernels::l1_gradient_sums_s8,
                                       &kernels::affine_s8_f32,            &kernels::l1_bn_backward_s8_f32,
                                       &kernels::l1_ln_forward_row_s8_f32, &kernels::l1_ln_backward_sums_s8,
                                       &kernels::l1_ln_backward_row_s8_f32};
  static constexpr L1Kernels reference{&kernels::l1_group_sums_s8_ref,         &kernels::l1_gradient_sums_s8_ref,
                                       &kernels::affine_s8_f32_ref,            &kernels::l1_bn_backward_s8_f32_ref,
                                       &kernels::l1_ln_forward_row_s8_f32_ref, &kernels::l1_ln_backward_sums_s8_ref,
                                       &kernels::l1_ln_backward_row_s8_f32_ref};
  return kernels::kernel_path() == kernels::KernelPath::reference ? reference : optimized;
}

// Group g of codes viewed as [outer, groups, inner]: `outer` runs of `inner` codes.
kernels::L1GroupSums group_sums(const L1Kernels& k, const std::int8_t* q, const Layout& l, std::int64_t g) {
  return k.group_sums(q + g * l.inner, l.outer, l.inner, l.groups * l.inner);
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
    reference_ = kernels::kernel_path() == kernels::KernelPath::reference;
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
    const float scale = mx > 0.0f ? mx / qmax_ : 1.0f, inv = 1.0f / scale;  // all zero: v = 0
    scales.data<float>()[g] = scale;
    for (std::int64_t r = g; r < rows; r += l_.groups) row_inv_[r] = inv;
    if (reference_)
      kernels::quantize_pack_f32_s8_ref(args_, g, rows, l_.groups);
    else
      kernels::quantize_pack_f32_s8(args_, g, rows, l_.groups);
    return true;
  }
  // Quantizes every group at once (BatchNorm: `outer` > 1 rows per group, `inner` values each):
  // seen as [outer, groups * inner], each sample's channels are one contiguous row, so the range
  // and pack kernels run on full-width vectors instead of `inner`-value rows (49 for 7x7: four
  // 16-lane steps, a quarter of them one lane wide, and per-row setup for every 49 values). Each
  // column gets its channel's 1/s as col_mul: (x * 1) * inv is x * inv, and the element index of
  // the stochastic draws is the same, so the codes equal quantize_group's. Call before any
  // quantize_group; false (codes unset, remembered for throw_if_nonfinite) on NaN or Inf.
  // Worth it for BatchNorm rows shorter than one 64-code store; longer rows (14x14, 28x28) keep
  // the per-channel passes, whose second read hits the cache (a whole-tensor pass would not).
  bool quantizes_all_at_once() const { return l_.outer > 1 && l_.inner < 64; }
  bool quantize_all() {
    const std::int64_t n = l_.outer, width = l_.groups * l_.inner;
    const std::int64_t blocks = std::min<std::int64_t>(n * width < (1 << 15) ? 1 : get_num_threads(), n);
    // x: [n, width]; per-column maxima per block of samples, then per channel.
    std::vector<std::vector<float>> partial(static_cast<std::size_t>(blocks), std::vector<float>(width, 0.0f));
    std::vector<char> finite(static_cast<std::size_t>(blocks), 1);
    detail::parallel_for(blocks, 1, [&](std::int64_t b0, std::int64_t b1) {
      for (std::int64_t b = b0; b < b1; ++b)
        finite[b] = kernels::absmax_cols_f32(args_.x, n * b / blocks, n * (b + 1) / blocks, width, nullptr, partial[b].data());
    });
    if (std::find(finite.begin(), finite.end(), 0) != finite.end()) {
      nonfinite_ = true;
      return false;
    }
    col_inv_.resize(static_cast<std::size_t>(width));
    float* scales_out = scales.data<float>();
    for (std::int64_t g = 0; g < l_.groups; ++g) {
      float mx = 0.0f;
      for (const std::vector<float>& block : partial)
        for (std::int64_t j = g * l_.inner; j < (g + 1) * l_.inner; ++j) mx = std::max(mx, block[j]);
      const float scale = mx > 0.0f ? mx / qmax_ : 1.0f, inv = 1.0f / scale;  // all zero: v = 0
      scales_out[g] = scale;
      std::fill(col_inv_.begin() + g * l_.inner, col_inv_.begin() + (g + 1) * l_.inner, inv);
    }
    col_ones_.assign(static_cast<std::size_t>(width), 1.0f);
    kernels::QuantizePackArgs wide = args_;
    wide.rows = n;
    wide.cols = width;
    wide.row_mul = ones_.data();  // ones_ holds >= outer * groups >= n entries
    wide.row_pack = ones_.data();
    wide.col_mul = col_inv_.data();
    wide.col_pack = col_ones_.data();
    wide.unit_factors = false;
    detail::parallel_for(n, std::max<std::int64_t>(1, 4096 / width), [&](std::int64_t r0, std::int64_t r1) {
      if (reference_)
        kernels::quantize_pack_f32_s8_ref(wide, r0, r1);
      else
        kernels::quantize_pack_f32_s8(wide, r0, r1);
    });
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

 private:
  Tensor x_;
  Layout l_;
  const char* what_;
  float qmax_ = 127.0f;
  std::vector<float> row_max_, row_inv_, ones_, col_inv_, col_ones_;
  kernels::QuantizePackArgs args_{};
  bool reference_ = false;
  std::atomic<bool> nonfinite_{false};
};

// Per-group statistics in real units from the integer sums.
struct GroupStats {
  std::vector<std::int64_t> s1;
  std::vector<float> scale;      // the group's input scale s
  std::vector<float> mean_q;     // S1 / m (code units)
  std::vector<float> sigma;      // c * s * D / m^2 + eps (real units)
  std::vector<float> mean_sign;  // SG / m
};

// Quantizes group g of the input (7x7 BatchNorm: all groups first, in two wide passes), computes its
// statistics, then calls `then(g, stats)` on the same thread while the group's codes are in cache.
template <class Then>
GroupStats statistics(GroupQuantizer& xq, const Layout& l, float c, float eps, Then then) {
  GroupStats st;
  st.s1.resize(l.groups);
  st.scale.resize(l.groups);
  st.mean_q.resize(l.groups);
  st.sigma.resize(l.groups);
  st.mean_sign.resize(l.groups);
  const std::int8_t* q = xq.codes.data<std::int8_t>();
  const float* scales = xq.scales.data<float>();
  const double m = static_cast<double>(l.count());
  const L1Kernels& k = l1_kernels();
  const bool all_at_once = xq.quantizes_all_at_once();
  if (all_at_once && !xq.quantize_all()) xq.throw_if_nonfinite();
  detail::parallel_for(l.groups, std::max<std::int64_t>(1, 4096 / l.count()), [&](std::int64_t g0, std::int64_t g1) {
    for (std::int64_t g = g0; g < g1; ++g) {
      if (!all_at_once && !xq.quantize_group(g)) continue;
      const kernels::L1GroupSums sums = group_sums(k, q, l, g);
      st.s1[g] = sums.s1;
      st.scale[g] = scales[g];
      st.mean_q[g] = static_cast<float>(static_cast<double>(sums.s1) / m);
      st.sigma[g] = static_cast<float>(c * scales[g] * static_cast<double>(sums.abs_dev) / (m * m) + eps);
      st.mean_sign[g] = static_cast<float>(static_cast<double>(sums.sign) / m);
      then(g, st);
    }
  });
  xq.throw_if_nonfinite();
  return st;
}
}  // namespace

void QuantizedNormConfig::validate() const {
  SHIFTQ_CHECK(bits >= 2 && bits <= 8 && grad_bits >= 2 && grad_bits <= 8, ValueError,
               "quantized L1 norm: bits and grad_bits must be in [2, 8], got ", bits, " and ", grad_bits);
}

L1Statistics l1_integer_statistics(const QTensor& x, std::int64_t outer, std::int64_t groups, std::int64_t inner) {
  const Layout l{outer, groups, inner};
  check_layout(l, "l1_integer_statistics");
  SHIFTQ_CHECK(x.codes.dtype() == DType::s8 && x.codes.numel() == outer * groups * inner && x.scales.numel() == 1,
               ValueError, "l1_integer_statistics: needs s8 codes of ", outer * groups * inner,
               " elements with a per-tensor scale");
  L1Statistics out;
  const double s = x.scales.data<float>()[0], m = static_cast<double>(l.count());
  for (std::int64_t g = 0; g < groups; ++g) {
    const kernels::L1GroupSums sums = group_sums(l1_kernels(), x.codes.data<std::int8_t>(), l, g);
    out.mean.push_back(s * static_cast<double>(sums.s1) / m);
    out.mean_abs_dev.push_back(s * static_cast<double>(sums.abs_dev) / (m * m));
  }
  return out;
}

Tensor quantized_l1_batch_norm2d(const Tensor& x, const Tensor& gamma, const Tensor& beta, L1BatchNormState& state,
                                 bool training, const QuantizedNormConfig& config, std::uint64_t step) {
  if (!training) return l1_batch_norm2d(x, gamma, beta, state, false);  // eval: a per-channel affine map
  check_dtype(x, DType::f32, "quantized_l1_batch_norm2d", "x");
  check_rank(x, 4, "quantized_l1_batch_norm2d", "x");
  config.validate();
  const std::int64_t C = x.size(1);
  for (const Tensor* p : {&gamma, &beta, static_cast<const Tensor*>(&state.running_mean), static_cast<const Tensor*>(&state.running_sigma)})
    if (p->defined())
      SHIFTQ_CHECK(p->dtype() == DType::f32 && p->shape() == Shape{C}, ShapeError, "quantized_l1_batch_norm2d: ",
                   "per-channel tensor ", p->str(), " must be f32 [", C, "]");
  const Layout l{x.size(0), C, x.size(2) * x.size(3)};
  check_layout(l, "quantized_l1_batch_norm2d");
  GroupQuantizer xq(x, l, config.bits, Rounding::nearest_even, {}, "l1_batch_norm2d input");
  // One pass per channel: quantize it (or all first, see quantize_all), sum its codes, write y = a_c * q + b_c with
  // a_c = gamma * s_c / sigma, b_c = beta - a_c * mean_q.
  Tensor y = Tensor::uninitialized(x.shape());
  const std::int8_t* q = xq.codes.data<std::int8_t>();
  const float* gm = gamma.defined() ? gamma.data<float>() : nullptr;
  const float* bt = beta.defined() ? beta.data<float>() : nullptr;
  float* py = y.data<float>();
  const L1Kernels& k = l1_kernels();
  const GroupStats st = statistics(xq, l, state.c, state.eps, [&](std::int64_t g, const GroupStats& stats) {
    const float a = (gm ? gm[g] : 1.0f) * stats.scale[g] / stats.sigma[g], b = (bt ? bt[g] : 0.0f) - a * stats.mean_q[g];
    k.affine(q + g * l.inner, l.outer, l.inner, C * l.inner, a, b, py + g * l.inner);
  });
  if (state.running_mean.defined()) {
    float* rm = state.running_mean.data<float>();
    float* rs = state.running_sigma.data<float>();
    for (std::int64_t g = 0; g < C; ++g) {
      rm[g] = (1.0f - state.momentum) * rm[g] + state.momentum * st.mean_q[g] * st.scale[g];
      rs[g] = (1.0f - state.momentum) * rs[g] + state.momentum * st.sigma[g];
    }
    state.running_mean.bump_version();
    state.running_sigma.bump_version();
  }
  const bool need_gamma = gamma.defined() && gamma.requires_grad(), need_beta = beta.defined() && beta.requires_grad();
  return record("quantized_l1_batch_norm2d", y, {&x, &gamma, &beta},
                [codes = xq.codes, st, l, c = state.c, gamma = gamma.detach(), need_gamma, need_beta, config, step](const Tensor& dy) {
    GroupQuantizer dq(dy, l, config.grad_bits, Rounding::stochastic, {config.seed, step, config.layer_id},
                      "l1_batch_norm2d output gradient");
    const std::int8_t* q = codes.data<std::int8_t>();
    const std::int8_t* d = dq.codes.data<std::int8_t>();
    const double m = static_cast<double>(l.count());
    const float* gm = gamma.defined() ? gamma.data<float>() : nullptr;
    Tensor dx = Tensor::uninitialized(dy.shape());
    Tensor dgamma = need_gamma ? Tensor::empty({l.groups}) : Tensor();
    Tensor dbeta = need_beta ? Tensor::empty({l.groups}) : Tensor();
    float* pdx = dx.data<float>();
    const L1Kernels& k = l1_kernels();
    // One pass per channel: quantize its gradient (or all channels first, see quantize_all), the two
    // integer sums, dx.
    const bool all_at_once = dq.quantizes_all_at_once();
    if (all_at_once && !dq.quantize_all()) dq.throw_if_nonfinite();
    detail::parallel_for(l.groups, 1, [&](std::int64_t g0, std::int64_t g1) {
      for (std::int64_t g = g0; g < g1; ++g) {
        if (!all_at_once && !dq.quantize_group(g)) continue;
        // G1 = sum dq, G2 = sum dq * (m q - S1) = m * sum(dq q) - S1 * G1: integer sums.
        const std::int64_t mi = l.count(), s1 = st.s1[g];
        const kernels::L1GradientSums sums = k.gradient_sums(d + g * l.inner, q + g * l.inner, l.outer, l.inner,
                                                             l.groups * l.inner);
        const std::int64_t g1s = sums.sum_d, g2s = mi * sums.sum_dq - s1 * g1s;
        const float s = st.scale[g], sg = dq.scales.data<float>()[g];
        const float w = gm ? gm[g] : 1.0f, sigma = st.sigma[g], inv = 1.0f / sigma;
        // mean(g) = w sg G1 / m; mean(g xhat) = w sg s G2 / (m^2 sigma)
        const float mean_g = static_cast<float>(w * sg * static_cast<double>(g1s) / m);
        const float mean_gx = static_cast<float>(w * sg * s * static_cast<double>(g2s) / (m * m * sigma));
        if (need_gamma) dgamma.data<float>()[g] = static_cast<float>(sg * s * static_cast<double>(g2s) / (m * sigma));
        if (need_beta) dbeta.data<float>()[g] = static_cast<float>(sg * static_cast<double>(g1s));
        // dx = k_d * dq + k_s * sgn(m q - S1) + k_0.
        const kernels::L1BatchNormBackward coef{static_cast<std::int32_t>(mi), static_cast<std::int32_t>(s1),
                                                inv * w * sg, -inv * c * mean_gx,
                                                inv * (-mean_g + c * mean_gx * st.mean_sign[g])};
        k.bn_backward(coef, q + g * l.inner, d + g * l.inner, l.outer, l.inner, l.groups * l.inner, pdx + g * l.inner);
      }
    });
    dq.throw_if_nonfinite();
    return std::vector<Tensor>{dx, dgamma, dbeta};
  });
}

Tensor quantized_l1_layer_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps, float c,
                               const QuantizedNormConfig& config, std::uint64_t step) {
  check_dtype(x, DType::f32, "quantized_l1_layer_norm", "x");
  SHIFTQ_CHECK(x.dim() >= 1 && c > 0.0f && eps > 0.0f, ValueError, "quantized_l1_layer_norm: need rank >= 1, c > 0, eps > 0");
  config.validate();
  const std::int64_t D = x.size(-1), rows = x.numel() / std::max<std::int64_t>(D, 1);
  for (const Tensor* p : {&gamma, &beta})
    if (p->defined())
      SHIFTQ_CHECK(p->dtype() == DType::f32 && p->shape() == Shape{D}, ShapeError, "quantized_l1_layer_norm: ",
                   p->str(), " must be f32 [", D, "]");
  const Layout l{1, rows, D};
  check_layout(l, "quantized_l1_layer_norm");
  GroupQuantizer xq(x, l, config.bits, Rounding::nearest_even, {}, "l1_layer_norm input");
  Tensor y = Tensor::uninitialized(x.shape());
  const std::int8_t* q = xq.codes.data<std::int8_t>();
  const float* gm = gamma.defined() ? gamma.data<float>() : nullptr;
  const float* bt = beta.defined() ? beta.data<float>() : nullptr;
  float* py = y.data<float>();
  const L1Kernels& k = l1_kernels();
  // One pass per row: quantize, statistics, y.
  const GroupStats st = statistics(xq, l, c, eps, [&](std::int64_t r, const GroupStats& stats) {
    k.ln_forward_row(q + r * D, D, stats.scale[r] / stats.sigma[r], stats.mean_q[r], gm, bt, py + r * D);
  });
  const bool need_gamma = gamma.defined() && gamma.requires_grad(), need_beta = beta.defined() && beta.requires_grad();
  return record("quantized_l1_layer_norm", y, {&x, &gamma, &beta},
                [codes = xq.codes, st, l, c, gamma = gamma.detach(), need_gamma, need_beta, config, step](const Tensor& dy) {
    GroupQuantizer dq(dy, l, config.grad_bits, Rounding::stochastic, {config.seed, step, config.layer_id},
                      "l1_layer_norm output gradient");
    const std::int8_t* q = codes.data<std::int8_t>();
    const std::int8_t* d = dq.codes.data<std::int8_t>();
    const float* sgs = dq.scales.data<float>();
    const std::int64_t rows = l.groups, D = l.inner;
    const float m = static_cast<float>(D);
    const float* gm = gamma.defined() ? gamma.data<float>() : nullptr;
    Tensor dx = Tensor::uninitialized(dy.shape());
    float* pdx = dx.data<float>();
    const L1Kernels& k = l1_kernels();
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
          const kernels::L1RowGradientSums sums = k.ln_backward_sums(q + r * D, d + r * D, D, s1, gm);
          const float s = st.scale[r], sg = sgs[r], sigma = st.sigma[r];
          const float mean_g = sg * sums.sum_g / m, mean_gx = sg * s * sums.sum_gd / (m * m * sigma);
          const kernels::L1LayerNormBackward coef{s1, sg, 1.0f / sigma, mean_g, c * mean_gx, st.mean_sign[r],
                                                  s / sigma, st.mean_q[r]};
          k.ln_backward_row(coef, q + r * D, d + r * D, D, gm, pdx + r * D,
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
