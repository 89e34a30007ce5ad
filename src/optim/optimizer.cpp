#include "shiftq/optim/optimizer.hpp"

#include <algorithm>
#include <cmath>
#include <set>
#include <vector>

#include "core/parallel_for.hpp"

namespace shiftq::optim {

Optimizer::Optimizer(const NamedTensors& params, double lr) : lr_(lr) {
  SHIFTQ_CHECK(!params.empty(), ValueError, "optimizer: empty parameter list");
  set_lr(lr);
  std::set<std::string> names;
  for (const auto& [name, t] : params) {
    check_dtype(t, DType::f32, "optimizer", name.c_str());
    SHIFTQ_CHECK(names.insert(name).second, ValueError, "optimizer: duplicate parameter name '", name, "'");
    params_.push_back({name, t, {}});
  }
}

void Optimizer::set_lr(double lr) {
  SHIFTQ_CHECK(std::isfinite(lr) && lr >= 0.0, ValueError, "optimizer: learning rate must be finite and >= 0, got ", lr);
  lr_ = lr;
}

void Optimizer::zero_grad() {
  for (Param& p : params_) p.value.zero_grad();
}

void Optimizer::step() {
  for (const Param& p : params_) {
    const Tensor g = p.value.grad();
    if (g.defined()) g.check_finite(detail::cat("optimizer step: gradient of '", p.name, "'"));
  }
  ++steps_;
  for (Param& p : params_) {
    const Tensor g = p.value.grad();
    if (!g.defined()) continue;
    update(p, g, steps_);
    p.value.bump_version();
  }
}

Tensor& Optimizer::slot(Param& p, const std::string& name) {
  auto [it, inserted] = p.state.try_emplace(name);
  if (inserted) it->second = Tensor::zeros(p.value.shape());
  return it->second;
}

std::map<std::string, Tensor> Optimizer::state_dict() const {
  std::map<std::string, Tensor> out;
  out.emplace("step", Tensor::from_vector(std::vector<std::int32_t>{static_cast<std::int32_t>(steps_)}, {1}));
  for (const Param& p : params_)
    for (const auto& [slot_name, t] : p.state) out.emplace(p.name + "." + slot_name, t.clone());
  return out;
}

void Optimizer::load_state_dict(const std::map<std::string, Tensor>& state) {
  auto it = state.find("step");
  SHIFTQ_CHECK(it != state.end() && it->second.dtype() == DType::s32 && it->second.numel() == 1,
               ValueError, "optimizer load_state_dict: missing or malformed 'step'");
  const std::vector<std::string> slots = slot_names();
  std::vector<std::map<std::string, Tensor>> restored(params_.size());
  std::size_t used = 1;
  for (std::size_t i = 0; i < params_.size(); ++i) {
    for (const std::string& s : slots) {
      auto found = state.find(params_[i].name + "." + s);
      if (found == state.end()) continue;
      SHIFTQ_CHECK(found->second.dtype() == DType::f32 && found->second.shape() == params_[i].value.shape(),
                   ShapeError, "optimizer load_state_dict: '", found->first, "' is ", found->second.str(),
                   ", parameter is ", params_[i].value.str());
      restored[i].emplace(s, found->second.clone());
      ++used;
    }
  }
  SHIFTQ_CHECK(used == state.size(), ValueError, "optimizer load_state_dict: ", state.size() - used,
               " keys match no parameter/slot of this optimizer");
  for (std::size_t i = 0; i < params_.size(); ++i) params_[i].state = std::move(restored[i]);
  steps_ = it->second.data<std::int32_t>()[0];
}

// ---- SGD --------------------------------------------------------------------------------------

SGD::SGD(const NamedTensors& params, const SGDOptions& options)
    : Optimizer(params, options.lr()), options_(options) {
  SHIFTQ_CHECK(options.momentum() >= 0.0 && options.weight_decay() >= 0.0, ValueError,
               "SGD: momentum and weight_decay must be >= 0");
  SHIFTQ_CHECK(!options.nesterov() || (options.momentum() > 0.0 && options.dampening() == 0.0),
               ValueError, "SGD: Nesterov momentum needs momentum > 0 and dampening = 0");
}

std::vector<std::string> SGD::slot_names() const { return {"momentum_buffer"}; }

void SGD::update(Param& p, const Tensor& grad, std::int64_t) {
  const float rate = static_cast<float>(lr()), wd = static_cast<float>(options_.weight_decay());
  const float mom = static_cast<float>(options_.momentum()), damp = static_cast<float>(options_.dampening());
  const bool nesterov = options_.nesterov();
  const bool first = mom != 0.0f && !p.state.count("momentum_buffer");
  float* buf = mom != 0.0f ? slot(p, "momentum_buffer").data<float>() : nullptr;
  float* w = p.value.data<float>();
  const float* g = grad.data<float>();
  detail::parallel_for(p.value.numel(), 1 << 14, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t i = b; i < e; ++i) {
      float d = g[i] + wd * w[i];
      if (buf) {
        buf[i] = first ? d : mom * buf[i] + (1.0f - damp) * d;
        d = nesterov ? d + mom * buf[i] : buf[i];
      }
      w[i] -= rate * d;
    }
  });
}

