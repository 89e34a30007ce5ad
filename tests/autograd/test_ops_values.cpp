// Forward values of the differentiable ops against hand-computed numbers and naive loops.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <string>
#include <vector>

#include "testing/gradcheck.hpp"

namespace shiftq {
namespace {

Tensor tensor(const std::vector<float>& values, const Shape& shape) { return Tensor::from_vector(values, shape); }
Tensor labels(const std::vector<std::int32_t>& values) {
  return Tensor::from_vector(values, {static_cast<std::int64_t>(values.size())});
}

void expect_values(const Tensor& t, const Shape& shape, const std::vector<float>& expected, float tol = 1e-5f) {
  ASSERT_EQ(t.shape(), shape) << t.str();
  const std::vector<float> got = t.to_vector<float>();
  ASSERT_EQ(got.size(), expected.size());
  for (std::size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], expected[i], tol) << "element " << i;
}

template <class E, class F>
std::string thrown_message(F fn) {
  try {
    fn();
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw the wrong exception type: " << e.what();
    return {};
  }
  ADD_FAILURE() << "did not throw";
  return {};
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// ---- elementwise ----

TEST(OpsValues, BroadcastAddRowVector) {
  Tensor a = tensor({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor b = tensor({10, 20, 30}, {3});
  expect_values(add(a, b), {2, 3}, {11, 22, 33, 14, 25, 36});
  expect_values(add(b, a), {2, 3}, {11, 22, 33, 14, 25, 36});
  expect_values(sub(a, b), {2, 3}, {-9, -18, -27, -6, -15, -24});
}

TEST(OpsValues, BroadcastMulOuter) {
  Tensor col = tensor({1, 2}, {2, 1});
  Tensor row = tensor({1, 2, 3}, {1, 3});
  expect_values(mul(col, row), {2, 3}, {1, 2, 3, 2, 4, 6});
  expect_values(div(row, col), {2, 3}, {1, 2, 3, 0.5f, 1, 1.5f});
}

TEST(OpsValues, BroadcastMiddleAxis) {
  // [2, 1, 2] + [3, 1] -> [2, 3, 2]
  Tensor a = tensor({1, 2, 3, 4}, {2, 1, 2});
  Tensor b = tensor({10, 20, 30}, {3, 1});
  expect_values(add(a, b), {2, 3, 2}, {11, 12, 21, 22, 31, 32, 13, 14, 23, 24, 33, 34});
}

TEST(OpsValues, ScalarAndUnary) {
  Tensor a = tensor({1, 4, 9}, {3});
  expect_values(add(a, 1.5f), {3}, {2.5f, 5.5f, 10.5f});
  expect_values(mul(a, -2.0f), {3}, {-2, -8, -18});
  expect_values(a / 2.0f, {3}, {0.5f, 2, 4.5f});
  expect_values(a - 1.0f, {3}, {0, 3, 8});
  expect_values(neg(a), {3}, {-1, -4, -9});
  expect_values(sqrt(a), {3}, {1, 2, 3});
  expect_values(square(a), {3}, {1, 16, 81});
  expect_values(log(tensor({1, std::exp(2.0f)}, {2})), {2}, {0, 2});
  expect_values(exp(tensor({0, 1}, {2})), {2}, {1, std::exp(1.0f)});
}

// ReLU's backward from its one-bit mask, over pieces that several threads write (64-element
// blocks) and a tail: dx = r where x > 0, else 0, exactly; the output equals the no-grad forward.
TEST(OpsValues, ReluGradientFromItsMaskAcrossThreads) {
  Generator gen(3);
  const int threads = get_num_threads();
  set_num_threads(2);
  const Tensor x = Tensor::randn({3, 70001}, gen).set_requires_grad(true);
  const Tensor r = Tensor::randn({3, 70001}, gen);
  const Tensor y = relu(x);
  sum(mul(y, r)).backward();
  Tensor y_plain;
  {
    NoGradGuard no_grad;
    y_plain = relu(x);
  }
  set_num_threads(threads);
  const std::vector<float> xs = x.detach().to_vector<float>(), rs = r.to_vector<float>(), dx = x.grad().to_vector<float>();
  const std::vector<float> ys = y.detach().to_vector<float>(), ys_plain = y_plain.to_vector<float>();
  std::int64_t wrong = 0;
  for (std::size_t i = 0; i < xs.size(); ++i) {
    wrong += dx[i] != (xs[i] > 0.0f ? rs[i] : 0.0f);
    wrong += ys[i] != ys_plain[i] || ys[i] != (xs[i] > 0.0f ? xs[i] : 0.0f);
  }
  EXPECT_EQ(wrong, 0);
}

TEST(OpsValues, Activations) {
  Tensor x = tensor({-2, -0.5f, 0, 1, 3}, {5});
  expect_values(relu(x), {5}, {0, 0, 0, 1, 3});
  expect_values(sigmoid(tensor({0, 2}, {2})), {2}, {0.5f, 0.8807971f});
  expect_values(tanh(tensor({0, 1}, {2})), {2}, {0, 0.7615942f});
  // GELU, tanh approximation (PyTorch approximate='tanh'): gelu(1) = 0.841192, gelu(-1) = -0.158808.
  expect_values(gelu(tensor({0, 1, -1, 3}, {4})), {4}, {0, 0.8411920f, -0.1588080f, 2.9963627f});
  // Over a dense range against the tanh formula in double (the kernel uses a vectorized exp).
  std::vector<float> xs;
  for (float v = -12.0f; v <= 12.0f; v += 0.0013f) xs.push_back(v);
  const Tensor g = gelu(Tensor::from_vector(xs, {static_cast<std::int64_t>(xs.size())}));
  for (std::size_t i = 0; i < xs.size(); ++i) {
    const double x = xs[i], u = 0.7978845608028654 * (x + 0.044715 * x * x * x);
    ASSERT_NEAR(g.data<float>()[i], 0.5 * x * (1.0 + std::tanh(u)), 2e-6 * std::max(1.0, std::fabs(x))) << x;
  }
}

// ---- reductions and shape ops ----

TEST(OpsValues, Reductions) {
  Tensor x = Tensor::arange(24).view({2, 3, 4});
  EXPECT_FLOAT_EQ(sum(x).item(), 276.0f);
  EXPECT_FLOAT_EQ(mean(x).item(), 11.5f);
  expect_values(sum(x, {1}), {2, 4}, {12, 15, 18, 21, 48, 51, 54, 57});
  expect_values(sum(x, {0, 2}, true), {1, 3, 1}, {60, 92, 124});
  expect_values(mean(x, {-1}), {2, 3}, {1.5f, 5.5f, 9.5f, 13.5f, 17.5f, 21.5f});
  expect_values(sum_to(x, {3, 1}), {3, 1}, {60, 92, 124});
  expect_values(sum_to(x, {4}), {4}, {60, 66, 72, 78});
  EXPECT_THROW(sum(x, {1, 1}), ShapeError);
  EXPECT_THROW(sum(x, {3}), ShapeError);
}

TEST(OpsValues, ReshapeWithInferredExtent) {
  Tensor x = Tensor::arange(24);
  Tensor r = reshape(x, {4, -1});
  EXPECT_EQ(r.shape(), (Shape{4, 6}));
  EXPECT_TRUE(r.shares_storage(x));
  EXPECT_EQ(r.at({2, 1}), 13.0f);
  EXPECT_EQ(reshape(x, {-1, 2, 3}).shape(), (Shape{4, 2, 3}));
  EXPECT_EQ(reshape(x, {-1}).shape(), (Shape{24}));
  EXPECT_EQ(flatten(reshape(x, {2, 3, 4})).shape(), (Shape{2, 12}));
  EXPECT_EQ(flatten(reshape(x, {2, 3, 4}), 0).shape(), (Shape{24}));
  EXPECT_THROW(reshape(x, {-1, -1}), ShapeError);
  EXPECT_THROW(reshape(x, {5, -1}), ShapeError);
  EXPECT_THROW(reshape(x, {5, 5}), ShapeError);
  EXPECT_THROW(reshape(x, {-2, 12}), ShapeError);
}

TEST(OpsValues, TransposeAndPermute) {
  Tensor x = Tensor::arange(24).view({2, 3, 4});  // x[i,j,k] = 12i + 4j + k
  Tensor t = transpose(x, 0, 2);
  ASSERT_EQ(t.shape(), (Shape{4, 3, 2}));
  Tensor p = permute(x, {1, 2, 0});
  ASSERT_EQ(p.shape(), (Shape{3, 4, 2}));
  for (std::int64_t i = 0; i < 2; ++i)
    for (std::int64_t j = 0; j < 3; ++j)
      for (std::int64_t k = 0; k < 4; ++k) {
        const float v = static_cast<float>(12 * i + 4 * j + k);
        EXPECT_EQ(t.at({k, j, i}), v);
        EXPECT_EQ(p.at({j, k, i}), v);
      }
  EXPECT_FALSE(t.shares_storage(x));  // a contiguous copy
  expect_values(transpose(tensor({1, 2, 3, 4, 5, 6}, {2, 3}), -1, -2), {3, 2}, {1, 4, 2, 5, 3, 6});
  EXPECT_THROW(permute(x, {0, 0, 1}), ShapeError);
  EXPECT_THROW(permute(x, {0, 1}), ShapeError);
  EXPECT_THROW(transpose(x, 0, 3), ShapeError);
}

TEST(OpsValues, BatchedTransposeOfTheLastTwoAxes) {
  // Swapping the last two axes runs as blocked matrix transposes: odd sizes, batches, and the
  // gradient (the transpose back).
  for (const Shape& shape : {Shape{3, 2, 13, 7}, Shape{5, 17, 16}, Shape{1, 1}}) {
    const std::int64_t rows = shape[shape.size() - 2], cols = shape.back(), batch = shape_numel(shape) / (rows * cols);
    const Tensor x = Tensor::arange(shape_numel(shape)).view(shape).clone().set_requires_grad(true);
    const Tensor t = transpose(x, -2, -1);
    Shape want = shape;
    std::swap(want[want.size() - 1], want[want.size() - 2]);
    ASSERT_EQ(t.shape(), want);
    const std::vector<float> got = t.to_vector<float>();
    for (std::int64_t b = 0; b < batch; ++b)
      for (std::int64_t r = 0; r < rows; ++r)
        for (std::int64_t c = 0; c < cols; ++c)
          ASSERT_EQ(got[(b * cols + c) * rows + r], static_cast<float>((b * rows + r) * cols + c));
    sum(mul(t, t)).backward();  // d/dx sum(x^2) = 2x, through the transpose and back
    const std::vector<float> g = x.grad().to_vector<float>();
    for (std::size_t i = 0; i < g.size(); ++i) ASSERT_EQ(g[i], 2.0f * static_cast<float>(i));
  }
}

TEST(OpsValues, SliceAndConcat) {
  Tensor x = Tensor::arange(24).view({2, 3, 4});
  Tensor s = slice(x, 1, 1, 3);
  ASSERT_EQ(s.shape(), (Shape{2, 2, 4}));
  for (std::int64_t i = 0; i < 2; ++i)
    for (std::int64_t j = 0; j < 2; ++j)
      for (std::int64_t k = 0; k < 4; ++k) EXPECT_EQ(s.at({i, j, k}), static_cast<float>(12 * i + 4 * (j + 1) + k));
  expect_values(slice(x, -1, 2, 4), {2, 3, 2}, {2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23});
  EXPECT_EQ(slice(x, 0, 1, 1).numel(), 0);
  EXPECT_THROW(slice(x, 1, 2, 4), ShapeError);
  EXPECT_THROW(slice(x, 1, 2, 1), ShapeError);

  Tensor a = tensor({1, 2, 3, 4}, {2, 2});
  Tensor b = tensor({5, 6}, {2, 1});
  expect_values(concat({a, b}, 1), {2, 3}, {1, 2, 5, 3, 4, 6});
  expect_values(concat({b, a, b}, -1), {2, 4}, {5, 1, 2, 5, 6, 3, 4, 6});
  expect_values(concat({a, tensor({7, 8}, {1, 2})}, 0), {3, 2}, {1, 2, 3, 4, 7, 8});
  EXPECT_THROW(concat({a, b}, 0), ShapeError);
  EXPECT_THROW(concat({a, Tensor::zeros({4})}, 0), ShapeError);
  EXPECT_THROW(concat({}, 0), ShapeError);
}

// ---- linear algebra ----

TEST(OpsValues, MatmulKnownValues) {
  Tensor a = tensor({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor b = tensor({7, 8, 9, 10, 11, 12}, {3, 2});
  expect_values(matmul(a, b), {2, 2}, {58, 64, 139, 154});
  expect_values(matmul(b, a), {3, 3}, {39, 54, 69, 49, 68, 87, 59, 82, 105});
}

TEST(OpsValues, MatmulBatchedAndShared) {
  // Batch 0: identity-ish, batch 1: the 2x3 example.
  Tensor a = tensor({1, 0, 0, 0, 1, 0, 1, 2, 3, 4, 5, 6}, {2, 2, 3});
  Tensor b = tensor({7, 8, 9, 10, 11, 12}, {3, 2});
  expect_values(matmul(a, b), {2, 2, 2}, {7, 8, 9, 10, 58, 64, 139, 154});
  Tensor bb = tensor({7, 8, 9, 10, 11, 12, 1, 0, 0, 1, 0, 0}, {2, 3, 2});
  expect_values(matmul(a, bb), {2, 2, 2}, {7, 8, 9, 10, 1, 2, 4, 5});
}

TEST(OpsValues, LinearWithAndWithoutBias) {
  Tensor x = tensor({1, 2, 3, -1, 0, 1}, {2, 3});
  Tensor w = tensor({1, 0, -1, 2, 1, 0.5f}, {2, 3});  // out = 2
  Tensor b = tensor({0.5f, -1}, {2});
  expect_values(linear(x, w), {2, 2}, {-2, 5.5f, -2, -1.5f});
  expect_values(linear(x, w, b), {2, 2}, {-1.5f, 4.5f, -1.5f, -2.5f});
  // Leading batch dims are kept.
  expect_values(linear(x.view({1, 2, 3}), w, b), {1, 2, 2}, {-1.5f, 4.5f, -1.5f, -2.5f});
}

TEST(OpsValues, ShapeErrorsMentionTheShapes) {
  const std::string mm = thrown_message<ShapeError>([] { matmul(Tensor::zeros({2, 3}), Tensor::zeros({4, 2})); });
  EXPECT_TRUE(contains(mm, "[2, 3]") && contains(mm, "[4, 2]")) << mm;
  const std::string lin = thrown_message<ShapeError>([] { linear(Tensor::zeros({2, 5}), Tensor::zeros({3, 4})); });
  EXPECT_TRUE(contains(lin, "[2, 5]") && contains(lin, "[3, 4]")) << lin;
  const std::string ad = thrown_message<ShapeError>([] { add(Tensor::zeros({2, 3}), Tensor::zeros({4})); });
  EXPECT_TRUE(contains(ad, "[2, 3]") && contains(ad, "[4]")) << ad;
  EXPECT_THROW(linear(Tensor::zeros({2, 3}), Tensor::zeros({2, 3}), Tensor::zeros({3})), ShapeError);
  EXPECT_THROW(matmul(Tensor::zeros({2, 2, 3}), Tensor::zeros({3, 2, 2})), ShapeError);
  EXPECT_THROW(matmul(Tensor::zeros({3}), Tensor::zeros({3, 2})), ShapeError);
  EXPECT_THROW(add(Tensor::zeros({2}, DType::s32), Tensor::zeros({2})), DTypeError);
}

TEST(OpsValues, SumOverManyRowsOfFewColumnsIsExactEnoughAndThreadIndependent) {
  // [rows, cols] with rows >> cols (a bias gradient): blocks of rows are summed on their own, then
  // added in order. Float sums of 5000 terms of |x| <= 1 with partial sums of random sign: measured
  // errors up to 4e-5 over 20 seeds; 1e-3 is far below one term's size, so a lost or doubled row fails.
  Generator gen(3);
  const Tensor x = Tensor::uniform({5000, 7}, -1.0f, 1.0f, gen);
  auto run = [&](int threads) {
    const int before = get_num_threads();
    set_num_threads(threads);
    const std::vector<float> out = sum(x, {0}).to_vector<float>();
    set_num_threads(before);
    return out;
  };
  const std::vector<float> one = run(1);
  for (std::int64_t c = 0; c < 7; ++c) {
    double want = 0.0;
    for (std::int64_t r = 0; r < 5000; ++r) want += x.at({r, c});
    EXPECT_NEAR(one[c], want, 1e-3) << "column " << c;
  }
  EXPECT_EQ(run(2), one);
  EXPECT_EQ(run(3), one);
}

// ---- softmax and losses ----

TEST(OpsValues, SoftmaxRowsSumToOneAndMatchDefinition) {
  Generator gen(1);
  Tensor x = Tensor::uniform({4, 7}, -3.0f, 3.0f, gen);
  Tensor y = softmax(x, -1);
  Tensor ly = log_softmax(x, 1);
  for (std::int64_t r = 0; r < 4; ++r) {
    double total = 0.0, row_sum = 0.0;
    for (std::int64_t c = 0; c < 7; ++c) total += std::exp(static_cast<double>(x.at({r, c})));
    for (std::int64_t c = 0; c < 7; ++c) {
      const double expected = std::exp(static_cast<double>(x.at({r, c}))) / total;
      EXPECT_NEAR(y.at({r, c}), expected, 1e-6);
      EXPECT_NEAR(ly.at({r, c}), std::log(expected), 1e-5);
      row_sum += y.at({r, c});
    }
    EXPECT_NEAR(row_sum, 1.0, 1e-5);
  }
}

TEST(OpsValues, ScaledSoftmaxHasTheBitsOfScaleMaskSoftmax) {
  // The fused op against mul -> causal_mask -> softmax, forward and backward, bit for bit
  // (masked entries: +0 in both), causal and not, at Tq < Tk and Tq = Tk.
  Generator gen(4);
  for (const Shape& shape : {Shape{2, 3, 5, 5}, Shape{2, 4, 6}, Shape{3, 17, 33}}) {
    for (bool causal : {false, true}) {
      const Tensor x = Tensor::randn(shape, gen, 3.0f), r = Tensor::randn(shape, gen);
      const Tensor xa = x.clone().set_requires_grad(true), xb = x.clone().set_requires_grad(true);
      const Tensor fused = scaled_softmax(xa, 0.3f, causal);
      const Tensor scaled = mul(xb, 0.3f);
      const Tensor parts = softmax(causal ? causal_mask(scaled) : scaled, -1);
      EXPECT_EQ(fused.to_vector<float>(), parts.to_vector<float>()) << x.str() << " causal " << causal;
      sum(mul(fused, r)).backward();
      sum(mul(parts, r)).backward();
      const std::vector<float> ga = xa.grad().to_vector<float>(), gb = xb.grad().to_vector<float>();
      ASSERT_EQ(ga.size(), gb.size());
      for (std::size_t i = 0; i < ga.size(); ++i)
        EXPECT_EQ(std::bit_cast<std::uint32_t>(ga[i]), std::bit_cast<std::uint32_t>(gb[i])) << "element " << i;
    }
  }
  EXPECT_THROW(scaled_softmax(Tensor::zeros({2, 5, 4}), 1.0f, true), ShapeError);  // Tk < Tq
  EXPECT_THROW(scaled_softmax(Tensor::zeros({2, 4}), INFINITY, false), ValueError);
  EXPECT_THROW(scaled_softmax(Tensor::zeros({2, 4}), -1.0f, false), ValueError);
}

TEST(OpsValues, SoftmaxAlongFirstAxis) {
  Tensor x = tensor({0, 1, std::log(3.0f), 1}, {2, 2});
  expect_values(softmax(x, 0), {2, 2}, {0.25f, 0.5f, 0.75f, 0.5f});
}

TEST(OpsValues, LogSoftmaxIsStableForLargeInputs) {
  Tensor x = tensor({1000, 1001, -1000, -1001}, {2, 2});
  Tensor ly = log_softmax(x, -1);
  Tensor y = softmax(x, -1);
  EXPECT_TRUE(ly.all_finite());
  EXPECT_TRUE(y.all_finite());
  // log(1 + e) = 1.3132617
  expect_values(ly, {2, 2}, {-1.3132617f, -0.3132617f, -0.3132617f, -1.3132617f});
  expect_values(y, {2, 2}, {0.2689414f, 0.7310586f, 0.7310586f, 0.2689414f});
}

TEST(OpsValues, CrossEntropyOfUniformLogitsIsLogC) {
  Tensor loss = cross_entropy(Tensor::zeros({2, 4}), labels({1, 3}));
  EXPECT_EQ(loss.dim(), 0);
  EXPECT_NEAR(loss.item(), std::log(4.0), 1e-6);
}

TEST(OpsValues, CrossEntropyKnownValues) {
  Tensor logits = tensor({1, 2, 3, 1, 0, -1}, {2, 3});
  const double lse0 = std::log(std::exp(1.0) + std::exp(2.0) + std::exp(3.0));
  const double lse1 = std::log(std::exp(1.0) + std::exp(0.0) + std::exp(-1.0));
  // targets 0 and 2: mean of (lse0 - 1) and (lse1 + 1)
  EXPECT_NEAR(cross_entropy(logits, labels({0, 2})).item(), ((lse0 - 1.0) + (lse1 + 1.0)) / 2.0, 1e-5);
  // ignore_index: only row 1 counts.
  EXPECT_NEAR(cross_entropy(logits, labels({-100, 2})).item(), lse1 + 1.0, 1e-5);
  CrossEntropyOptions ignore7;
  ignore7.ignore_index = 7;
  EXPECT_NEAR(cross_entropy(logits, labels({7, 0}), ignore7).item(), lse1 - 1.0, 1e-5);
}

TEST(OpsValues, CrossEntropyLabelSmoothing) {
  Tensor logits = tensor({1, 2, 3, 1, 0, -1}, {2, 3});
  const double eps = 0.1;
  double expected = 0.0;
  const std::int32_t targets[] = {0, 2};
  for (int r = 0; r < 2; ++r) {
    double lse = 0.0;
    for (int c = 0; c < 3; ++c) lse += std::exp(static_cast<double>(logits.at({r, c})));
    lse = std::log(lse);
    double row = 0.0;
    for (int c = 0; c < 3; ++c) {
      const double q = (c == targets[r] ? 1.0 - eps : 0.0) + eps / 3.0;
      row -= q * (logits.at({r, c}) - lse);
    }
    expected += row / 2.0;
  }
  const float got = cross_entropy(logits, labels({0, 2}), {.label_smoothing = 0.1f}).item();
  EXPECT_NEAR(got, expected, 1e-5);
  // Smoothing changes the value (so the option is really applied).
  EXPECT_GT(std::abs(got - cross_entropy(logits, labels({0, 2})).item()), 1e-3);
  // With uniform logits smoothing does not matter: still log C.
  EXPECT_NEAR(cross_entropy(Tensor::zeros({3, 5}), labels({0, 1, 4}), {.label_smoothing = 0.3f}).item(),
              std::log(5.0), 1e-6);
}

TEST(OpsValues, CrossEntropyErrors) {
  Tensor logits = Tensor::zeros({2, 4});
  EXPECT_THROW(cross_entropy(logits, labels({0, 4})), ValueError);
  EXPECT_THROW(cross_entropy(logits, labels({-1, 0})), ValueError);
  EXPECT_THROW(cross_entropy(logits, Tensor::zeros({2})), DTypeError);
  EXPECT_THROW(cross_entropy(logits, labels({0, 1, 2})), ShapeError);
  EXPECT_THROW(cross_entropy(logits, labels({-100, -100})), ValueError);
  EXPECT_THROW(cross_entropy(logits, labels({0, 1}), {.label_smoothing = 1.0f}), ValueError);
  EXPECT_THROW(cross_entropy(Tensor::zeros({2, 2, 2}), labels({0, 1})), ShapeError);
}

TEST(OpsValues, MseLoss) {
  Tensor a = tensor({1, 2, 3, 4}, {2, 2});
  Tensor b = tensor({1, 0, 6, 4}, {2, 2});
  EXPECT_FLOAT_EQ(mse_loss(a, b).item(), (0 + 4 + 9 + 0) / 4.0f);
  EXPECT_THROW(mse_loss(a, Tensor::zeros({4})), ShapeError);
}

// ---- convolution and pooling ----

// Direct convolution, double accumulation: x [N, C, H, W], w [O, C, K, K], b [O].
std::vector<double> naive_conv2d(const Tensor& x, const Tensor& w, const Tensor& b, std::int64_t stride,
                                 std::int64_t pad, std::int64_t& oh, std::int64_t& ow) {
  const std::int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const std::int64_t O = w.size(0), KH = w.size(2), KW = w.size(3);
  oh = (H + 2 * pad - KH) / stride + 1;
  ow = (W + 2 * pad - KW) / stride + 1;
  std::vector<double> out;
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t o = 0; o < O; ++o)
      for (std::int64_t oy = 0; oy < oh; ++oy)
        for (std::int64_t ox = 0; ox < ow; ++ox) {
          double acc = b.defined() ? b.at({o}) : 0.0;
          for (std::int64_t c = 0; c < C; ++c)
            for (std::int64_t ky = 0; ky < KH; ++ky)
              for (std::int64_t kx = 0; kx < KW; ++kx) {
                const std::int64_t iy = oy * stride - pad + ky, ix = ox * stride - pad + kx;
                if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                acc += static_cast<double>(x.at({n, c, iy, ix})) * w.at({o, c, ky, kx});
              }
          out.push_back(acc);
        }
  return out;
}

TEST(OpsValues, Conv2dMatchesDirectConvolution) {
  Generator gen(21);
  struct Geometry {
    std::int64_t stride, padding, kernel;
  };
  for (Geometry geo : {Geometry{2, 1, 3}, Geometry{1, 0, 3}, Geometry{1, 2, 5}, Geometry{3, 0, 1}}) {
    Tensor x = Tensor::uniform({2, 3, 7, 6}, -1.0f, 1.0f, gen);
    Tensor w = Tensor::uniform({4, 3, geo.kernel, geo.kernel}, -1.0f, 1.0f, gen);
    Tensor b = Tensor::uniform({4}, -1.0f, 1.0f, gen);
    for (bool with_bias : {true, false}) {
      std::int64_t oh = 0, ow = 0;
      const std::vector<double> expected = naive_conv2d(x, w, with_bias ? b : Tensor(), geo.stride, geo.padding, oh, ow);
      Tensor y = conv2d(x, w, with_bias ? b : Tensor(), {geo.stride, geo.padding});
      ASSERT_EQ(y.shape(), (Shape{2, 4, oh, ow}));
      const std::vector<float> got = y.to_vector<float>();
      for (std::size_t i = 0; i < got.size(); ++i)
        ASSERT_NEAR(got[i], expected[i], 1e-4) << "stride " << geo.stride << " padding " << geo.padding << " element " << i;
    }
  }
}

TEST(OpsValues, Conv2dStride2Padding1Shape) {
  Tensor y = conv2d(Tensor::zeros({1, 3, 7, 6}), Tensor::zeros({4, 3, 3, 3}), Tensor(), {2, 1});
  EXPECT_EQ(y.shape(), (Shape{1, 4, 4, 3}));
  EXPECT_THROW(conv2d(Tensor::zeros({1, 2, 5, 5}), Tensor::zeros({4, 3, 3, 3})), ShapeError);
  EXPECT_THROW(conv2d(Tensor::zeros({1, 3, 2, 2}), Tensor::zeros({4, 3, 3, 3})), ShapeError);
  EXPECT_THROW(conv2d(Tensor::zeros({1, 3, 5, 5}), Tensor::zeros({4, 3, 3, 3}), Tensor(), {0, 0}), ValueError);
}

TEST(OpsValues, MaxAndAvgPoolKnownValues) {
  Tensor x = Tensor::arange(16).view({1, 1, 4, 4});
  expect_values(max_pool2d(x), {1, 1, 2, 2}, {5, 7, 13, 15});
  expect_values(avg_pool2d(x), {1, 1, 2, 2}, {2.5f, 4.5f, 10.5f, 12.5f});
  // kernel 3, stride 2, padding 1: windows clipped at the border; avg divides by 9 (zero padding).
  expect_values(avg_pool2d(x, {3, 2, 1}), {1, 1, 2, 2}, {10.0f / 9, 24.0f / 9, 51.0f / 9, 10.0f});
  // Max pooling ignores the padding: all-negative values stay negative.
  Tensor negative = mul(add(x, 1.0f), -1.0f);  // -1 .. -16
  expect_values(max_pool2d(negative, {3, 2, 1}), {1, 1, 2, 2}, {-1, -2, -5, -6});
  // kernel 3, stride 1, no padding.
  expect_values(max_pool2d(x, {3, 1, 0}), {1, 1, 2, 2}, {10, 11, 14, 15});
  // Channels and batch entries are pooled independently.
  Tensor two = concat({x, mul(x, 10.0f)}, 1);
  expect_values(max_pool2d(two), {1, 2, 2, 2}, {5, 7, 13, 15, 50, 70, 130, 150});
  expect_values(global_avg_pool2d(two), {1, 2}, {7.5f, 75.0f});
  EXPECT_THROW(max_pool2d(x, {2, 2, 2}), ValueError);
  EXPECT_THROW(max_pool2d(Tensor::zeros({4, 4})), ShapeError);
}

// ---- normalization ----

TEST(OpsValues, BatchNormTrainingNormalizesAndUpdatesRunningStats) {
  Generator gen(31);
  const std::int64_t N = 4, C = 3, H = 5, W = 5;
  Tensor x = Tensor::randn({N, C, H, W}, gen);
  float* px = x.data<float>();
  for (std::int64_t i = 0; i < x.numel(); ++i) px[i] = px[i] * 2.0f + static_cast<float>((i / (H * W)) % C) * 3.0f;
  BatchNormState state{Tensor::full({C}, 0.5f), Tensor::full({C}, 2.0f), 0.1f, 1e-5f};
  Tensor y = batch_norm2d(x, Tensor(), Tensor(), state, /*training=*/true);
  ASSERT_EQ(y.shape(), x.shape());
  const std::int64_t count = N * H * W;
  for (std::int64_t c = 0; c < C; ++c) {
    double xs = 0, xss = 0, ys = 0, yss = 0;
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t h = 0; h < H; ++h)
        for (std::int64_t w = 0; w < W; ++w) {
          const double xv = x.at({n, c, h, w}), yv = y.at({n, c, h, w});
          xs += xv, xss += xv * xv, ys += yv, yss += yv * yv;
        }
    const double mean = xs / count, var = xss / count - mean * mean;
    EXPECT_NEAR(ys / count, 0.0, 1e-5) << "channel " << c;
    EXPECT_NEAR(yss / count - (ys / count) * (ys / count), 1.0, 1e-3) << "channel " << c;
    EXPECT_NEAR(state.running_mean.at({c}), 0.9 * 0.5 + 0.1 * mean, 1e-5) << "channel " << c;
    EXPECT_NEAR(state.running_var.at({c}), 0.9 * 2.0 + 0.1 * var * count / (count - 1), 1e-4) << "channel " << c;
  }
}

TEST(OpsValues, BatchNormAffineAndEval) {
  Generator gen(32);
  Tensor x = Tensor::randn({3, 2, 2, 2}, gen);
  Tensor gamma = tensor({2, -1}, {2}), beta = tensor({0.5f, 3}, {2});
  BatchNormState stats;
  Tensor plain = batch_norm2d(x, Tensor(), Tensor(), stats, true);
  Tensor affine = batch_norm2d(x, gamma, beta, stats, true);
  for (std::int64_t i = 0; i < x.numel(); ++i) {
    const std::int64_t c = (i / 4) % 2;
    EXPECT_NEAR(affine.data<float>()[i], gamma.at({c}) * plain.data<float>()[i] + beta.at({c}), 1e-5);
  }
  // Eval: running statistics, not batch statistics.
  BatchNormState running{tensor({0.5f, -1}, {2}), tensor({4, 0.25f}, {2}), 0.1f, 1e-5f};
  Tensor y = batch_norm2d(x, gamma, beta, running, /*training=*/false);
  for (std::int64_t i = 0; i < x.numel(); ++i) {
    const std::int64_t c = (i / 4) % 2;
    const double expected = gamma.at({c}) * (x.data<float>()[i] - running.running_mean.at({c})) /
                                std::sqrt(running.running_var.at({c}) + 1e-5) +
                            beta.at({c});
    EXPECT_NEAR(y.data<float>()[i], expected, 1e-5);
  }
  // Eval does not touch the running statistics.
  EXPECT_EQ(running.running_mean.to_vector<float>(), (std::vector<float>{0.5f, -1}));
  EXPECT_EQ(running.running_var.to_vector<float>(), (std::vector<float>{4, 0.25f}));
  BatchNormState none;
  EXPECT_THROW(batch_norm2d(x, gamma, beta, none, false), ValueError);
  EXPECT_THROW(batch_norm2d(x, Tensor::ones({3}), Tensor(), none, true), ShapeError);
}

TEST(OpsValues, LayerNormRowsHaveZeroMeanUnitVariance) {
  Generator gen(33);
  Tensor x = Tensor::uniform({2, 3, 16}, -5.0f, 7.0f, gen);
  Tensor y = layer_norm(x, Tensor(), Tensor());
  ASSERT_EQ(y.shape(), x.shape());
  const float* py = y.data<float>();
  for (std::int64_t r = 0; r < 6; ++r) {
    double s = 0, ss = 0;
    for (std::int64_t d = 0; d < 16; ++d) s += py[r * 16 + d], ss += py[r * 16 + d] * py[r * 16 + d];
    EXPECT_NEAR(s / 16, 0.0, 1e-5);
    EXPECT_NEAR(ss / 16 - (s / 16) * (s / 16), 1.0, 1e-3);
  }
  Tensor gamma = Tensor::arange(16), beta = Tensor::full({16}, -1.0f);
  Tensor z = layer_norm(x, gamma, beta);
  for (std::int64_t i = 0; i < x.numel(); ++i)
    EXPECT_NEAR(z.data<float>()[i], static_cast<float>(i % 16) * py[i] - 1.0f, 1e-4);
  // Known row: [1, 2, 3] -> mean 2, var 2/3.
  const float s = 1.0f / std::sqrt(2.0f / 3.0f + 1e-5f);
  expect_values(layer_norm(tensor({1, 2, 3}, {1, 3}), Tensor(), Tensor()), {1, 3}, {-s, 0, s});
  EXPECT_THROW(layer_norm(x, Tensor::ones({3}), Tensor()), ShapeError);
}

// ---- embedding, dropout ----

TEST(OpsValues, EmbeddingGathersRows) {
  Tensor w = Tensor::arange(12).view({4, 3});
  Tensor idx = Tensor::from_vector(std::vector<std::int32_t>{3, 0, 3, 1}, {2, 2});
  expect_values(embedding(w, idx), {2, 2, 3}, {9, 10, 11, 0, 1, 2, 9, 10, 11, 3, 4, 5});
  EXPECT_THROW(embedding(w, Tensor::from_vector(std::vector<std::int32_t>{4}, {1})), ValueError);
  EXPECT_THROW(embedding(w, Tensor::from_vector(std::vector<std::int32_t>{-1}, {1})), ValueError);
  EXPECT_THROW(embedding(w, Tensor::zeros({2})), DTypeError);
}

TEST(OpsValues, DropoutEvalIsIdentity) {
  Generator gen(41);
  Tensor x = Tensor::uniform({100}, -1.0f, 1.0f, gen);
  const GeneratorState before = gen.state();
  EXPECT_EQ(dropout(x, 0.5f, false, gen).to_vector<float>(), x.to_vector<float>());
  EXPECT_EQ(dropout(x, 0.0f, true, gen).to_vector<float>(), x.to_vector<float>());
  EXPECT_EQ(gen.state(), before);  // no random numbers drawn
}

TEST(OpsValues, DropoutTrainingZeroFractionAndScale) {
  Generator gen(42);
  constexpr std::int64_t n = 100000;
  constexpr float p = 0.3f;
  Tensor x = Tensor::uniform({n}, 0.5f, 1.5f, gen);
  Tensor y = dropout(x, p, true, gen);
  std::int64_t zeros = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const float yi = y.data<float>()[i], xi = x.data<float>()[i];
    if (yi == 0.0f) {
      ++zeros;
    } else {
      ASSERT_NEAR(yi, xi / (1.0f - p), 1e-6f * xi);
    }
  }
  const double frac = static_cast<double>(zeros) / n;
  EXPECT_NEAR(frac, p, 5.0 * std::sqrt(p * (1.0 - p) / n));
  // Two calls draw different masks.
  EXPECT_NE(dropout(x, p, true, gen).to_vector<float>(), y.to_vector<float>());
  EXPECT_THROW(dropout(x, 1.0f, true, gen), ValueError);
  EXPECT_THROW(dropout(x, -0.1f, true, gen), ValueError);
}

// ---- attention ----

TEST(OpsValues, CausalMaskValues) {
  Tensor s = Tensor::arange(6).view({2, 3});  // Tq = 2, Tk = 3: row i sees keys j <= i + 1
  Tensor m = causal_mask(s);
  EXPECT_EQ(m.at({0, 0}), 0.0f);
  EXPECT_EQ(m.at({0, 1}), 1.0f);
  EXPECT_TRUE(std::isinf(m.at({0, 2})) && m.at({0, 2}) < 0);
  EXPECT_EQ(m.at({1, 2}), 5.0f);
  Tensor sq = causal_mask(Tensor::zeros({3, 3}));
  for (std::int64_t i = 0; i < 3; ++i)
    for (std::int64_t j = 0; j < 3; ++j) EXPECT_EQ(std::isinf(sq.at({i, j})), j > i) << i << "," << j;
  EXPECT_THROW(causal_mask(Tensor::zeros({3, 2})), ShapeError);
}

TEST(OpsValues, AttentionMatchesDefinition) {
  Generator gen(50);
  Tensor q = Tensor::uniform({1, 1, 2, 3}, -1.0f, 1.0f, gen);
  Tensor k = Tensor::uniform({1, 1, 4, 3}, -1.0f, 1.0f, gen);
  Tensor v = Tensor::uniform({1, 1, 4, 3}, -1.0f, 1.0f, gen);
  Tensor out = scaled_dot_product_attention(q, k, v);
  for (std::int64_t i = 0; i < 2; ++i) {
    std::vector<double> w(4);
    double total = 0.0;
    for (std::int64_t j = 0; j < 4; ++j) {
      double dot = 0.0;
      for (std::int64_t d = 0; d < 3; ++d) dot += static_cast<double>(q.at({0, 0, i, d})) * k.at({0, 0, j, d});
      w[j] = std::exp(dot / std::sqrt(3.0));
      total += w[j];
    }
    for (std::int64_t d = 0; d < 3; ++d) {
      double expected = 0.0;
      for (std::int64_t j = 0; j < 4; ++j) expected += w[j] / total * v.at({0, 0, j, d});
      EXPECT_NEAR(out.at({0, 0, i, d}), expected, 1e-5);
    }
  }
  // v must have k's shape.
  EXPECT_THROW(scaled_dot_product_attention(q, k, Tensor::zeros({1, 1, 4, 2})), ShapeError);
  EXPECT_THROW(scaled_dot_product_attention(q, Tensor::zeros({1, 1, 4, 2}), Tensor::zeros({1, 1, 4, 2})), ShapeError);
}

TEST(OpsValues, CausalAttentionIgnoresFutureKeysAndValues) {
  Generator gen(51);
  const std::int64_t B = 2, H = 2, T = 5, D = 4, changed = 3;
  Tensor q = Tensor::uniform({B, H, T, D}, -1.0f, 1.0f, gen);
  Tensor k = Tensor::uniform({B, H, T, D}, -1.0f, 1.0f, gen);
  Tensor v = Tensor::uniform({B, H, T, D}, -1.0f, 1.0f, gen);
  // k2, v2: position `changed` replaced by very different values.
  Tensor k2 = k.clone(), v2 = v.clone();
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t h = 0; h < H; ++h)
      for (std::int64_t d = 0; d < D; ++d) {
        const std::int64_t off = ((b * H + h) * T + changed) * D + d;
        k2.data<float>()[off] += 3.0f;
        v2.data<float>()[off] -= 5.0f;
      }
  for (bool causal : {true, false}) {
    Tensor out = scaled_dot_product_attention(q, k, v, causal);
    Tensor out2 = scaled_dot_product_attention(q, k2, v2, causal);
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t h = 0; h < H; ++h)
        for (std::int64_t i = 0; i < T; ++i) {
          double diff = 0.0;
          for (std::int64_t d = 0; d < D; ++d)
            diff = std::max(diff, static_cast<double>(std::abs(out.at({b, h, i, d}) - out2.at({b, h, i, d}))));
          if (causal && i < changed)
            EXPECT_LE(diff, 1e-6) << "causal output at " << i << " saw future position " << changed;
          else
            EXPECT_GT(diff, 1e-3) << (causal ? "causal" : "full") << " output at " << i << " ignored position " << changed;
        }
  }
}

}  // namespace
}  // namespace shiftq
