// Integer data flow between layers: an L1 BatchNorm writing the int8 input codes of the convolution
// after its ReLU (nn::norm_relu_conv2d, quant::quantized_l1_batch_norm2d_relu) against the three
// modules run one after the other. Same codes, same integer products, same masks: bit for bit,
// forward, backward, running statistics and observers, in both layouts.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include <shiftq/shiftq.hpp>

namespace shiftq {
namespace {
using quant::QConfig;

void expect_bitwise_equal(const Tensor& a, const Tensor& b, const char* what) {
  ASSERT_TRUE(a.defined() && b.defined()) << what;
  ASSERT_EQ(a.shape(), b.shape()) << what;
  std::int64_t differ = 0;
  for (std::int64_t i = 0; i < a.numel(); ++i) differ += a.data<float>()[i] != b.data<float>()[i];
  EXPECT_EQ(differ, 0) << what << ": " << differ << " of " << a.numel() << " values differ";
}

// The trainer's default activation quantizer (--act-quant shiftquant --act-clip mse) or its
// variants, with the norms at norm_bits.
QConfig activations(int bits, bool mse, bool nonnegative, int norm_bits = 8) {
  QConfig c = QConfig::bits(bits);
  c.activations.kind = quant::QuantizerKind::shiftquant;
  c.activations.shift_budget = (nonnegative ? 7 : 8) - bits;
  c.activations.nonnegative_range = nonnegative;
  c.activations.mse_clip = mse;
  c.norm_bits = norm_bits;
  return c;
}

// norm -> relu -> conv, the block's inner chain, in one layout.
struct Chain {
  nn::L1BatchNorm2d norm;
  nn::Conv2d conv;
  Chain(std::int64_t channels, std::int64_t out, ImageLayout layout, Generator& gen)
      : norm(nn::L1BatchNormOptions{channels}.layout(layout)),
        conv(nn::Conv2dOptions{channels, out, 3}.padding(1).bias(false).layout(layout), gen) {}
  void copy_from(const Chain& other) {
    NoGradGuard copy;
    norm.weight.copy_(other.norm.weight);
    norm.bias.copy_(other.norm.bias);
    conv.weight.copy_(other.conv.weight);
  }
  void quantize(const QConfig& config) {
    norm.set_quantization(config, 9, 1);
    conv.set_quantization(config, 9, 2);
  }
  void train(bool on = true) {
    norm.train(on);
    conv.train(on);
  }
  void eval() { train(false); }
  void zero_grad() {
    for (Tensor* t : {&norm.weight, &norm.bias, &conv.weight}) t->zero_grad();
  }
};

struct ChainCase {
  const char* name;
  QConfig config;
  std::int64_t channels, side;  // side x side images
  ImageLayout layout;
};

// Three training calls (the first has no observed conv input range yet, so it runs unfused in
// both), their backward passes, then eval: fused against unfused from the same weights.
TEST(CodedActivation, NormReluConvEqualsTheUnfusedChainBitForBit) {
  std::vector<ChainCase> cases = {
      {"4-bit default, NCHW 12x12", activations(4, true, true), 16, 12, ImageLayout::nchw},
      {"4-bit default, NHWC 12x12", activations(4, true, true), 16, 12, ImageLayout::nhwc},
      {"4-bit default, NCHW 7x7 (channel ranges)", activations(4, true, true), 12, 7, ImageLayout::nchw},
      {"4-bit default, NHWC 7x7", activations(4, true, true), 12, 7, ImageLayout::nhwc},
      {"S=4 symmetric, 5-bit norm, NCHW 5x9 odd channels", activations(4, false, false, 5), 5, 9, ImageLayout::nchw},
      {"S=4 symmetric, 5-bit norm, NHWC", activations(4, false, false, 5), 5, 9, ImageLayout::nhwc},
      {"6-bit S=1, NCHW", activations(6, false, true), 8, 6, ImageLayout::nchw},
  };
  QConfig stochastic = activations(4, true, true);
  stochastic.activations.rounding = quant::Rounding::stochastic;
  for (const ImageLayout layout : {ImageLayout::nchw, ImageLayout::nhwc})
    cases.push_back({"4-bit, stochastic activation rounding", stochastic, 16, 12, layout});
  for (const int threads : {1, 2}) {
    const int before = get_num_threads();
    set_num_threads(threads);
    for (const ChainCase& c : cases) {
      SCOPED_TRACE(std::string(c.name) + ", threads " + std::to_string(threads));
      Generator gen(31);
      Chain unfused(c.channels, 6, c.layout, gen), fused(c.channels, 6, c.layout, gen);
      {
        NoGradGuard init;
        unfused.norm.weight.copy_(Tensor::uniform({c.channels}, 0.5f, 1.5f, gen));
        unfused.norm.bias.copy_(Tensor::uniform({c.channels}, -0.5f, 0.5f, gen));
      }
      fused.copy_from(unfused);
      unfused.quantize(c.config);
      fused.quantize(c.config);
      const Shape shape = c.layout == ImageLayout::nhwc ? Shape{4, c.side, c.side, c.channels}
                                                        : Shape{4, c.channels, c.side, c.side};
      for (int call = 0; call < 3; ++call) {
        SCOPED_TRACE(call);
        EXPECT_EQ(fused.norm.writes_codes_for(fused.conv), call > 0);
        // Later calls spread wider, so some codes saturate at the observed range.
        const Tensor x = add(mul(Tensor::randn(shape, gen), 1.0f + 0.5f * static_cast<float>(call)), 0.2f);
        const Tensor xa = x.clone().set_requires_grad(true), xb = x.clone().set_requires_grad(true);
        const Tensor ya = unfused.conv(relu(unfused.norm(xa)));
        const Tensor yb = nn::norm_relu_conv2d(fused.norm, fused.conv, xb);
        expect_bitwise_equal(ya, yb, "forward");
        const Tensor r = Tensor::randn(ya.shape(), gen);
        unfused.zero_grad();
        fused.zero_grad();
        sum(mul(ya, r)).backward();
        sum(mul(yb, r)).backward();
        expect_bitwise_equal(xa.grad(), xb.grad(), "dx");
        expect_bitwise_equal(unfused.norm.weight.grad(), fused.norm.weight.grad(), "dgamma");
        expect_bitwise_equal(unfused.norm.bias.grad(), fused.norm.bias.grad(), "dbeta");
        expect_bitwise_equal(unfused.conv.weight.grad(), fused.conv.weight.grad(), "dW");
        EXPECT_EQ(unfused.conv.input_range().range(), fused.conv.input_range().range());
        EXPECT_EQ(unfused.conv.input_range().nonnegative(), fused.conv.input_range().nonnegative());
      }
      expect_bitwise_equal(unfused.norm.running_mean, fused.norm.running_mean, "running mean");
      expect_bitwise_equal(unfused.norm.running_sigma, fused.norm.running_sigma, "running sigma");
      for (std::int64_t ch = 0; ch < c.channels; ++ch)
        EXPECT_EQ(unfused.norm.input_range()->range(ch), fused.norm.input_range()->range(ch));
      EXPECT_EQ(unfused.conv.quant_calls(), fused.conv.quant_calls());
      EXPECT_EQ(unfused.norm.quant_calls(), fused.norm.quant_calls());
      // Eval on codes: the running statistics and observed ranges, outside grad mode.
      unfused.eval();
      fused.eval();
      NoGradGuard no_grad;
      EXPECT_TRUE(fused.norm.writes_codes_for(fused.conv));
      const Tensor x = mul(Tensor::randn(shape, gen), 2.5f);
      expect_bitwise_equal(unfused.conv(relu(unfused.norm(x))), nn::norm_relu_conv2d(fused.norm, fused.conv, x), "eval");
    }
    set_num_threads(before);
  }
}

// The block's output relu(norm2(y) + shortcut) in one pass (nn::norm_add_relu) against the three ops.
TEST(CodedActivation, NormAddReluEqualsTheUnfusedOpsBitForBit) {
  for (const int threads : {1, 2}) {
    const int before = get_num_threads();
    set_num_threads(threads);
    for (const ImageLayout layout : {ImageLayout::nchw, ImageLayout::nhwc})
      for (const std::int64_t side : {12, 7, 5}) {  // 7x7: NCHW channel ranges; 5x5 with 3 channels: 75-bit masks
        const std::int64_t C = side == 5 ? 3 : 16;
        SCOPED_TRACE(std::string(layout == ImageLayout::nhwc ? "NHWC " : "NCHW ") + std::to_string(side) + ", threads " +
                     std::to_string(threads));
        Generator gen(34);
        nn::L1BatchNorm2d unfused(nn::L1BatchNormOptions{C}.layout(layout)), fused(nn::L1BatchNormOptions{C}.layout(layout));
        {
          NoGradGuard init;
          unfused.weight.copy_(Tensor::uniform({C}, 0.5f, 1.5f, gen));
          unfused.bias.copy_(Tensor::uniform({C}, -0.5f, 0.5f, gen));
          fused.weight.copy_(unfused.weight);
          fused.bias.copy_(unfused.bias);
        }
        unfused.set_quantization(activations(4, true, true), 9, 1);
        fused.set_quantization(activations(4, true, true), 9, 1);
        const Shape shape = layout == ImageLayout::nhwc ? Shape{5, side, side, C} : Shape{5, C, side, side};
        for (int call = 0; call < 3; ++call) {
          SCOPED_TRACE(call);
          const Tensor x = add(mul(Tensor::randn(shape, gen), 1.5f), 0.2f), sc = Tensor::randn(shape, gen);
          const Tensor xa = x.clone().set_requires_grad(true), xb = x.clone().set_requires_grad(true);
          const Tensor sa = sc.clone().set_requires_grad(true), sb = sc.clone().set_requires_grad(true);
          const Tensor ya = relu(add(unfused(xa), sa)), yb = nn::norm_add_relu(fused, xb, sb);
          expect_bitwise_equal(ya, yb, "forward");
          const Tensor r = Tensor::randn(shape, gen);
          for (Tensor* t : {&unfused.weight, &unfused.bias, &fused.weight, &fused.bias}) t->zero_grad();
          sum(mul(ya, r)).backward();
          sum(mul(yb, r)).backward();
          expect_bitwise_equal(xa.grad(), xb.grad(), "dx");
          expect_bitwise_equal(sa.grad(), sb.grad(), "dshortcut");
          expect_bitwise_equal(unfused.weight.grad(), fused.weight.grad(), "dgamma");
          expect_bitwise_equal(unfused.bias.grad(), fused.bias.grad(), "dbeta");
        }
        expect_bitwise_equal(unfused.running_mean, fused.running_mean, "running mean");
        expect_bitwise_equal(unfused.running_sigma, fused.running_sigma, "running sigma");
        unfused.eval();
        fused.eval();
        const Tensor x = mul(Tensor::randn(shape, gen), 2.5f), sc = Tensor::randn(shape, gen);
        {
          NoGradGuard no_grad;  // eval on codes, fused
          expect_bitwise_equal(relu(add(unfused(x), sc)), nn::norm_add_relu(fused, x, sc), "eval");
        }
        // eval under grad mode (the straight-through probe) runs the ops
        const Tensor xa = x.clone().set_requires_grad(true), xb = x.clone().set_requires_grad(true);
        const Tensor ya = relu(add(unfused(xa), sc)), yb = nn::norm_add_relu(fused, xb, sc);
        expect_bitwise_equal(ya, yb, "eval, grad mode");
        sum(ya).backward();
        sum(yb).backward();
        expect_bitwise_equal(xa.grad(), xb.grad(), "eval dx");
      }
    set_num_threads(before);
  }
  nn::L1BatchNorm2d norm(nn::L1BatchNormOptions{4});
  norm.set_quantization(activations(4, true, true), 9, 1);
  Generator gen(35);
  EXPECT_THROW(nn::norm_add_relu(norm, Tensor::randn({2, 4, 3, 3}, gen), Tensor::randn({2, 4, 3, 2}, gen)), ShapeError);
  nn::BatchNorm2d l2(nn::BatchNormOptions{4});  // any other norm: the three ops
  const Tensor x = Tensor::randn({2, 4, 3, 3}, gen), sc = Tensor::randn({2, 4, 3, 3}, gen);
  EXPECT_EQ(nn::norm_add_relu(l2, x, sc).shape(), x.shape());
}

// What keeps the chain unfused: it then runs the three modules, with the same results.
TEST(CodedActivation, FallsBackWhereCodesCannotBeWritten) {
  Generator gen(32);
  const Tensor x = Tensor::randn({2, 4, 5, 5}, gen);
  Chain chain(4, 3, ImageLayout::nchw, gen);
  EXPECT_FALSE(chain.norm.writes_codes_for(chain.conv));  // float
  chain.quantize(activations(4, true, true));
  EXPECT_FALSE(chain.norm.writes_codes_for(chain.conv));  // nothing observed yet
  nn::norm_relu_conv2d(chain.norm, chain.conv, x);
  EXPECT_TRUE(chain.norm.writes_codes_for(chain.conv));
  chain.conv.set_numerics_monitor(true);  // measures the f32 input
  EXPECT_FALSE(chain.norm.writes_codes_for(chain.conv));
  chain.conv.set_numerics_monitor(false);
  chain.eval();
  {
    EXPECT_FALSE(chain.norm.writes_codes_for(chain.conv));  // eval in grad mode: the STE probe needs f32
    NoGradGuard no_grad;
    EXPECT_TRUE(chain.norm.writes_codes_for(chain.conv));
  }
  chain.train();
  chain.conv.eval();  // the consumer's observer follows the norm's call: modes must agree
  EXPECT_FALSE(chain.norm.writes_codes_for(chain.conv));
  chain.conv.train();
  EXPECT_TRUE(chain.norm.writes_codes_for(chain.conv));
  QConfig per_tensor = QConfig::bits(4);  // S = 0 activations: quantized by the convolution itself
  per_tensor.norm_bits = 8;
  chain.conv.set_quantization(per_tensor, 9, 2);
  nn::norm_relu_conv2d(chain.norm, chain.conv, x);
  EXPECT_FALSE(chain.norm.writes_codes_for(chain.conv));
  QConfig current = activations(4, true, true);
  current.activation_scaling = quant::ActivationScaling::current;
  chain.conv.set_quantization(current, 9, 2);
  EXPECT_FALSE(chain.norm.writes_codes_for(chain.conv));
  // Another layout or channel count
  Chain nhwc(4, 3, ImageLayout::nhwc, gen);
  nhwc.quantize(activations(4, true, true));
  nn::norm_relu_conv2d(nhwc.norm, nhwc.conv, permute(x, {0, 2, 3, 1}));
  EXPECT_TRUE(nhwc.norm.writes_codes_for(nhwc.conv));
  EXPECT_FALSE(chain.norm.writes_codes_for(nhwc.conv));
  // An L2 BatchNorm goes through the modules.
  nn::BatchNorm2d l2(nn::BatchNormOptions{4});
  Chain plain(4, 3, ImageLayout::nchw, gen);
  plain.conv.weight = chain.conv.weight;
  const Tensor y = nn::norm_relu_conv2d(l2, plain.conv, x);
  EXPECT_EQ(y.shape(), (Shape{2, 3, 5, 5}));
}

TEST(CodedActivation, ErrorsAreClear) {
  Generator gen(33);
  Chain chain(4, 3, ImageLayout::nchw, gen);
  const Tensor x = Tensor::randn({2, 4, 5, 5}, gen);
  EXPECT_THROW(chain.norm.forward_relu_codes(x, chain.conv), ValueError);  // not quantized
  chain.quantize(activations(4, true, true));
  EXPECT_THROW(chain.norm.forward_relu_codes(x, chain.conv), ValueError);  // no observed conv range yet
  nn::norm_relu_conv2d(chain.norm, chain.conv, x);
  quant::CodedActivation codes = chain.norm.forward_relu_codes(x, chain.conv);
  EXPECT_EQ(codes.codes.shape(), (Shape{2, 5, 5, 4}));
  EXPECT_EQ(codes.codes.dtype(), DType::u8);
  // Codes that q does not describe
  quant::CodedActivation wrong = codes;
  wrong.codes = codes.codes.clone();
  EXPECT_THROW(chain.conv.forward(wrong), ValueError);
  Chain other(4, 3, ImageLayout::nchw, gen);  // codes made for another layer
  other.quantize(activations(4, true, true));
  nn::norm_relu_conv2d(other.norm, other.conv, x);
  ASSERT_TRUE(other.conv.takes_input_codes());
  EXPECT_THROW(other.conv.forward(codes), ValueError);
  chain.conv.set_numerics_monitor(true);  // the monitor measures an f32 input
  EXPECT_THROW(chain.conv.forward(codes), ValueError);
  chain.conv.set_numerics_monitor(false);
  // Eval codes carry no gradient: under grad mode the quantized op refuses
  {
    chain.eval();
    L1BatchNormState state{chain.norm.running_mean, chain.norm.running_sigma, 0.1f, 1e-5f, kL1NormC};
    quant::RangeObserver observed(4, QConfig::bits(4).observer);
    observed.update(std::vector<float>(4, 3.0f), true, false);
    const quant::QuantCall call{.step = 0, .training = false, .input_range = &observed};
    EXPECT_THROW(quant::quantized_l1_batch_norm2d_relu(x, chain.norm.weight, chain.norm.bias, state,
                                                       activations(4, true, true), call, ImageLayout::nchw,
                                                       *chain.conv.quantization(), chain.conv.input_range()),
                 ValueError);
    NoGradGuard no_grad;
    EXPECT_EQ(quant::quantized_l1_batch_norm2d_relu(x, chain.norm.weight, chain.norm.bias, state,
                                                    activations(4, true, true), call, ImageLayout::nchw,
                                                    *chain.conv.quantization(), chain.conv.input_range())
                  .codes.shape(),
              (Shape{2, 5, 5, 4}));
    chain.train();
  }
  // No channels: a clear error, never a division by zero
  for (const ImageLayout layout : {ImageLayout::nchw, ImageLayout::nhwc}) {
    const Tensor empty = Tensor::zeros(layout == ImageLayout::nhwc ? Shape{2, 3, 3, 0} : Shape{2, 0, 3, 3});
    L1BatchNormState state;
    EXPECT_THROW(quant::quantized_l1_batch_norm2d(empty, Tensor(), Tensor(), state, activations(4, true, true), {}, layout),
                 ShapeError);
    EXPECT_THROW(quant::quantized_l1_batch_norm2d_add_relu(empty, Tensor(), Tensor(), state, activations(4, true, true), {},
                                                           layout, empty),
                 ShapeError);
  }
  nn::Conv2d float_conv(nn::Conv2dOptions{4, 3, 3}.padding(1), gen);
  EXPECT_THROW(float_conv.forward(codes), ValueError);
  quant::PackedWeight packed;  // 4 channels of codes, a weight for 3
  EXPECT_THROW(quant::quantized_conv2d(codes, Tensor::randn({3, 3, 3, 3}, gen), Tensor(), Conv2dParams{1, 1}, packed,
                                       activations(4, true, true), {}),
               ShapeError);
  // A non-finite input is reported, not converted to codes.
  Tensor bad = x.clone();
  bad.data<float>()[17] = std::numeric_limits<float>::infinity();
  EXPECT_THROW(nn::norm_relu_conv2d(chain.norm, chain.conv, bad), NumericError);
}

}  // namespace
}  // namespace shiftq
