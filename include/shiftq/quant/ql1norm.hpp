// Fully quantized L1 normalization (docs/l1norm.md): the input is quantized to int8 with
// one scale per normalization group (BatchNorm channel, LayerNorm row), the statistics are integer
// sums (mean and mean absolute deviation exact in the group's integer units), what is saved for
// backward is the int8 input, and the backward takes the output gradient quantized to int8
// (stochastic rounding, one scale per group) and computes its two group means in integers.
// Output and input gradient are f32 (an affine map of the int8 codes per element).
#pragma once

#include "shiftq/autograd/ops.hpp"
#include "shiftq/quant/observer.hpp"
#include "shiftq/quant/qconfig.hpp"
#include "shiftq/quant/qlayers.hpp"
#include "shiftq/quant/qtensor.hpp"

namespace shiftq::quant {

// Per-group statistics of int8 codes computed with integer sums, in real units (code * scale):
// mean and mean |x - mean|. Groups: [outer, groups, inner] view of x's codes (BatchNorm: N, C, HW).
struct L1Statistics {
  std::vector<double> mean, mean_abs_dev;
};
L1Statistics l1_integer_statistics(const QTensor& x, std::int64_t outer, std::int64_t groups, std::int64_t inner);

// As l1_batch_norm2d / l1_layer_norm, fully quantized: input and output-gradient codes have
// config.norm_bits bits (ValueError unless in [2, 8]); (call.seed, call.step, call.layer_id) keys the
// gradient's stochastic rounding.
// BatchNorm: training (call.training) quantizes each channel with its own range (the batch
// statistics depend on the batch anyway) and records it in call.input_range (channels = C) when
// given. In eval, once ranges are observed, the input is quantized with them (a value's code
// depends on it alone) and normalized with the running statistics as a per-channel affine map of the
// codes; without observed ranges eval is the float affine map. LayerNorm quantizes each row with its
// own range and ignores call.input_range and call.training.
// ImageLayout::nhwc: x is [N, H, W, C]; the statistics are the same integer sums over each
// channel's codes (the column kernels of kernels/l1norm.hpp), so forward and eval give the NCHW
// results bit for bit; the gradient's stochastic draws are keyed by the NHWC element index.
Tensor quantized_l1_batch_norm2d(const Tensor& x, const Tensor& gamma, const Tensor& beta, L1BatchNormState& state,
                                 const QConfig& config, const QuantCall& call, ImageLayout layout = ImageLayout::nchw);
// Integer data flow from a BatchNorm into a convolution through a ReLU (a ResNet block's
// conv -> norm -> relu -> conv): relu(quantized_l1_batch_norm2d(x, ...)) quantized as the input of a
// quantized convolution whose config is `consumer` and whose input observer is `consumer_range`,
// in the norm's own pass: each sample's relu(a_c q + b_c) is made from the norm's codes and
// quantized while in cache, so neither the norm's f32 output nor its ReLU is ever stored. The codes
// are those quantized_conv2d would make of relu(quantized_l1_batch_norm2d(x, ...)) (bit for bit,
// either layout); in training the norm's running statistics and observer, and consumer_range, are
// updated as by those calls. Backward takes the codes' f32 gradient ([N, H, W, C]), applies the
// ReLU's mask (recomputed from the saved codes) and runs the norm's backward: the same bits as the
// unfused ops. Needs writes_conv_input_codes(consumer, &consumer_range), and in eval observed
// norm input ranges and running statistics (ValueError otherwise).
CodedActivation quantized_l1_batch_norm2d_relu(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                               L1BatchNormState& state, const QConfig& config, const QuantCall& call,
                                               ImageLayout layout, const QConfig& consumer, RangeObserver& consumer_range);
// Whether a producer can write the input codes of a quantized convolution with this config and input
// observer: ShiftQuant activations (S > 0: one group per sample and channel) under a known base, i.e.
// a one-channel observer that has observed a range > 0 (delayed scaling, after a training call).
bool writes_conv_input_codes(const QConfig& consumer, const RangeObserver* consumer_range);

// relu(quantized_l1_batch_norm2d(x, ...) + shortcut): a ResNet block's output, in one pass over the
// norm's codes after its statistics (per sample while in cache), instead of the norm's f32 output,
// an add pass and a ReLU pass. The same bits as the three ops, forward and backward, in training
// and in eval on codes; eval without observed ranges, or under grad mode, runs the three ops.
// shortcut: f32 of x's shape (ShapeError otherwise); as in relu(), a NaN sum gives 0.
Tensor quantized_l1_batch_norm2d_add_relu(const Tensor& x, const Tensor& gamma, const Tensor& beta,
                                          L1BatchNormState& state, const QConfig& config, const QuantCall& call,
                                          ImageLayout layout, const Tensor& shortcut);

Tensor quantized_l1_layer_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps, float c,
                               const QConfig& config, const QuantCall& call);

}  // namespace shiftq::quant