// ---- AdamW ------------------------------------------------------------------------------------

AdamW::AdamW(const NamedTensors& params, const AdamWOptions& options)
    : Optimizer(params, options.lr()), options_(options) {
  SHIFTQ_CHECK(options.beta1() >= 0.0 && options.beta1() < 1.0 && options.beta2() >= 0.0 &&
                   options.beta2() < 1.0 && options.eps() > 0.0 && options.weight_decay() >= 0.0,
               ValueError, "AdamW: betas must be in [0, 1), eps > 0, weight_decay >= 0");
}

std::vector<std::string> AdamW::slot_names() const { return {"exp_avg", "exp_avg_sq"}; }

void AdamW::update(Param& p, const Tensor& grad, std::int64_t step) {
  const double b1 = options_.beta1(), b2 = options_.beta2();
  const float rate = static_cast<float>(lr()), decay = static_cast<float>(1.0 - lr() * options_.weight_decay());
  const float bc1 = static_cast<float>(1.0 - std::pow(b1, static_cast<double>(step)));
  const float bc2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(b2, static_cast<double>(step))));
  const float eps = static_cast<float>(options_.eps()), fb1 = static_cast<float>(b1), fb2 = static_cast<float>(b2);
  float* m = slot(p, "exp_avg").data<float>();
  float* v = slot(p, "exp_avg_sq").data<float>();
  float* w = p.value.data<float>();
  const float* g = grad.data<float>();
  detail::parallel_for(p.value.numel(), 1 << 14, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t i = b; i < e; ++i) {
      w[i] *= decay;
      m[i] = fb1 * m[i] + (1.0f - fb1) * g[i];
      v[i] = fb2 * v[i] + (1.0f - fb2) * g[i] * g[i];
      // p -= lr * mhat / (sqrt(vhat) + eps), mhat = m / bc1, vhat = v / bc2
      w[i] -= rate * (m[i] / bc1) / (std::sqrt(v[i]) / bc2_sqrt + eps);
    }
  });
}

namespace {

// Elements per partial sum of squares. The partials are added in block order, so the norm does
// not depend on the thread count.
constexpr std::int64_t kNormBlock = 1 << 14;

// sum(double(g[i])^2) over g: [n], eight independent accumulators per block so that the adds
// pipeline (one serial double chain took about 2.5% of the char-GPT step).
double sum_of_squares(const float* g, std::int64_t n) {
  const std::int64_t blocks = (n + kNormBlock - 1) / kNormBlock;
  std::vector<double> partial(static_cast<std::size_t>(blocks));
  detail::parallel_for(blocks, detail::kElementwiseGrain / kNormBlock, [&](std::int64_t b0, std::int64_t b1) {
    for (std::int64_t b = b0; b < b1; ++b) {
      const std::int64_t begin = b * kNormBlock, end = std::min(n, begin + kNormBlock);
      double acc[8] = {};
      std::int64_t i = begin;
      for (; i + 8 <= end; i += 8)
        for (int k = 0; k < 8; ++k) acc[k] += static_cast<double>(g[i + k]) * g[i + k];
      for (; i < end; ++i) acc[0] += static_cast<double>(g[i]) * g[i];
      partial[static_cast<std::size_t>(b)] =
          ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    }
  });
  double total = 0.0;
  for (const double p : partial) total += p;
  return total;
}

}  // namespace

double clip_grad_norm(const std::vector<Tensor>& params, double max_norm) {
  SHIFTQ_CHECK(max_norm > 0.0, ValueError, "clip_grad_norm: max_norm must be > 0, got ", max_norm);
  double total = 0.0;
  for (const Tensor& p : params) {
    const Tensor g = p.grad();
    if (g.defined()) total += sum_of_squares(g.data<float>(), g.numel());
  }
  const double norm = std::sqrt(total);
  if (norm > max_norm) {
    const float scale = static_cast<float>(max_norm / (norm + 1e-6));
    for (const Tensor& p : params) {
      Tensor g = p.grad();
      if (!g.defined()) continue;
      float* pg = g.data<float>();
      detail::parallel_for(g.numel(), detail::kElementwiseGrain, [&](std::int64_t b, std::int64_t e) {
        for (std::int64_t i = b; i < e; ++i) pg[i] *= scale;
      });
    }
  }
  return norm;
}

}  // namespace shiftq::optim
