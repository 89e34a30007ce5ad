#include "testing/gradcheck.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>

namespace shiftq::testing {
namespace {
double weighted_sum(const Tensor& out, const Tensor& weights) {
  const float* o = out.data<float>();
  const float* w = weights.data<float>();
  double acc = 0.0;
  for (std::int64_t i = 0; i < out.numel(); ++i) acc += static_cast<double>(o[i]) * w[i];
  return acc;
}

std::vector<std::int64_t> sample_indices(std::int64_t n, std::int64_t max, Generator& gen) {
  std::vector<std::int64_t> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  if (n <= max) return idx;
  for (std::int64_t i = 0; i < max; ++i) std::swap(idx[i], idx[i + gen.randint(n - i)]);
  idx.resize(max);
  return idx;
}
}  // namespace

Tensor make_input(const Shape& shape, Generator& gen, float lo, float hi) {
  Tensor t = Tensor::uniform(shape, lo, hi, gen);
  t.set_requires_grad(true);
  return t;
}

GradcheckResult gradcheck(const TensorFn& fn, const std::vector<Tensor>& inputs, const GradcheckOptions& options) {
  Generator gen(options.seed);
  GradcheckResult result;

  // Analytical gradients.
  for (const Tensor& t : inputs) if (t.defined()) Tensor(t).zero_grad();
  Tensor out = fn(inputs);
  const Tensor weights = Tensor::uniform(out.shape(), -1.0f, 1.0f, gen);
  sum(mul(out, weights)).backward();

  std::ostringstream msg;
  int failures = 0;
  for (std::size_t k = 0; k < inputs.size(); ++k) {
    Tensor x = inputs[k];
    if (!x.defined() || !x.requires_grad()) continue;
    // An input the output does not depend on gets no gradient from autograd: that is a zero
    // gradient, which the finite differences below must confirm.
    const Tensor analytic = x.grad().defined() ? x.grad() : Tensor::zeros(x.shape());
    float* px = x.data<float>();
    for (std::int64_t i : sample_indices(x.numel(), options.max_checks_per_input, gen)) {
      const float original = px[i];
      double plus, minus;
      {
        NoGradGuard no_grad;
        px[i] = original + options.step;
        plus = weighted_sum(fn(inputs), weights);
        px[i] = original - options.step;
        minus = weighted_sum(fn(inputs), weights);
        px[i] = original;
      }
      const double numeric = (plus - minus) / (2.0 * options.step);
      const double a = analytic.data<float>()[i];
      ++result.checked;
      if (!(std::abs(a - numeric) <= options.atol + options.rtol * std::abs(numeric))) {
        result.ok = false;
        if (failures++ < 8)
          msg << "input " << k << " " << x.str() << " element " << i << ": autograd " << a
              << " vs finite difference " << numeric << "\n";
      }
    }
  }
  result.message = msg.str();
  return result;
}

}  // namespace shiftq::testing
