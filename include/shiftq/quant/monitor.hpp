// Numerics of a quantized tensor against its float value: what the numerics monitor reports per
// layer and tensor role (nn::quantization_report). Measured only on request: it costs a pass over
// the tensor and its dequantized copy.
#pragma once

#include <array>
#include <cstdint>

#include "shiftq/core/tensor.hpp"
#include "shiftq/quant/qtensor.hpp"

namespace shiftq::quant {

struct TensorNumerics {
  std::int64_t elements = 0;
  std::int64_t saturated = 0;  // |x| beyond its group's top code (clipped)
  std::int64_t zeros = 0;      // x != 0 quantized to code 0 (underflow)
  double error_sq = 0.0;       // sum (x^ - x)^2
  double value_sq = 0.0;       // sum x^2
  float range = 0.0f;          // the range quantized with: s * qmax (per-tensor scales), else the largest
  float input_absmax = 0.0f;   // max |x|
  int bits = 0, shift_budget = 0;
  // ShiftQuant groups per exponent e = 0..8 (the shift budget in use); all 0 when S = 0.
  std::array<std::int64_t, 9> exponent_histogram{};

  double saturation_rate() const { return elements ? static_cast<double>(saturated) / static_cast<double>(elements) : 0.0; }
  double zero_rate() const { return elements ? static_cast<double>(zeros) / static_cast<double>(elements) : 0.0; }
  // ||x^ - x|| / ||x|| (0 for an all-zero x).
  double relative_error() const;
  // Adds another measurement of the same role (a layer called more than once).
  void merge(const TensorNumerics& other);
};

// x: f32 [R, C], q: its quantization (any quantizer of qtensor.hpp).
TensorNumerics measure_quantization(const Tensor& x, const QTensor& q);

// What the monitor records for a quantized layer: its input (activation) and its output gradient
// (the dX product's operand), over the calls since the last reset.
struct LayerNumerics {
  TensorNumerics input, grad_output;
  std::int64_t calls = 0, backward_calls = 0;
};

}  // namespace shiftq::quant
