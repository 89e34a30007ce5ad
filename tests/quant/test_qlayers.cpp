// Quantized Linear / Conv2d (int8 GEMMs forward and backward) and the L1 normalization modules.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include <shiftq/shiftq.hpp>

#include "testing/synthetic.hpp"

namespace shiftq {
namespace {
using quant::QConfig;

double rel_error(const Tensor& a, const Tensor& b) {
  double num = 0.0, den = 0.0;
  for (std::int64_t i = 0; i < a.numel(); ++i) {
    num += std::pow(double(a.data<float>()[i]) - b.data<float>()[i], 2);
    den += std::pow(double(b.data<float>()[i]), 2);
  }
  return std::sqrt(num / den);
}

// A layer quantized on its own (it is then "first and last": first_last_bits would apply).
template <class Layer>
void quantize_alone(Layer& layer, const QConfig& config) {
  layer.set_quantization(config, 7, 0);
}

TEST(QuantizedLinear, ForwardEqualsFloatLinearOfTheDequantizedOperands) {
  Generator gen(1);
  nn::Linear fc(nn::LinearOptions{48, 20}, gen);
  quantize_alone(fc, QConfig::bits(4));
  const Tensor x = Tensor::randn({9, 48}, gen);
  const Tensor y = fc(x);
  // The same quantizers by hand: per-tensor 4-bit X, ShiftQuant W (groups over C_out, per-tensor).
  const quant::QTensor xq = quant::quantize(x, quant::QuantizeParams::per_tensor(4));
  const Tensor expected = linear(xq.dequantize(), fc.packed_weight().value().dequantize(), fc.bias);
  EXPECT_LT(rel_error(y, expected), 1e-6);
  // And close to fp32 at 8 bits.
  quantize_alone(fc, QConfig::bits(8));
  EXPECT_LT(rel_error(fc(x), linear(x, fc.weight, fc.bias)), 0.02);
}

TEST(QuantizedLinear, NonNegativeInputsGetUnsignedCodes) {
  // A post-ReLU input is quantized with 2^b - 1 unsigned levels (QConfig::bits' default): the
  // forward is the float product of those dequantized operands, and closer to fp32 than with the
  // symmetric range.
  Generator gen(5);
  nn::Linear fc(nn::LinearOptions{64, 24}, gen);
  Tensor x = relu(Tensor::randn({32, 64}, gen));
  QConfig unsigned_range = QConfig::bits(4), symmetric = QConfig::bits(4);
  symmetric.activations.nonnegative_range = false;
  quantize_alone(fc, unsigned_range);
  const Tensor y = fc(x);
  const quant::QTensor xq = quant::quantize(x, quant::QuantizeParams::per_tensor(4).with_nonnegative_range());
  ASSERT_TRUE(xq.nonnegative);
  EXPECT_LT(rel_error(y, linear(xq.dequantize(), fc.packed_weight().value().dequantize(), fc.bias)), 1e-6);
  const Tensor exact = linear(x, fc.weight, fc.bias);
  const double err_unsigned = rel_error(y, exact);
  quantize_alone(fc, symmetric);
  const double err_symmetric = rel_error(fc(x), exact);
  EXPECT_LT(err_unsigned, 0.75 * err_symmetric) << err_unsigned << " vs " << err_symmetric;
}

// L = sum(Y * R) over `calls` training calls of a layer (Linear or Conv2d): the first dX and the
// mean dX and dW.
struct DrawnGradients {
  Tensor first_dx, mean_dx, mean_dw;
  int calls = 0;
};
template <class Layer>
DrawnGradients draw_gradients(Layer& fc, const Tensor& x, const Tensor& r, int calls = 400) {
  Tensor sum_dx = Tensor::zeros(x.shape()), sum_dw = Tensor::zeros(fc.weight.shape()), first_dx;
  for (int t = 0; t < calls; ++t) {
    Tensor(x).zero_grad();
    fc.zero_grad();
    sum(mul(fc(x), r)).backward();
    if (t == 0) first_dx = x.grad().clone();
    sum_dx = add(sum_dx, x.grad());
    sum_dw = add(sum_dw, fc.weight.grad());
  }
  return {first_dx, mul(sum_dx, 1.0f / calls), mul(sum_dw, 1.0f / calls), calls};
}

void expect_unbiased(const char* label, const DrawnGradients& g, const Tensor& dx_expected, const Tensor& dw_expected) {
  const double one_draw = rel_error(g.first_dx, dx_expected);
  const double mean_dx = rel_error(g.mean_dx, dx_expected), mean_dw = rel_error(g.mean_dw, dw_expected);
  std::printf("[%s] dX rel. error: one draw %.4f, mean of %d %.4f; dW mean %.4f\n", label, one_draw, g.calls, mean_dx,
              mean_dw);
  // Variance shrinks like 1/calls: the mean is ~sqrt(400) = 20x closer than one draw (allow 8x).
  EXPECT_LT(mean_dx * 8.0, one_draw);
  EXPECT_LT(mean_dx, 0.03);
  EXPECT_LT(mean_dw, 0.03);
}

// L = sum(Y * R) once more: fc's dX and dW are within 3% of fp32's R W and R^T X (8-bit layers).
void expect_gradients_close_to_fp32(nn::Linear& fc, const Tensor& x, const Tensor& r) {
  Tensor(x).zero_grad();
  fc.zero_grad();
  sum(mul(fc(x), r)).backward();
  EXPECT_LT(rel_error(x.grad(), matmul(r, fc.weight)), 0.03);
  EXPECT_LT(rel_error(fc.weight.grad(), matmul(transpose(r, 0, 1), x.detach())), 0.03);
}

TEST(QuantizedLinear, GradientsAreUnbiasedOverStochasticRounding) {
  // L = sum(Y * R): dY = R. With unbiased stochastic rounding, E[dX] = R W^ and E[dW] = R^T X^
  // (W^, X^: the forward's dequantized operands). The mean over many calls converges to them.
  Generator gen(2);
  nn::Linear fc(nn::LinearOptions{32, 16}.bias(false), gen);
  quantize_alone(fc, QConfig::bits(4));
  const Tensor x = Tensor::randn({24, 32}, gen).set_requires_grad(true);
  const Tensor r = Tensor::randn({24, 16}, gen);
  const DrawnGradients g = draw_gradients(fc, x, r);
  const Tensor w_hat = fc.packed_weight().value().dequantize();
  const Tensor x_hat = quant::quantize(x.detach(), quant::QuantizeParams::per_tensor(4)).dequantize();
  const Tensor dx_expected = matmul(r, w_hat), dw_expected = matmul(transpose(r, 0, 1), x_hat);
  expect_unbiased("unbiased", g, dx_expected, dw_expected);
}

TEST(QuantizedLinear, WeightPackedOncePerOptimizerStep) {
  Generator gen(3);
  nn::Linear fc(nn::LinearOptions{8, 4}, gen);
  quantize_alone(fc, QConfig::bits(4));
  optim::SGD opt(fc.named_parameters(), optim::SGDOptions{0.1});
  const Tensor x = Tensor::randn({5, 8}, gen);
  for (int i = 0; i < 3; ++i) sum(fc(x)).backward();  // three calls, one weight version
  EXPECT_EQ(fc.packed_weight().packs(), 1);
  opt.step();
  sum(fc(x)).backward();
  EXPECT_EQ(fc.packed_weight().packs(), 2);
  fc.weight.fill_(0.5f);  // any in-place update through shiftq invalidates the pack
  fc(x);
  EXPECT_EQ(fc.packed_weight().packs(), 3);
  // A changed weight quantizer re-packs the same weight version: the pack is keyed by its config.
  QConfig q = *fc.quantization();
  q.weights.mse_clip = true;
  fc.set_quantization(q, fc.quant_seed(), fc.quant_layer_id());
  fc(x);
  EXPECT_EQ(fc.packed_weight().packs(), 4);
  fc(x);
  EXPECT_EQ(fc.packed_weight().packs(), 4);
}

float max_abs_diff(const Tensor& a, const Tensor& b) {
  float m = 0.0f;
  for (std::int64_t i = 0; i < a.numel(); ++i) m = std::max(m, std::fabs(a.data<float>()[i] - b.data<float>()[i]));
  return m;
}

QConfig with_row_scales(QConfig c) {
  c.linear_input_groups = quant::LinearInputGroups::row_scales;
  return c;
}

// Row scales (a float scale per row of X) are on dW = dY^T X's contraction axis: the backward moves
// them into dY's rows. E[dX] = R W^ and E[dW] = R^T X^ with X^ the per-row dequantized input.
TEST(QuantizedLinear, RowScaleGradientsAreUnbiased) {
  Generator gen(2);
  nn::Linear fc(nn::LinearOptions{32, 16}.bias(false), gen);
  quantize_alone(fc, with_row_scales(QConfig::bits(4)));
  Tensor xv = Tensor::randn({24, 32}, gen);
  for (std::int64_t c = 0; c < 32; ++c) xv.data<float>()[5 * 32 + c] *= 20.0f;  // rows of different norms
  const Tensor x = xv.set_requires_grad(true);
  const Tensor r = Tensor::randn({24, 16}, gen);
  const DrawnGradients g = draw_gradients(fc, x, r);
  const Tensor w_hat = fc.packed_weight().value().dequantize();
  const Tensor x_hat = quant::quantize(x.detach(), quant::QuantizeParams::per_row(4)).dequantize();
  EXPECT_LT(rel_error(fc(x.detach()), matmul(x_hat, transpose(w_hat, 0, 1))), 1e-6);
  expect_unbiased("row scales unbiased", g, matmul(r, w_hat), matmul(transpose(r, 0, 1), x_hat));
  quantize_alone(fc, with_row_scales(QConfig::bits(8)));
  expect_gradients_close_to_fp32(fc, x, r);
}

QConfig with_row_blocks(QConfig c) {
  c.linear_input_groups = quant::LinearInputGroups::row_blocks;
  c.activations.mse_clip = true;
  return c;
}

// Block multipliers fold into the codes under the row scales: the forward is X^ W^^T with X^ from
// QuantizeParams::row_blocks, and the backward moves the row scales into dY's rows as with row
// scales alone (E[dX] = R W^, E[dW] = R^T X^). At 8 bits (S = 0) the layer has row scales.
TEST(QuantizedLinear, RowBlockInputsForwardAndUnbiasedGradients) {
  Generator gen(6);
  nn::Linear fc(nn::LinearOptions{40, 16}.bias(false), gen);  // blocks of 16, 16 and 8 features
  quantize_alone(fc, with_row_blocks(QConfig::bits(4)));
  Tensor xv = Tensor::randn({24, 40}, gen);
  for (std::int64_t c = 0; c < 40; ++c) xv.data<float>()[5 * 40 + c] *= 20.0f;
  for (std::int64_t r = 0; r < 24; ++r) xv.data<float>()[r * 40 + 20] *= 6.0f;  // one block with an outlier feature
  const Tensor x = xv.set_requires_grad(true);
  const Tensor r = Tensor::randn({24, 16}, gen);
  const DrawnGradients g = draw_gradients(fc, x, r);
  const Tensor w_hat = fc.packed_weight().value().dequantize();
  const quant::QTensor xq = quant::quantize(x.detach(), quant::QuantizeParams::row_blocks(4, 16).with_mse_clip());
  const Tensor x_hat = xq.dequantize();
  EXPECT_LT(rel_error(fc(x.detach()), matmul(x_hat, transpose(w_hat, 0, 1))), 1e-6);
  expect_unbiased("row blocks unbiased", g, matmul(r, w_hat), matmul(transpose(r, 0, 1), x_hat));
  const Tensor x_rows = quant::quantize(x.detach(), quant::QuantizeParams::per_row(4).with_mse_clip()).dequantize();
  EXPECT_LT(rel_error(x_hat, x.detach()), 0.8 * rel_error(x_rows, x.detach()));
  quantize_alone(fc, with_row_blocks(QConfig::bits(8)));
  const Tensor y8 = fc(x.detach());
  QConfig rows8 = with_row_scales(QConfig::bits(8));
  rows8.activations.mse_clip = true;
  quantize_alone(fc, rows8);
  EXPECT_EQ(y8.to_vector<float>(), fc(x.detach()).to_vector<float>());
  quantize_alone(fc, with_row_blocks(QConfig::bits(8)));
  expect_gradients_close_to_fp32(fc, x, r);
}

QConfig with_channel_scales(QConfig c) {
  c.weights.kind = quant::QuantizerKind::per_row;
  c.weights.shift_budget = 0;
  return c;
}

// Channel scales (a float scale per output channel of W) are on dX = dY W's contraction axis: the
// backward moves them into dY's columns. The forward is X^ W^^T with W^ quantized per row, and
// E[dX] = R W^, E[dW] = R^T X^. On channels whose ranges are not powers of two apart they fit W
// closer than ShiftQuant's power-of-two exponents.
TEST(QuantizedLinear, ChannelScaleWeightsForwardAndUnbiasedGradients) {
  Generator gen(4);
  nn::Linear fc(nn::LinearOptions{32, 16}.bias(false), gen);
  {
    NoGradGuard no_grad;
    for (std::int64_t o = 0; o < 16; ++o)
      for (std::int64_t i = 0; i < 32; ++i) fc.weight.data<float>()[o * 32 + i] *= 1.0f + 0.37f * static_cast<float>(o);
  }
  quantize_alone(fc, with_channel_scales(QConfig::bits(4)));
  const Tensor x = Tensor::randn({24, 32}, gen).set_requires_grad(true);
  const Tensor r = Tensor::randn({24, 16}, gen);
  const DrawnGradients g = draw_gradients(fc, x, r);
  const quant::QTensor& wq = fc.packed_weight().value();
  EXPECT_EQ(wq.scales.numel(), 16);
  const Tensor w_hat = wq.dequantize();
  EXPECT_EQ(w_hat.to_vector<float>(),
            quant::quantize(fc.weight.detach(), quant::QuantizeParams::per_row(4)).dequantize().to_vector<float>());
  const Tensor x_hat = quant::quantize(x.detach(), quant::QuantizeParams::per_tensor(4)).dequantize();
  EXPECT_LT(rel_error(fc(x.detach()), matmul(x_hat, transpose(w_hat, 0, 1))), 1e-6);
  expect_unbiased("channel scales unbiased", g, matmul(r, w_hat), matmul(transpose(r, 0, 1), x_hat));
  const Tensor w_shiftquant =
      quant::quantize(fc.weight.detach(), quant::QuantizeParams::shiftquant(4, 4, 0, quant::OuterScale::per_tensor))
          .dequantize();
  EXPECT_LT(rel_error(w_hat, fc.weight.detach()), 0.8 * rel_error(w_shiftquant, fc.weight.detach()));
  quantize_alone(fc, with_channel_scales(QConfig::bits(8)));
  expect_gradients_close_to_fp32(fc, x, r);
}

// x: [rows, cols] with each row's blocks Hadamard-transformed (a copy).
Tensor hadamard(const Tensor& x, std::int64_t block) {
  Tensor r = x.detach().clone();
  kernels::hadamard_rows(r.data<float>(), r.size(0), r.size(1), block);
  return r;
}

QConfig rotated(QConfig c) {
  c.linear_input_rotation = quant::LinearInputRotation::hadamard;
  return c;
}

// Y = (X H)(W H)^T with both rotated operands quantized: the product of the dequantized rotated
// operands, the packed weight the quantized rotated weight, and at 8 bits close to fp32 (H is
// orthogonal). in_features 48 = 3 blocks of 16.
TEST(QuantizedLinear, HadamardRotatedForwardIsTheProductOfTheRotatedOperands) {
  Generator gen(1);
  nn::Linear fc(nn::LinearOptions{48, 20}, gen);
  quantize_alone(fc, rotated(QConfig::bits(4)));
  const Tensor x = Tensor::randn({9, 48}, gen);
  const Tensor y = fc(x);
  const Tensor xr_hat = quant::quantize(hadamard(x, 16), quant::QuantizeParams::per_tensor(4)).dequantize();
  const Tensor wr_hat = quant::quantize(hadamard(fc.weight, 16), quant::QuantizeParams::shiftquant(4, 4, 0, quant::OuterScale::per_tensor)).dequantize();
  EXPECT_EQ(max_abs_diff(fc.packed_weight().value().dequantize(), wr_hat), 0.0f);
  EXPECT_LT(rel_error(y, linear(xr_hat, wr_hat, fc.bias)), 1e-6);
  quantize_alone(fc, rotated(QConfig::bits(8)));
  EXPECT_LT(rel_error(fc(x), linear(x, fc.weight, fc.bias)), 0.02);
}

// The case the rotation is for: inputs with a few large features (as after a LayerNorm with
// large gains). One per-tensor 4-bit range set by the outliers rounds most other features to zero;
// rotated, the outliers spread over the block (the rotated weight, Gaussian where W was uniform,
// costs some of the gain). Measured: relative error 0.383 unrotated, 0.246 rotated (seed 4);
// asserted with a margin of 0.06: below 0.8 times the unrotated error.
TEST(QuantizedLinear, HadamardRotationShrinksTheErrorOfOutlierFeatures) {
  Generator gen(4);
  nn::Linear fc(nn::LinearOptions{256, 64}, gen);
  Tensor x = Tensor::randn({32, 256}, gen);
  for (std::int64_t r = 0; r < 32; ++r)
    for (std::int64_t f : {3, 100, 201}) x.data<float>()[r * 256 + f] *= 25.0f;
  const Tensor exact = linear(x, fc.weight, fc.bias);
  quantize_alone(fc, QConfig::bits(4));
  const double plain = rel_error(fc(x), exact);
  quantize_alone(fc, rotated(QConfig::bits(4)));
  const double rotation = rel_error(fc(x), exact);
  std::printf("[hadamard] 4-bit relative error: %.3f unrotated, %.3f rotated\n", plain, rotation);
  EXPECT_LT(rotation, 0.8 * plain);
}

// The backward rotates back: E[dX] = R (W^ H), E[dW] = R^T (X^ H), W^ and X^ the dequantized
// rotated operands (H symmetric: its own inverse). The mean over stochastic draws converges to them.
TEST(QuantizedLinear, HadamardRotatedGradientsAreUnbiased) {
  Generator gen(2);
  nn::Linear fc(nn::LinearOptions{32, 16}.bias(false), gen);
  quantize_alone(fc, rotated(QConfig::bits(4)));
  const Tensor x = Tensor::randn({24, 32}, gen).set_requires_grad(true);
  const Tensor r = Tensor::randn({24, 16}, gen);
  const DrawnGradients g = draw_gradients(fc, x, r);
  const Tensor wr_hat = fc.packed_weight().value().dequantize();
  const Tensor xr_hat = quant::quantize(hadamard(x, 32), quant::QuantizeParams::per_tensor(4)).dequantize();
  const Tensor dx_expected = hadamard(matmul(r, wr_hat), 32);
  const Tensor dw_expected = hadamard(matmul(transpose(r, 0, 1), xr_hat), 32);
  expect_unbiased("hadamard unbiased", g, dx_expected, dw_expected);  // measured: 0.0058 / 0.0066
  // And at 8 bits both gradients are close to fp32's.
  quantize_alone(fc, rotated(QConfig::bits(8)));
  expect_gradients_close_to_fp32(fc, x, r);
}

// Turning the rotation on or off re-packs the same weight version; in_features without an even
// factor leave nothing to rotate (the unrotated product).
TEST(QuantizedLinear, HadamardRotationRepacksAndSkipsOddWidths) {
  Generator gen(3);
  nn::Linear fc(nn::LinearOptions{16, 4}, gen);
  const Tensor x = Tensor::randn({5, 16}, gen);
  quantize_alone(fc, QConfig::bits(4));
  fc(x);
  quantize_alone(fc, rotated(QConfig::bits(4)));
  fc(x);
  EXPECT_EQ(fc.packed_weight().packs(), 2);
  nn::Linear odd(nn::LinearOptions{15, 4}, gen);
  const Tensor x15 = Tensor::randn({5, 15}, gen);
  quantize_alone(odd, QConfig::bits(4));
  const Tensor plain = odd(x15);
  quantize_alone(odd, rotated(QConfig::bits(4)));
  EXPECT_EQ(max_abs_diff(odd(x15), plain), 0.0f);
  EXPECT_NE(rotated(QConfig::bits(4)).str().find("(Linear inputs: Hadamard-rotated)"), std::string::npos);
  // The observed input range is of the rotated operand: a changed rotation observes afresh.
  ASSERT_TRUE(fc.input_range().observed());
  quantize_alone(fc, QConfig::bits(4));
  EXPECT_FALSE(fc.input_range().observed());
  fc(x);
  fc.set_quantization(std::nullopt);  // also across a spell in fp32
  quantize_alone(fc, rotated(QConfig::bits(4)));
  EXPECT_FALSE(fc.input_range().observed());
}

TEST(QuantizedConv2d, ForwardEqualsFloatConvOfTheDequantizedOperands) {
  Generator gen(4);
  nn::Conv2d conv(nn::Conv2dOptions{3, 5, 3}.stride(2).padding(1), gen);
  quantize_alone(conv, QConfig::bits(4));
  const Tensor x = Tensor::randn({2, 3, 7, 6}, gen);
  const Tensor y = conv(x);
  // Activation: per-tensor 4 bits (QConfig::bits), symmetric (x has negative values).
  const quant::QTensor xq = quant::quantize(x.view({6, 42}), quant::QuantizeParams::per_tensor(4));
  // The packed weight is [O, KH*KW*C] (channels-last patch order): back to [O, C, KH, KW].
  const Tensor w_hat = permute(conv.packed_weight().value().dequantize().view({5, 3, 3, 3}), {0, 3, 1, 2});
  const Tensor expected = conv2d(xq.dequantize().view(x.shape()), w_hat, conv.bias, {2, 1});
  EXPECT_LT(rel_error(y, expected), 1e-6);
}

TEST(QuantizedConv2d, FourBitGradientsAreUnbiasedOverStochasticRounding) {
  // L = sum(Y * R): the blocked backward's dX and dW are stochastic ShiftQuant products of dY = R
  // with the forward's dequantized operands W^, X^. Their means over many calls converge to the
  // fp32 convolution gradients of those operands.
  Generator gen(9);
  nn::Conv2d conv(nn::Conv2dOptions{4, 6, 3}.padding(1).bias(false), gen);
  quantize_alone(conv, QConfig::bits(4));
  const Tensor x = Tensor::randn({3, 4, 6, 6}, gen).set_requires_grad(true);
  const Tensor r = Tensor::randn({3, 6, 6, 6}, gen);
  const DrawnGradients g = draw_gradients(conv, x, r);
  // Per-tensor 4-bit activations (signed: x has negative values), the range observed on the first call.
  const quant::QTensor xq = quant::quantize(x.detach().view({12, 36}), quant::QuantizeParams::per_tensor(4));
  const Tensor x_hat = xq.dequantize().view(x.shape()).clone().set_requires_grad(true);
  const Tensor w_hat = permute(conv.packed_weight().value().dequantize().view({6, 3, 3, 4}), {0, 3, 1, 2})
                           .clone()
                           .set_requires_grad(true);
  sum(mul(conv2d(x_hat, w_hat, Tensor(), {1, 1}), r)).backward();
  expect_unbiased("conv unbiased", g, x_hat.grad(), w_hat.grad());  // measured: 0.0050 / 0.0073
}

TEST(QuantizedConv2d, GradientsMatchTheirExpectationAndFloatAt8Bits) {
  Generator gen(5);
  nn::Conv2d conv(nn::Conv2dOptions{4, 6, 3}.padding(1), gen);
  const Tensor x = Tensor::randn({3, 4, 6, 6}, gen).set_requires_grad(true);
  const Tensor r = Tensor::randn({3, 6, 6, 6}, gen);
  // fp32 reference gradients.
  sum(mul(conv(x), r)).backward();
  const Tensor dx_f = x.grad().clone(), dw_f = conv.weight.grad().clone(), db_f = conv.bias.grad().clone();
  quantize_alone(conv, QConfig::bits(8));
  Tensor(x).zero_grad();
  conv.zero_grad();
  sum(mul(conv(x), r)).backward();
  EXPECT_LT(rel_error(x.grad(), dx_f), 0.05);
  EXPECT_LT(rel_error(conv.weight.grad(), dw_f), 0.05);
  EXPECT_LT(rel_error(conv.bias.grad(), db_f), 1e-6);  // the bias gradient stays fp32
}

TEST(QuantizedLayers, SavedActivationsAreAQuarterOfFp32) {
  Generator gen(6);
  nn::Sequential model{std::make_shared<nn::Conv2d>(nn::Conv2dOptions{3, 8, 3}.padding(1), gen),
                       std::make_shared<nn::ReLU>(),
                       std::make_shared<nn::Conv2d>(nn::Conv2dOptions{8, 8, 3}.padding(1), gen),
                       std::make_shared<nn::ReLU>(),
                       std::make_shared<nn::Flatten>(),
                       std::make_shared<nn::Linear>(nn::LinearOptions{8 * 8 * 8, 10}, gen)};
  EXPECT_EQ(nn::quantize_model(model, QConfig::bits(4)), 3);
  const Tensor x = Tensor::randn({4, 3, 8, 8}, gen);
  quant::reset_saved_activation_bytes();
  model(x);
  // The GEMM inputs an fp32 model saves: x (3x8x8), conv1 output after ReLU (8x8x8), the flattened
  // features (512), per sample, 4 bytes each.
  const std::int64_t fp32_bytes = 4 * 4 * (3 * 64 + 8 * 64 + 512);
  const std::int64_t int_bytes = quant::saved_activation_bytes();
  std::printf("[saved] int8 %lld bytes vs fp32 %lld bytes (%.1f%%)\n", static_cast<long long>(int_bytes),
              static_cast<long long>(fp32_bytes), 100.0 * int_bytes / fp32_bytes);
  EXPECT_EQ(int_bytes * 4, fp32_bytes);
  EXPECT_LE(int_bytes, fp32_bytes * 3 / 10);
}

TEST(QuantizedLayers, QuantizeModelKeepsFirstAndLastAt8Bits) {
  Generator gen(7);
  nn::Sequential model{std::make_shared<nn::Linear>(nn::LinearOptions{4, 4}, gen),
                       std::make_shared<nn::Linear>(nn::LinearOptions{4, 4}, gen),
                       std::make_shared<nn::Linear>(nn::LinearOptions{4, 4}, gen)};
  ASSERT_EQ(nn::quantize_model(model, QConfig::bits(4)), 3);
  std::vector<int> bits;
  for (const auto& [name, child] : model.named_children())
    bits.push_back(dynamic_cast<nn::Linear&>(*child).quantization()->gradients.bits);
  EXPECT_EQ(bits, (std::vector<int>{8, 4, 8}));
  nn::dequantize_model(model);
  EXPECT_FALSE(dynamic_cast<nn::Linear&>(*model.named_children()[1].second).quantization().has_value());
}

// The training-call counters that key stochastic rounding: counted per training forward (not in
// eval), listed for layers then norms, restorable, and a wrong count is a clear error.
TEST(QuantizedLayers, QuantizationCountersCountTrainingCallsAndRestore) {
  Generator gen(8);
  nn::Sequential model{std::make_shared<nn::Linear>(nn::LinearOptions{4, 4}, gen),
                       std::make_shared<nn::L1LayerNorm>(nn::L1LayerNormOptions{4}),
                       std::make_shared<nn::Linear>(nn::LinearOptions{4, 4}, gen)};
  ASSERT_EQ(nn::quantize_model(model, QConfig::bits(4)), 2);
  const Tensor x = Tensor::randn({3, 4}, gen);
  model(x);
  model(x);
  model.eval();
  model(x);
  EXPECT_EQ(nn::quantization_counters(model), (std::vector<std::uint64_t>{2, 2, 2}));
  nn::set_quantization_counters(model, {7, 8, 9});
  EXPECT_EQ(nn::quantization_counters(model), (std::vector<std::uint64_t>{7, 8, 9}));
  EXPECT_THROW(nn::set_quantization_counters(model, {1, 2}), ValueError);
  EXPECT_EQ(nn::quantization_counters(model), (std::vector<std::uint64_t>{7, 8, 9}));  // unchanged
}

TEST(QuantizedLayers, QConfigDescribesItself) {
  QConfig c = QConfig::bits(4);
  EXPECT_EQ(c.str(), "weights: shiftquant 4-bit S=4 nearest; activations: per-tensor 4-bit nearest (unsigned when >= 0); gradients: "
                     "shiftquant 4-bit S=4 stochastic; first/last layer: 8-bit; L1 norms: 8-bit integer; "
                     "activation scales: delayed (max of 16)");
  c.observer.reduction = quant::RangeReduction::ema;
  EXPECT_NE(c.str().find("activation scales: delayed (EMA"), std::string::npos) << c.str();
  c.activation_scaling = quant::ActivationScaling::current;
  EXPECT_NE(c.str().find("activation scales: current batch"), std::string::npos) << c.str();
  c.norm_bits = 0;
  c.first_last_bits = 0;
  c.gradients.kind = quant::QuantizerKind::per_row;
  c.gradients.shift_budget = 0;
  EXPECT_NE(c.str().find("gradients: per-row 4-bit stochastic; first/last layer: same; L1 norms: float"), std::string::npos)
      << c.str();
  c.activations = {quant::QuantizerKind::shiftquant, 4, 4, quant::Rounding::nearest_even};
  c.linear_input_groups = quant::LinearInputGroups::rows;
  EXPECT_NE(c.str().find("S=4 nearest (Linear inputs: groups per row); gradients"), std::string::npos) << c.str();
  c.linear_input_rotation = quant::LinearInputRotation::hadamard;
  EXPECT_NE(c.str().find("S=4 nearest (Linear inputs: groups per row, Hadamard-rotated); gradients"), std::string::npos)
      << c.str();
  c.linear_input_groups = quant::LinearInputGroups::row_scales;
  c.activations.mse_clip = true;
  EXPECT_NE(c.str().find("(Linear inputs: a float scale per row, MSE-clipped, Hadamard-rotated); gradients"),
            std::string::npos)
      << c.str();
  c.weights = {quant::QuantizerKind::per_row, 4, 0, quant::Rounding::nearest_even};
  c.weights.mse_clip = true;
  EXPECT_EQ(c.str().find("weights: per-channel 4-bit nearest (MSE-clipped range); activations"), 0u) << c.str();
}

TEST(QuantizedLayers, InvalidConfigurationsThrow) {
  Generator gen(3);
  nn::Linear fc(nn::LinearOptions{4, 2}, gen);
  nn::L1BatchNorm2d bn(nn::L1BatchNormOptions{3});
  QConfig c = QConfig::bits(4);
  c.weights.kind = quant::QuantizerKind::per_row;  // with S = 4: S is ShiftQuant's alone
  EXPECT_THROW(c.for_layer(false), ValueError);
  EXPECT_THROW(fc.set_quantization(c), ValueError);
  c.weights.shift_budget = 0;  // per-channel weights: Linear layers only
  EXPECT_NO_THROW(fc.set_quantization(c));
  nn::Conv2d conv(nn::Conv2dOptions{2, 3, 3}, gen);
  conv.set_quantization(c, 7, 0);
  EXPECT_THROW(conv(Tensor::randn({1, 2, 5, 5}, gen)), ValueError);
  c = QConfig::bits(4);
  c.gradients.shift_budget = 5;  // 4 + 5 > 8
  EXPECT_THROW(c.for_layer(false), ValueError);
  c = QConfig::bits(4);
  c.activations.kind = quant::QuantizerKind::per_row;
  EXPECT_THROW(c.for_layer(true), ValueError);
  c = QConfig::bits(4);
  c.norm_bits = 9;
  EXPECT_THROW(bn.set_quantization(c), ValueError);
  EXPECT_FALSE(bn.quantization().has_value());
  EXPECT_THROW(QConfig::bits(9), ValueError);
}

TEST(QuantizedLayers, ForLayerAppliesFirstLastBitsOnce) {
  const QConfig c = QConfig::bits(4);
  const QConfig inner = c.for_layer(false), outer = c.for_layer(true);
  EXPECT_EQ(inner.weights, c.weights);
  EXPECT_EQ(inner.gradients, c.gradients);
  EXPECT_EQ(inner.first_last_bits, 0);
  for (const quant::TensorQConfig* t : {&outer.weights, &outer.activations, &outer.gradients}) EXPECT_EQ(t->bits, 8);
  EXPECT_EQ(outer.weights.shift_budget, 0);   // S = 8 - b
  EXPECT_EQ(outer.activations.shift_budget, 0);
  EXPECT_EQ(outer.first_last_bits, 0);
  // Resolved once, a layer config is a fixed point: resolving again keeps its bits.
  EXPECT_EQ(inner.for_layer(true).weights.bits, 4);
  EXPECT_EQ(outer.for_layer(false).weights.bits, 8);
  // A norm given norm_bits = 0 stays float.
  nn::L1BatchNorm2d bn(nn::L1BatchNormOptions{3});
  QConfig float_norms = c;
  float_norms.norm_bits = 0;
  bn.set_quantization(float_norms);
  EXPECT_FALSE(bn.quantization().has_value());
  bn.set_quantization(c, 5, 9);
  ASSERT_TRUE(bn.quantization().has_value());
  EXPECT_EQ(bn.quant_seed(), 5u);
  EXPECT_EQ(bn.quant_layer_id(), 9u);
}

TEST(QuantizedLayers, NanGradientIsReportedNotQuantized) {
  Generator gen(8);
  nn::Linear fc(nn::LinearOptions{4, 3}, gen);
  quantize_alone(fc, QConfig::bits(4));
  Tensor y = fc(Tensor::randn({2, 4}, gen));
  Tensor bad = Tensor::ones({2, 3});
  bad.data<float>()[4] = NAN;
  EXPECT_THROW(y.backward(bad), NumericError);
  // The quantized Conv2d takes its gradient's ranges while transposing it: NaN or Inf anywhere (the
  // first sample, the last) is still reported.
  nn::Conv2d conv(nn::Conv2dOptions{3, 5, 3}.padding(1), gen);
  quantize_alone(conv, QConfig::bits(4));
  for (std::int64_t at : {std::int64_t{0}, std::int64_t{2 * 5 * 36 - 1}})
    for (float v : {NAN, INFINITY}) {
      Tensor yc = conv(Tensor::randn({2, 3, 6, 6}, gen));
      Tensor g = Tensor::ones(yc.shape());
      g.data<float>()[at] = v;
      EXPECT_THROW(yc.backward(g), NumericError) << "at " << at;
    }
}

TEST(L1Norm, BatchNormStatisticsRunningStatsAndEval) {
  Generator gen(9);
  nn::L1BatchNorm2d bn(nn::L1BatchNormOptions{3}.momentum(0.5f));
  const Tensor x = add(mul(Tensor::randn({8, 3, 4, 4}, gen), 3.0f), 2.0f);
  const Tensor y = bn(x);
  // Per channel: mean 0 and mean |y| = sigma1 / (c sigma1 + eps) ~ 1/c.
  for (std::int64_t c = 0; c < 3; ++c) {
    double s = 0.0, a = 0.0, mu = 0.0, d = 0.0;
    for (std::int64_t n = 0; n < 8; ++n)
      for (std::int64_t i = 0; i < 16; ++i) {
        s += y.data<float>()[(n * 3 + c) * 16 + i];
        a += std::fabs(y.data<float>()[(n * 3 + c) * 16 + i]);
        mu += x.data<float>()[(n * 3 + c) * 16 + i];
      }
    mu /= 128.0;
    for (std::int64_t n = 0; n < 8; ++n)
      for (std::int64_t i = 0; i < 16; ++i) d += std::fabs(x.data<float>()[(n * 3 + c) * 16 + i] - mu);
    d /= 128.0;
    EXPECT_NEAR(s / 128.0, 0.0, 1e-5);
    EXPECT_NEAR(a / 128.0, 1.0 / kL1NormC, 1e-4);
    // running = 0.5 * initial + 0.5 * batch
    EXPECT_NEAR(bn.running_mean.data<float>()[c], 0.5 * mu, 1e-4);
    EXPECT_NEAR(bn.running_sigma.data<float>()[c], 0.5 * 1.0 + 0.5 * (kL1NormC * d + 1e-5), 1e-4);
  }
  bn.eval();
  const Tensor ye = bn(x);
  const float rm = bn.running_mean.data<float>()[1], rs = bn.running_sigma.data<float>()[1];
  EXPECT_NEAR(ye.at({0, 1, 0, 0}), (x.at({0, 1, 0, 0}) - rm) / rs, 1e-5);
}

TEST(L1Norm, LayerNormNormalizesRowsAndAConstantCMatchesL2OnGaussians) {
  Generator gen(10);
  nn::L1LayerNorm ln(nn::L1LayerNormOptions{4096});
  nn::LayerNorm l2(nn::LayerNormOptions{4096});
  const Tensor x = add(mul(Tensor::randn({2, 4096}, gen), 5.0f), 1.0f);
  // With C = sqrt(pi/2), L1 and L2 normalization agree on Gaussian rows (to sampling error).
  EXPECT_LT(rel_error(ln(x), l2(x)), 0.03);
}

TEST(L1Norm, SmallQuantizedCnnWithL1BatchNormLearnsBars) {
  // Stated target: 4-bit (W4A4G4, first/last 8-bit) conv-L1BN-ReLU-pool-conv-L1BN-ReLU-GAP-linear,
  // 80 SGD steps of batch 64: >= 90% on 256 held-out images.
  Generator gen(11);
  auto make_bars = [&](std::int64_t n, Tensor& x, Tensor& y) { testing::make_bars(n, gen, x, y); };
  nn::Sequential model{
      std::make_shared<nn::Conv2d>(nn::Conv2dOptions{1, 8, 3}.padding(1).bias(false), gen),
      std::make_shared<nn::L1BatchNorm2d>(nn::L1BatchNormOptions{8}),
      std::make_shared<nn::ReLU>(),
      std::make_shared<nn::MaxPool2d>(Pool2dParams{2, 2, 0}),
      std::make_shared<nn::Conv2d>(nn::Conv2dOptions{8, 16, 3}.padding(1).bias(false), gen),
      std::make_shared<nn::L1BatchNorm2d>(nn::L1BatchNormOptions{16}),
      std::make_shared<nn::ReLU>(),
      std::make_shared<nn::Conv2d>(nn::Conv2dOptions{16, 16, 3}.padding(1).bias(false), gen),
      std::make_shared<nn::L1BatchNorm2d>(nn::L1BatchNormOptions{16}),
      std::make_shared<nn::ReLU>(),
      std::make_shared<nn::GlobalAvgPool2d>(),
      std::make_shared<nn::Linear>(nn::LinearOptions{16, 2}, gen)};
  ASSERT_EQ(nn::quantize_model(model, QConfig::bits(4), 1), 4);
  optim::SGD opt(model.named_parameters(), optim::SGDOptions{0.05}.momentum(0.9));
  for (int step = 0; step < 80; ++step) {
    Tensor x, y;
    make_bars(64, x, y);
    Tensor loss = cross_entropy(model(x), y);
    opt.zero_grad();
    loss.backward();
    opt.step();
  }
  Tensor x, y;
  make_bars(256, x, y);
  NoGradGuard no_grad;
  model.eval();
  const Tensor logits = model(x);
  std::int64_t correct = 0;
  for (std::int64_t i = 0; i < 256; ++i)
    correct += (logits.at({i, 1}) > logits.at({i, 0}) ? 1 : 0) == y.data<std::int32_t>()[i];
  std::printf("[bars] 4-bit CNN with L1 BatchNorm: %.1f%% held-out accuracy\n", 100.0 * correct / 256);
  EXPECT_GE(correct, 231);  // >= 90%
}

TEST(QuantizedMatmul, ForwardAndGradientsCloseToFloatAt8BitsAndUnbiased) {
  Generator gen(16);
  const Tensor a = Tensor::randn({2, 3, 5, 7}, gen).set_requires_grad(true);
  const Tensor b = Tensor::randn({2, 3, 7, 4}, gen).set_requires_grad(true);
  const Tensor r = Tensor::randn({2, 3, 5, 4}, gen);
  sum(mul(matmul(a, b), r)).backward();
  const Tensor da_f = a.grad().clone(), db_f = b.grad().clone();
  const Tensor y_f = matmul(a.detach(), b.detach());
  // 8 bits: within a few percent of fp32.
  Tensor(a).zero_grad();
  Tensor(b).zero_grad();
  const Tensor y8 = quant::quantized_matmul(a, b, 8, 1, 0, 0);
  EXPECT_LT(rel_error(y8, y_f), 0.02);
  sum(mul(y8, r)).backward();
  EXPECT_LT(rel_error(a.grad(), da_f), 0.03);
  EXPECT_LT(rel_error(b.grad(), db_f), 0.03);
  // 4 bits: the gradient's stochastic rounding averages out over calls (its deterministic part,
  // from quantizing the saved operands, does not, so compare one draw with the mean of many).
  Tensor da_sum = Tensor::zeros(a.shape()), first;
  for (int t = 0; t < 200; ++t) {
    Tensor(a).zero_grad();
    sum(mul(quant::quantized_matmul(a, b, 4, 1, 0, static_cast<std::uint64_t>(t)), r)).backward();
    if (t == 0) first = a.grad().clone();
    da_sum = add(da_sum, a.grad());
  }
  EXPECT_LT(rel_error(mul(da_sum, 1.0f / 200), da_f), rel_error(first, da_f));
  // The backward operands are saved as int8 codes: one byte per element of a and of b.
  quant::reset_saved_activation_bytes();
  (void)quant::quantized_matmul(a, b, 4, 1, 0, 0);
  EXPECT_EQ(quant::saved_activation_bytes(), a.numel() + b.numel());
  quant::reset_saved_activation_bytes();
  (void)quant::quantized_matmul(a.detach(), b, 4, 1, 0, 0);  // only db = a^T g is needed: a's codes
  EXPECT_EQ(quant::saved_activation_bytes(), a.numel());
  quant::reset_saved_activation_bytes();
  EXPECT_THROW(quant::quantized_matmul(a, Tensor::randn({2, 3, 6, 4}, gen), 8, 0, 0, 0), ShapeError);
  EXPECT_THROW(quant::quantized_matmul(a, b, 9, 0, 0, 0), ValueError);
}

TEST(QuantizedAttention, CloseToFloatAndCausal) {
  Generator gen(17);
  const Tensor q = Tensor::randn({2, 2, 6, 8}, gen), k = Tensor::randn({2, 2, 6, 8}, gen), v = Tensor::randn({2, 2, 6, 8}, gen);
  const Tensor y_f = scaled_dot_product_attention(q, k, v, true);
  const Tensor y8 = quant::quantized_attention(q, k, v, true, 8, 1, 0, 0);
  EXPECT_LT(rel_error(y8, y_f), 0.03);
  // Changing the last key/value leaves every earlier query's output unchanged.
  Tensor k2 = k.clone(), v2 = v.clone();
  for (std::int64_t bh = 0; bh < 4; ++bh)
    for (std::int64_t d = 0; d < 8; ++d) {
      k2.data<float>()[(bh * 6 + 5) * 8 + d] += 3.0f;
      v2.data<float>()[(bh * 6 + 5) * 8 + d] -= 3.0f;
    }
  // Causal by construction: q K^T has per-row scales, and P V takes V's per-position ranges into P
  // (P diag(s) times V / s), so no scale of row t depends on a later position.
  const Tensor y2 = quant::quantized_attention(q, k2, v2, true, 8, 1, 0, 0);
  double early = 0.0, last = 0.0;
  for (std::int64_t bh = 0; bh < 4; ++bh)
    for (std::int64_t t = 0; t < 6; ++t)
      for (std::int64_t d = 0; d < 8; ++d) {
        const double diff = std::fabs(y2.data<float>()[(bh * 6 + t) * 8 + d] - y8.data<float>()[(bh * 6 + t) * 8 + d]);
        (t < 5 ? early : last) = std::max(t < 5 ? early : last, diff);
      }
  EXPECT_GT(last, 0.5);
  EXPECT_EQ(early, 0.0);
}

// x: [N, C, H, W] quantized with one scale per channel and dequantized.
Tensor dequantized_per_channel(const Tensor& x, int bits) {
  const std::int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const Tensor by_channel = permute(x, {1, 0, 2, 3}).view({C, N * H * W});
  const Tensor xh = quant::quantize(by_channel, quant::QuantizeParams::per_row(bits)).dequantize();
  return permute(xh.view({C, N, H, W}), {1, 0, 2, 3});
}

TEST(QuantizedL1Norm, IntegerStatisticsEqualFloatStatisticsOfTheDequantizedInput) {
  Generator gen(12);
  const Tensor x = add(mul(Tensor::randn({6, 5, 4, 3}, gen), 2.0f), 0.7f);
  const quant::QTensor xq = quant::quantize(x.view({30, 12}), quant::QuantizeParams::per_tensor(8));
  const quant::L1Statistics st = quant::l1_integer_statistics(xq, 6, 5, 12);
  // Dequantized in double (code * scale), so the reference itself adds no f32 rounding.
  const double scale = xq.scales.data<float>()[0];
  auto xh = [&](std::int64_t i) { return scale * xq.codes.data<std::int8_t>()[i]; };
  for (std::int64_t c = 0; c < 5; ++c) {
    double mean = 0.0, dev = 0.0;
    for (std::int64_t n = 0; n < 6; ++n)
      for (std::int64_t i = 0; i < 12; ++i) mean += xh((n * 5 + c) * 12 + i);
    mean /= 72.0;
    for (std::int64_t n = 0; n < 6; ++n)
      for (std::int64_t i = 0; i < 12; ++i) dev += std::fabs(xh((n * 5 + c) * 12 + i) - mean);
    dev /= 72.0;
    // Integer sums are exact; the only difference is double rounding of the float reference.
    EXPECT_NEAR(st.mean[c], mean, 1e-12 * (1.0 + std::fabs(mean)));
    EXPECT_NEAR(st.mean_abs_dev[c], dev, 1e-12 * (1.0 + dev));
  }
}

TEST(QuantizedL1Norm, BatchNormForwardEqualsFloatL1OnDequantizedInputAndGradientIsUnbiased) {
  Generator gen(13);
  const Tensor x = add(mul(Tensor::randn({8, 3, 5, 5}, gen), 1.5f), -0.4f).set_requires_grad(true);
  const Tensor gamma = Tensor::uniform({3}, 0.5f, 1.5f, gen).set_requires_grad(true);
  const Tensor beta = Tensor::uniform({3}, -0.5f, 0.5f, gen).set_requires_grad(true);
  const Tensor r = Tensor::randn(x.shape(), gen);
  const QConfig config = QConfig::bits(8);
  // Float reference on the dequantized input (one scale per channel), exact output gradient.
  const Tensor xh = dequantized_per_channel(x.detach(), 8).set_requires_grad(true);
  L1BatchNormState ref_state;
  const Tensor y_ref = l1_batch_norm2d(xh, gamma, beta, ref_state, true);
  sum(mul(y_ref, r)).backward();
  const Tensor dx_ref = xh.grad().clone(), dgamma_ref = gamma.grad().clone(), dbeta_ref = beta.grad().clone();
  const int calls = 200;
  Tensor dx_sum = Tensor::zeros(x.shape()), dgamma_sum = Tensor::zeros({3}), dbeta_sum = Tensor::zeros({3}), first;
  for (int t = 0; t < calls; ++t) {
    Tensor(x).zero_grad();
    Tensor(gamma).zero_grad();
    Tensor(beta).zero_grad();
    L1BatchNormState state;
    const Tensor y = quant::quantized_l1_batch_norm2d(x, gamma, beta, state, config, {.step = static_cast<std::uint64_t>(t), .seed = 3});
    if (t == 0) {
      EXPECT_LT(rel_error(y, y_ref), 1e-5);
    }
    sum(mul(y, r)).backward();
    if (t == 0) first = x.grad().clone();
    dx_sum = add(dx_sum, x.grad());
    dgamma_sum = add(dgamma_sum, gamma.grad());
    dbeta_sum = add(dbeta_sum, beta.grad());
  }
  const double one = rel_error(first, dx_ref), mean = rel_error(mul(dx_sum, 1.0f / calls), dx_ref);
  std::printf("[q-l1bn] dX rel. error: one draw %.4f, mean of %d %.4f\n", one, calls, mean);
  EXPECT_LT(one, 0.05);
  EXPECT_LT(mean * 5.0, one);
  // gamma / beta gradients are per-channel sums of stochastically rounded dy: unbiased on average.
  EXPECT_LT(rel_error(mul(dgamma_sum, 1.0f / calls), dgamma_ref), 0.01);
  EXPECT_LT(rel_error(mul(dbeta_sum, 1.0f / calls), dbeta_ref), 0.01);
}

TEST(QuantizedL1Norm, LayerNormMatchesFloatL1) {
  Generator gen(14);
  const Tensor x = Tensor::randn({6, 32}, gen).set_requires_grad(true);
  const Tensor gamma = Tensor::uniform({32}, 0.5f, 1.5f, gen).set_requires_grad(true);
  const Tensor beta = Tensor::uniform({32}, -0.5f, 0.5f, gen).set_requires_grad(true);
  const Tensor r = Tensor::randn({6, 32}, gen);
  // One scale per row (per token).
  const Tensor xh = quant::quantize(x.detach(), quant::QuantizeParams::per_row(8)).dequantize().set_requires_grad(true);
  const Tensor y_ref = l1_layer_norm(xh, gamma, beta);
  sum(mul(y_ref, r)).backward();
  const Tensor dx_ref = xh.grad().clone(), dgamma_ref = gamma.grad().clone();
  Tensor(gamma).zero_grad();
  const Tensor y = quant::quantized_l1_layer_norm(x, gamma, beta, 1e-5f, kL1NormC, QConfig::bits(8), {.seed = 1});
  EXPECT_LT(rel_error(y, y_ref), 1e-5);
  sum(mul(y, r)).backward();
  EXPECT_LT(rel_error(x.grad(), dx_ref), 0.05);
  EXPECT_LT(rel_error(gamma.grad(), dgamma_ref), 0.03);
}

TEST(QuantizedL1Norm, EachChannelKeepsItsOwnResolution) {
  // Channel magnitudes 1e-3 .. 1e2: with one scale per tensor the small channels would round to
  // zero; with one per channel each is normalized as accurately as the large one.
  Generator gen(16);
  Tensor x = Tensor::randn({4, 3, 6, 6}, gen);
  const float magnitude[3] = {1e-3f, 1.0f, 1e2f};
  for (std::int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] *= magnitude[(i / 36) % 3];
  L1BatchNormState ref_state, state;
  const Tensor y_ref = l1_batch_norm2d(x, Tensor(), Tensor(), ref_state, true);
  const Tensor y = quant::quantized_l1_batch_norm2d(x, Tensor(), Tensor(), state, QConfig::bits(8), {.seed = 1});
  for (std::int64_t c = 0; c < 3; ++c) {
    double err = 0.0, norm = 0.0;
    for (std::int64_t i = 0; i < x.numel(); ++i)
      if ((i / 36) % 3 == c) {
        err += std::pow(y.data<float>()[i] - y_ref.data<float>()[i], 2);
        norm += std::pow(y_ref.data<float>()[i], 2);
      }
    EXPECT_LT(std::sqrt(err / norm), 0.02) << "channel " << c;
  }
}

TEST(QuantizedL1Norm, ReferenceAndOptimizedKernelsAgreeBitForBit) {
  // The whole layer (forward, backward with stochastic gradient codes) on the two kernel paths,
  // at shapes with short and odd runs.
  Generator gen(18);
  struct Result {
    std::vector<float> y, dx, dgamma, dbeta;
  };
  auto run = [](kernels::KernelPath path, const Tensor& x, const Tensor& r, bool layer_norm) {
    kernels::set_kernel_path(path);
    const std::int64_t C = layer_norm ? x.size(-1) : x.size(1);
    const Tensor gamma = Tensor::full({C}, 1.25f).set_requires_grad(true);
    const Tensor beta = Tensor::full({C}, -0.5f).set_requires_grad(true);
    const Tensor xg = x.clone().set_requires_grad(true);
    L1BatchNormState state;
    QConfig norm_config = QConfig::bits(8);
    norm_config.norm_bits = 5;
    const quant::QuantCall call{.step = 3, .seed = 9, .layer_id = 2};
    const Tensor y = layer_norm ? quant::quantized_l1_layer_norm(xg, gamma, beta, 1e-5f, kL1NormC, norm_config, call)
                                : quant::quantized_l1_batch_norm2d(xg, gamma, beta, state, norm_config, call);
    sum(mul(y, r)).backward();
    kernels::set_kernel_path(kernels::KernelPath::optimized);
    return Result{y.to_vector<float>(), xg.grad().to_vector<float>(), gamma.grad().to_vector<float>(),
                  beta.grad().to_vector<float>()};
  };
  for (const Shape& shape : {Shape{5, 3, 7, 7}, Shape{2, 4, 9, 5}, Shape{7, 37}, Shape{3, 2, 100}}) {
    const bool layer_norm = shape.size() != 4;
    const Tensor x = add(mul(Tensor::randn(shape, gen), 2.0f), 0.3f), r = Tensor::randn(shape, gen);
    const Result ref = run(kernels::KernelPath::reference, x, r, layer_norm);
    const Result opt = run(kernels::KernelPath::optimized, x, r, layer_norm);
    EXPECT_EQ(ref.y, opt.y);
    EXPECT_EQ(ref.dx, opt.dx);
    EXPECT_EQ(ref.dgamma, opt.dgamma);
    EXPECT_EQ(ref.dbeta, opt.dbeta);
  }
}

TEST(QuantizedL1Norm, BatchNormDoesNotDependOnTheThreadCount) {
  // 7x7-type channels are quantized and normalized a thread's range of channels at a time (the
  // ranges change with the thread count); longer ones channel by channel. Same bits either way.
  Generator gen(20);
  struct Result {
    std::vector<float> y, dx, dgamma, dbeta;
    bool operator==(const Result&) const = default;
  };
  auto run = [](int threads, const Tensor& x, const Tensor& r) {
    const int before = get_num_threads();
    set_num_threads(threads);
    const Tensor gamma = Tensor::full({x.size(1)}, 0.75f).set_requires_grad(true);
    const Tensor beta = Tensor::full({x.size(1)}, 0.25f).set_requires_grad(true);
    const Tensor xg = x.clone().set_requires_grad(true);
    L1BatchNormState state;
    const Tensor y = quant::quantized_l1_batch_norm2d(xg, gamma, beta, state, QConfig::bits(8), {.step = 7, .seed = 4, .layer_id = 1});
    sum(mul(y, r)).backward();
    set_num_threads(before);
    return Result{y.to_vector<float>(), xg.grad().to_vector<float>(), gamma.grad().to_vector<float>(),
                  beta.grad().to_vector<float>()};
  };
  for (const Shape& shape : {Shape{16, 7, 7, 7}, Shape{9, 5, 3, 3}, Shape{4, 3, 9, 9}}) {
    const Tensor x = add(mul(Tensor::randn(shape, gen), 1.5f), 0.2f), r = Tensor::randn(shape, gen);
    const Result one = run(1, x, r);
    for (int threads : {2, 3}) EXPECT_TRUE(run(threads, x, r) == one) << threads << " threads, shape " << x.str();
  }
}

TEST(QuantizedL1Norm, NonFiniteInputOrGradientThrows) {
  Generator gen(19);
  Tensor x = Tensor::randn({2, 3, 4, 4}, gen).set_requires_grad(true);
  L1BatchNormState state;
  Tensor bad = x.detach().clone();
  bad.data<float>()[17] = std::nanf("");
  EXPECT_THROW(quant::quantized_l1_batch_norm2d(bad, Tensor(), Tensor(), state, QConfig::bits(8), {}), NumericError);
  Tensor dy = Tensor::ones(x.shape());
  dy.data<float>()[5] = std::numeric_limits<float>::infinity();
  Tensor y = quant::quantized_l1_batch_norm2d(x, Tensor(), Tensor(), state, QConfig::bits(8), {});
  EXPECT_THROW(y.backward(dy), NumericError);
  Tensor xl = Tensor::randn({4, 8}, gen).set_requires_grad(true);
  Tensor yl = quant::quantized_l1_layer_norm(xl, Tensor(), Tensor(), 1e-5f, kL1NormC, QConfig::bits(8), {});
  Tensor dyl = Tensor::ones({4, 8});
  dyl.data<float>()[30] = std::nanf("");
  EXPECT_THROW(yl.backward(dyl), NumericError);
}

TEST(QuantizedL1Norm, BadConfigAndShapesThrow) {
  Generator gen(15);
  L1BatchNormState state;
  QConfig nine_bit_norms = QConfig::bits(8);
  nine_bit_norms.norm_bits = 9;
  EXPECT_THROW(quant::quantized_l1_batch_norm2d(Tensor::randn({2, 3, 2, 2}, gen), Tensor(), Tensor(), state,
                                                nine_bit_norms, {}),
               ValueError);
  EXPECT_THROW(quant::quantized_l1_batch_norm2d(Tensor::randn({2, 3, 2, 2}, gen), Tensor::ones({4}), Tensor(), state, QConfig::bits(8), {}),
               ShapeError);
  EXPECT_THROW(quant::quantized_l1_layer_norm(Tensor::randn({2, 1}, gen), Tensor(), Tensor(), 1e-5f, kL1NormC,
                                              QConfig::bits(8), {}),
               ShapeError);  // one element per group
}

}  // namespace
}  // namespace shiftq
