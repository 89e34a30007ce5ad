// The trainers' policy for NaN/Inf: by default a non-finite loss, activation or gradient stops
// training with the library's NumericError (which names the tensor or parameter). With
// --skip-nonfinite N, such a step is skipped instead (gradients dropped, weights and optimizer state
// untouched: the optimizer checks every gradient before updating anything), up to N steps in a row.
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>

#include <shiftq/shiftq.hpp>

namespace shiftq::examples {

class NonFiniteGuard {
 public:
  explicit NonFiniteGuard(std::int64_t max_consecutive) : max_consecutive_(max_consecutive) {}

  // Runs one training step (`step` returns the loss and throws NumericError on non-finite values);
  // returns the loss, or nullopt when the step was skipped.
  template <class Step>
  std::optional<double> run(Step&& step, optim::Optimizer& optimizer) {
    try {
      const double loss = step();
      consecutive_ = 0;
      return loss;
    } catch (const NumericError& e) {
      optimizer.zero_grad();
      if (++consecutive_ > max_consecutive_) {
        if (max_consecutive_ == 0) throw;
        throw NumericError(std::to_string(consecutive_) + " consecutive training steps with non-finite values " +
                           "(--skip-nonfinite " + std::to_string(max_consecutive_) + "); last: " + e.what());
      }
      ++skipped_;
      return std::nullopt;
    }
  }

  std::int64_t skipped() const { return skipped_; }

 private:
  std::int64_t max_consecutive_;
  std::int64_t consecutive_ = 0, skipped_ = 0;
};

// Throws NumericError when a loss value is NaN or Inf (before backward spreads it).
inline void check_loss(double loss) {
  if (!std::isfinite(loss)) throw NumericError("training loss is " + std::to_string(loss));
}

}  // namespace shiftq::examples
