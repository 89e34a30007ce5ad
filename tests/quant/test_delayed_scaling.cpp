// Delayed activation scaling (RangeObserver) and the numerics monitor (measure_quantization).
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <string>
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

// Whether a and b hold the same bits.
bool same(const Tensor& a, const Tensor& b) {
  return a.numel() == b.numel() && std::memcmp(a.raw_bytes(), b.raw_bytes(), a.nbytes()) == 0;
}

// x: [6, 16] with row r spanning 2^-r: with one per-tensor range the rows r >= 3 round to 0 at 4 bits.
Tensor rows_of_falling_scale() {
  std::vector<float> v(6 * 16);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = std::ldexp(std::sin(0.9f * static_cast<float>(i) + 0.3f), -static_cast<int>(i / 16));
  return Tensor::from_vector(v, {6, 16});
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

TEST(RangeObserver, MaxRangeIsTheLargestChannelsRange) {
  RangeObserver o(3, ObserverOptions{2, RangeReduction::max, 0.1f});
  EXPECT_THROW((void)o.max_range(), Error);  // nothing observed yet
  o.update(std::vector<float>{1.0f, 6.0f, 2.0f}, false, false);
  o.update(std::vector<float>{3.0f, 0.5f, 2.5f}, false, false);
  EXPECT_EQ(o.max_range(), 6.0f);
  o.update(std::vector<float>{3.0f, 0.5f, 2.5f}, false, false);  // the 6 leaves the window of 2
  EXPECT_EQ(o.max_range(), 3.0f);
}

TEST(InnerAbsmax, ColumnsOrRowsAndBadInput) {
  // x: [2, 3]
  const Tensor x = Tensor::from_vector(std::vector<float>{1.0f, -4.0f, 0.0f, -2.0f, 3.0f, 0.5f}, {2, 3});
  EXPECT_EQ(quant::inner_absmax(x, 1), (std::vector<float>{2.0f, 4.0f, 0.5f}));
  EXPECT_EQ(quant::inner_absmax(x, 0), (std::vector<float>{4.0f, 3.0f}));
  EXPECT_THROW(quant::inner_absmax(x, 2), ValueError);
  EXPECT_THROW(quant::inner_absmax(Tensor::zeros({6}), 1), ShapeError);
  EXPECT_THROW(quant::inner_absmax(Tensor::zeros({0, 3}), 1), ShapeError);
  EXPECT_THROW(quant::inner_absmax(Tensor::zeros({2, 3}, DType::s32), 1), Error);
  const Tensor inf = Tensor::from_vector(std::vector<float>{1.0f, 2.0f, INFINITY, 0.0f}, {2, 2});
  for (int axis : {0, 1}) {
    try {
      (void)quant::inner_absmax(inf, axis, "layer3.input");
      ADD_FAILURE() << "no NumericError for Inf";
    } catch (const NumericError& e) {
      EXPECT_NE(std::string(e.what()).find("layer3.input"), std::string::npos) << e.what();
    }
  }
}

Tensor clamped(const Tensor& x, float r) {
  Tensor y = x.clone();
  for (std::int64_t i = 0; i < y.numel(); ++i) y.data<float>()[i] = std::clamp(y.data<float>()[i], -r, r);
  return y;
}

// 8-bit per-tensor activations, no clipping: the delayed rule is exact enough to compare bit for bit.
quant::QConfig delayed_linear_quant() {
  quant::QConfig c = quant::QConfig::bits(8);
  c.activations.mse_clip = false;
  return c.for_layer(false);
}

// The first training call quantizes with its own range; the next ones with the observed range,
// saturating beyond it (counted) until the larger range enters the history; eval leaves it frozen.
TEST(DelayedScaling, LinearQuantizesWithTheObservedRangeAndSaturatesBeyondIt) {
  Generator gen(5);
  const Tensor w = Tensor::randn({6, 16}, gen), b = Tensor::randn({6}, gen);
  const Tensor x1 = Tensor::randn({5, 16}, gen);
  const Tensor x3 = mul(x1, 3.0f);
  const quant::QConfig q = delayed_linear_quant();
  quant::PackedWeight packed;
  NoGradGuard no_grad;
  auto current = [&](const Tensor& x) { return quant::quantized_linear(x, w, b, packed, q, quant::QuantCall{.seed = 1}); };
  RangeObserver observer(1, q.observer);
  auto delayed = [&](const Tensor& x, bool training) {
    return quant::quantized_linear(x, w, b, packed, q, quant::QuantCall{.training = training, .input_range = &observer, .seed = 1});
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

// With an observed per-tensor base and groups along rows (or S = 0), quantize() takes each row's
// range in its pack loop instead of a pass of its own. Given the range a plain call finds, the
// observed call gives the same codes, exponents and scale, and reports the same own range and sign
// for the observer, at 1 and 2 threads (the pack loop then runs in parallel blocks).
TEST(DelayedScaling, ObservedBaseQuantizesAsAPlainCallWithTheSameRange) {
  Generator gen(31);
  const Tensor signed_x = Tensor::randn({600, 300}, gen);
  const Tensor relu_x = relu(Tensor::randn({600, 300}, gen));
  using quant::OuterScale;
  using quant::QuantizeParams;
  const QuantizeParams configs[] = {
      QuantizeParams::per_tensor(4),
      QuantizeParams::per_tensor(4).with_nonnegative_range(),
      QuantizeParams::per_tensor(4).with_nonnegative_range().with_mse_clip(),
      QuantizeParams::per_tensor(6).with_unsigned_codes(),
      QuantizeParams::shiftquant(4, 3, 0, OuterScale::per_tensor).with_nonnegative_range().with_unsigned_codes(),
      QuantizeParams::shiftquant(4, 4, 0, OuterScale::per_tensor).with_mse_clip(),
      QuantizeParams::shiftquant(4, 4, 0, OuterScale::per_tensor).with_rounding(quant::Rounding::stochastic, {3, 4, 5}),
  };
  const int threads = get_num_threads();
  for (int t : {1, 2}) {
    set_num_threads(t);
    for (const Tensor& x : {signed_x, relu_x})
      for (std::size_t c = 0; c < std::size(configs); ++c) {
        const quant::QTensor plain = quant::quantize(x, configs[c]);
        QuantizeParams observed = configs[c];
        observed.with_observed_range(plain.input_range, plain.nonnegative);
        const quant::QTensor q = quant::quantize(x, observed);
        const std::string where = "config " + std::to_string(c) + ", " + std::to_string(t) + " threads";
        EXPECT_TRUE(same(q.codes, plain.codes)) << where;
        EXPECT_TRUE(same(q.exponents, plain.exponents)) << where;
        EXPECT_TRUE(same(q.scales, plain.scales)) << where;
        EXPECT_EQ(q.input_range, plain.input_range) << where;
        EXPECT_EQ(q.input_negative, plain.input_negative) << where;
        EXPECT_EQ(q.nonnegative, plain.nonnegative) << where;
      }
  }
  set_num_threads(threads);
  // A NaN in the input is still reported, never converted.
  Tensor bad = signed_x.clone();
  bad.data<float>()[12345] = std::nanf("");
  EXPECT_THROW(quant::quantize(bad, QuantizeParams::per_tensor(4).with_observed_range(2.0f, false)), NumericError);
}

// Observed ShiftQuant groups: each column's exponent comes from its given range against the base,
// not from the input; a column beyond its range saturates at its group's top code.
TEST(DelayedScaling, ObservedGroupRangesSetTheExponents) {
  // Column c of row 0 is 2^-c; the observed ranges claim columns 0..3 span 8, 4, 1 and 0.5.
  const Tensor x = Tensor::from_vector(std::vector<float>{1.0f, 0.5f, 0.25f, 0.125f}, {1, 4});
  const std::vector<float> ranges = {8.0f, 4.0f, 1.0f, 0.5f};
  const quant::QTensor q = quant::quantize(
      x, quant::QuantizeParams::shiftquant(4, 4, 1, quant::OuterScale::per_tensor)
             .with_observed_range(8.0f, false)
             .with_observed_group_ranges(ranges));
  const std::int8_t* e = q.exponents.data<std::int8_t>();
  EXPECT_EQ(e[0], 0);  // floor(log2(8 / 8))
  EXPECT_EQ(e[1], 1);  // floor(log2(8 / 4))
  EXPECT_EQ(e[2], 3);
  EXPECT_EQ(e[3], 4);
  // scale 8 / 7: column 0 (1 * 7/8 = 0.875) rounds to code 1, shifted by S - e = 4: v = 16.
  const std::int8_t* v = q.codes.data<std::int8_t>();
  EXPECT_EQ(v[0], 16);
  EXPECT_EQ(v[2], 2 * 2);  // 0.25 * 8 * 7/8 = 1.75 -> 2, shifted by 1
  // Column 3 (0.125 * 16 * 7/8 = 1.75) -> 2, shift 0; column 1: 0.5 * 2 * 7/8 = 0.875 -> 1, shift 3.
  EXPECT_EQ(v[3], 2);
  EXPECT_EQ(v[1], 8);
  // A column beyond its observed range saturates: 4 in column 3 (range 0.5) gives the top code 7.
  const Tensor big = Tensor::from_vector(std::vector<float>{1.0f, 0.5f, 0.25f, 4.0f}, {1, 4});
  const quant::QTensor qb = quant::quantize(
      big, quant::QuantizeParams::shiftquant(4, 4, 1, quant::OuterScale::per_tensor)
               .with_observed_range(8.0f, false)
               .with_observed_group_ranges(ranges));
  EXPECT_EQ(qb.codes.data<std::int8_t>()[3], 7);

  auto params = [](float base, std::span<const float> r, int S) {
    return quant::QuantizeParams::shiftquant(4, S, 1, quant::OuterScale::per_tensor)
        .with_observed_range(base, false)
        .with_observed_group_ranges(r);
  };
  const std::vector<float> three = {1.0f, 1.0f, 1.0f};
  EXPECT_THROW(quant::quantize(x, params(8.0f, three, 4)), ShapeError);
  EXPECT_THROW(quant::quantize(x, params(4.0f, ranges, 4)), ValueError);  // 8 > the base
  EXPECT_THROW(quant::quantize(x, params(8.0f, ranges, 0)), ValueError);  // no groups
  const std::vector<float> nan_range = {8.0f, std::nanf(""), 1.0f, 1.0f};
  EXPECT_THROW(quant::quantize(x, params(8.0f, nan_range, 4)), ValueError);
  // No pass of quantize's own meets a NaN input here: it is still rejected.
  const Tensor nan_x = Tensor::from_vector(std::vector<float>{1.0f, std::nanf(""), 0.25f, 0.125f}, {1, 4});
  EXPECT_THROW(quant::quantize(nan_x, params(8.0f, ranges, 4)), NumericError);
}

// 4-bit ShiftQuant activations on a Linear (groups over the input features): one observed range per
// feature. The first training call quantizes as with the batch's own ranges; afterwards a sample's
// output does not depend on its batch, and a feature beyond its range is a saturated call.
TEST(DelayedScaling, LinearShiftQuantActivationsObservePerFeatureRanges) {
  quant::QConfig c = quant::QConfig::bits(4);
  c.activations.kind = quant::QuantizerKind::shiftquant;
  c.activations.shift_budget = quant::max_shift_budget(4, false);
  c.activations.nonnegative_range = false;
  Generator gen(8);
  nn::Linear layer(nn::LinearOptions(16, 6), gen);
  layer.set_quantization(c, 1, 0);
  EXPECT_EQ(layer.input_range().channels(), 16);
  nn::Linear reference(nn::LinearOptions(16, 6), gen);
  quant::QConfig current = c;
  current.activation_scaling = quant::ActivationScaling::current;
  reference.set_quantization(current, 1, 0);
  reference.weight.copy_(layer.weight);
  reference.bias.copy_(layer.bias);

  // Features of widely spread ranges (2^-k for feature k % 8) make distinct exponents.
  std::vector<float> v(4 * 16);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = std::ldexp(std::sin(0.7f * static_cast<float>(i)), -static_cast<int>(i % 8));
  const Tensor x = Tensor::from_vector(v, {4, 16});
  NoGradGuard no_grad;
  EXPECT_TRUE(same(layer(x), reference(x)));  // first call: its own ranges
  for (std::int64_t k = 0; k < 16; ++k) {
    float m = 0.0f;
    for (std::int64_t r = 0; r < 4; ++r) m = std::max(m, std::fabs(v[static_cast<std::size_t>(r * 16 + k)]));
    EXPECT_EQ(layer.input_range().range(k), m) << "feature " << k;
  }
  layer.eval();
  const Tensor batch = layer(x);
  const Tensor one = layer(slice(x, 0, 2, 3));
  EXPECT_TRUE(same(one, slice(batch, 0, 2, 3)));
  // With the batch's own ranges, row 2 alone has other column maxima: its output changes.
  reference.eval();
  EXPECT_FALSE(same(reference(slice(x, 0, 2, 3)), slice(reference(x), 0, 2, 3)));

  layer.train();
  Tensor wide = x.clone();
  wide.data<float>()[16 + 7] = 1.0f;  // feature 7 observed at <= 2^-7
  (void)layer(wide);
  EXPECT_EQ(layer.input_range().saturated_calls(), 1u);
  EXPECT_EQ(layer.input_range().range(7), 1.0f);  // followed from the next call
}

// 4-bit ShiftQuant activations with one group per row (LinearInputGroups::rows): each row's
// exponent comes from its own values on the observed per-tensor base, so in training and in eval a
// row's output never depends on the other rows (a token on later tokens, a sample on its batch). The
// product equals the dequantized operands' product, and rows of small values keep their precision.
TEST(DelayedScaling, LinearRowGroupsKeepEachRowIndependent) {
  quant::QConfig c = quant::QConfig::bits(4);
  c.activations.kind = quant::QuantizerKind::shiftquant;
  c.activations.shift_budget = quant::max_shift_budget(4, false);
  c.activations.nonnegative_range = false;
  c.linear_input_groups = quant::LinearInputGroups::rows;
  Generator gen(9);
  nn::Linear layer(nn::LinearOptions(16, 6), gen);
  layer.set_quantization(c, 1, 0);
  EXPECT_EQ(layer.input_range().channels(), 1);  // one per-tensor base

  const Tensor x = rows_of_falling_scale();
  NoGradGuard no_grad;
  for (bool training : {true, false}) {
    layer.train(training);
    const Tensor y = layer(x);
    // y = X^ W^T + b with X^ from quantize() with the same rule (base: the observed range).
    const quant::QTensor xq = quant::quantize(
        x, quant::QuantizeParams::shiftquant(4, 4, 0, quant::OuterScale::per_tensor).with_observed_range(layer.input_range().range(), false));
    const quant::QTensor wq = quant::quantize(layer.weight, quant::QuantizeParams::shiftquant(4, 4, 0, quant::OuterScale::per_tensor));
    const Tensor expected = add(matmul(xq.dequantize(), transpose(wq.dequantize(), 0, 1)), layer.bias);
    for (std::int64_t i = 0; i < y.numel(); ++i)
      EXPECT_NEAR(y.data<float>()[i], expected.data<float>()[i], 1e-5f * (1.0f + std::fabs(expected.data<float>()[i]))) << i;
    for (std::int64_t r = 3; r < 6; ++r) EXPECT_NE(xq.exponents.data<std::int8_t>()[r], 0) << "row " << r;
    // Changing rows 3.. (later tokens) leaves rows 0..2 bit-identical; row 4 alone equals row 4 in the batch.
    Tensor later = x.clone();
    for (std::int64_t i = 3 * 16; i < 6 * 16; ++i) later.data<float>()[i] *= -0.5f;
    EXPECT_TRUE(same(slice(layer(later), 0, 0, 3), slice(layer(x), 0, 0, 3)));
    EXPECT_TRUE(same(layer(slice(x, 0, 4, 5)), slice(layer(x), 0, 4, 5)));
  }
}

// Row scales (LinearInputGroups::row_scales, and row_blocks with block multipliers): each row is
// quantized on its own float scale, with no observer, so a row's output depends on that row alone,
// in training and in eval, at any batch.
TEST(DelayedScaling, LinearRowScalesKeepEachRowIndependentWithoutAnObserver) {
  for (const bool blocks : {false, true}) {
    SCOPED_TRACE(blocks ? "row blocks" : "row scales");
    quant::QConfig c = quant::QConfig::bits(4);
    c.linear_input_groups = blocks ? quant::LinearInputGroups::row_blocks : quant::LinearInputGroups::row_scales;
    c.activations.mse_clip = true;
    Generator gen(9);
    nn::Linear layer(nn::LinearOptions(16, 6), gen);
    layer.set_quantization(c, 1, 0);
    const Tensor x = rows_of_falling_scale();
    NoGradGuard no_grad;
    const Tensor first = layer(x);
    for (bool training : {true, false}) {
      layer.train(training);
      const Tensor y = layer(x);
      EXPECT_TRUE(same(y, first));
      const quant::QuantizeParams xp = blocks ? quant::QuantizeParams::row_blocks(4, quant::kLinearInputBlock)
                                              : quant::QuantizeParams::per_row(4);
      const quant::QTensor xq = quant::quantize(x, quant::QuantizeParams(xp).with_mse_clip());
      const quant::QTensor wq = quant::quantize(layer.weight, quant::QuantizeParams::shiftquant(4, 4, 0, quant::OuterScale::per_tensor));
      const Tensor expected = add(matmul(xq.dequantize(), transpose(wq.dequantize(), 0, 1)), layer.bias);
      for (std::int64_t i = 0; i < y.numel(); ++i)
        EXPECT_NEAR(y.data<float>()[i], expected.data<float>()[i], 1e-5f * (1.0f + std::fabs(expected.data<float>()[i]))) << i;
      Tensor later = x.clone();
      for (std::int64_t i = 3 * 16; i < 6 * 16; ++i) later.data<float>()[i] *= -7.5f;
      EXPECT_TRUE(same(slice(layer(later), 0, 0, 3), slice(y, 0, 0, 3)));
      EXPECT_TRUE(same(layer(slice(x, 0, 4, 5)), slice(y, 0, 4, 5)));
    }
    EXPECT_FALSE(layer.input_range().observed());
  }
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
  EXPECT_EQ(n.exponent_histogram, (std::array<std::int64_t, 9>{}));  // per-tensor (S = 0): no groups

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
