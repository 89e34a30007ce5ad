// Observed (delayed) activation ranges: the amax history of a quantized tensor, as NVIDIA
// Transformer Engine keeps for FP8 training. A layer quantizes its input with the range observed
// over earlier training calls instead of the batch's own, so that
//   - in eval() the range is frozen and a sample's codes do not depend on the rest of its batch;
//   - in training, no position of a sequence sees (through a shared scale) a later position.
// Values beyond the observed range saturate at the top code and are counted; the call's own amax
// enters the history, so a jump in range is followed from the next call on.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "shiftq/core/tensor.hpp"

namespace shiftq::quant {

enum class RangeReduction : std::uint8_t {
  max,  // the largest amax of the last `history` training calls
  ema,  // an exponential moving average of the amax (weight `momentum` for the newest)
};

struct ObserverOptions {
  int history = 16;
  RangeReduction reduction = RangeReduction::max;
  float momentum = 0.1f;
  // Throws ValueError for history outside [1, 4096] (max) or momentum outside (0, 1] (ema).
  void validate() const;
  std::string str() const;  // "max of 16" / "EMA 0.1"
};

// The observed range of a tensor, or of each of its `channels` channels (BatchNorm's input). The
// state lives in two tensors that a module registers as buffers (checkpointed like BatchNorm's
// running statistics):
//   history: f32 [L, channels]: the amax of the last L training calls, a ring (EMA: L = 1, the average)
//   state:   s32 [4]: training updates (low, high 32 bits), whether any update saw a negative value,
//            training calls whose amax exceeded the range they were quantized with (saturated calls)
class RangeObserver {
 public:
  explicit RangeObserver(std::int64_t channels = 1, const ObserverOptions& options = {});

  const ObserverOptions& options() const { return options_; }
  std::int64_t channels() const { return history_.size(1); }
  // Whether a training call has been observed; before that a layer quantizes with the batch's range.
  bool observed() const { return updates() > 0; }
  std::uint64_t updates() const;
  // The range to quantize with (per channel): the reduction of the history. Requires observed().
  float range(std::int64_t channel = 0) const;
  float max_range() const;  // the largest channel's range. Requires observed().
  // No observed call had a negative value: the unsigned code range applies.
  bool nonnegative() const;
  std::uint64_t saturated_calls() const;

  // Records one training call: its amax per channel (finite, >= 0), whether it had a negative value,
  // and whether it was quantized with a smaller range than its own amax.
  void update(std::span<const float> amax, bool negative, bool saturated);
  void reset();

  const Tensor& history() const { return history_; }
  const Tensor& state() const { return state_; }

 private:
  ObserverOptions options_;
  Tensor history_;
  Tensor state_ = Tensor::zeros({4}, DType::s32);
};

}  // namespace shiftq::quant
