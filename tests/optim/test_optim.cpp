// SGD and AdamW against hand-written double-precision updates, optimizer state round trips,
// gradient clipping and learning-rate schedules.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "testing/gradcheck.hpp"

namespace shiftq {
namespace {
using Vec = std::vector<double>;

Tensor param(const std::vector<float>& values) {
  return Tensor::from_vector(values, {static_cast<std::int64_t>(values.size())}).set_requires_grad(true);
}

void set_grad(Tensor& p, const Vec& g) {
  std::vector<float> f(g.begin(), g.end());
  p.set_grad(Tensor::from_vector(f, p.shape()));
}

void expect_close(const Tensor& t, const Vec& expected, double rel = 2e-6, const std::string& what = "") {
  const std::vector<float> got = t.to_vector<float>();
  ASSERT_EQ(got.size(), expected.size());
  for (std::size_t i = 0; i < got.size(); ++i)
    EXPECT_NEAR(got[i], expected[i], rel * std::max(1.0, std::abs(expected[i]))) << what << " element " << i;
}

// Gradients for step t (0-based): mixed signs and magnitudes, one tiny entry so eps matters.
Vec grad_at(int t) {
  return {0.5 - 0.3 * t, -1.0 + 0.7 * t, 2.0 / (t + 1), 1e-3 * (t % 2 == 0 ? 1 : -1)};
}
const std::vector<float> kInit{1.0f, -2.0f, 0.5f, 0.25f};

// PyTorch's SGD, in double.
struct SgdRef {
  double lr, momentum, dampening, weight_decay;
  bool nesterov;
  Vec buf;
  void step(Vec& p, const Vec& grad) {
    Vec g = grad;
    for (std::size_t i = 0; i < p.size(); ++i) g[i] += weight_decay * p[i];
    if (momentum != 0.0) {
      if (buf.empty()) {
        buf = g;  // first step: buf = g (no dampening)
      } else {
        for (std::size_t i = 0; i < p.size(); ++i) buf[i] = momentum * buf[i] + (1.0 - dampening) * g[i];
      }
      for (std::size_t i = 0; i < p.size(); ++i) g[i] = nesterov ? g[i] + momentum * buf[i] : buf[i];
    }
    for (std::size_t i = 0; i < p.size(); ++i) p[i] -= lr * g[i];
  }
};

// AdamW (decoupled weight decay, bias-corrected moments), in double.
struct AdamWRef {
  double lr, beta1, beta2, eps, weight_decay;
  Vec m, v;
  int t = 0;
  void step(Vec& p, const Vec& g) {
    if (m.empty()) m.assign(p.size(), 0.0), v.assign(p.size(), 0.0);
    ++t;
    const double bc1 = 1.0 - std::pow(beta1, t), bc2 = 1.0 - std::pow(beta2, t);
    for (std::size_t i = 0; i < p.size(); ++i) {
      p[i] *= 1.0 - lr * weight_decay;
      m[i] = beta1 * m[i] + (1.0 - beta1) * g[i];
      v[i] = beta2 * v[i] + (1.0 - beta2) * g[i] * g[i];
      p[i] -= lr * (m[i] / bc1) / (std::sqrt(v[i] / bc2) + eps);
    }
  }
};

void run_sgd_case(const optim::SGDOptions& options, int steps) {
  Tensor w = param(kInit);
  optim::SGD opt({{"w", w}}, options);
  SgdRef ref{options.lr(), options.momentum(), options.dampening(), options.weight_decay(), options.nesterov(), {}};
  Vec expected(kInit.begin(), kInit.end());
  for (int t = 0; t < steps; ++t) {
    set_grad(w, grad_at(t));
    opt.step();
    ref.step(expected, grad_at(t));
    expect_close(w, expected, 2e-6, "step " + std::to_string(t + 1));
  }
  EXPECT_EQ(opt.step_count(), steps);
}

TEST(SGD, Plain) {
  Tensor w = param({1.0f, -2.0f});
  optim::SGD opt({{"w", w}}, optim::SGDOptions(0.1));
  set_grad(w, {0.5, -1.0});
  opt.step();
  expect_close(w, {0.95, -1.9});
  run_sgd_case(optim::SGDOptions(0.1), 4);
}

TEST(SGD, MomentumFirstStepUsesTheGradient) {
  // Hand check of the first two steps: buf1 = g1, buf2 = 0.9 g1 + g2.
  Tensor w = param({1.0f});
  optim::SGD opt({{"w", w}}, optim::SGDOptions(0.1).momentum(0.9));
  set_grad(w, {1.0});
  opt.step();
  expect_close(w, {0.9});
  set_grad(w, {2.0});
  opt.step();
  expect_close(w, {0.9 - 0.1 * (0.9 * 1.0 + 2.0)});
  run_sgd_case(optim::SGDOptions(0.05).momentum(0.9), 5);
}

TEST(SGD, Dampening) {
  // buf1 = g1 (not (1 - d) g1), then buf = m buf + (1 - d) g.
  Tensor w = param({0.0f});
  optim::SGD opt({{"w", w}}, optim::SGDOptions(1.0).momentum(0.5).dampening(0.5));
  set_grad(w, {1.0});
  opt.step();
  expect_close(w, {-1.0});
  set_grad(w, {1.0});
  opt.step();
  expect_close(w, {-1.0 - (0.5 * 1.0 + 0.5 * 1.0)});
  run_sgd_case(optim::SGDOptions(0.05).momentum(0.8).dampening(0.3), 5);
}

TEST(SGD, Nesterov) {
  run_sgd_case(optim::SGDOptions(0.05).momentum(0.9).nesterov(true), 5);
}

TEST(SGD, WeightDecay) {
  Tensor w = param({2.0f});
  optim::SGD opt({{"w", w}}, optim::SGDOptions(0.1).weight_decay(0.5));
  set_grad(w, {0.0});
  opt.step();
  expect_close(w, {2.0 - 0.1 * 0.5 * 2.0});
  run_sgd_case(optim::SGDOptions(0.1).weight_decay(0.01), 4);
  run_sgd_case(optim::SGDOptions(0.05).momentum(0.9).weight_decay(0.1).nesterov(true), 5);
}

TEST(SGD, SetLrTakesEffect) {
  Tensor w = param({1.0f});
  optim::SGD opt({{"w", w}}, optim::SGDOptions(0.1));
  opt.set_lr(0.5);
  EXPECT_EQ(opt.lr(), 0.5);
  set_grad(w, {1.0});
  opt.step();
  expect_close(w, {0.5});
  EXPECT_THROW(opt.set_lr(-1.0), ValueError);
  EXPECT_THROW(opt.set_lr(std::nan("")), ValueError);
}

void run_adamw_case(const optim::AdamWOptions& options, int steps) {
  Tensor w = param(kInit);
  optim::AdamW opt({{"w", w}}, options);
  AdamWRef ref{options.lr(), options.beta1(), options.beta2(), options.eps(), options.weight_decay(), {}, {}};
  Vec expected(kInit.begin(), kInit.end());
  for (int t = 0; t < steps; ++t) {
    set_grad(w, grad_at(t));
    opt.step();
    ref.step(expected, grad_at(t));
    expect_close(w, expected, 2e-6, "step " + std::to_string(t + 1));
  }
}

TEST(AdamW, FirstStepMovesEachWeightByLr) {
  // With bias correction, the first update is lr * g / (|g| + eps): about lr in magnitude.
  Tensor w = param({1.0f, 1.0f});
  optim::AdamW opt({{"w", w}}, optim::AdamWOptions(0.1).weight_decay(0.0));
  set_grad(w, {3.0, -0.01});
  opt.step();
  expect_close(w, {0.9, 1.1}, 1e-5);
}

TEST(AdamW, MatchesReferenceForThreeSteps) {
  run_adamw_case(optim::AdamWOptions(0.01), 3);
  run_adamw_case(optim::AdamWOptions(0.05).beta1(0.8).beta2(0.99).eps(1e-2).weight_decay(0.1), 3);
  run_adamw_case(optim::AdamWOptions(0.001).weight_decay(0.0), 3);
}

TEST(AdamW, DecoupledWeightDecayWithZeroGradient) {
  // g = 0: the moments stay 0, only p *= 1 - lr * wd applies.
  Tensor w = param({2.0f, -4.0f});
  optim::AdamW opt({{"w", w}}, optim::AdamWOptions(0.1).weight_decay(0.5));
  set_grad(w, {0.0, 0.0});
  opt.step();
  expect_close(w, {2.0 * 0.95, -4.0 * 0.95});
}

TEST(Optimizer, ParametersWithoutGradAreSkipped) {
  Tensor a = param({1.0f, 2.0f}), b = param({3.0f});
  optim::AdamW opt({{"a", a}, {"b", b}}, optim::AdamWOptions(0.1));
  set_grad(a, {1.0, 1.0});
  opt.step();
  EXPECT_NE(a.to_vector<float>(), (std::vector<float>{1.0f, 2.0f}));
  EXPECT_EQ(b.to_vector<float>(), (std::vector<float>{3.0f}));  // not even weight decay
  const auto sd = opt.state_dict();
  EXPECT_TRUE(sd.count("a.exp_avg"));
  EXPECT_FALSE(sd.count("b.exp_avg"));
  EXPECT_EQ(opt.step_count(), 1);
  opt.zero_grad();
  EXPECT_FALSE(a.grad().defined());
  opt.step();  // nothing has a gradient: nothing moves
  EXPECT_EQ(b.to_vector<float>(), (std::vector<float>{3.0f}));
}

TEST(Optimizer, NonFiniteGradientThrowsBeforeModifyingAnything) {
  for (double bad : {std::nan(""), std::numeric_limits<double>::infinity()}) {
    Tensor w = param({1.0f, 2.0f}), bias = param({0.5f});
    optim::AdamW opt({{"layer.weight", w}, {"layer.bias", bias}}, optim::AdamWOptions(0.1));
    set_grad(w, {1.0, 1.0});
    set_grad(bias, {bad});
    try {
      opt.step();
      ADD_FAILURE() << "no NumericError for a non-finite gradient";
    } catch (const NumericError& e) {
      EXPECT_NE(std::string(e.what()).find("layer.bias"), std::string::npos) << e.what();
    }
    EXPECT_EQ(w.to_vector<float>(), (std::vector<float>{1.0f, 2.0f}));
    EXPECT_EQ(bias.to_vector<float>(), (std::vector<float>{0.5f}));
    EXPECT_EQ(opt.step_count(), 0);
    EXPECT_EQ(opt.state_dict().size(), 1u);  // only "step": no slot was created
  }
  Tensor w = param({1.0f});
  optim::SGD sgd({{"w", w}}, optim::SGDOptions(0.1).momentum(0.9));
  set_grad(w, {std::nan("")});
  EXPECT_THROW(sgd.step(), NumericError);
  EXPECT_EQ(w.to_vector<float>(), (std::vector<float>{1.0f}));
}

// Identical further steps after a state_dict round trip, for any optimizer kind.
template <class Opt, class Options>
void check_state_round_trip(const Options& options, const std::vector<std::string>& expected_keys) {
  Tensor a1 = param({1.0f, -2.0f, 0.5f, 0.25f}), a2 = param({0.3f, 0.7f, -0.1f, 2.0f});
  Opt opt_a({{"l.w", a1}, {"l.b", a2}}, options);
  for (int t = 0; t < 3; ++t) {
    set_grad(a1, grad_at(t));
    set_grad(a2, grad_at(t + 5));
    opt_a.step();
  }
  const std::map<std::string, Tensor> sd = opt_a.state_dict();
  std::vector<std::string> keys;
  for (const auto& [k, v] : sd) keys.push_back(k);
  EXPECT_EQ(keys, expected_keys);
  EXPECT_EQ(sd.at("step").dtype(), DType::s32);
  EXPECT_EQ(sd.at("step").to_vector<std::int32_t>(), (std::vector<std::int32_t>{3}));

  Tensor b1 = a1.detach().clone().set_requires_grad(true), b2 = a2.detach().clone().set_requires_grad(true);
  Tensor c1 = a1.detach().clone().set_requires_grad(true), c2 = a2.detach().clone().set_requires_grad(true);
  Opt opt_b({{"l.w", b1}, {"l.b", b2}}, options);
  Opt opt_c({{"l.w", c1}, {"l.b", c2}}, options);  // fresh state: must diverge
  opt_b.load_state_dict(sd);
  EXPECT_EQ(opt_b.step_count(), 3);
  for (int t = 3; t < 5; ++t) {
    for (auto* p : {&a1, &b1, &c1}) set_grad(*p, grad_at(t));
    for (auto* p : {&a2, &b2, &c2}) set_grad(*p, grad_at(t + 5));
    opt_a.step();
    opt_b.step();
    opt_c.step();
    EXPECT_EQ(a1.to_vector<float>(), b1.to_vector<float>()) << "step " << t + 1;
    EXPECT_EQ(a2.to_vector<float>(), b2.to_vector<float>()) << "step " << t + 1;
  }
  EXPECT_NE(a1.to_vector<float>(), c1.to_vector<float>());
}

TEST(OptimizerState, AdamWRoundTrip) {
  check_state_round_trip<optim::AdamW>(optim::AdamWOptions(0.01),
                                       {"l.b.exp_avg", "l.b.exp_avg_sq", "l.w.exp_avg", "l.w.exp_avg_sq", "step"});
}

TEST(OptimizerState, SGDMomentumRoundTrip) {
  check_state_round_trip<optim::SGD>(optim::SGDOptions(0.05).momentum(0.9),
                                     {"l.b.momentum_buffer", "l.w.momentum_buffer", "step"});
}

TEST(OptimizerState, StateDictIsACopy) {
  Tensor w = param({1.0f});
  optim::SGD opt({{"w", w}}, optim::SGDOptions(0.1).momentum(0.9));
  set_grad(w, {1.0});
  opt.step();
  auto sd = opt.state_dict();
  sd.at("w.momentum_buffer").fill_(100.0f);
  set_grad(w, {0.0});
  opt.step();  // buf = 0.9 * 1: w = 0.9 - 0.1 * 0.9
  expect_close(w, {0.9 - 0.09});
}

TEST(OptimizerState, LoadErrors) {
  Tensor w = param({1.0f, 2.0f});
  optim::AdamW opt({{"w", w}}, optim::AdamWOptions(0.01));
  set_grad(w, {1.0, -1.0});
  opt.step();
  const auto good = opt.state_dict();

  Tensor w2 = param({1.0f, 2.0f});
  optim::AdamW other({{"w", w2}}, optim::AdamWOptions(0.01));
  auto wrong_shape = good;
  wrong_shape["w.exp_avg"] = Tensor::zeros({3});
  EXPECT_THROW(other.load_state_dict(wrong_shape), ShapeError);
  EXPECT_EQ(other.step_count(), 0);
  EXPECT_EQ(other.state_dict().size(), 1u);  // nothing restored

  auto no_step = good;
  no_step.erase("step");
  EXPECT_THROW(other.load_state_dict(no_step), ValueError);
  auto extra = good;
  extra["v.exp_avg"] = Tensor::zeros({2});
  EXPECT_THROW(other.load_state_dict(extra), ValueError);
  auto float_step = good;
  float_step["step"] = Tensor::full({1}, 1.0f);
  EXPECT_THROW(other.load_state_dict(float_step), ValueError);

  // An SGD state does not fit an AdamW.
  Tensor w3 = param({1.0f, 2.0f});
  optim::SGD sgd({{"w", w3}}, optim::SGDOptions(0.1).momentum(0.9));
  set_grad(w3, {1.0, 1.0});
  sgd.step();
  EXPECT_THROW(other.load_state_dict(sgd.state_dict()), ValueError);

  EXPECT_NO_THROW(other.load_state_dict(good));
  EXPECT_EQ(other.step_count(), 1);
}

TEST(ClipGradNorm, ScalesToMaxNormAndReturnsThePreClipNorm) {
  Tensor a = param({0.0f, 0.0f}), b = param({0.0f}), c = param({1.0f});  // c has no grad
  set_grad(a, {3.0, 4.0});
  set_grad(b, {12.0});
  const double norm = optim::clip_grad_norm({a, b, c}, 6.5);
  EXPECT_NEAR(norm, 13.0, 1e-9);
  expect_close(a.grad(), {1.5, 2.0}, 1e-6);
  expect_close(b.grad(), {6.0}, 1e-6);
  EXPECT_FALSE(c.grad().defined());
  // Below the limit: untouched.
  const double small = optim::clip_grad_norm({a, b}, 100.0);
  EXPECT_NEAR(small, 6.5, 1e-5);
  expect_close(a.grad(), {1.5, 2.0}, 1e-6);
  EXPECT_THROW(optim::clip_grad_norm({a}, 0.0), ValueError);
  EXPECT_EQ(optim::clip_grad_norm({c}, 1.0), 0.0);
}

// Several blocks of the parallel sum and a ragged tail: the norm is the same bits at 1 and 2
// threads, and within the rounding bound of a double sum of n positive terms ((n - 1) * 2^-53
// relative; half of it after the square root) of a long double sum. An accumulation in float
// would miss it by orders of magnitude.
TEST(ClipGradNorm, LargeGradientsDoNotDependOnTheThreadCount) {
  const std::int64_t n = 3 * (1 << 15) + 37;
  Generator gen(11);
  const std::vector<float> grad = Tensor::randn({n}, gen).to_vector<float>();
  long double reference = 0.0L;
  for (const float g : grad) reference += static_cast<long double>(g) * g;
  const double expected = std::sqrt(static_cast<double>(reference));

  const int threads = get_num_threads();
  std::vector<std::vector<float>> clipped;
  std::vector<double> norms;
  for (const int t : {1, 2}) {
    set_num_threads(t);
    Tensor p = Tensor::zeros({n}).set_requires_grad(true);
    p.set_grad(Tensor::from_vector(grad, {n}));
    norms.push_back(optim::clip_grad_norm({p}, 1.0));
    clipped.push_back(p.grad().to_vector<float>());
  }
  set_num_threads(threads);
  EXPECT_EQ(norms[0], norms[1]);
  EXPECT_EQ(clipped[0], clipped[1]);
  EXPECT_NEAR(norms[0], expected, expected * 0.5 * static_cast<double>(n) * std::ldexp(1.0, -53));
  const float scale = static_cast<float>(1.0 / (norms[0] + 1e-6));
  for (std::size_t i = 0; i < grad.size(); i += 997) EXPECT_EQ(clipped[0][i], grad[i] * scale) << i;
}

TEST(Schedules, WarmupCosine) {
  optim::WarmupCosine s(1.0, 10, 110, 0.1);
  EXPECT_NEAR(s.lr_at(0), 0.1, 1e-12);  // base / warmup
  EXPECT_NEAR(s.lr_at(4), 0.5, 1e-12);
  EXPECT_NEAR(s.lr_at(9), 1.0, 1e-12);
  EXPECT_NEAR(s.lr_at(10), 1.0, 1e-12);                                 // cosine starts at base
  EXPECT_NEAR(s.lr_at(35), 0.1 + 0.45 * (1.0 + std::sqrt(0.5)), 1e-12);  // a quarter of the way
  EXPECT_NEAR(s.lr_at(60), (1.0 + 0.1) / 2.0, 1e-12);                   // midpoint
  EXPECT_NEAR(s.lr_at(110), 0.1, 1e-12);
  EXPECT_NEAR(s.lr_at(5000), 0.1, 1e-12);
  for (std::int64_t t = 1; t < 10; ++t) EXPECT_GT(s.lr_at(t), s.lr_at(t - 1));
  for (std::int64_t t = 11; t <= 110; ++t) EXPECT_LT(s.lr_at(t), s.lr_at(t - 1));
  optim::WarmupCosine no_warmup(0.5, 0, 100);
  EXPECT_NEAR(no_warmup.lr_at(0), 0.5, 1e-12);
  EXPECT_NEAR(no_warmup.lr_at(50), 0.25, 1e-12);
  EXPECT_NEAR(no_warmup.lr_at(100), 0.0, 1e-12);
}

TEST(Schedules, StepLR) {
  optim::StepLR s(0.1, 10, 0.5);
  EXPECT_NEAR(s.lr_at(0), 0.1, 1e-15);
  EXPECT_NEAR(s.lr_at(9), 0.1, 1e-15);
  EXPECT_NEAR(s.lr_at(10), 0.05, 1e-15);
  EXPECT_NEAR(s.lr_at(29), 0.025, 1e-15);
  EXPECT_NEAR(s.lr_at(30), 0.0125, 1e-15);
}

TEST(Schedules, InvalidOptions) {
  EXPECT_THROW(optim::WarmupCosine(1.0, 10, 10), ValueError);
  EXPECT_THROW(optim::WarmupCosine(1.0, 10, 5), ValueError);
  EXPECT_THROW(optim::WarmupCosine(1.0, -1, 5), ValueError);
  EXPECT_THROW(optim::WarmupCosine(0.1, 0, 5, 0.2), ValueError);
  EXPECT_THROW(optim::WarmupCosine(-1.0, 0, 5), ValueError);
  EXPECT_THROW(optim::StepLR(0.1, 0, 0.5), ValueError);
  EXPECT_THROW(optim::StepLR(0.1, 10, 0.0), ValueError);
  EXPECT_THROW(optim::StepLR(-0.1, 10, 0.5), ValueError);
}

TEST(Optimizer, InvalidOptions) {
  Tensor w = param({1.0f});
  const nn::NamedTensors params{{"w", w}};
  EXPECT_THROW(optim::SGD(params, optim::SGDOptions(-0.1)), ValueError);
  EXPECT_THROW(optim::SGD(params, optim::SGDOptions(INFINITY)), ValueError);
  EXPECT_THROW(optim::SGD(params, optim::SGDOptions(0.1).momentum(-0.5)), ValueError);
  EXPECT_THROW(optim::SGD(params, optim::SGDOptions(0.1).weight_decay(-1.0)), ValueError);
  EXPECT_THROW(optim::SGD(params, optim::SGDOptions(0.1).nesterov(true)), ValueError);
  EXPECT_THROW(optim::SGD(params, optim::SGDOptions(0.1).momentum(0.9).dampening(0.1).nesterov(true)), ValueError);
  EXPECT_THROW(optim::AdamW(params, optim::AdamWOptions(0.1).beta1(1.0)), ValueError);
  EXPECT_THROW(optim::AdamW(params, optim::AdamWOptions(0.1).beta2(-0.1)), ValueError);
  EXPECT_THROW(optim::AdamW(params, optim::AdamWOptions(0.1).eps(0.0)), ValueError);
  EXPECT_THROW(optim::AdamW(params, optim::AdamWOptions(0.1).weight_decay(-0.01)), ValueError);
  EXPECT_THROW(optim::AdamW(params, optim::AdamWOptions(-1.0)), ValueError);
  EXPECT_THROW(optim::SGD(nn::NamedTensors{}, optim::SGDOptions(0.1)), ValueError);
  EXPECT_THROW(optim::SGD(nn::NamedTensors{{"w", w}, {"w", param({2.0f})}}, optim::SGDOptions(0.1)), ValueError);
  EXPECT_THROW(optim::SGD(nn::NamedTensors{{"i", Tensor::zeros({2}, DType::s32)}}, optim::SGDOptions(0.1)),
               DTypeError);
}

TEST(Optimizer, TrainsAModuleThroughNamedParameters) {
  // A sanity check of the whole loop: AdamW reduces a least-squares loss of a Linear layer.
  Generator gen(3);
  nn::Linear lin(nn::LinearOptions(4, 1), gen);
  optim::AdamW opt(lin.named_parameters(), optim::AdamWOptions(0.05).weight_decay(0.0));
  Tensor x = Tensor::randn({32, 4}, gen);
  Tensor target = matmul(x, Tensor::from_vector(std::vector<float>{1, -2, 0.5f, 3}, {4, 1}));
  float first = 0.0f, last = 0.0f;
  for (int it = 0; it < 200; ++it) {
    opt.zero_grad();
    Tensor loss = mse_loss(lin(x), target);
    if (it == 0) first = loss.item();
    last = loss.item();
    loss.backward();
    opt.step();
  }
  EXPECT_LT(last, 0.01f * first);
  EXPECT_TRUE(opt.state_dict().count("weight.exp_avg"));
}

}  // namespace
}  // namespace shiftq
