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
#include "shiftq/quant/qtensor.hpp"

namespace shiftq::quant {

struct QuantizedNormConfig {
  QuantizedNormConfig() = default;
  QuantizedNormConfig(int bits_, int grad_bits_, std::uint64_t seed_ = 0, std::uint64_t layer_id_ = 0)
      : bits(bits_), grad_bits(grad_bits_), seed(seed_), layer_id(layer_id_) {}

  int bits = 8;       // input codes
  int grad_bits = 8;  // output-gradient codes
  std::uint64_t seed = 0;
  std::uint64_t layer_id = 0;
  // BatchNorm: eval quantizes with observed channel ranges (delayed) or the batch's (current).
  ActivationScaling input_scaling = ActivationScaling::delayed;
  ObserverOptions observer;
  void validate() const;
};

// Per-group statistics of int8 codes computed with integer sums, in real units (code * scale):
// mean and mean |x - mean|. Groups: [outer, groups, inner] view of x's codes (BatchNorm: N, C, HW).
struct L1Statistics {
  std::vector<double> mean, mean_abs_dev;
};
L1Statistics l1_integer_statistics(const QTensor& x, std::int64_t outer, std::int64_t groups, std::int64_t inner);

// As l1_batch_norm2d / l1_layer_norm, fully quantized. `step` keys the gradient's stochastic rounding.
// BatchNorm: training quantizes each channel with its own range (the batch statistics depend on the
// batch anyway) and records it in `input_range` (channels = C) when given. In eval, once ranges are
// observed, the input is quantized with them (a value's code depends on it alone) and normalized
// with the running statistics as a per-channel affine map of the codes; without observed ranges eval
// is the float affine map.
Tensor quantized_l1_batch_norm2d(const Tensor& x, const Tensor& gamma, const Tensor& beta, L1BatchNormState& state,
                                 bool training, const QuantizedNormConfig& config, std::uint64_t step,
                                 RangeObserver* input_range = nullptr);
Tensor quantized_l1_layer_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps, float c,
                               const QuantizedNormConfig& config, std::uint64_t step);

}  // namespace shiftq::quant
