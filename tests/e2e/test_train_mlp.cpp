// Small end-to-end training runs that must reach a stated loss/accuracy.
#include <gtest/gtest.h>

#include <cmath>
#include <numbers>

#include <shiftq/shiftq.hpp>

#include "testing/synthetic.hpp"

namespace shiftq {
namespace {

// Two concentric rings (inner radius ~0.5 = class 0, outer ~1.0 = class 1) with noise.
void make_rings(std::int64_t n, Generator& gen, Tensor& x, Tensor& y) {
  x = Tensor::empty({n, 2});
  y = Tensor::empty({n}, DType::s32);
  float* px = x.data<float>();
  std::int32_t* py = y.data<std::int32_t>();
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int32_t label = static_cast<std::int32_t>(i % 2);
    const float radius = (label == 0 ? 0.5f : 1.0f) + 0.08f * gen.normal();
    const float angle = 2.0f * std::numbers::pi_v<float> * gen.uniform();
    px[2 * i] = radius * std::cos(angle);
    px[2 * i + 1] = radius * std::sin(angle);
    py[i] = label;
  }
}

float accuracy(const Tensor& logits, const Tensor& labels) {
  const std::int64_t n = logits.size(0), c = logits.size(1);
  const float* p = logits.data<float>();
  const std::int32_t* l = labels.data<std::int32_t>();
  std::int64_t correct = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    std::int64_t best = 0;
    for (std::int64_t j = 1; j < c; ++j)
      if (p[i * c + j] > p[i * c + best]) best = j;
    correct += best == l[i];
  }
  return static_cast<float>(correct) / static_cast<float>(n);
}

TEST(EndToEnd, MlpLearnsConcentricRings) {
  // Stated target: after 300 full-batch SGD-momentum steps, train loss < 0.1 and held-out accuracy >= 97%.
  Generator gen(7);
  Tensor x_train, y_train, x_test, y_test;
  make_rings(512, gen, x_train, y_train);
  make_rings(512, gen, x_test, y_test);
  nn::Sequential model{std::make_shared<nn::Linear>(nn::LinearOptions{2, 32}, gen),
                       std::make_shared<nn::Tanh>(),
                       std::make_shared<nn::Linear>(nn::LinearOptions{32, 32}, gen),
                       std::make_shared<nn::ReLU>(),
                       std::make_shared<nn::Linear>(nn::LinearOptions{32, 2}, gen)};
  optim::SGD opt(model.named_parameters(), optim::SGDOptions{0.1}.momentum(0.9));
  float first_loss = 0.0f, last_loss = 0.0f;
  for (int step = 0; step < 300; ++step) {
    Tensor loss = cross_entropy(model(x_train), y_train);
    opt.zero_grad();
    loss.backward();
    opt.step();
    if (step == 0) first_loss = loss.item();
    last_loss = loss.item();
  }
  EXPECT_GT(first_loss, 0.5f);
  EXPECT_LT(last_loss, 0.1f);
  NoGradGuard no_grad;
  model.eval();
  EXPECT_GE(accuracy(model(x_test), y_test), 0.97f);
}

using testing::make_bars;

TEST(EndToEnd, SmallCnnWithBatchNormLearnsBars) {
  // Stated target: conv-BN-ReLU-pool-conv-BN-ReLU-GAP-linear, 60 AdamW steps of batch 64,
  // reaches >= 95% accuracy on 256 held-out images (eval mode: running BatchNorm statistics).
  Generator gen(11);
  nn::Sequential model{
      std::make_shared<nn::Conv2d>(nn::Conv2dOptions{1, 8, 3}.padding(1).bias(false), gen),
      std::make_shared<nn::BatchNorm2d>(nn::BatchNormOptions{8}),
      std::make_shared<nn::ReLU>(),
      std::make_shared<nn::MaxPool2d>(Pool2dParams{2, 2, 0}),
      std::make_shared<nn::Conv2d>(nn::Conv2dOptions{8, 16, 3}.padding(1).bias(false), gen),
      std::make_shared<nn::BatchNorm2d>(nn::BatchNormOptions{16}),
      std::make_shared<nn::ReLU>(),
      std::make_shared<nn::GlobalAvgPool2d>(),
      std::make_shared<nn::Linear>(nn::LinearOptions{16, 2}, gen)};
  optim::AdamW opt(model.named_parameters(), optim::AdamWOptions{0.01});
  for (int step = 0; step < 60; ++step) {
    Tensor x, y;
    make_bars(64, gen, x, y);
    Tensor loss = cross_entropy(model(x), y);
    opt.zero_grad();
    loss.backward();
    opt.step();
  }
  Tensor x_test, y_test;
  make_bars(256, gen, x_test, y_test);
  NoGradGuard no_grad;
  model.eval();
  EXPECT_GE(accuracy(model(x_test), y_test), 0.95f);
}

TEST(EndToEnd, SameSeedSameThreadsGivesIdenticalWeights) {
  auto train = [] {
    Generator gen(3);
    Tensor x, y;
    make_rings(128, gen, x, y);
    nn::Sequential model{std::make_shared<nn::Linear>(nn::LinearOptions{2, 16}, gen),
                         std::make_shared<nn::ReLU>(),
                         std::make_shared<nn::Dropout>(0.1f, gen),
                         std::make_shared<nn::Linear>(nn::LinearOptions{16, 2}, gen)};
    optim::AdamW opt(model.named_parameters(), optim::AdamWOptions{0.01});
    for (int step = 0; step < 20; ++step) {
      Tensor loss = cross_entropy(model(x), y);
      opt.zero_grad();
      loss.backward();
      opt.step();
    }
    return model.state_dict();
  };
  const auto a = train(), b = train();
  for (const auto& [name, t] : a) EXPECT_EQ(t.to_vector<float>(), b.at(name).to_vector<float>()) << name;
}

}  // namespace
}  // namespace shiftq
