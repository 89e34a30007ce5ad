// Finite-difference gradient checks of every differentiable op.
#include <gtest/gtest.h>

#include <cmath>

#include "testing/gradcheck.hpp"

namespace shiftq {
namespace {
using testing::gradcheck;
using testing::make_input;
using Inputs = std::vector<Tensor>;

// Values in [lo, hi) with |v| >= margin: keeps kinked ops (relu, max) away from their kinks.
Tensor away_from_zero(const Shape& shape, Generator& gen, float margin = 0.05f) {
  Tensor t = Tensor::uniform(shape, -1.0f, 1.0f, gen);
  float* p = t.data<float>();
  for (std::int64_t i = 0; i < t.numel(); ++i) p[i] += p[i] >= 0 ? margin : -margin;
  t.set_requires_grad(true);
  return t;
}

TEST(Gradcheck, AddSubMulDivSameShape) {
  Generator gen(1);
  Inputs in{make_input({3, 4}, gen), make_input({3, 4}, gen, 0.5f, 2.0f)};
  EXPECT_GRADCHECK([](const Inputs& x) { return add(x[0], x[1]); }, in);
  EXPECT_GRADCHECK([](const Inputs& x) { return sub(x[0], x[1]); }, in);
  EXPECT_GRADCHECK([](const Inputs& x) { return mul(x[0], x[1]); }, in);
  EXPECT_GRADCHECK([](const Inputs& x) { return div(x[0], x[1]); }, in);
}

TEST(Gradcheck, BinaryOpsBroadcast) {
  Generator gen(2);
  // [2, 3, 4] op [3, 1] and op [4]: leading, inner and trailing broadcasts.
  Inputs a{make_input({2, 3, 4}, gen), make_input({3, 1}, gen, 0.5f, 2.0f)};
  Inputs b{make_input({2, 1, 4}, gen), make_input({4}, gen, 0.5f, 2.0f)};
  for (const Inputs& in : {a, b}) {
    EXPECT_GRADCHECK([](const Inputs& x) { return add(x[0], x[1]); }, in);
    EXPECT_GRADCHECK([](const Inputs& x) { return sub(x[1], x[0]); }, in);
    EXPECT_GRADCHECK([](const Inputs& x) { return mul(x[0], x[1]); }, in);
    EXPECT_GRADCHECK([](const Inputs& x) { return div(x[0], x[1]); }, in);
  }
}

TEST(Gradcheck, ScalarAndUnaryMath) {
  Generator gen(3);
  Inputs in{make_input({5, 3}, gen, 0.2f, 2.0f)};
  EXPECT_GRADCHECK([](const Inputs& x) { return add(x[0], 3.0f); }, in);
  EXPECT_GRADCHECK([](const Inputs& x) { return mul(x[0], -2.5f); }, in);
  EXPECT_GRADCHECK([](const Inputs& x) { return neg(x[0]); }, in);
  EXPECT_GRADCHECK([](const Inputs& x) { return exp(x[0]); }, in);
  EXPECT_GRADCHECK([](const Inputs& x) { return log(x[0]); }, in);
  EXPECT_GRADCHECK([](const Inputs& x) { return sqrt(x[0]); }, in);
  EXPECT_GRADCHECK([](const Inputs& x) { return square(x[0]); }, in);
}

TEST(Gradcheck, Activations) {
  Generator gen(4);
  Inputs in{away_from_zero({4, 6}, gen)};
  EXPECT_GRADCHECK([](const Inputs& x) { return relu(x[0]); }, in);
  EXPECT_GRADCHECK([](const Inputs& x) { return gelu(x[0]); }, in);
  EXPECT_GRADCHECK([](const Inputs& x) { return tanh(x[0]); }, in);
  EXPECT_GRADCHECK([](const Inputs& x) { return sigmoid(x[0]); }, in);
}

TEST(Gradcheck, SoftmaxAndLogSoftmaxEveryAxis) {
  Generator gen(5);
  Inputs in{make_input({2, 3, 4}, gen, -2.0f, 2.0f)};
  for (std::int64_t dim : {0, 1, 2, -1}) {
    EXPECT_GRADCHECK([dim](const Inputs& x) { return softmax(x[0], dim); }, in);
    EXPECT_GRADCHECK([dim](const Inputs& x) { return log_softmax(x[0], dim); }, in);
  }
}

TEST(Gradcheck, Reductions) {
  Generator gen(6);
  Inputs in{make_input({2, 3, 4}, gen)};
  EXPECT_GRADCHECK([](const Inputs& x) { return sum(x[0]); }, in);
  EXPECT_GRADCHECK([](const Inputs& x) { return mean(x[0]); }, in);
  EXPECT_GRADCHECK([](const Inputs& x) { return sum(x[0], {1}); }, in);
  EXPECT_GRADCHECK([](const Inputs& x) { return sum(x[0], {0, 2}, true); }, in);
  EXPECT_GRADCHECK([](const Inputs& x) { return mean(x[0], {-1}); }, in);
  EXPECT_GRADCHECK([](const Inputs& x) { return mean(x[0], {0, 1}, true); }, in);
  EXPECT_GRADCHECK([](const Inputs& x) { return sum_to(x[0], {3, 1}); }, in);
}

TEST(Gradcheck, ShapeOps) {
  Generator gen(7);
  Inputs in{make_input({2, 3, 4}, gen), make_input({2, 2, 4}, gen)};
  EXPECT_GRADCHECK([](const Inputs& x) { return reshape(x[0], {4, -1}); }, in);
  EXPECT_GRADCHECK([](const Inputs& x) { return flatten(x[0]); }, in);
  EXPECT_GRADCHECK([](const Inputs& x) { return transpose(x[0], 0, 2); }, in);
  EXPECT_GRADCHECK([](const Inputs& x) { return permute(x[0], {1, 2, 0}); }, in);
  EXPECT_GRADCHECK([](const Inputs& x) { return slice(x[0], 1, 1, 3); }, in);
  EXPECT_GRADCHECK([](const Inputs& x) { return slice(x[0], -1, 0, 2); }, in);
  EXPECT_GRADCHECK([](const Inputs& x) { return concat({x[0], x[1]}, 1); }, in);
  EXPECT_GRADCHECK([](const Inputs& x) { return concat({x[1], x[1], x[0]}, 1); }, in);
}

TEST(Gradcheck, Matmul) {
  Generator gen(8);
  EXPECT_GRADCHECK([](const Inputs& x) { return matmul(x[0], x[1]); },
                   Inputs{make_input({3, 5}, gen), make_input({5, 4}, gen)});
  EXPECT_GRADCHECK([](const Inputs& x) { return matmul(x[0], x[1]); },  // batched
                   Inputs{make_input({2, 3, 3, 5}, gen), make_input({2, 3, 5, 2}, gen)});
  EXPECT_GRADCHECK([](const Inputs& x) { return matmul(x[0], x[1]); },  // shared right operand
                   Inputs{make_input({2, 3, 5}, gen), make_input({5, 4}, gen)});
}

TEST(Gradcheck, Linear) {
  Generator gen(9);
  Inputs in{make_input({4, 6}, gen), make_input({3, 6}, gen), make_input({3}, gen)};
  EXPECT_GRADCHECK([](const Inputs& x) { return linear(x[0], x[1], x[2]); }, in);
  EXPECT_GRADCHECK([](const Inputs& x) { return linear(x[0], x[1]); }, in);
  Inputs batched{make_input({2, 3, 6}, gen), make_input({3, 6}, gen), make_input({3}, gen)};
  EXPECT_GRADCHECK([](const Inputs& x) { return linear(x[0], x[1], x[2]); }, batched);
}

TEST(Gradcheck, CrossEntropy) {
  Generator gen(10);
  Tensor targets = Tensor::from_vector(std::vector<std::int32_t>{0, 3, 1, 2, 3}, {5});
  Inputs in{make_input({5, 4}, gen, -2.0f, 2.0f)};
  EXPECT_GRADCHECK([&](const Inputs& x) { return cross_entropy(x[0], targets); }, in);
  EXPECT_GRADCHECK([&](const Inputs& x) { return cross_entropy(x[0], targets, {.label_smoothing = 0.1f}); }, in);
  Tensor with_ignored = Tensor::from_vector(std::vector<std::int32_t>{0, -100, 1, 2, -100}, {5});
  EXPECT_GRADCHECK([&](const Inputs& x) { return cross_entropy(x[0], with_ignored); }, in);
}

TEST(Gradcheck, MseLoss) {
  Generator gen(11);
  EXPECT_GRADCHECK([](const Inputs& x) { return mse_loss(x[0], x[1]); },
                   Inputs{make_input({3, 4}, gen), make_input({3, 4}, gen)});
}

TEST(Gradcheck, Embedding) {
  Generator gen(12);
  Tensor idx = Tensor::from_vector(std::vector<std::int32_t>{1, 4, 1, 0, 2, 4}, {2, 3});  // repeats accumulate
  EXPECT_GRADCHECK([&](const Inputs& x) { return embedding(x[0], idx); }, Inputs{make_input({5, 3}, gen)});
}

TEST(Gradcheck, Dropout) {
  Generator gen(13);
  // A fresh generator per call: the same mask on every evaluation.
  EXPECT_GRADCHECK([](const Inputs& x) {
    Generator mask_gen(99);
    return dropout(x[0], 0.3f, true, mask_gen);
  }, Inputs{make_input({4, 8}, gen)});
}

TEST(Gradcheck, Conv2d) {
  Generator gen(14);
  for (Conv2dParams p : {Conv2dParams{1, 0}, Conv2dParams{1, 1}, Conv2dParams{2, 1}}) {
    Inputs in{make_input({2, 3, 6, 5}, gen), make_input({4, 3, 3, 3}, gen), make_input({4}, gen)};
    EXPECT_GRADCHECK([p](const Inputs& x) { return conv2d(x[0], x[1], x[2], p); }, in);
  }
  Inputs one_by_one{make_input({2, 3, 4, 4}, gen), make_input({2, 3, 1, 1}, gen)};
  EXPECT_GRADCHECK([](const Inputs& x) { return conv2d(x[0], x[1], Tensor(), {2, 0}); }, one_by_one);
}

TEST(Gradcheck, Pooling) {
  Generator gen(15);
  // Distinct values spaced well apart: the argmax of each window is stable under +-h.
  Tensor x = Tensor::empty({2, 2, 6, 6});
  std::vector<float> values(static_cast<std::size_t>(x.numel()));
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = 0.01f * static_cast<float>(i);
  for (std::size_t i = values.size() - 1; i > 0; --i) std::swap(values[i], values[gen.randint(i + 1)]);
  x = Tensor::from_vector(values, {2, 2, 6, 6}).set_requires_grad(true);
  for (Pool2dParams p : {Pool2dParams{2, 2, 0}, Pool2dParams{3, 2, 1}, Pool2dParams{3, 1, 0}}) {
    EXPECT_GRADCHECK([p](const Inputs& in) { return max_pool2d(in[0], p); }, Inputs{x});
    EXPECT_GRADCHECK([p](const Inputs& in) { return avg_pool2d(in[0], p); }, Inputs{x});
  }
  EXPECT_GRADCHECK([](const Inputs& in) { return global_avg_pool2d(in[0]); }, Inputs{x});
}

TEST(Gradcheck, BatchNorm2dTrainAndEval) {
  Generator gen(16);
  Inputs in{make_input({4, 3, 3, 2}, gen, -2.0f, 2.0f), make_input({3}, gen, 0.5f, 1.5f), make_input({3}, gen)};
  EXPECT_GRADCHECK([](const Inputs& x) {
    BatchNormState state;  // batch statistics only
    return batch_norm2d(x[0], x[1], x[2], state, true);
  }, in);
  EXPECT_GRADCHECK([](const Inputs& x) {
    BatchNormState state{Tensor::full({3}, 0.1f), Tensor::full({3}, 0.7f)};
    return batch_norm2d(x[0], x[1], x[2], state, false);
  }, in);
}

TEST(Gradcheck, LayerNorm) {
  Generator gen(17);
  Inputs in{make_input({2, 3, 8}, gen, -2.0f, 2.0f), make_input({8}, gen, 0.5f, 1.5f), make_input({8}, gen)};
  EXPECT_GRADCHECK([](const Inputs& x) { return layer_norm(x[0], x[1], x[2]); }, in);
  EXPECT_GRADCHECK([](const Inputs& x) { return layer_norm(x[0], Tensor(), Tensor()); }, in);
}

TEST(Gradcheck, AttentionCausalAndFull) {
  Generator gen(18);
  Inputs in{make_input({2, 2, 4, 3}, gen), make_input({2, 2, 4, 3}, gen), make_input({2, 2, 4, 3}, gen)};
  for (bool causal : {false, true})
    EXPECT_GRADCHECK([causal](const Inputs& x) { return scaled_dot_product_attention(x[0], x[1], x[2], causal); }, in);
  EXPECT_GRADCHECK([](const Inputs& x) { return softmax(causal_mask(x[0]), -1); }, Inputs{make_input({2, 3, 5}, gen)});
  for (bool causal : {false, true})
    EXPECT_GRADCHECK([causal](const Inputs& x) { return scaled_softmax(x[0], 0.7f, causal); },
                     Inputs{make_input({2, 3, 5}, gen)});
}

TEST(Gradcheck, DetectsAWrongGradient) {
  // The checker itself must fail on a wrong backward: an op whose recorded gradient is doubled.
  Generator gen(19);
  auto wrong = [](const Inputs& x) {
    Tensor out = x[0].detach().clone();
    return record("wrong", out, {&x[0]}, [](const Tensor& g) { return std::vector<Tensor>{mul(g, 2.0f)}; });
  };
  EXPECT_FALSE(gradcheck(wrong, Inputs{make_input({3}, gen)}).ok);
}

}  // namespace
}  // namespace shiftq

