// Delayed activation scaling (RangeObserver) and the numerics monitor (measure_quantization).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include <shiftq/shiftq.hpp>

namespace shiftq {
namespace {

using quant::ObserverOptions;
using quant::RangeObserver;
using quant::RangeReduction;

void update(RangeObserver& o, float amax, bool negative = false, bool saturated = false) {
  o.update(std::span<const float>(&amax, 1), negative, saturated);
}

TEST(RangeObserver, MaxOfHistoryForgetsCallsOlderThanItsWindow) {
  RangeObserver o(1, ObserverOptions{3, RangeReduction::max, 0.1f});
  EXPECT_FALSE(o.observed());
  EXPECT_THROW((void)o.range(), Error);
  for (float a : {1.0f, 5.0f, 2.0f}) update(o, a);
  EXPECT_EQ(o.range(), 5.0f);
  update(o, 1.0f);  // overwrites the 1
  EXPECT_EQ(o.range(), 5.0f);
  update(o, 1.0f);  // overwrites the 5: the window is {1, 1, 2}
  EXPECT_EQ(o.range(), 2.0f);
  update(o, 40.0f);  // a jump is followed at once
  EXPECT_EQ(o.range(), 40.0f);
  EXPECT_EQ(o.updates(), 6u);
}

TEST(RangeObserver, EmaStartsAtTheFirstRange) {
  RangeObserver o(2, ObserverOptions{16, RangeReduction::ema, 0.25f});
  EXPECT_EQ(o.history().size(0), 1);
  o.update(std::vector<float>{4.0f, 8.0f}, false, false);
  EXPECT_EQ(o.range(0), 4.0f);
  EXPECT_EQ(o.range(1), 8.0f);
  o.update(std::vector<float>{8.0f, 0.0f}, false, false);
  EXPECT_EQ(o.range(0), 0.75f * 4.0f + 0.25f * 8.0f);
  EXPECT_EQ(o.range(1), 6.0f);
}

TEST(RangeObserver, RecordsSignAndSaturatedCallsAndResets) {
  RangeObserver o;
  update(o, 1.0f);
  EXPECT_TRUE(o.nonnegative());
  update(o, 2.0f, /*negative=*/true, /*saturated=*/true);
  update(o, 1.0f, false, true);
  EXPECT_FALSE(o.nonnegative());
  EXPECT_EQ(o.saturated_calls(), 2u);
  o.reset();
  EXPECT_FALSE(o.observed());
  EXPECT_TRUE(o.nonnegative());
  EXPECT_EQ(o.saturated_calls(), 0u);
}

TEST(RangeObserver, RejectsBadInput) {
  EXPECT_THROW(RangeObserver(0), ValueError);
  EXPECT_THROW(RangeObserver(1, ObserverOptions{0, RangeReduction::max, 0.1f}), ValueError);
  EXPECT_THROW(RangeObserver(1, ObserverOptions{4, RangeReduction::ema, 0.0f}), ValueError);
  EXPECT_THROW(RangeObserver(1, ObserverOptions{4, RangeReduction::ema, 1.5f}), ValueError);
  RangeObserver o(2);
  EXPECT_THROW(update(o, 1.0f), ShapeError);  // one range for two channels
  EXPECT_THROW(o.update(std::vector<float>{1.0f, std::nanf("")}, false, false), NumericError);
  EXPECT_THROW(o.update(std::vector<float>{1.0f, -1.0f}, false, false), NumericError);
  EXPECT_FALSE(o.observed());  // nothing recorded by the failed calls
  EXPECT_THROW((void)RangeObserver(2).range(2), Error);
}

Tensor clamped(const Tensor& x, float r) {
  Tensor y = x.clone();
  for (std::int64_t i = 0; i < y.numel(); ++i) y.data<float>()[i] = std::clamp(y.data<float>()[i], -r, r);
  return y;
}

// 8-bit per-tensor activations, no clipping: the delayed rule is exact enough to compare bit for bit.
quant::LayerQuant delayed_linear_quant() {
  quant::QConfig c = quant::QConfig::bits(8);
  c.activations.mse_clip = false;
  return quant::layer_quant(c, false, 1, 0);
}

// The first training call quantizes with its own range; the next ones with the observed range,
// saturating beyond it (counted) until the larger range enters the history; eval leaves it frozen.
TEST(DelayedScaling, LinearQuantizesWithTheObservedRangeAndSaturatesBeyondIt) {
  Generator gen(5);
  const Tensor w = Tensor::randn({6, 16}, gen), b = Tensor::randn({6}, gen);
  const Tensor x1 = Tensor::randn({5, 16}, gen);
  const Tensor x3 = mul(x1, 3.0f);
  const quant::LayerQuant q = delayed_linear_quant();
  quant::PackedWeight packed;
  NoGradGuard no_grad;
  auto current = [&](const Tensor& x) { return quant::quantized_linear(x, w, b, packed, q, quant::QuantCall{0, true, nullptr, nullptr}); };
  RangeObserver observer(1, q.observer);
  auto delayed = [&](const Tensor& x, bool training) {
    return quant::quantized_linear(x, w, b, packed, q, quant::QuantCall{0, training, &observer, nullptr});
  };
  auto same = [](const Tensor& a, const Tensor& b) {
    return a.numel() == b.numel() && std::memcmp(a.raw_bytes(), b.raw_bytes(), a.nbytes()) == 0;
  };
  EXPECT_TRUE(same(delayed(x1, true), current(x1)));  // nothing observed yet: its own range
  const float r1 = observer.range();
  float absmax = 0.0f;
  for (std::int64_t i = 0; i < x1.numel(); ++i) absmax = std::max(absmax, std::fabs(x1.data<float>()[i]));
  EXPECT_EQ(r1, absmax);
  // x3 = 3 x1, quantized with range r1: as x3 clamped to [-r1, r1] with its own range (which is r1).
  const Tensor x3_clamped = clamped(x3, r1);
  EXPECT_TRUE(same(delayed(x3, false), current(x3_clamped)));
  EXPECT_EQ(observer.updates(), 1u);  // eval does not update
  EXPECT_TRUE(same(delayed(x3, true), current(x3_clamped)));
  EXPECT_EQ(observer.saturated_calls(), 1u);
  EXPECT_EQ(observer.range(), 3.0f * r1);  // the jump is in the history: the next call follows it
  EXPECT_TRUE(same(delayed(x3, true), current(x3)));
  EXPECT_EQ(observer.saturated_calls(), 1u);
  EXPECT_FALSE(observer.nonnegative());
}

// x = [0, 0.2, 1.25, 3.5, 5, -6] with 4-bit signed codes over the range 3.5: scale 0.5, codes
// [0, 0, 2, 7, 7, -7] (0.4 rounds to 0, 2.5 to even 2); 5 and -6 saturate, 0.2 underflows.
TEST(NumericsMonitor, CountsAHandComputedCase) {
  const Tensor x = Tensor::from_vector(std::vector<float>{0.0f, 0.2f, 1.25f, 3.5f, 5.0f, -6.0f}, {1, 6});
  const quant::QTensor q = quant::quantize(x, quant::QuantizeParams::per_tensor(4).with_observed_range(3.5f, false));
  const quant::TensorNumerics n = quant::measure_quantization(x, q);
  EXPECT_EQ(n.elements, 6);
  EXPECT_EQ(n.saturated, 2);
  EXPECT_EQ(n.zeros, 1);
  EXPECT_EQ(n.range, 3.5f);
  EXPECT_EQ(n.input_absmax, 6.0f);
  EXPECT_EQ(n.bits, 4);
  const double error_sq = 0.2 * 0.2 + 0.25 * 0.25 + 1.5 * 1.5 + 2.5 * 2.5;
  const double value_sq = 0.2 * 0.2 + 1.25 * 1.25 + 3.5 * 3.5 + 25.0 + 36.0;
  EXPECT_NEAR(n.error_sq, error_sq, 1e-6);  // 0.2 is not exact in f32
  EXPECT_NEAR(n.value_sq, value_sq, 1e-6);
  EXPECT_NEAR(n.relative_error(), std::sqrt(error_sq / value_sq), 1e-7);
  EXPECT_DOUBLE_EQ(n.saturation_rate(), 2.0 / 6.0);
  EXPECT_DOUBLE_EQ(n.zero_rate(), 1.0 / 6.0);
  EXPECT_EQ(n.exponent_histogram[0], 6);  // per-tensor: every column group at shift 0

  quant::TensorNumerics twice = n;
  twice.merge(n);
  EXPECT_EQ(twice.elements, 12);
  EXPECT_EQ(twice.saturated, 4);
  EXPECT_DOUBLE_EQ(twice.relative_error(), n.relative_error());
}

// ShiftQuant columns whose maxima fall by 2x, 4x, 8x, ... get group exponents 0, 1, 2, ... up to S.
TEST(NumericsMonitor, ExponentHistogramCountsTheGroupsPerShift) {
  std::vector<float> v;
  for (int r = 0; r < 2; ++r)
    for (int c = 0; c < 6; ++c) v.push_back(std::ldexp(r == 0 ? 1.0f : 0.5f, -c));
  const Tensor x = Tensor::from_vector(v, {2, 6});
  const quant::QTensor q = quant::quantize(x, quant::QuantizeParams::shiftquant(4, 3, 1));
  const quant::TensorNumerics n = quant::measure_quantization(x, q);
  EXPECT_EQ(n.shift_budget, 3);
  EXPECT_EQ(n.exponent_histogram[0], 1);
  EXPECT_EQ(n.exponent_histogram[1], 1);
  EXPECT_EQ(n.exponent_histogram[2], 1);
  EXPECT_EQ(n.exponent_histogram[3], 3);  // columns 3..5 need more than S = 3 shifts
  EXPECT_EQ(n.saturated, 0);
}

TEST(NumericsMonitor, RejectsMismatchedShapes) {
  const Tensor x = Tensor::ones({2, 3});
  const quant::QTensor q = quant::quantize(x, quant::QuantizeParams::per_tensor(8));
  EXPECT_THROW(quant::measure_quantization(Tensor::ones({3, 2}), q), ShapeError);
}

}  // namespace
}  // namespace shiftq
