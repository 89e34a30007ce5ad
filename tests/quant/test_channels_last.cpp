// Channels-last (ImageLayout::nhwc) image layers against their NCHW forms: the quantized
// convolution and L1 BatchNorm give the NCHW results bit for bit (same codes, same integer sums,
// same float epilogues), the float layers the same values up to summation order.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include <shiftq/shiftq.hpp>

#include "quant/qlayers_internal.hpp"  // the noted gradient ranges

namespace shiftq {
namespace {
using quant::QConfig;

Tensor to_nhwc(const Tensor& x) { return permute(x, {0, 2, 3, 1}); }

void expect_bitwise_equal(const Tensor& a, const Tensor& b, const char* what) {
  ASSERT_EQ(a.shape(), b.shape()) << what;
  std::int64_t differ = 0;
  for (std::int64_t i = 0; i < a.numel(); ++i) differ += a.data<float>()[i] != b.data<float>()[i];
  EXPECT_EQ(differ, 0) << what << ": " << differ << " of " << a.numel() << " values differ";
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  double m = 0.0;
  for (std::int64_t i = 0; i < a.numel(); ++i)
    m = std::max(m, std::fabs(double(a.data<float>()[i]) - b.data<float>()[i]));
  return m;
}

// The trainer's default activation quantizer (--act-quant shiftquant --act-clip mse): ShiftQuant
// with S = 7 - b, the unsigned range when non-negative, MSE-chosen group exponents.
QConfig shiftquant_activations(int bits, bool mse, bool nonnegative) {
  QConfig c = QConfig::bits(bits);
  c.activations.kind = quant::QuantizerKind::shiftquant;
  c.activations.shift_budget = (nonnegative ? 7 : 8) - bits;
  c.activations.nonnegative_range = nonnegative;
  c.activations.mse_clip = mse;
  return c;
}

struct ConvCase {
  const char* name;
  QConfig config;
  bool relu_input;  // non-negative input (post-ReLU)
  std::int64_t in_channels, stride;
};

// The case's convolution in both layouts, with the same weights and quantization.
struct ConvTwins {
  nn::Conv2d nchw, nhwc;
  ConvTwins(const ConvCase& c, Generator& gen)
      : nchw(nn::Conv2dOptions{c.in_channels, 6, 3}.stride(c.stride).padding(1), gen),
        nhwc(nn::Conv2dOptions{c.in_channels, 6, 3}.stride(c.stride).padding(1).layout(ImageLayout::nhwc), gen) {
    {
      NoGradGuard copy;
      nhwc.weight.copy_(nchw.weight);
      nhwc.bias.copy_(nchw.bias);
    }
    nchw.set_quantization(c.config, 5, 2);
    nhwc.set_quantization(c.config, 5, 2);
  }
};

// Two training calls (the first quantizes the input with its own range, the second with the
// observed one: delayed scaling) and their backward passes, in both layouts, from the same weights.
TEST(ChannelsLast, QuantizedConvEqualsChannelsFirstBitForBit) {
  const ConvCase cases[] = {
      {"per-tensor 4-bit", QConfig::bits(4), false, 5, 1},
      {"per-tensor 4-bit, non-negative", QConfig::bits(4), true, 16, 2},
      {"shiftquant S=3 unsigned + mse", shiftquant_activations(4, true, true), true, 16, 1},
      {"shiftquant S=3 unsigned + mse, signed input", shiftquant_activations(4, true, true), false, 5, 2},
      {"shiftquant S=4", shiftquant_activations(4, false, false), false, 17, 1},
      {"8-bit", QConfig::bits(8), true, 3, 1},
  };
  for (const ConvCase& c : cases) {
    SCOPED_TRACE(c.name);
    Generator gen(21);
    ConvTwins twins(c, gen);
    nn::Conv2d &nchw = twins.nchw, &nhwc = twins.nhwc;
    for (int call = 0; call < 2; ++call) {
      Tensor x = mul(Tensor::randn({3, c.in_channels, 9, 7}, gen), 1.0f + static_cast<float>(call));
      if (c.relu_input) x = relu(x);
      const Tensor x_first = x.clone().set_requires_grad(true), x_last = to_nhwc(x).set_requires_grad(true);
      const Tensor y_first = nchw(x_first), y_last = nhwc(x_last);
      expect_bitwise_equal(to_nhwc(y_first), y_last, "forward");
      const Tensor r = Tensor::randn(y_first.shape(), gen);
      nchw.zero_grad();
      nhwc.zero_grad();
      sum(mul(y_first, r)).backward();
      sum(mul(y_last, to_nhwc(r))).backward();
      expect_bitwise_equal(to_nhwc(x_first.grad()), x_last.grad(), "input gradient");
      expect_bitwise_equal(nchw.weight.grad(), nhwc.weight.grad(), "weight gradient");
      EXPECT_LT(max_abs_diff(nchw.bias.grad(), nhwc.bias.grad()), 1e-4);  // fp32 sums in another order
    }
    EXPECT_EQ(nchw.input_range().range(), nhwc.input_range().range());
    EXPECT_EQ(nchw.input_range().nonnegative(), nhwc.input_range().nonnegative());
  }
}

void expect_same_numerics(const quant::TensorNumerics& a, const quant::TensorNumerics& b, const char* what) {
  SCOPED_TRACE(what);
  EXPECT_GT(a.elements, 0);
  EXPECT_EQ(a.elements, b.elements);
  EXPECT_EQ(a.saturated, b.saturated);
  EXPECT_EQ(a.zeros, b.zeros);
  EXPECT_EQ(a.exponent_histogram, b.exponent_histogram);
  EXPECT_EQ(a.range, b.range);
  EXPECT_EQ(a.input_absmax, b.input_absmax);
  // The same terms, summed in another order in double
  EXPECT_NEAR(a.error_sq, b.error_sq, 1e-12 * a.value_sq);
  EXPECT_NEAR(a.value_sq, b.value_sq, 1e-12 * a.value_sq);
}

// The monitor measures the same quantizations in both layouts (they are bit-identical), including
// channels-last ShiftQuant's per-(sample, channel) exponents when C equals H*W.
TEST(ChannelsLast, NumericsMonitorReportsWhatChannelsFirstReports) {
  const ConvCase cases[] = {
      {"shiftquant S=3 unsigned + mse", shiftquant_activations(4, true, true), true, 16, 1},
      {"shiftquant S=4, signed input", shiftquant_activations(4, false, false), false, 5, 2},
      {"per-tensor 4-bit", QConfig::bits(4), false, 5, 1},
  };
  for (const ConvCase& c : cases) {
    for (const std::int64_t side : {4, 9}) {  // 4: C = H*W = 16 in the first case
      SCOPED_TRACE(testing::Message() << c.name << ", " << side << "x" << side);
      Generator gen(23);
      ConvTwins twins(c, gen);
      nn::Conv2d &nchw = twins.nchw, &nhwc = twins.nhwc;
      nchw.set_numerics_monitor(true);
      nhwc.set_numerics_monitor(true);
      for (int call = 0; call < 2; ++call) {
        // Channel c at 2^-(c % 4): groups with different exponents
        std::vector<float> channel_scale;
        for (std::int64_t k = 0; k < c.in_channels; ++k) channel_scale.push_back(std::ldexp(1.0f + 4.0f * call, -int(k % 4)));
        Tensor x = mul(Tensor::randn({3, c.in_channels, side, side}, gen),
                       Tensor::from_vector(channel_scale, {1, c.in_channels, 1, 1}));
        if (c.relu_input) x = relu(x);
        const Tensor x_first = x.clone().set_requires_grad(true), x_last = to_nhwc(x).set_requires_grad(true);
        const Tensor y_first = nchw(x_first), y_last = nhwc(x_last);
        const Tensor r = Tensor::randn(y_first.shape(), gen);
        sum(mul(y_first, r)).backward();
        sum(mul(y_last, to_nhwc(r))).backward();
      }
      ASSERT_NE(nchw.numerics(), nullptr);
      ASSERT_NE(nhwc.numerics(), nullptr);
      EXPECT_EQ(nchw.numerics()->calls, 2);
      EXPECT_EQ(nhwc.numerics()->calls, 2);
      expect_same_numerics(nchw.numerics()->input, nhwc.numerics()->input, "input");
      if (c.config.activations.shift_budget > 0) {
        EXPECT_GT(nchw.numerics()->input.exponent_histogram[2], 0);
      }
      expect_same_numerics(nchw.numerics()->grad_output, nhwc.numerics()->grad_output, "output gradient");
    }
  }
}

// Training forward and backward (twice: running statistics and observed ranges), then eval on
// integer codes: bit for bit. The backward's stochastic roundings draw by each element's NCHW index
// (QuantizePackArgs::index_plane), so the gradient codes, and with them every gradient, are the
// NCHW layer's.
TEST(ChannelsLast, QuantizedL1BatchNormEqualsChannelsFirstBitForBit) {
  for (const int bits : {8, 5}) {
    SCOPED_TRACE(bits);
    Generator gen(22);
    QConfig config = QConfig::bits(4);
    config.norm_bits = bits;
    for (const std::int64_t hw : {7, 3}) {  // 7x7: NCHW packs channel ranges; 3x3: one channel at a time
      nn::L1BatchNorm2d nchw(nn::L1BatchNormOptions{20});
      nn::L1BatchNorm2d nhwc(nn::L1BatchNormOptions{20}.layout(ImageLayout::nhwc));
      {
        NoGradGuard copy;
        nchw.weight.copy_(Tensor::uniform({20}, 0.5f, 1.5f, gen));
        nhwc.weight.copy_(nchw.weight);
        nchw.bias.copy_(Tensor::uniform({20}, -0.5f, 0.5f, gen));
        nhwc.bias.copy_(nchw.bias);
      }
      nchw.set_quantization(config, 3, 4);
      nhwc.set_quantization(config, 3, 4);
      for (int call = 0; call < 2; ++call) {
        const Tensor x = add(mul(Tensor::randn({6, 20, hw, hw}, gen), 2.0f), 0.3f), r = Tensor::randn(x.shape(), gen);
        const Tensor x_first = x.clone().set_requires_grad(true), x_last = to_nhwc(x).set_requires_grad(true);
        const Tensor y_first = nchw(x_first), y_last = nhwc(x_last);
        expect_bitwise_equal(to_nhwc(y_first), y_last, "training forward");
        nchw.zero_grad();
        nhwc.zero_grad();
        sum(mul(y_first, r)).backward();
        sum(mul(y_last, to_nhwc(r))).backward();
        expect_bitwise_equal(to_nhwc(x_first.grad()), x_last.grad(), "input gradient");
        expect_bitwise_equal(nchw.weight.grad(), nhwc.weight.grad(), "gamma gradient");
        expect_bitwise_equal(nchw.bias.grad(), nhwc.bias.grad(), "beta gradient");
      }
      expect_bitwise_equal(nchw.running_mean, nhwc.running_mean, "running mean");
      expect_bitwise_equal(nchw.running_sigma, nhwc.running_sigma, "running sigma");
      for (std::int64_t c = 0; c < 20; ++c) EXPECT_EQ(nchw.input_range()->range(c), nhwc.input_range()->range(c));
      nchw.eval();
      nhwc.eval();
      const Tensor x = mul(Tensor::randn({5, 20, hw, hw}, gen), 2.5f);  // some values beyond the observed ranges
      expect_bitwise_equal(to_nhwc(nchw(x)), nhwc(to_nhwc(x)), "eval");
    }
  }
}

// The NHWC passes split rows among threads; their integer sums make the results independent of
// that split, gradients included.
TEST(ChannelsLast, QuantizedL1BatchNormDoesNotDependOnTheThreadCount) {
  Generator gen(26);
  auto run = [](int threads, const Tensor& x, const Tensor& r) {
    const int before = get_num_threads();
    set_num_threads(threads);
    const Tensor gamma = Tensor::full({x.size(3)}, 0.75f).set_requires_grad(true);
    const Tensor beta = Tensor::full({x.size(3)}, 0.25f).set_requires_grad(true);
    const Tensor xg = x.clone().set_requires_grad(true);
    L1BatchNormState state;
    const quant::QuantCall call{.step = 7, .seed = 4, .layer_id = 1};
    const Tensor y = quant::quantized_l1_batch_norm2d(xg, gamma, beta, state, QConfig::bits(8), call, ImageLayout::nhwc);
    sum(mul(y, r)).backward();
    set_num_threads(before);
    std::vector<float> all = y.to_vector<float>();
    for (const Tensor& g : {xg.grad(), gamma.grad(), beta.grad()}) {
      const std::vector<float> v = g.to_vector<float>();
      all.insert(all.end(), v.begin(), v.end());
    }
    return all;
  };
  for (const Shape& shape : {Shape{16, 7, 7, 16}, Shape{9, 3, 3, 5}, Shape{64, 8, 8, 70}}) {
    const Tensor x = add(mul(Tensor::randn(shape, gen), 1.5f), 0.2f), r = Tensor::randn(shape, gen);
    const std::vector<float> one = run(1, x, r);
    for (int threads : {2, 3}) EXPECT_TRUE(run(threads, x, r) == one) << threads << " threads, shape " << x.str();
  }
}

// The channels-last L1 BatchNorm's backward notes the exact row and column maxima of the gradient it
// writes (internal::find_gradient_ranges), for the convolution that consumes it. A note is found
// once, for the same storage at the same version and [R, C] only: after an in-place write through
// shiftq (the engine's accumulation bumps the version), under another shape, or for another tensor
// it is not. (That the convolution's results with a noted range equal those without one is the
// ChannelsLast / TrainerTest comparisons against NCHW, which notes nothing.)
TEST(ChannelsLast, NormBackwardNotesItsGradientRanges) {
  Generator gen(31);
  const std::int64_t N = 6, H = 5, W = 7, C = 24, R = N * H * W;
  const Tensor x = add(mul(Tensor::randn({N, H, W, C}, gen), 2.0f), 0.3f).set_requires_grad(true);
  const Tensor gamma = Tensor::full({C}, 0.5f).set_requires_grad(true);
  L1BatchNormState state;
  const quant::QuantCall call{.step = 3, .seed = 2, .layer_id = 5};
  const Tensor y = quant::quantized_l1_batch_norm2d(x, gamma, Tensor(), state, QConfig::bits(8), call, ImageLayout::nhwc);
  sum(mul(y, Tensor::randn(y.shape(), gen))).backward();
  const Tensor dx = x.grad();  // the norm's own output tensor (a leaf keeps a gradient no one else holds)
  std::vector<float> row_max(R, 0.0f), col_max(C, 0.0f);
  for (std::int64_t r = 0; r < R; ++r)
    for (std::int64_t c = 0; c < C; ++c) {
      const float a = std::fabs(dx.data<float>()[r * C + c]);
      row_max[r] = std::max(row_max[r], a);
      col_max[c] = std::max(col_max[c], a);
    }
  EXPECT_EQ(quant::internal::find_gradient_ranges(dx, R, C + 1), nullptr) << "another shape";
  EXPECT_EQ(quant::internal::find_gradient_ranges(dx.clone(), R, C), nullptr) << "another tensor";
  const quant::internal::GradientRanges* noted = quant::internal::find_gradient_ranges(dx.view({R, C}), R, C);
  ASSERT_NE(noted, nullptr);
  EXPECT_EQ(noted->row_max, row_max);
  EXPECT_EQ(noted->col_max, col_max);
  EXPECT_EQ(quant::internal::find_gradient_ranges(dx, R, C), nullptr) << "a note is used once";
  // A gradient written again in place (the second backward accumulates into the leaf's gradient):
  // the note made for the new values is for another storage, and the old storage's version moved.
  Tensor other = Tensor::randn({N, H, W, C}, gen);
  quant::internal::GradientRanges& slot = quant::internal::gradient_ranges_slot(other, R, C);
  std::fill(slot.row_max.begin(), slot.row_max.end(), 1.0f);
  std::fill(slot.col_max.begin(), slot.col_max.end(), 1.0f);
  quant::internal::note_gradient_ranges_done(other);
  other.bump_version();
  EXPECT_EQ(quant::internal::find_gradient_ranges(other, R, C), nullptr) << "written after the note";
}

// The float layers in NHWC: the same values as NCHW up to the order of float sums, and gradients.
TEST(ChannelsLast, FloatLayersMatchChannelsFirst) {
  Generator gen(24);
  const Tensor x = Tensor::randn({4, 5, 6, 6}, gen);
  nn::Conv2d conv_f(nn::Conv2dOptions{5, 7, 3}.stride(2).padding(1), gen);
  nn::Conv2d conv_l(nn::Conv2dOptions{5, 7, 3}.stride(2).padding(1).layout(ImageLayout::nhwc), gen);
  nn::BatchNorm2d bn_f(nn::BatchNormOptions{7});
  nn::BatchNorm2d bn_l(nn::BatchNormOptions{7}.layout(ImageLayout::nhwc));
  nn::L1BatchNorm2d l1_f(nn::L1BatchNormOptions{7});
  nn::L1BatchNorm2d l1_l(nn::L1BatchNormOptions{7}.layout(ImageLayout::nhwc));
  {
    NoGradGuard copy;
    conv_l.weight.copy_(conv_f.weight);
    conv_l.bias.copy_(conv_f.bias);
  }
  nn::GlobalAvgPool2d pool_f, pool_l(ImageLayout::nhwc);
  for (const bool training : {true, false}) {
    for (nn::Module* m : {static_cast<nn::Module*>(&bn_f), static_cast<nn::Module*>(&bn_l), static_cast<nn::Module*>(&l1_f),
                          static_cast<nn::Module*>(&l1_l)})
      m->train(training);
    const Tensor xf = x.clone().set_requires_grad(true), xl = to_nhwc(x).set_requires_grad(true);
    const Tensor yf = pool_f(l1_f(relu(bn_f(conv_f(xf)))));
    const Tensor yl = pool_l(l1_l(relu(bn_l(conv_l(xl)))));
    EXPECT_LT(max_abs_diff(yf, yl), 1e-5) << training;
    sum(mul(yf, yf)).backward();
    sum(mul(yl, yl)).backward();
    EXPECT_LT(max_abs_diff(to_nhwc(xf.grad()), xl.grad()), 1e-5) << training;
    EXPECT_LT(max_abs_diff(conv_f.weight.grad(), conv_l.weight.grad()), 1e-4) << training;
    EXPECT_LT(max_abs_diff(bn_f.running_var, bn_l.running_var), 1e-5) << training;
    EXPECT_LT(max_abs_diff(l1_f.running_sigma, l1_l.running_sigma), 1e-5) << training;
    conv_f.zero_grad();
    conv_l.zero_grad();
  }
}

TEST(ChannelsLast, ShapeErrorsNameTheLayout) {
  Generator gen(25);
  nn::Conv2d conv(nn::Conv2dOptions{3, 4, 3}.layout(ImageLayout::nhwc), gen);
  const Tensor nchw_input = Tensor::randn({2, 3, 8, 8}, gen);  // [N, C, H, W] given to an NHWC layer
  EXPECT_THROW(conv(nchw_input), ShapeError);
  conv.set_quantization(QConfig::bits(4), 1, 0);
  EXPECT_THROW(conv(nchw_input), ShapeError);
  nn::L1BatchNorm2d norm(nn::L1BatchNormOptions{3}.layout(ImageLayout::nhwc));
  norm.set_quantization(QConfig::bits(4), 1, 1);
  EXPECT_THROW(norm(nchw_input), ShapeError);
  const Tensor bad = Tensor::full({2, 8, 8, 3}, std::nanf(""));
  EXPECT_THROW(norm(bad), NumericError);
  EXPECT_THROW(conv(bad), NumericError);
  const Tensor x = Tensor::randn({2, 8, 8, 3}, gen).set_requires_grad(true);
  Tensor dy = Tensor::ones({2, 8, 8, 3});
  dy.data<float>()[11] = std::numeric_limits<float>::infinity();
  EXPECT_THROW(norm(x).backward(dy), NumericError);
}

}  // namespace
}  // namespace shiftq
