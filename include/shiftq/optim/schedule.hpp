// Learning-rate schedules: pure functions of the step (0-based), so a resumed run gets the same LR.
#pragma once

#include <cstdint>

namespace shiftq::optim {

class LRSchedule {
 public:
  virtual ~LRSchedule() = default;
  virtual double lr_at(std::int64_t step) const = 0;
};

// Linear warmup from base_lr/warmup to base_lr over `warmup_steps`, then cosine decay to min_lr at
// total_steps (held at min_lr afterwards).
class WarmupCosine : public LRSchedule {
 public:
  WarmupCosine(double base_lr, std::int64_t warmup_steps, std::int64_t total_steps, double min_lr = 0.0);
  double lr_at(std::int64_t step) const override;

 private:
  double base_lr_, min_lr_;
  std::int64_t warmup_, total_;
};

// base_lr * gamma^(step / step_size)
class StepLR : public LRSchedule {
 public:
  StepLR(double base_lr, std::int64_t step_size, double gamma);
  double lr_at(std::int64_t step) const override;

 private:
  double base_lr_;
  std::int64_t step_size_;
  double gamma_;
};

}  // namespace shiftq::optim
