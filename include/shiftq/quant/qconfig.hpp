// QConfig: how a model's weights, activations and gradients are quantized for integer training,
// and QuantCall: what one call of a quantized op needs beyond its config and tensors.
//
// The configuration has two levels. QConfig describes a model (quantize_model) and, resolved for
// one layer's position with for_layer(), that layer; the quantized ops take it as it is. Each
// tensor the op quantizes then gets its one resolved spec, a QuantizeParams (qtensor.hpp), built
// from its role's TensorQConfig and the op's axes.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "shiftq/quant/monitor.hpp"
#include "shiftq/quant/observer.hpp"
#include "shiftq/quant/qtensor.hpp"

namespace shiftq::quant {

// per_row: for gradients, a float scale per row; for weights, a float scale per output channel
// (Linear layers only: max |w_o| / qmax, or its MSE-clipped range with mse_clip, S = 0). Those
// scales fall on the contraction axis of dX = dY W, so that backward multiplies dY's columns by
// them before quantizing dY (the rows of V = diag(t)^-1 W carry no scale). Not for activations
// (LinearInputGroups::row_scales gives Linear inputs a float scale per row).
enum class QuantizerKind : std::uint8_t { per_tensor, per_row, shiftquant };

// Where a per-tensor activation range comes from.
enum class ActivationScaling : std::uint8_t {
  delayed,  // the layer's RangeObserver: the history of earlier training calls, frozen in eval()
  current,  // each call's own input (its batch)
};

// Where the power-of-two groups of a Linear input X: [rows, in_features] run when its activations
// are ShiftQuant (S > 0), or how its rows are scaled. A Conv2d input always has one group per sample
// and channel.
enum class LinearInputGroups : std::uint8_t {
  features,  // one group per input feature (column); with delayed scaling each feature's range is observed
  rows,      // one group per row (a sample, or a token of a sequence), from the row's own values on the
             // observed per-tensor base: with delayed scaling a row's codes depend on that row alone
  // No power-of-two groups: a free float scale per row (per token), max |row| / qmax (or its
  // MSE-clipped range with mse_clip), S = 0, symmetric codes; the activation quantizer's kind and S
  // do not apply. Rows are the forward product's free axis, so their scales cost nothing there; in
  // dW = dY^T X they are on the contraction axis, so the backward moves them into dY's rows (dY
  // diag(s)) before quantizing dY. A row's codes depend on that row alone, with no observer.
  row_scales,
  // row_scales with block multipliers (QuantizeParams::row_blocks): each row's features cut into
  // blocks of kLinearInputBlock, each block with an integer multiplier m in [1, 2^S], S = 8 - bits,
  // folded into its codes (v = q m), chosen from the block's max (with mse_clip: by least squared
  // error). At 4 bits: 16 step sizes per block under the row's float scale, 4 bits of multiplier
  // per 16 values (4.25 bits per value). At 8 bits (S = 0) it is row_scales. Needs nearest rounding.
  row_blocks,
};

// The block length of LinearInputGroups::row_blocks.
inline constexpr std::int64_t kLinearInputBlock = 16;

// A rotation of every quantized Linear's input features before quantization. With H orthogonal,
// X W^T = (X H)(W H)^T: the product is the same in exact arithmetic, but the operands that get
// quantized have their outlier features spread over many values, so a 4-bit range fits them better
// (QuaRot; Xi et al. 2023 train 4-bit transformers with it). H is block-diagonal Walsh-Hadamard
// (kernels::hadamard_rows) with the largest power-of-two block dividing in_features; the backward
// rotates dX and dW back. A row's rotation reads only that row, so it keeps delayed scaling's
// causality and batch independence.
enum class LinearInputRotation : std::uint8_t {
  none,
  hadamard,
};

// One tensor role (weights, activations or gradients).
struct TensorQConfig {
  QuantizerKind kind = QuantizerKind::shiftquant;
  int bits = 8;
  int shift_budget = 0;  // ShiftQuant's S; b + S <= 8
  Rounding rounding = Rounding::nearest_even;
  // A tensor without negative elements (post-ReLU activations) gets the unsigned range [0, 2^b - 1]
  // (QuantizeParams::nonnegative_range): per-tensor quantizers, and ShiftQuant with b + S <= 7
  // where the groups run along the range pass's rows (convolution inputs).
  bool nonnegative_range = false;
  // Least-squared-error clipping (QuantizeParams::mse_clip): per-tensor quantizers clip their
  // range; ShiftQuant with a per-tensor base (weights, activations) chooses each group's exponent.
  bool mse_clip = false;
  void validate(const char* role) const;
  bool operator==(const TensorQConfig&) const = default;
};

struct QConfig {
  TensorQConfig weights;
  TensorQConfig activations;
  TensorQConfig gradients;
  // Bits of the first and last layer (common practice keeps them at 8); 0 = same as the rest.
  int first_last_bits = 8;
  // Bits of the fully quantized L1 normalization layers (input and gradient codes); 0 = float.
  int norm_bits = 8;
  // Activation ranges (Linear and Conv2d inputs; the L1 BatchNorms' eval input codes) and their history.
  ActivationScaling activation_scaling = ActivationScaling::delayed;
  ObserverOptions observer;
  LinearInputGroups linear_input_groups = LinearInputGroups::features;
  LinearInputRotation linear_input_rotation = LinearInputRotation::none;

  // The paper's defaults for b-bit training: ShiftQuant weights (S = 8 - b over Cout) with
  // nearest rounding, per-tensor activations (unsigned range when non-negative), ShiftQuant
  // gradients (S = 8 - b, per-row outer, stochastic rounding).
  static QConfig bits(int b);
  // The config of a GEMM layer at its place in the model: first_last_bits (when set) replace the
  // three roles' bits in the first and last layer, with ShiftQuant's S = 8 - b; the result has
  // first_last_bits = 0, so resolving it again changes nothing. Validates.
  QConfig for_layer(bool first_or_last) const;
  // Throws ValueError for bits or S out of range, MSE-clipped gradients, per-row activations, or
  // invalid observer options.
  void validate() const;
  std::string str() const;  // "W4A4G4 (gradients: shiftquant S=4, stochastic; first/last 8-bit)"
};

// One call of a quantized op: what it needs beyond its config and tensors. The stochastic rounding
// of its gradients is keyed by (seed, step, layer_id): a GEMM layer's two backward products use
// tensor ids 2 * layer_id and 2 * layer_id + 1, an L1 norm layer_id itself (quantize_model numbers
// the norms after the GEMM layers, so no two streams meet).
struct QuantCall {
  std::uint64_t step = 0;  // the layer's training calls before this one
  bool training = true;    // a training call updates input_range
  // Delayed scaling of the input range (QConfig::activation_scaling): quantize with its range once
  // it has observed a training call, and record this call's range when training. Null, or nothing
  // observed yet: the input's own range.
  RangeObserver* input_range = nullptr;
  // The numerics monitor: when set, this call's input quantization and its backward's output
  // gradient quantization are measured and added to it.
  std::shared_ptr<LayerNumerics> numerics = nullptr;
  std::uint64_t seed = 0;
  std::uint64_t layer_id = 0;

  // The stochastic key of tensor `role` of this call's layer (GEMM layers: 0 = dX's dY, 1 = dW's dY).
  StochasticKey gradient_key(std::uint64_t role) const { return {seed, step, 2 * layer_id + role}; }
};

}  // namespace shiftq::quant
