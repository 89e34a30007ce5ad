// ShiftQuant / per-tensor / per-row quantizers: range and packing invariants, exactness of the
// spec's definitions, optimized kernels bit-exact against the scalar reference, stochastic rounding
// unbiased and thread-count independent, MSE against per-tensor and ideal per-channel scales.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <shiftq/kernels/quantize.hpp>
#include <shiftq/quant/qtensor.hpp>
#include <shiftq/shiftq.hpp>

#include "quant/qlayers_internal.hpp"  // quantize_gradient_pair

namespace shiftq::quant {
namespace {

// G[rows, cols] = U(-1, 1) * range[c]: the inner axis (columns = channels) spans many octaves.
Tensor channel_spread(std::int64_t rows, std::int64_t cols, const std::vector<float>& range, Generator& gen) {
  Tensor g = Tensor::empty({rows, cols});
  float* p = g.data<float>();
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) p[r * cols + c] = gen.uniform(-1.0f, 1.0f) * range[c];
  return g;
}

std::vector<float> log_uniform_ranges(std::int64_t n, float lo_exp, float hi_exp, Generator& gen) {
  std::vector<float> r(n);
  for (auto& v : r) v = std::exp2(gen.uniform(lo_exp, hi_exp));
  return r;
}

double mse(const Tensor& a, const Tensor& b) {
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  double acc = 0.0;
  for (std::int64_t i = 0; i < a.numel(); ++i) acc += (double(pa[i]) - pb[i]) * (double(pa[i]) - pb[i]);
  return acc / static_cast<double>(a.numel());
}

// Ideal per-channel quantization: one float scale per column (what group quantization approaches).
Tensor ideal_per_channel(const Tensor& g, int bits, Rounding rounding, std::uint64_t seed) {
  const std::int64_t R = g.size(0), C = g.size(1);
  const float qmax = static_cast<float>((1 << (bits - 1)) - 1);
  Tensor out = Tensor::empty({R, C});
  const float* p = g.data<float>();
  float* o = out.data<float>();
  Generator gen(seed);
  for (std::int64_t c = 0; c < C; ++c) {
    float m = 0.0f;
    for (std::int64_t r = 0; r < R; ++r) m = std::max(m, std::fabs(p[r * C + c]));
    const float s = m > 0 ? m / qmax : 1.0f;
    for (std::int64_t r = 0; r < R; ++r) {
      const float y = p[r * C + c] / s;
      const float q = rounding == Rounding::stochastic ? std::floor(y + gen.uniform()) : std::nearbyint(y);
      o[r * C + c] = std::min(qmax, std::max(-qmax, q)) * s;
    }
  }
  return out;
}

void check_invariants(const Tensor& x, const QTensor& q) {
  const std::int64_t R = x.size(0), C = x.size(1);
  const int S = q.shift_budget, qmax = q.qmax();
  const bool on_cols = q.inner_axis == 1;
  const std::int64_t inner_len = on_cols ? C : R;
  const float* px = x.data<float>();
  const std::int8_t* v = q.codes.data<std::int8_t>();
  const std::int8_t* e = q.exponents.data<std::int8_t>();
  // Inner ranges and the exponent definition: 2^e r_k in (m/2, m] unless capped at S.
  std::vector<float> r(inner_len, 0.0f);
  for (std::int64_t i = 0; i < R; ++i)
    for (std::int64_t j = 0; j < C; ++j) {
      float& slot = r[on_cols ? j : i];
      slot = std::max(slot, std::fabs(px[i * C + j]));
    }
  const float m = *std::max_element(r.begin(), r.end());
  for (std::int64_t k = 0; k < inner_len; ++k) {
    ASSERT_GE(e[k], 0);
    ASSERT_LE(e[k], S);
    if (r[k] == 0.0f) {
      EXPECT_EQ(e[k], S);
      continue;
    }
    const double scaled = std::ldexp(static_cast<double>(r[k]), e[k]);
    EXPECT_LE(scaled, m) << "k=" << k;
    if (e[k] < S) EXPECT_GT(scaled, m / 2.0) << "k=" << k;
    else EXPECT_LE(std::ldexp(static_cast<double>(r[k]), S), m);
  }
  // Packing: |v| <= qmax 2^S <= 127 and v is a multiple of 2^(S - e).
  for (std::int64_t i = 0; i < R; ++i)
    for (std::int64_t j = 0; j < C; ++j) {
      const int val = v[i * C + j], ek = e[on_cols ? j : i];
      ASSERT_LE(std::abs(val), qmax << S);
      ASSERT_EQ(val % (1 << (S - ek)), 0) << "v=" << val << " e=" << ek;
    }
}

TEST(Quantize, InvariantsForEveryBitWidthBudgetAxisAndOuterScale) {
  Generator gen(1);
  const Tensor x = channel_spread(37, 29, log_uniform_ranges(29, -8, 0, gen), gen);
  for (int bits = 2; bits <= 8; ++bits)
    for (int S = 0; bits + S <= 8; ++S)
      for (int axis : {0, 1})
        for (OuterScale outer : {OuterScale::per_index, OuterScale::per_tensor})
          for (Rounding rounding : {Rounding::nearest_even, Rounding::stochastic}) {
            SCOPED_TRACE(testing::Message() << "b=" << bits << " S=" << S << " axis=" << axis);
            const QTensor q = quantize(x, QuantizeParams::shiftquant(bits, S, axis, outer).with_rounding(rounding, {7, 1, 2}));
            check_invariants(x, q);
          }
}

// Group exponents at their edges: ranges at exact powers of two below the base (2^e r = m/2 must
// take the next exponent, one ulp above must not), at and beyond the cap S, zero groups, subnormal
// ranges under a normal base, and an all-subnormal tensor (a subnormal base).
TEST(Quantize, GroupExponentsAtPowerOfTwoEdgesAndSubnormalRanges) {
  const float m = 1.5f;
  const std::vector<float> normal_ranges = {m, m / 2, std::nextafter(m / 2, 1.0f), std::nextafter(m / 2, 0.0f), m / 8,
                                            m / 16, m / 32, 0.0f, 1e-40f, 3e-39f, 0.9f, 1.2e-38f};
  const std::vector<float> subnormal_ranges = {3e-39f, 1.4e-39f, 1e-40f, 0.0f, 2e-45f};
  for (const std::vector<float>* ranges : {&normal_ranges, &subnormal_ranges}) {
    const std::int64_t G = static_cast<std::int64_t>(ranges->size()), L = 5;
    Tensor x = Tensor::zeros({G, L});  // group g: row g, max |x| = ranges[g] (signs alternate)
    for (std::int64_t g = 0; g < G; ++g) {
      x.data<float>()[g * L + 1] = (g % 2 ? -1.0f : 1.0f) * (*ranges)[g];
      x.data<float>()[g * L + 3] = 0.5f * (*ranges)[g];
    }
    for (int S : {1, 4, 6}) {
      SCOPED_TRACE(testing::Message() << "S=" << S << (ranges == &normal_ranges ? " normal base" : " subnormal base"));
      for (int axis : {0, 1}) {
        const Tensor xa = axis == 0 ? x : transpose(x, 0, 1);
        check_invariants(xa, quantize(xa, QuantizeParams::shiftquant(8 - S, S, axis)));
      }
    }
  }
}

TEST(Quantize, NearestRoundingErrorIsAtMostHalfAStep) {
  // X^ = s 2^-e q with q = round(X 2^e / s): |X^ - X| <= s 2^-e / 2 per element.
  Generator gen(2);
  const Tensor x = channel_spread(64, 48, log_uniform_ranges(48, -10, 2, gen), gen);
  for (int axis : {0, 1}) {
    const QTensor q = quantize(x, QuantizeParams::shiftquant(4, 4, axis));
    const Tensor xh = q.dequantize();
    const float* s = q.scales.data<float>();
    const std::int8_t* e = q.exponents.data<std::int8_t>();
    for (std::int64_t i = 0; i < 64; ++i)
      for (std::int64_t j = 0; j < 48; ++j) {
        const float scale = axis == 1 ? s[i] : s[j];
        const int ek = axis == 1 ? e[j] : e[i];
        const double step = std::ldexp(static_cast<double>(scale), -ek);
        ASSERT_LE(std::fabs(xh.at({i, j}) - x.at({i, j})), 0.5 * step * (1 + 1e-5)) << i << "," << j;
      }
  }
}

TEST(Quantize, PerRowAndPerTensorAreTheSZeroCases) {
  Generator gen(3);
  const Tensor x = Tensor::randn({9, 13}, gen);
  const QTensor pt = quantize(x, QuantizeParams::per_tensor(8));
  const QTensor pr = quantize(x, QuantizeParams::per_row(8));
  EXPECT_EQ(pt.scales.numel(), 1);
  EXPECT_EQ(pr.scales.numel(), 9);
  float m = 0.0f;
  for (float v : x.to_vector<float>()) m = std::max(m, std::fabs(v));
  EXPECT_FLOAT_EQ(pt.scales.item(), m / 127.0f);
  for (std::int64_t r = 0; r < 9; ++r) {
    float row_max = 0.0f;
    for (std::int64_t c = 0; c < 13; ++c) row_max = std::max(row_max, std::fabs(x.at({r, c})));
    EXPECT_FLOAT_EQ(pr.scales.data<float>()[r], row_max / 127.0f);
    int code_max = 0;
    for (std::int64_t c = 0; c < 13; ++c) code_max = std::max(code_max, std::abs(int{pr.codes.data<std::int8_t>()[r * 13 + c]}));
    EXPECT_EQ(code_max, 127);  // each row uses the full range
  }
}

TEST(Quantize, NonnegativeRangeUsesAllUnsignedLevelsOnlyWithoutNegatives) {
  Generator gen(31);
  Tensor relu_out = Tensor::randn({23, 41}, gen);
  for (float& v : std::span(relu_out.data<float>(), relu_out.numel())) v = std::max(v, 0.0f);
  const float m = *std::max_element(relu_out.data<float>(), relu_out.data<float>() + relu_out.numel());
  for (int bits = 2; bits <= 8; ++bits)
    for (bool as_u8 : {false, true}) {
      SCOPED_TRACE(testing::Message() << "b=" << bits << " u8=" << as_u8);
      const QuantizeParams p = QuantizeParams::per_tensor(bits).with_nonnegative_range().with_unsigned_codes(as_u8);
      const QTensor q = quantize(relu_out, p);
      const int levels = std::min((1 << bits) - 1, 127);  // v in [0, levels]: still an int8 operand
      ASSERT_TRUE(q.nonnegative);
      EXPECT_EQ(q.qmax(), levels);
      EXPECT_FLOAT_EQ(q.scales.item(), m / static_cast<float>(levels));
      const std::vector<std::int8_t> v = q.signed_codes().to_vector<std::int8_t>();
      EXPECT_EQ(*std::min_element(v.begin(), v.end()), 0);
      EXPECT_EQ(*std::max_element(v.begin(), v.end()), levels);
      // Half a step of error, and the step is about half the symmetric one (2^b - 1 vs 2^(b-1) - 1 levels).
      const Tensor xh = q.dequantize();
      for (std::int64_t i = 0; i < relu_out.numel(); ++i)
        ASSERT_LE(std::fabs(xh.data<float>()[i] - relu_out.data<float>()[i]), 0.5f * q.scales.item() * (1 + 1e-5f));
      if (bits < 8) {
        EXPECT_LT(mse(xh, relu_out), 0.4 * mse(quantize(relu_out, QuantizeParams::per_tensor(bits)).dequantize(), relu_out));
      }
    }
  // One negative element anywhere (also in the last row block): the symmetric range, as without the flag.
  for (std::int64_t at : {std::int64_t{0}, relu_out.numel() - 1}) {
    Tensor mixed = relu_out.clone();
    mixed.data<float>()[at] = -1e-3f;
    const QTensor q = quantize(mixed, QuantizeParams::per_tensor(4).with_nonnegative_range());
    const QTensor plain = quantize(mixed, QuantizeParams::per_tensor(4));
    EXPECT_FALSE(q.nonnegative);
    EXPECT_EQ(q.qmax(), 7);
    EXPECT_EQ(q.codes.to_vector<std::int8_t>(), plain.codes.to_vector<std::int8_t>());
    EXPECT_EQ(q.scales.item(), plain.scales.item());
  }
  // A large tensor (several row blocks in parallel) gets the same codes as the scalar reference.
  Tensor big = Tensor::randn({512, 300}, gen);
  for (float& v : std::span(big.data<float>(), big.numel())) v = std::fabs(v);
  const QuantizeParams p4 = QuantizeParams::per_tensor(4).with_nonnegative_range().with_rounding(Rounding::stochastic, {3, 4, 5});
  kernels::set_kernel_path(kernels::KernelPath::reference);
  const QTensor ref = quantize(big, p4);
  kernels::set_kernel_path(kernels::KernelPath::optimized);
  const QTensor fast = quantize(big, p4);
  EXPECT_TRUE(fast.nonnegative);
  EXPECT_EQ(fast.codes.to_vector<std::int8_t>(), ref.codes.to_vector<std::int8_t>());
}

TEST(Quantize, NonnegativeShiftQuantWithGroupsAlongRows) {
  // Post-ReLU planes of very different magnitudes ([N*C, H*W], groups per row as for conv inputs):
  // b = 4, S = 3 gets the unsigned range, v = [0, 15] * 2^(S - e) <= 120, and equals the 5-bit
  // signed quantizer with the same S on these inputs (the same 16 levels per group).
  Generator gen(33);
  const std::vector<float> range = log_uniform_ranges(24, -3, 0, gen);
  Tensor planes = Tensor::empty({24, 49});
  for (std::int64_t i = 0; i < planes.numel(); ++i) planes.data<float>()[i] = gen.uniform(0.0f, 1.0f) * range[i / 49];
  const QTensor q = quantize(planes, QuantizeParams::shiftquant(4, 3, 0, OuterScale::per_tensor).with_nonnegative_range());
  ASSERT_TRUE(q.nonnegative);
  EXPECT_EQ(q.qmax(), 15);
  const std::vector<std::int8_t> v = q.codes.to_vector<std::int8_t>();
  EXPECT_GE(*std::min_element(v.begin(), v.end()), 0);
  EXPECT_EQ(*std::max_element(v.begin(), v.end()), 120);
  const QTensor five = quantize(planes, QuantizeParams::shiftquant(5, 3, 0, OuterScale::per_tensor));
  EXPECT_EQ(v, five.codes.to_vector<std::int8_t>());
  EXPECT_EQ(q.scales.item(), five.scales.item());
  // b + S = 8 cannot hold (2^b - 1) 2^S in int8: the symmetric range stays.
  const QTensor wide = quantize(planes, QuantizeParams::shiftquant(4, 4, 0, OuterScale::per_tensor).with_nonnegative_range());
  EXPECT_FALSE(wide.nonnegative);
  EXPECT_EQ(wide.qmax(), 7);
}

TEST(Quantize, MseClipLowersTheErrorOfHeavyTailedInputsAndKeepsUniformOnes) {
  Generator gen(32);
  // Post-ReLU Gaussian (a long tail relative to the 15 levels of 4 bits) and the same with one
  // large outlier: the clipped range has the lower total squared error, is one of the searched
  // alphas = max * 2^(-k/4), and saturates the clipped values at the top code.
  Tensor relu_out = Tensor::randn({256, 300}, gen);
  for (float& v : std::span(relu_out.data<float>(), relu_out.numel())) v = std::max(v, 0.0f);
  Tensor with_outlier = relu_out.clone();
  with_outlier.data<float>()[12345] = 40.0f;
  for (const Tensor* x : {&relu_out, &with_outlier}) {
    const QuantizeParams p = QuantizeParams::per_tensor(4).with_nonnegative_range();
    const QTensor plain = quantize(*x, p), clipped = quantize(*x, QuantizeParams(p).with_mse_clip());
    const float m = *std::max_element(x->data<float>(), x->data<float>() + x->numel());
    const float ratio = clipped.scales.item() * 15.0f / m;
    EXPECT_LT(ratio, 0.9f);
    const float k = -4.0f * std::log2(ratio);
    EXPECT_NEAR(k, std::round(k), 1e-3f);
    EXPECT_LT(mse(clipped.dequantize(), *x), 0.8 * mse(plain.dequantize(), *x));
    const std::vector<std::int8_t> v = clipped.signed_codes().to_vector<std::int8_t>();
    EXPECT_EQ(*std::max_element(v.begin(), v.end()), 15);
  }
  // Uniform values have no tail: clipping only adds error, the full range stays.
  const Tensor uniform = Tensor::uniform({64, 64}, -1.0f, 1.0f, gen);
  const float m = *std::max_element(uniform.data<float>(), uniform.data<float>() + uniform.numel(),
                                    [](float a, float b) { return std::fabs(a) < std::fabs(b); });
  EXPECT_FLOAT_EQ(quantize(uniform, QuantizeParams::per_tensor(4).with_mse_clip()).scales.item(), std::fabs(m) / 7.0f);
  // The sample is fixed: the same scale at every thread count.
  const int previous = get_num_threads();
  set_num_threads(1);
  const float one = quantize(relu_out, QuantizeParams::per_tensor(4).with_mse_clip()).scales.item();
  set_num_threads(2);
  const float two = quantize(relu_out, QuantizeParams::per_tensor(4).with_mse_clip()).scales.item();
  set_num_threads(previous);
  EXPECT_EQ(one, two);
}

// Per-row scales clip each row over its own values: a row with an outlier gets a clipped scale (one
// of max * 2^(-k/4), the outlier saturating) and a lower error; a uniform row keeps max / qmax; a
// row's scale does not depend on the other rows.
TEST(Quantize, MseClipOfPerRowScalesClipsEachRowOnItsOwn) {
  Generator gen(33);
  Tensor x = Tensor::randn({8, 256}, gen);
  for (std::int64_t c = 0; c < 256; ++c) x.data<float>()[256 + c] = std::sin(0.37f * static_cast<float>(c));  // row 1: no tail
  x.data<float>()[0] = 6.0f;  // row 0: one outlier (6 sigma)
  const QuantizeParams p = QuantizeParams::per_row(4);
  const QTensor plain = quantize(x, p), clipped = quantize(x, QuantizeParams(p).with_mse_clip());
  auto row_error = [&](const QTensor& q, std::int64_t r) { return mse(slice(q.dequantize(), 0, r, r + 1), slice(x, 0, r, r + 1)); };
  const float ratio = clipped.scales.data<float>()[0] / plain.scales.data<float>()[0];
  EXPECT_LT(ratio, 0.9f);
  EXPECT_NEAR(-4.0f * std::log2(ratio), std::round(-4.0f * std::log2(ratio)), 1e-3f);
  EXPECT_LT(row_error(clipped, 0), 0.9 * row_error(plain, 0));
  EXPECT_EQ(clipped.signed_codes().data<std::int8_t>()[0], 7);  // the outlier saturates
  EXPECT_EQ(clipped.scales.data<float>()[1], plain.scales.data<float>()[1]);
  for (std::int64_t r = 2; r < 8; ++r) EXPECT_LE(row_error(clipped, r), row_error(plain, r)) << "row " << r;
  const QTensor alone = quantize(slice(x, 0, 3, 4).clone(), QuantizeParams(p).with_mse_clip());
  EXPECT_EQ(alone.scales.item(), clipped.scales.data<float>()[3]);
}

// Squared error of group k of q (a row when inner_axis = 0, else a column) against x, in double.
double group_error(const QTensor& q, const Tensor& x, std::int64_t k) {
  const Tensor xh = q.dequantize();
  const std::int64_t R = x.size(0), C = x.size(1);
  const float* a = xh.data<float>();
  const float* b = x.data<float>();
  double e = 0.0;
  for (std::int64_t i = 0; i < (q.inner_axis == 0 ? C : R); ++i) {
    const std::int64_t j = q.inner_axis == 0 ? k * C + i : i * C + k;
    e += (double(a[j]) - b[j]) * (double(a[j]) - b[j]);
  }
  return e;
}

TEST(Quantize, MseClipChoosesEachGroupExponentByItsError) {
  Generator gen(33);
  // Groups of Gaussian values (post-ReLU for the unsigned range) whose ranges span three octaves:
  // where a group's power-of-two range sits well above its max, halving it (one more shift, the
  // top values saturating) has the smaller error.
  for (const bool relu : {true, false}) {
    for (const int inner_axis : {0, 1}) {
      const std::int64_t groups = 96, len = 400;
      const std::vector<float> range = log_uniform_ranges(groups, -3.0f, 0.0f, gen);
      Tensor x = Tensor::randn(inner_axis == 0 ? Shape{groups, len} : Shape{len, groups}, gen);
      float* px = x.data<float>();
      for (std::int64_t i = 0; i < x.numel(); ++i) {
        const std::int64_t k = inner_axis == 0 ? i / len : i % groups;
        px[i] = (relu ? std::max(px[i], 0.0f) : px[i]) * range[k];
      }
      const int S = relu ? 3 : 4;
      const QuantizeParams p =
          QuantizeParams::shiftquant(4, S, inner_axis, OuterScale::per_tensor).with_nonnegative_range(relu);
      const QTensor plain = quantize(x, p), clipped = quantize(x, QuantizeParams(p).with_mse_clip());
      ASSERT_EQ(clipped.nonnegative, relu && inner_axis == 0);
      EXPECT_EQ(clipped.scales.item(), plain.scales.item());  // the base is the unclipped one
      int moved = 0;
      double plain_total = 0.0, clipped_total = 0.0;
      for (std::int64_t k = 0; k < groups; ++k) {
        const int e0 = plain.exponents.data<std::int8_t>()[k], e1 = clipped.exponents.data<std::int8_t>()[k];
        ASSERT_TRUE(e1 == e0 || (e1 == e0 + 1 && e1 <= S)) << "group " << k << ": " << e0 << " -> " << e1;
        moved += e1 != e0;
        const double ep = group_error(plain, x, k), ec = group_error(clipped, x, k);
        EXPECT_LE(ec, ep * (1 + 1e-5)) << "group " << k;
        plain_total += ep;
        clipped_total += ec;
      }
      std::printf("mse_clip exponents, %s, groups along %s: %d of %lld groups take e + 1, squared error x%.3f\n",
                  relu ? "post-ReLU" : "signed", inner_axis == 0 ? "rows" : "columns", moved,
                  static_cast<long long>(groups), clipped_total / plain_total);
      EXPECT_GT(moved, groups / 8) << "relu " << relu << " axis " << inner_axis;
      EXPECT_LT(moved, groups);
      EXPECT_LT(clipped_total, 0.9 * plain_total);
      // Codes stay in range and the saturated groups hit their top code.
      const std::vector<std::int8_t> v = clipped.signed_codes().to_vector<std::int8_t>();
      const int top = clipped.qmax() << S;
      for (std::int8_t c : v) ASSERT_LE(std::abs(int(c)), top);
      // Each group's choice is made in a fixed order: the same codes at every thread count.
      const int previous = get_num_threads();
      set_num_threads(1);
      const std::vector<std::int8_t> one = quantize(x, QuantizeParams(p).with_mse_clip()).signed_codes().to_vector<std::int8_t>();
      set_num_threads(2);
      const std::vector<std::int8_t> two = quantize(x, QuantizeParams(p).with_mse_clip()).signed_codes().to_vector<std::int8_t>();
      set_num_threads(previous);
      EXPECT_EQ(one, two);
      EXPECT_EQ(one, v);
    }
  }
}

TEST(Quantize, MseClipOfGradientsIsRejected) {
  QConfig c = QConfig::bits(4);
  c.weights.mse_clip = c.activations.mse_clip = true;
  EXPECT_NO_THROW(c.validate());
  c.gradients.mse_clip = true;
  EXPECT_THROW(c.validate(), ValueError);
}

TEST(Quantize, AllZeroInputGivesZeroCodes) {
  const QTensor q = quantize(Tensor::zeros({4, 5}), QuantizeParams::shiftquant(4, 4));
  for (std::int8_t v : q.codes.to_vector<std::int8_t>()) EXPECT_EQ(v, 0);
  for (float v : q.dequantize().to_vector<float>()) EXPECT_EQ(v, 0.0f);
}

TEST(Quantize, OptimizedKernelsBitExactAgainstReference) {
  Generator gen(4);
  for (auto [R, C] : {std::pair<std::int64_t, std::int64_t>{1, 1}, {3, 17}, {17, 3}, {130, 1001}, {1024, 64}}) {
    const Tensor x = channel_spread(R, C, log_uniform_ranges(C, -12, 3, gen), gen);
    for (int axis : {0, 1})
      for (Rounding rounding : {Rounding::nearest_even, Rounding::stochastic}) {
        const QuantizeParams p = QuantizeParams::shiftquant(4, 4, axis).with_rounding(rounding, {1, 2, 3});
        kernels::set_kernel_path(kernels::KernelPath::reference);
        const QTensor ref = quantize(x, p);
        kernels::set_kernel_path(kernels::KernelPath::optimized);
        const QTensor fast = quantize(x, p);
        EXPECT_EQ(fast.codes.to_vector<std::int8_t>(), ref.codes.to_vector<std::int8_t>())
            << "R=" << R << " C=" << C << " axis=" << axis << " isa=" << kernels::quantize_isa_name();
        EXPECT_EQ(fast.scales.to_vector<float>(), ref.scales.to_vector<float>());
      }
  }
}

// max |x| along each group of the inner axis (columns for axis 1, rows for axis 0), by hand.
std::vector<float> inner_ranges(const Tensor& x, int axis) {
  const std::int64_t R = x.size(0), C = x.size(1);
  std::vector<float> r(axis == 1 ? C : R, 0.0f);
  const float* p = x.data<float>();
  for (std::int64_t i = 0; i < R; ++i)
    for (std::int64_t j = 0; j < C; ++j) {
      float& m = r[axis == 1 ? j : i];
      m = std::max(m, std::fabs(p[i * C + j]));
    }
  return r;
}

TEST(Quantize, GivenInnerRangesGiveTheSameQuantization) {
  Generator gen(14);
  Tensor x = channel_spread(67, 45, log_uniform_ranges(45, -10, 2, gen), gen);
  for (std::int64_t c = 0; c < 45; ++c) x.data<float>()[3 * 45 + c] = 0.0f;  // an all-zero row group
  for (int axis : {0, 1})
    for (Rounding rounding : {Rounding::nearest_even, Rounding::stochastic})
      for (bool unsigned_codes : {false, true}) {
        const QuantizeParams p = QuantizeParams::shiftquant(4, 4, axis)
                                     .with_rounding(rounding, {5, 6, 7})
                                     .with_unsigned_codes(unsigned_codes);
        const QTensor want = quantize(x, p);
        const QTensor got = quantize(x, p, inner_ranges(x, axis));
        EXPECT_EQ(got.codes.dtype(), want.codes.dtype());
        EXPECT_EQ(got.signed_codes().to_vector<std::int8_t>(), want.signed_codes().to_vector<std::int8_t>())
            << "axis " << axis;
        EXPECT_EQ(got.scales.to_vector<float>(), want.scales.to_vector<float>());
        EXPECT_EQ(got.exponents.to_vector<std::int8_t>(), want.exponents.to_vector<std::int8_t>());
      }
  // Wrong length: a clear error. Ranges that cannot be used (per-tensor scale) are not needed.
  EXPECT_THROW(quantize(x, QuantizeParams::shiftquant(4, 4, 1), std::vector<float>(44, 1.0f)), ShapeError);
  for (float bad : {NAN, INFINITY, -1.0f}) {
    std::vector<float> ranges = inner_ranges(x, 1);
    ranges[7] = bad;
    EXPECT_THROW(quantize(x, QuantizeParams::shiftquant(4, 4, 1), ranges), ValueError) << bad;
  }
  const QuantizeParams per_tensor = QuantizeParams::per_tensor(4);
  EXPECT_EQ(quantize(x, per_tensor, std::vector<float>(45, 0.0f)).codes.to_vector<std::int8_t>(),
            quantize(x, per_tensor).codes.to_vector<std::int8_t>());
  // Non-finite x is still caught when the first pass is skipped.
  for (int axis : {0, 1}) {
    Tensor y = x.clone();
    const std::vector<float> ranges = inner_ranges(y, axis);
    y.data<float>()[100] = NAN;
    EXPECT_THROW(quantize(y, QuantizeParams::shiftquant(4, 4, axis), ranges, "g"), NumericError);
  }
}

// The backward's two gradient operands in two passes (internal::quantize_gradient_pair) equal the
// two quantize() calls they replace, bit for bit: codes, scales, exponents and flags, on rows as
// narrow as a 16-channel convolution gradient's and wide ones, with a zero row and a zero column,
// in both roundings; all-zero input and parameters the pair does not fuse (MSE clipping, per-tensor
// scales) run the two calls; bad ranges, axes and NaN/Inf give clear errors.
TEST(Quantize, GradientPairEqualsTwoQuantizeCalls) {
  Generator gen(21);
  auto expect_same = [](const QTensor& got, const QTensor& want, const std::string& what) {
    EXPECT_EQ(got.codes.dtype(), want.codes.dtype()) << what;
    EXPECT_EQ(got.signed_codes().to_vector<std::int8_t>(), want.signed_codes().to_vector<std::int8_t>()) << what;
    EXPECT_EQ(got.scales.to_vector<float>(), want.scales.to_vector<float>()) << what;
    EXPECT_EQ(got.exponents.to_vector<std::int8_t>(), want.exponents.to_vector<std::int8_t>()) << what;
    EXPECT_EQ(got.inner_axis, want.inner_axis) << what;
    EXPECT_EQ(got.outer, want.outer) << what;
    EXPECT_EQ(got.shift_budget, want.shift_budget) << what;
    EXPECT_EQ(got.nonnegative, want.nonnegative) << what;
    EXPECT_EQ(got.input_negative, want.input_negative) << what;
  };
  const int previous_threads = get_num_threads();
  for (const auto& [R, C] : std::vector<std::pair<std::int64_t, std::int64_t>>{{30000, 16}, {1200, 48}, {67, 300}, {5, 3}})
    for (int threads : {1, 2}) {  // blocks of rows on other threads than the caller's
    set_num_threads(threads);
    Tensor x = channel_spread(R, C, log_uniform_ranges(C, -8, 2, gen), gen);
    for (std::int64_t c = 0; c < C; ++c) x.data<float>()[2 * C + c] = 0.0f;  // a zero row
    for (std::int64_t r = 0; r < R; ++r) x.data<float>()[r * C + C - 1] = 0.0f;  // a zero column
    for (Rounding rounding : {Rounding::nearest_even, Rounding::stochastic})
      for (int bits : {4, 6}) {
        const int S = 8 - bits;
        const QuantizeParams for_input = QuantizeParams::shiftquant(bits, S, 1).with_rounding(rounding, {1, 2, 3}).with_unsigned_codes();
        const QuantizeParams for_weight = QuantizeParams::shiftquant(bits, S, 0).with_rounding(rounding, {1, 2, 4});
        const std::vector<float> col_max = inner_ranges(x, 1), row_max = inner_ranges(x, 0);
        const internal::GradientCodes got = internal::quantize_gradient_pair(x, for_input, col_max, for_weight, row_max, "g");
        const std::string what = std::to_string(R) + "x" + std::to_string(C) + " threads " + std::to_string(threads) +
                                 " bits " + std::to_string(bits) +
                                 (rounding == Rounding::stochastic ? " stochastic" : " nearest");
        expect_same(got.for_input, quantize(x, for_input, col_max), what + " (dX operand)");
        expect_same(got.for_weight, quantize(x, for_weight, row_max), what + " (dW operand)");
      }
  }
  set_num_threads(previous_threads);
  const Tensor x = channel_spread(40, 20, log_uniform_ranges(20, -4, 0, gen), gen);
  const std::vector<float> col_max = inner_ranges(x, 1), row_max = inner_ranges(x, 0);
  const QuantizeParams for_input = QuantizeParams::shiftquant(4, 4, 1), for_weight = QuantizeParams::shiftquant(4, 4, 0);
  // Parameters the pair does not fuse, and an all-zero gradient: the two calls' results.
  for (const auto& [a, b] : std::vector<std::pair<QuantizeParams, QuantizeParams>>{
           {QuantizeParams(for_input).with_mse_clip(true), for_weight},
           {for_input, QuantizeParams::shiftquant(4, 4, 0, OuterScale::per_tensor)}}) {
    const internal::GradientCodes got = internal::quantize_gradient_pair(x, a, col_max, b, row_max, "g");
    expect_same(got.for_input, quantize(x, a, col_max), "unfused dX operand");
    expect_same(got.for_weight, quantize(x, b, row_max), "unfused dW operand");
  }
  const Tensor zeros = Tensor::zeros({40, 20});
  const internal::GradientCodes zero = internal::quantize_gradient_pair(
      zeros, for_input, std::vector<float>(20, 0.0f), for_weight, std::vector<float>(40, 0.0f), "g");
  expect_same(zero.for_weight, quantize(zeros, for_weight), "all-zero dW operand");
  // Bad input.
  EXPECT_THROW(internal::quantize_gradient_pair(x, for_weight, row_max, for_input, col_max, "g"), ValueError);
  EXPECT_THROW(internal::quantize_gradient_pair(x, for_input, row_max, for_weight, row_max, "g"), ShapeError);
  std::vector<float> bad_range = col_max;
  bad_range[3] = NAN;
  EXPECT_THROW(internal::quantize_gradient_pair(x, for_input, bad_range, for_weight, row_max, "g"), ValueError);
  Tensor nan_x = x.clone();
  nan_x.data<float>()[77] = INFINITY;
  EXPECT_THROW(internal::quantize_gradient_pair(nan_x, for_input, col_max, for_weight, row_max, "g"), NumericError);
}

TEST(Quantize, StochasticRoundingIsUnbiased) {
  // Mean of the dequantized values over many independent keys -> x. The per-draw error lies in
  // (-step, step), so the mean of n draws is within 5 * step / (2 sqrt(n)) except with tiny probability.
  Generator gen(5);
  const std::int64_t R = 16, C = 32, n = 2000;
  const Tensor x = channel_spread(R, C, log_uniform_ranges(C, -6, 0, gen), gen);
  std::vector<double> acc(R * C, 0.0);
  QTensor q;
  for (std::int64_t t = 0; t < n; ++t) {
    q = quantize(x, QuantizeParams::shiftquant(4, 4, 1).with_rounding(Rounding::stochastic, {9, static_cast<std::uint64_t>(t), 0}));
    const Tensor xh = q.dequantize();
    for (std::int64_t i = 0; i < R * C; ++i) acc[i] += xh.data<float>()[i];
  }
  double bias_sum = 0.0;
  for (std::int64_t i = 0; i < R; ++i)
    for (std::int64_t j = 0; j < C; ++j) {
      const double step = std::ldexp(static_cast<double>(q.scales.data<float>()[i]), -q.exponents.data<std::int8_t>()[j]);
      const double mean = acc[i * C + j] / n, err = mean - x.at({i, j});
      EXPECT_LE(std::fabs(err), 5.0 * step / (2.0 * std::sqrt(double(n))) + 1e-7) << i << "," << j;
      bias_sum += err / step;
    }
  // Average normalized bias over all 512 elements: ~N(0, 1/(4 n 512)); bound at 5 sigma.
  EXPECT_LE(std::fabs(bias_sum / (R * C)), 5.0 / (2.0 * std::sqrt(double(n) * R * C)));
}

TEST(Quantize, StochasticRoundingIndependentOfThreadCount) {
  Generator gen(6);
  const Tensor x = channel_spread(512, 256, log_uniform_ranges(256, -8, 0, gen), gen);  // large: parallel split
  const QuantizeParams p = QuantizeParams::shiftquant(4, 4, 1).with_rounding(Rounding::stochastic, {3, 4, 5});
  const int previous = get_num_threads();
  set_num_threads(1);
  const QTensor one = quantize(x, p);
  set_num_threads(2);
  const QTensor two = quantize(x, p);
  set_num_threads(previous);
  EXPECT_EQ(one.codes.to_vector<std::int8_t>(), two.codes.to_vector<std::int8_t>());
  // Different steps give different draws.
  QuantizeParams next = p;
  next.key.step = 5;
  EXPECT_NE(quantize(x, next).codes.to_vector<std::int8_t>(), one.codes.to_vector<std::int8_t>());
}

struct MseRatios {
  double vs_per_tensor, vs_ideal;
};

MseRatios mse_ratios(const Tensor& g, int bits, int S, Rounding rounding) {
  const QTensor sq = quantize(g, QuantizeParams::shiftquant(bits, S, 1).with_rounding(rounding, {1, 0, 0}));
  const QTensor pt = quantize(g, QuantizeParams::per_tensor(bits).with_rounding(rounding, {1, 0, 1}));
  const double e_sq = mse(sq.dequantize(), g), e_pt = mse(pt.dequantize(), g);
  const double e_ideal = mse(ideal_per_channel(g, bits, rounding, 2), g);
  return {e_pt / e_sq, e_sq / e_ideal};
}

TEST(Quantize, ShiftQuantMseOnLogUniformChannels) {
  // (a) G[1024, 512], channel ranges log-uniform over 2^-8..1; 4 bits, S = 4.
  Generator gen(7);
  const Tensor g = channel_spread(1024, 512, log_uniform_ranges(512, -8, 0, gen), gen);
  for (Rounding rounding : {Rounding::stochastic, Rounding::nearest_even}) {
    const MseRatios r = mse_ratios(g, 4, 4, rounding);
    std::printf("[ratios] (a) %s: per-tensor/ShiftQuant = %.2f, ShiftQuant/ideal = %.2f\n",
                rounding == Rounding::stochastic ? "stochastic" : "nearest", r.vs_per_tensor, r.vs_ideal);
    EXPECT_GE(r.vs_per_tensor, 3.0);
    EXPECT_LE(r.vs_ideal, 2.0);
  }
}

TEST(Quantize, ShiftQuantMseWithOutlierChannels) {
  // (b) 2 outlier channels at range 1, the rest log-uniform over 2^-8..2^-4; 4 bits, S = 4.
  Generator gen(8);
  std::vector<float> ranges = log_uniform_ranges(512, -8, -4, gen);
  ranges[0] = ranges[1] = 1.0f;
  const Tensor g = channel_spread(1024, 512, ranges, gen);
  for (Rounding rounding : {Rounding::stochastic, Rounding::nearest_even}) {
    const MseRatios r = mse_ratios(g, 4, 4, rounding);
    std::printf("[ratios] (b) %s: per-tensor/ShiftQuant = %.2f, ShiftQuant/ideal = %.2f\n",
                rounding == Rounding::stochastic ? "stochastic" : "nearest", r.vs_per_tensor, r.vs_ideal);
    EXPECT_GE(r.vs_per_tensor, 12.0);
    EXPECT_LE(r.vs_ideal, 2.0);
  }
  // At 6 bits the int8 budget allows only S = 2: outliers 2^4..2^8 apart cannot all be shifted up,
  // and ShiftQuant falls well behind ideal group scales (what an int16 path would lift).
  const MseRatios six = mse_ratios(g, 6, 2, Rounding::stochastic);
  std::printf("[ratios] (b) 6-bit S=2 stochastic: per-tensor/ShiftQuant = %.2f, ShiftQuant/ideal = %.2f\n",
              six.vs_per_tensor, six.vs_ideal);
  EXPECT_GT(six.vs_ideal, 3.0);
}

TEST(Quantize, MaxShiftBudgetKeepsTheLargestCodeInInt8) {
  for (int b = 2; b <= 8; ++b) {
    const int symmetric = max_shift_budget(b, false), unsigned_s = max_shift_budget(b, true);
    EXPECT_LE(((1 << (b - 1)) - 1) << symmetric, 127) << b;
    EXPECT_GT(((1 << (b - 1)) - 1) << (symmetric + 1), 127) << b;
    if (unsigned_s >= 0) {
      EXPECT_LE(((1 << b) - 1) << unsigned_s, 127) << b;
      EXPECT_GT(((1 << b) - 1) << (unsigned_s + 1), 127) << b;
    } else {
      EXPECT_EQ(b, 8);  // 255 never fits int8
    }
    EXPECT_NO_THROW(QuantizeParams::shiftquant(b, symmetric).validate());
    EXPECT_THROW(QuantizeParams::shiftquant(b, symmetric + 1).validate(), ValueError);
  }
}

TEST(Quantize, BadInputThrows) {
  Generator gen(9);
  const Tensor x = Tensor::randn({4, 4}, gen);
  EXPECT_THROW(quantize(x, QuantizeParams::per_tensor(1)), ValueError);
  EXPECT_THROW(quantize(x, QuantizeParams::per_tensor(9)), ValueError);
  EXPECT_THROW(quantize(x, QuantizeParams::shiftquant(4, 5)), ValueError);   // b + S > 8
  EXPECT_THROW(quantize(x, QuantizeParams::shiftquant(4, -1)), ValueError);
  EXPECT_THROW(quantize(x, QuantizeParams::shiftquant(4, 2, 2)), ValueError);  // axis
  EXPECT_THROW(quantize(Tensor::zeros({0, 4}), QuantizeParams::per_tensor(8)), ShapeError);
  EXPECT_THROW(quantize(Tensor::zeros({8}), QuantizeParams::per_tensor(8)), ShapeError);
  EXPECT_THROW(quantize(Tensor::zeros({2, 2}, DType::s32), QuantizeParams::per_tensor(8)), DTypeError);
  for (float bad : {NAN, INFINITY, -INFINITY})
    for (const QuantizeParams& p : {QuantizeParams::shiftquant(4, 4), QuantizeParams::per_row(8),
                                    QuantizeParams::per_tensor(4), QuantizeParams::shiftquant(4, 4, 0),
                                    QuantizeParams::per_tensor(4).with_nonnegative_range()}) {
      Tensor y = x.clone();
      y.data<float>()[5] = bad;
      try {
        quantize(y, p, "fc1.grad");
        ADD_FAILURE() << "no exception for " << bad;
      } catch (const NumericError& e) {
        EXPECT_NE(std::string(e.what()).find("fc1.grad"), std::string::npos) << e.what();
      }
    }
}

}  // namespace
}  // namespace shiftq::quant
