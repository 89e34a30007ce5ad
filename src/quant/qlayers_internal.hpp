// Internal: the quantizer parameters of the quantized layers (qlayers.cpp), shared with the
// quantized convolution (qconv.cpp).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "shiftq/quant/qlayers.hpp"

namespace shiftq::quant::internal {

// A per-thread buffer of at least n elements, kept across calls (OpenMP's threads persist) so that
// no block or sample allocates. `Slot` tells apart the buffers of one thread; the quantized ops
// use distinct slots (qconv.cpp 0-2, ql1norm.cpp 3-4, qtensor.cpp 5-6), so a buffer is never live in
// two of them at once. Contents are unspecified.
template <class T, int Slot>
T* thread_scratch(std::int64_t n) {
  thread_local std::vector<T> buffer;
  if (static_cast<std::int64_t>(buffer.size()) < n) buffer.resize(static_cast<std::size_t>(n));
  return buffer.data();
}

// Activations [rows, in] (Linear) or [N*C, H*W] (Conv2d): a per-tensor base, groups along
// `inner_axis`, u8 codes (v + 128).
QuantizeParams activation_params(const TensorQConfig& c, int inner_axis);
// Whether a Linear input under `c` gets block multipliers: LinearInputGroups::row_blocks at fewer
// than 8 activation bits (at 8 bits, S = 0, it falls back to row scales).
bool linear_input_blocks(const QConfig& c);
// dY [rows, out] as A of dX = dY W (groups over out, scale per row) or of dW = dY^T X (groups over
// rows, scale per output channel); stochastic rounding keyed by `key` (QuantCall::gradient_key);
// u8 codes.
QuantizeParams gradient_params(const TensorQConfig& c, bool for_weight_grad, const StochasticKey& key);
// Quantizes an activation x2d with `params` (per-tensor outer scale) under call.input_range's
// delayed scaling, records this call's range when training, and measures it for the monitor.
// channels_last_samples > 0: x2d is [N * P, C] channels-last with N = channels_last_samples and
// params have S > 0: groups per (sample, channel) (quantize_sample_channels).
QTensor quantize_activation(const Tensor& x2d, QuantizeParams params, const QuantCall& call, const char* name,
                            std::int64_t channels_last_samples = 0);
// quantize() for an x already checked finite (by inner_absmax): with observed group ranges it then
// needs no pass of its own before the pack.
QTensor quantize_checked_input(const Tensor& x, const QuantizeParams& params, const char* name);
// The channels-last form of activation_params(c, 0) with S > 0 on x: [N * P, C] (N samples of P
// rows, a pixel's C channels contiguous): one power-of-two group per (sample, channel) under a
// per-tensor base. The codes equal those of quantize() on the channels-first view [N * C, P],
// transposed per sample (nearest rounding; stochastic draws are keyed by the channels-last index),
// and exponents, scale, input_range and input_negative are that call's.
QTensor quantize_sample_channels(const Tensor& x, std::int64_t samples, const QuantizeParams& params, const char* name);
// Writes sample n's block of P * C values into `tile`: [P, C], or [C, P] (channels first).
using SampleProducer = std::function<void(std::int64_t n, float* tile)>;
// quantize_sample_channels of values that are never stored as a whole tensor: a producer (the
// quantized L1 BatchNorm writing its consumer's input) hands each sample's block over in a
// per-thread tile, which is quantized while in cache, [P, C] or, with channels_first_tiles, [C, P]
// (a channel's values contiguous: row groups, then the codes transposed, so that an NCHW producer
// moves bytes instead of floats). Needs a known base (params.observed_range > 0: delayed scaling).
// Codes ([samples * P, C]) and metadata: [P, C] tiles, those of quantize_sample_channels on the
// tensor of the blocks; [C, P] tiles, those of quantize() on the [samples * C, P] tensor of the
// tiles (stochastic draws keyed by that index, the MSE sums along its rows), codes transposed per
// sample, i.e. what the NCHW convolution makes of its input. NumericError (naming `name`) if a
// block holds NaN or Inf.
QTensor quantize_produced_sample_channels(std::int64_t samples, std::int64_t P, std::int64_t C, const QuantizeParams& params,
                                          const SampleProducer& produce, bool channels_first_tiles, const char* name);
// Both codes of an output gradient dy: [R, C] for the two backward products, in two passes over dy
// where two quantize() calls take three: for_input (dX = dY W: groups over the columns, a scale per
// row) and for_weight (dW = dY^T X: groups over the rows, a scale per column), given dy's exact
// column and row maxima (the caller's range pass). The results are those of quantize(dy, for_input,
// col_max) and quantize(dy, for_weight, row_max), bit for bit; parameters other than per-index
// ShiftQuant without MSE clipping, the unsigned range or observed ranges (and an all-zero dy) run
// those two calls. Throws as quantize(), and ValueError for other inner axes.
struct GradientCodes {
  QTensor for_input;
  QTensor for_weight;
};
GradientCodes quantize_gradient_pair(const Tensor& dy, const QuantizeParams& for_input, std::span<const float> col_max,
                                     const QuantizeParams& for_weight, std::span<const float> row_max, const char* name);
// The exact ranges of a channels-last output gradient dY, viewed as [R, C] (rows: pixels): max |dY|
// per row and per column. The op that produces dY (the quantized L1 BatchNorm's channels-last
// backward) takes them while it writes dY and notes them here; the convolution that consumes dY
// takes them instead of a range pass of its own. A note is found only for the same storage (alive),
// version and [R, C]: a write through shiftq (the autograd engine adding a second gradient bumps
// the version) or a freed storage makes it unusable, and the consumer then scans dY itself. Notes
// are per thread (a backward runs on one thread), the last kGradientRangeNotes of them.
struct GradientRanges {
  std::vector<float> row_max;  // [R]
  std::vector<float> col_max;  // [C]
};
inline constexpr int kGradientRangeNotes = 4;
// An entry to fill for dy: [R, C] (its vectors sized R and C, contents unspecified), replacing the
// oldest note; it becomes findable by note_gradient_ranges_done(dy).
GradientRanges& gradient_ranges_slot(const Tensor& dy, std::int64_t R, std::int64_t C);
void note_gradient_ranges_done(const Tensor& dy);
// The noted ranges of dy viewed as [R, C], or null; a found note is used up (valid until this
// thread's next gradient_ranges_slot call).
const GradientRanges* find_gradient_ranges(const Tensor& dy, std::int64_t R, std::int64_t C);
// Measures a gradient's quantization for the monitor (when call.numerics is set).
void measure_gradient(const Tensor& g2d, const QTensor& gq, const std::shared_ptr<LayerNumerics>& numerics);
// Adds to the calling thread's saved-activation byte counter (saved_activation_bytes()).
void count_saved_bytes(std::int64_t bytes);

}  // namespace shiftq::quant::internal