namespace shiftq {
namespace {
using testing::make_input;
using Inputs = std::vector<Tensor>;

// x: [N, C, H, W] whose elements all lie >= 0.05 from their channel mean: |x - mean| has a kink at
// 0 that central differences with h = 1e-3 must not straddle.
Tensor away_from_channel_means(Generator& gen) {
  Tensor x = Tensor::uniform({4, 3, 3, 2}, -2.0f, 2.0f, gen);
  float* p = x.data<float>();
  for (int round = 0; round < 4; ++round)
    for (std::int64_t c = 0; c < 3; ++c) {
      double mean = 0.0;
      for (std::int64_t n = 0; n < 4; ++n)
        for (std::int64_t i = 0; i < 6; ++i) mean += p[(n * 3 + c) * 6 + i] / 24.0;
      for (std::int64_t n = 0; n < 4; ++n)
        for (std::int64_t i = 0; i < 6; ++i) {
          float& v = p[(n * 3 + c) * 6 + i];
          if (std::fabs(v - mean) < 0.05) v += v >= mean ? 0.1f : -0.1f;
        }
    }
  x.set_requires_grad(true);
  return x;
}

TEST(Gradcheck, L1BatchNorm2dTrainAndEval) {
  Generator gen(20);
  Inputs in{away_from_channel_means(gen), make_input({3}, gen, 0.5f, 1.5f), make_input({3}, gen)};
  EXPECT_GRADCHECK([](const Inputs& x) {
    L1BatchNormState state;  // batch statistics only
    return l1_batch_norm2d(x[0], x[1], x[2], state, true);
  }, in);
  EXPECT_GRADCHECK([](const Inputs& x) {
    L1BatchNormState state{Tensor::full({3}, 0.1f), Tensor::full({3}, 0.7f)};
    return l1_batch_norm2d(x[0], x[1], x[2], state, false);
  }, in);
  EXPECT_GRADCHECK([](const Inputs& x) {  // another c
    L1BatchNormState state;
    state.c = 1.0f;
    return l1_batch_norm2d(x[0], Tensor(), Tensor(), state, true);
  }, Inputs{in[0]});
}

TEST(Gradcheck, L1LayerNorm) {
  Generator gen(21);
  Inputs in{make_input({2, 3, 8}, gen, -2.0f, 2.0f), make_input({8}, gen, 0.5f, 1.5f), make_input({8}, gen)};
  EXPECT_GRADCHECK([](const Inputs& x) { return l1_layer_norm(x[0], x[1], x[2]); }, in);
  EXPECT_GRADCHECK([](const Inputs& x) { return l1_layer_norm(x[0], Tensor(), Tensor(), 1e-5f, 1.0f); }, Inputs{in[0]});
}

}  // namespace
}  // namespace shiftq
