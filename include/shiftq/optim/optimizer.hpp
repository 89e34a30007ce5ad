// Optimizers over named parameters. State (momentum buffers, Adam moments, step count) is keyed by
// parameter name, so it can be saved and restored with the model (state_dict / load_state_dict).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "shiftq/core/arg.hpp"
#include "shiftq/core/tensor.hpp"

namespace shiftq::optim {

class Optimizer {
 public:
  Optimizer(const NamedTensors& params, double lr);
  virtual ~Optimizer() = default;

  // Applies one update to every parameter that has a gradient. Throws NumericError naming the
  // parameter (before modifying anything) if a gradient holds NaN or Inf.
  void step();
  void zero_grad();
  double lr() const { return lr_; }
  void set_lr(double lr);
  std::int64_t step_count() const { return steps_; }

  // "step" plus "<param name>.<slot>" for every state tensor (e.g. "fc1.weight.exp_avg").
  std::map<std::string, Tensor> state_dict() const;
  // Restores a state_dict() of an optimizer of the same kind over the same parameters.
  void load_state_dict(const std::map<std::string, Tensor>& state);

 protected:
  struct Param {
    std::string name;
    Tensor value;
    std::map<std::string, Tensor> state;  // slot name -> tensor shaped like value
  };
  // Updates one parameter in place given its gradient; `step` counts from 1.
  virtual void update(Param& p, const Tensor& grad, std::int64_t step) = 0;
  virtual std::vector<std::string> slot_names() const = 0;
  Tensor& slot(Param& p, const std::string& name);  // zero-initialized on first use

 private:
  std::vector<Param> params_;
  double lr_;
  std::int64_t steps_ = 0;
};

struct SGDOptions {
  explicit SGDOptions(double lr) : lr_(lr) {}
  SHIFTQ_ARG(double, lr);
  SHIFTQ_ARG(double, momentum) = 0.0;
  SHIFTQ_ARG(double, dampening) = 0.0;
  SHIFTQ_ARG(bool, nesterov) = false;
  SHIFTQ_ARG(double, weight_decay) = 0.0;  // L2 penalty added to the gradient
};

// PyTorch's SGD: g += wd*p; buf = momentum*buf + (1-dampening)*g (buf = g at the first step);
// g = nesterov ? g + momentum*buf : buf; p -= lr*g.
class SGD : public Optimizer {
 public:
  SGD(const NamedTensors& params, const SGDOptions& options);

 protected:
  void update(Param& p, const Tensor& grad, std::int64_t step) override;
  std::vector<std::string> slot_names() const override;

 private:
  SGDOptions options_;
};

struct AdamWOptions {
  explicit AdamWOptions(double lr) : lr_(lr) {}
  SHIFTQ_ARG(double, lr);
  SHIFTQ_ARG(double, beta1) = 0.9;
  SHIFTQ_ARG(double, beta2) = 0.999;
  SHIFTQ_ARG(double, eps) = 1e-8;
  SHIFTQ_ARG(double, weight_decay) = 0.01;  // decoupled: p *= 1 - lr*wd
};

class AdamW : public Optimizer {
 public:
  AdamW(const NamedTensors& params, const AdamWOptions& options);

 protected:
  void update(Param& p, const Tensor& grad, std::int64_t step) override;
  std::vector<std::string> slot_names() const override;

 private:
  AdamWOptions options_;
};

// Scales all gradients so their global L2 norm is at most max_norm; returns the norm before clipping.
double clip_grad_norm(const std::vector<Tensor>& params, double max_norm);

}  // namespace shiftq::optim
