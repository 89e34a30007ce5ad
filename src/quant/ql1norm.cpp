// Fully quantized L1 BatchNorm2d / LayerNorm: int8 codes in, integer statistics, int8 saved input,
// int8 output gradient in, integer channel sums in backward.
#include "shiftq/quant/ql1norm.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "detail/parallel.hpp"

namespace shiftq::quant {
namespace {
// x viewed as [outer, groups, inner]; statistics per group.
struct Layout {
  std::int64_t outer, groups, inner;
  std::int64_t count() const { return outer * inner; }
};

// Integer sums of one group: S1 = sum q, D = sum |m q - S1|, SG = sum sgn(m q - S1).
struct GroupSums {
  std::int64_t s1 = 0, abs_dev = 0, sign = 0;
};

// Two vectorizable passes over the group's codes: S1 = sum q, then, with the threshold m q vs S1,
// the counts and code sums of the elements above and below the mean. All partial sums are int32
// (|code sums| <= 128 m < 2^30, |m q| <= 2^30 for m < 2^23); the totals are exact int64:
//     D = sum |m q - S1| = m (P - N) - S1 (c_p - c_n),   SG = c_p - c_n.
GroupSums group_sums(const std::int8_t* q, const Layout& l, std::int64_t g) {
  GroupSums s;
  for (std::int64_t o = 0; o < l.outer; ++o) {
    const std::int8_t* p = q + (o * l.groups + g) * l.inner;
    std::int32_t acc = 0;
    for (std::int64_t i = 0; i < l.inner; ++i) acc += p[i];
    s.s1 += acc;
  }
  const std::int32_t mi = static_cast<std::int32_t>(l.count()), s1 = static_cast<std::int32_t>(s.s1);
  std::int64_t sum_pos = 0, sum_neg = 0, count_pos = 0, count_neg = 0;
  for (std::int64_t o = 0; o < l.outer; ++o) {
    const std::int8_t* p = q + (o * l.groups + g) * l.inner;
    std::int32_t sp = 0, sn = 0, cp = 0, cn = 0;
    for (std::int64_t i = 0; i < l.inner; ++i) {
      const std::int32_t v = p[i], d = mi * v - s1;
      const std::int32_t above = d > 0, below = d < 0;
      sp += above * v;
      cp += above;
      sn += below * v;
      cn += below;
    }
    sum_pos += sp;
    sum_neg += sn;
    count_pos += cp;
    count_neg += cn;
  }
  s.abs_dev = l.count() * (sum_pos - sum_neg) - s.s1 * (count_pos - count_neg);
  s.sign = count_pos - count_neg;
  return s;
}

// sum d and sum d * q over one group (int32 per row chunk: |d q| <= 128^2, chunks of 2^16).
void gradient_sums(const std::int8_t* d, const std::int8_t* q, const Layout& l, std::int64_t g, std::int64_t& sum_d,
                   std::int64_t& sum_dq) {
  sum_d = sum_dq = 0;
  for (std::int64_t o = 0; o < l.outer; ++o) {
    const std::int64_t base = (o * l.groups + g) * l.inner;
    for (std::int64_t i0 = 0; i0 < l.inner; i0 += 65536) {
      const std::int64_t i1 = std::min(l.inner, i0 + 65536);
      std::int32_t a1 = 0, a2 = 0;
      for (std::int64_t i = i0; i < i1; ++i) {
        const std::int16_t dv = d[base + i], qv = q[base + i];
        a1 += dv;
        a2 += static_cast<std::int32_t>(dv * qv);
      }
      sum_d += a1;
      sum_dq += a2;
    }
  }
}

void check_layout(const Layout& l, const char* op) {
  SHIFTQ_CHECK(l.count() > 1 && l.count() < (std::int64_t{1} << 23), ShapeError, op,
               ": each normalization group needs 2 .. 8388607 elements for the int32 statistics, got ", l.count());
}

QTensor quantize_codes(const Tensor& x, const Layout& l, int bits, const char* what) {
  return quantize(x.view({l.outer * l.groups, l.inner}), QuantizeParams::per_tensor(bits), what);
}

QTensor quantize_gradient(const Tensor& g, const Layout& l, const QuantizedNormConfig& c, std::uint64_t step,
                          const char* what) {
  return quantize(g.view({l.outer * l.groups, l.inner}),
                  QuantizeParams::per_tensor(c.grad_bits).with_rounding(Rounding::stochastic, {c.seed, step, c.layer_id}),
                  what);
}

// Per-group statistics in real units from the integer sums.
struct GroupStats {
  std::vector<std::int64_t> s1;
  std::vector<float> mean_q;     // S1 / m (code units)
  std::vector<float> sigma;      // c * s * D / m^2 + eps (real units)
  std::vector<float> mean_sign;  // SG / m
};

// `then(g, stats)` runs right after group g's statistics, on the same thread (the codes still in cache).
template <class Then>
GroupStats statistics(const QTensor& xq, const Layout& l, float c, float eps, Then then) {
  GroupStats st;
  st.s1.resize(l.groups);
  st.mean_q.resize(l.groups);
  st.sigma.resize(l.groups);
  st.mean_sign.resize(l.groups);
  const std::int8_t* q = xq.codes.data<std::int8_t>();
  const double s = xq.scales.data<float>()[0], m = static_cast<double>(l.count());
  detail::parallel_for(l.groups, std::max<std::int64_t>(1, 4096 / l.count()), [&](std::int64_t g0, std::int64_t g1) {
    for (std::int64_t g = g0; g < g1; ++g) {
      const GroupSums sums = group_sums(q, l, g);
      st.s1[g] = sums.s1;
      st.mean_q[g] = static_cast<float>(static_cast<double>(sums.s1) / m);
      st.sigma[g] = static_cast<float>(c * s * static_cast<double>(sums.abs_dev) / (m * m) + eps);
      st.mean_sign[g] = static_cast<float>(static_cast<double>(sums.sign) / m);
      then(g, st);
    }
  });
  return st;
}
GroupStats statistics(const QTensor& xq, const Layout& l, float c, float eps) {
  return statistics(xq, l, c, eps, [](std::int64_t, const GroupStats&) {});
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
    const GroupSums sums = group_sums(x.codes.data<std::int8_t>(), l, g);
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
  const QTensor xq = quantize_codes(x, l, config.bits, "l1_batch_norm2d input");
  const float s = xq.scales.data<float>()[0];
  // y = a_c * q + b_c with a_c = gamma * s / sigma, b_c = beta - a_c * mean_q, written per channel
  // as soon as its statistics are known.
  Tensor y = Tensor::uninitialized(x.shape());
  const std::int8_t* q = xq.codes.data<std::int8_t>();
  const float* gm = gamma.defined() ? gamma.data<float>() : nullptr;
  const float* bt = beta.defined() ? beta.data<float>() : nullptr;
  float* py = y.data<float>();
  const GroupStats st = statistics(xq, l, state.c, state.eps, [&](std::int64_t g, const GroupStats& stats) {
    const float a = (gm ? gm[g] : 1.0f) * s / stats.sigma[g], b = (bt ? bt[g] : 0.0f) - a * stats.mean_q[g];
    for (std::int64_t o = 0; o < l.outer; ++o) {
      const std::int64_t base = (o * C + g) * l.inner;
      for (std::int64_t i = 0; i < l.inner; ++i) py[base + i] = a * static_cast<float>(q[base + i]) + b;
    }
  });
  if (state.running_mean.defined()) {
    float* rm = state.running_mean.data<float>();
    float* rs = state.running_sigma.data<float>();
    for (std::int64_t g = 0; g < C; ++g) {
      rm[g] = (1.0f - state.momentum) * rm[g] + state.momentum * st.mean_q[g] * s;
      rs[g] = (1.0f - state.momentum) * rs[g] + state.momentum * st.sigma[g];
    }
    state.running_mean.bump_version();
    state.running_sigma.bump_version();
  }
  const bool need_gamma = gamma.defined() && gamma.requires_grad(), need_beta = beta.defined() && beta.requires_grad();
  return record("quantized_l1_batch_norm2d", y, {&x, &gamma, &beta},
                [xq, st, l, c = state.c, gamma = gamma.detach(), need_gamma, need_beta, config, step](const Tensor& dy) {
    const QTensor gq = quantize_gradient(dy, l, config, step, "l1_batch_norm2d output gradient");
    const std::int8_t* q = xq.codes.data<std::int8_t>();
    const std::int8_t* d = gq.codes.data<std::int8_t>();
    const float s = xq.scales.data<float>()[0], sg = gq.scales.data<float>()[0];
    const double m = static_cast<double>(l.count());
    const float* gm = gamma.defined() ? gamma.data<float>() : nullptr;
    Tensor dx = Tensor::uninitialized(dy.shape());
    Tensor dgamma = need_gamma ? Tensor::empty({l.groups}) : Tensor();
    Tensor dbeta = need_beta ? Tensor::empty({l.groups}) : Tensor();
    float* pdx = dx.data<float>();
    detail::parallel_for(l.groups, 1, [&](std::int64_t g0, std::int64_t g1) {
      for (std::int64_t g = g0; g < g1; ++g) {
        // G1 = sum dq, G2 = sum dq * (m q - S1) = m * sum(dq q) - S1 * G1: integer sums.
        const std::int64_t mi = l.count(), s1 = st.s1[g];
        std::int64_t g1s = 0, dqs = 0;
        gradient_sums(d, q, l, g, g1s, dqs);
        const std::int64_t g2s = mi * dqs - s1 * g1s;
        const float w = gm ? gm[g] : 1.0f, sigma = st.sigma[g], inv = 1.0f / sigma;
        // mean(g) = w sg G1 / m; mean(g xhat) = w sg s G2 / (m^2 sigma)
        const float mean_g = static_cast<float>(w * sg * static_cast<double>(g1s) / m);
        const float mean_gx = static_cast<float>(w * sg * s * static_cast<double>(g2s) / (m * m * sigma));
        if (need_gamma) dgamma.data<float>()[g] = static_cast<float>(sg * s * static_cast<double>(g2s) / (m * sigma));
        if (need_beta) dbeta.data<float>()[g] = static_cast<float>(sg * static_cast<double>(g1s));
        const float k_d = inv * w * sg, k_s = -inv * c * mean_gx, k_0 = inv * (-mean_g + c * mean_gx * st.mean_sign[g]);
        // dx = k_d * dq + k_s * sgn(m q - S1) + k_0 (|m q - S1| < 2^31: int32 lanes).
        const std::int32_t m32 = static_cast<std::int32_t>(mi), s1_32 = static_cast<std::int32_t>(s1);
        for (std::int64_t o = 0; o < l.outer; ++o) {
          const std::int64_t base = (o * l.groups + g) * l.inner;
          const std::int8_t* qo = q + base;
          const std::int8_t* dq = d + base;
          float* out = pdx + base;
          for (std::int64_t i = 0; i < l.inner; ++i) {
            const std::int32_t dev = m32 * qo[i] - s1_32;
            out[i] = k_d * static_cast<float>(dq[i]) + (k_s * static_cast<float>((dev > 0) - (dev < 0)) + k_0);
          }
        }
      }
    });
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
  const QTensor xq = quantize_codes(x, l, config.bits, "l1_layer_norm input");
  const GroupStats st = statistics(xq, l, c, eps);
  const float s = xq.scales.data<float>()[0];
  Tensor y = Tensor::uninitialized(x.shape());
  const std::int8_t* q = xq.codes.data<std::int8_t>();
  const float* gm = gamma.defined() ? gamma.data<float>() : nullptr;
  const float* bt = beta.defined() ? beta.data<float>() : nullptr;
  float* py = y.data<float>();
  detail::parallel_for(rows, 16, [&](std::int64_t r0, std::int64_t r1) {
    for (std::int64_t r = r0; r < r1; ++r) {
      const float a = s / st.sigma[r], mu = st.mean_q[r];
      for (std::int64_t j = 0; j < D; ++j) {
        const float xhat = a * (static_cast<float>(q[r * D + j]) - mu);
        py[r * D + j] = (gm ? gm[j] : 1.0f) * xhat + (bt ? bt[j] : 0.0f);
      }
    }
  });
  const bool need_gamma = gamma.defined() && gamma.requires_grad(), need_beta = beta.defined() && beta.requires_grad();
  return record("quantized_l1_layer_norm", y, {&x, &gamma, &beta},
                [xq, st, l, c, gamma = gamma.detach(), need_gamma, need_beta, config, step](const Tensor& dy) {
    const QTensor gq = quantize_gradient(dy, l, config, step, "l1_layer_norm output gradient");
    const std::int8_t* q = xq.codes.data<std::int8_t>();
    const std::int8_t* d = gq.codes.data<std::int8_t>();
    const float s = xq.scales.data<float>()[0], sg = gq.scales.data<float>()[0];
    const std::int64_t rows = l.groups, D = l.inner;
    const float m = static_cast<float>(D);
    const float* gm = gamma.defined() ? gamma.data<float>() : nullptr;
    Tensor dx = Tensor::uninitialized(dy.shape());
    float* pdx = dx.data<float>();
    // Rows in fixed blocks (not per thread, so the sums do not depend on the thread count): each
    // row's dx, and the block's partial dgamma_j = sum dy xhat, dbeta_j = sum dy in the same pass.
    const bool need_affine = need_gamma || need_beta;
    constexpr std::int64_t kBlockRows = 32;
    const std::int64_t blocks = (rows + kBlockRows - 1) / kBlockRows;
    std::vector<float> part_gamma(need_affine ? blocks * D : 0, 0.0f), part_beta(need_affine ? blocks * D : 0, 0.0f);
    detail::parallel_for(blocks, 1, [&](std::int64_t b0, std::int64_t b1) {
      for (std::int64_t r = b0 * kBlockRows; r < std::min(rows, b1 * kBlockRows); ++r) {
        const std::int32_t mi = static_cast<std::int32_t>(D), s1 = static_cast<std::int32_t>(st.s1[r]);
        // gamma is per feature: the two means are gamma-weighted sums of int8 products.
        float sum_g = 0.0f, sum_gd = 0.0f;
        const std::int8_t* dr = d + r * D;
        const std::int8_t* qr = q + r * D;
#pragma omp simd reduction(+ : sum_g, sum_gd)
        for (std::int64_t j = 0; j < D; ++j) {
          const float gj = (gm ? gm[j] : 1.0f) * static_cast<float>(dr[j]);
          sum_g += gj;
          sum_gd += gj * static_cast<float>(mi * qr[j] - s1);
        }
        const float sigma = st.sigma[r], inv = 1.0f / sigma;
        const float mean_g = sg * sum_g / m, mean_gx = sg * s * sum_gd / (m * m * sigma);
        const float k_s = c * mean_gx, ms = st.mean_sign[r];
        float* dxr = pdx + r * D;
#pragma omp simd
        for (std::int64_t j = 0; j < D; ++j) {
          const std::int32_t dev = mi * qr[j] - s1;
          const float sgn = static_cast<float>((dev > 0) - (dev < 0));
          const float gj = (gm ? gm[j] : 1.0f) * sg * static_cast<float>(dr[j]);
          dxr[j] = inv * (gj - mean_g - k_s * (sgn - ms));
        }
        if (!need_affine) continue;
        const float a = s / sigma, mu = st.mean_q[r];
        float* pg = part_gamma.data() + (r / kBlockRows) * D;
        float* pb = part_beta.data() + (r / kBlockRows) * D;
#pragma omp simd
        for (std::int64_t j = 0; j < D; ++j) {
          const float dyj = sg * static_cast<float>(dr[j]);
          pg[j] += dyj * a * (static_cast<float>(qr[j]) - mu);
          pb[j] += dyj;
        }
      }
    });
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
