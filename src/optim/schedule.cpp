#include "shiftq/optim/schedule.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "shiftq/core/error.hpp"

namespace shiftq::optim {

WarmupCosine::WarmupCosine(double base_lr, std::int64_t warmup_steps, std::int64_t total_steps, double min_lr)
    : base_lr_(base_lr), min_lr_(min_lr), warmup_(warmup_steps), total_(total_steps) {
  SHIFTQ_CHECK(base_lr >= 0.0 && min_lr >= 0.0 && min_lr <= base_lr, ValueError,
               "WarmupCosine: need 0 <= min_lr <= base_lr");
  SHIFTQ_CHECK(warmup_steps >= 0 && total_steps > warmup_steps, ValueError,
               "WarmupCosine: need 0 <= warmup_steps < total_steps, got ", warmup_steps, " and ", total_steps);
}

double WarmupCosine::lr_at(std::int64_t step) const {
  if (step < warmup_) return base_lr_ * static_cast<double>(step + 1) / static_cast<double>(warmup_);
  const double progress = std::min(1.0, static_cast<double>(step - warmup_) / static_cast<double>(total_ - warmup_));
  return min_lr_ + (base_lr_ - min_lr_) * 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
}

StepLR::StepLR(double base_lr, std::int64_t step_size, double gamma)
    : base_lr_(base_lr), step_size_(step_size), gamma_(gamma) {
  SHIFTQ_CHECK(step_size > 0 && gamma > 0.0 && base_lr >= 0.0, ValueError,
               "StepLR: need step_size > 0, gamma > 0, base_lr >= 0");
}

double StepLR::lr_at(std::int64_t step) const {
  return base_lr_ * std::pow(gamma_, static_cast<double>(step / step_size_));
}

}  // namespace shiftq::optim
