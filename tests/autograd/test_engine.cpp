// The backward engine: seeds, accumulation, shared inputs, gradient aliasing, graph freeing,
// grad mode, leaves and deep graphs.
#include <gtest/gtest.h>

#include <pthread.h>

#include <functional>
#include <vector>

#include "testing/gradcheck.hpp"

namespace shiftq {
namespace {

Tensor leaf(const std::vector<float>& values, const Shape& shape) {
  return Tensor::from_vector(values, shape).set_requires_grad(true);
}

std::vector<float> grad_of(const Tensor& t) {
  const Tensor g = t.grad();
  if (!g.defined()) {
    ADD_FAILURE() << "no gradient on " << t.str();
    return {};
  }
  return g.to_vector<float>();
}

TEST(Backward, ScalarOutputNeedsNoGradient) {
  Tensor x = leaf({1, 2, 3}, {3});
  Tensor loss = sum(mul(x, 3.0f));
  loss.backward();
  EXPECT_EQ(grad_of(x), (std::vector<float>{3, 3, 3}));
}

TEST(Backward, OneElementNonScalarShapeIsAccepted) {
  Tensor x = leaf({2}, {1, 1});
  Tensor y = mul(x, x);  // [1, 1]
  y.backward();
  EXPECT_EQ(grad_of(x), (std::vector<float>{4}));
}

TEST(Backward, NonScalarWithoutGradientThrows) {
  Tensor x = leaf({1, 2}, {2});
  Tensor y = mul(x, 2.0f);
  EXPECT_THROW(y.backward(), AutogradError);
  EXPECT_FALSE(x.grad().defined());
}

TEST(Backward, ExplicitGradient) {
  Tensor x = leaf({1, 2, 3}, {3});
  Tensor y = mul(x, x);
  Tensor g = Tensor::from_vector(std::vector<float>{1, 10, 100}, {3});
  y.backward(g);
  EXPECT_EQ(grad_of(x), (std::vector<float>{2, 40, 600}));
  EXPECT_EQ(g.to_vector<float>(), (std::vector<float>{1, 10, 100}));  // the seed is not modified
}

// Adding a second gradient into a first one writes that tensor in place: its storage version moves,
// so what a cache noted about the first gradient (e.g. its ranges, for a quantized consumer) is
// seen as stale.
TEST(Backward, AccumulatingIntoAGradientBumpsItsVersion) {
  Tensor x = leaf({1, 2, 3}, {3});
  sum(mul(x, 2.0f)).backward();
  const std::uint64_t first = x.grad().version();
  sum(mul(x, 3.0f)).backward();  // accumulates into x's gradient
  EXPECT_GT(x.grad().version(), first);
  EXPECT_EQ(grad_of(x), (std::vector<float>{5, 5, 5}));
}

TEST(Backward, ExplicitGradientOfWrongShapeThrows) {
  Tensor x = leaf({1, 2, 3}, {3});
  Tensor y = mul(x, 2.0f);
  EXPECT_THROW(y.backward(Tensor::ones({4})), ShapeError);
}

TEST(Backward, TensorWithoutGradThrows) {
  Tensor x = Tensor::from_vector(std::vector<float>{1, 2}, {2});
  Tensor y = sum(x);
  EXPECT_FALSE(y.requires_grad());
  EXPECT_THROW(y.backward(), AutogradError);
}

TEST(Backward, LeafGradientDoesNotAliasTheSeed) {
  // add(x, scalar) hands the incoming gradient straight through: the leaf must still own a copy.
  Tensor x = leaf({1, 2}, {2});
  Tensor y = add(x, 1.0f);
  Tensor g = Tensor::from_vector(std::vector<float>{5, 6}, {2});
  y.backward(g);
  ASSERT_TRUE(x.grad().defined());
  EXPECT_FALSE(x.grad().shares_storage(g));
  x.grad().data<float>()[0] = -1.0f;
  EXPECT_EQ(g.data<float>()[0], 5.0f);
}

TEST(Backward, GradientsAccumulateAcrossCalls) {
  Tensor x = leaf({1, -2}, {2});
  sum(mul(x, 3.0f)).backward();
  EXPECT_EQ(grad_of(x), (std::vector<float>{3, 3}));
  sum(mul(x, 3.0f)).backward();
  EXPECT_EQ(grad_of(x), (std::vector<float>{6, 6}));
  sum(mul(x, x)).backward();  // + 2x
  EXPECT_EQ(grad_of(x), (std::vector<float>{8, 2}));
  x.zero_grad();
  EXPECT_FALSE(x.grad().defined());
  sum(x).backward();
  EXPECT_EQ(grad_of(x), (std::vector<float>{1, 1}));
}

TEST(Backward, TensorUsedTwiceGetsBothContributions) {
  Tensor x = leaf({1, 2, -3}, {3});
  sum(mul(x, x)).backward();
  EXPECT_EQ(grad_of(x), (std::vector<float>{2, 4, -6}));

  Tensor y = leaf({1, 2}, {2});
  sum(add(y, y)).backward();
  EXPECT_EQ(grad_of(y), (std::vector<float>{2, 2}));

  // Diamond: z = a*2 used by two branches that meet again.
  Tensor a = leaf({1, 2}, {2});
  Tensor z = mul(a, 2.0f);
  sum(add(mul(z, 3.0f), square(z))).backward();  // d/da = 2*(3 + 2z) = 6 + 8a
  EXPECT_EQ(grad_of(a), (std::vector<float>{14, 22}));
}

TEST(Backward, LeafGradientsDoNotAlias) {
  // add() returns the same gradient tensor for both of its inputs.
  Tensor x = leaf({1, 2, 3}, {3});
  Tensor y = leaf({4, 5, 6}, {3});
  sum(add(x, y)).backward();
  ASSERT_TRUE(x.grad().defined() && y.grad().defined());
  EXPECT_FALSE(x.grad().shares_storage(y.grad()));
  EXPECT_EQ(grad_of(x), (std::vector<float>{1, 1, 1}));
  EXPECT_EQ(grad_of(y), (std::vector<float>{1, 1, 1}));
  x.grad().data<float>()[1] = 10.0f;
  EXPECT_EQ(grad_of(y), (std::vector<float>{1, 1, 1}));
  sum(add(x, y)).backward();
  EXPECT_EQ(grad_of(x), (std::vector<float>{2, 11, 2}));
  EXPECT_EQ(grad_of(y), (std::vector<float>{2, 2, 2}));
}

TEST(Backward, SharedInputAndSeparateLeafDoNotAlias) {
  // x reaches the loss through add(x, x); y through the outer add: L = sum((x + x) + y).
  Tensor x = leaf({1, 2}, {2});
  Tensor y = leaf({3, 4}, {2});
  sum(add(add(x, x), y)).backward();
  EXPECT_EQ(grad_of(x), (std::vector<float>{2, 2}));
  EXPECT_EQ(grad_of(y), (std::vector<float>{1, 1}));
  EXPECT_FALSE(x.grad().shares_storage(y.grad()));
  y.grad().data<float>()[0] = 100.0f;
  EXPECT_EQ(grad_of(x), (std::vector<float>{2, 2}));
  x.grad().data<float>()[1] = -7.0f;
  EXPECT_EQ(grad_of(y), (std::vector<float>{100, 1}));
  sum(add(add(x, x), y)).backward();
  EXPECT_EQ(grad_of(x), (std::vector<float>{4, -5}));
  EXPECT_EQ(grad_of(y), (std::vector<float>{101, 2}));
}

TEST(Backward, BroadcastInputsGetReducedGradients) {
  Tensor a = leaf({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor b = leaf({10, 20, 30}, {3});
  sum(mul(a, b)).backward();
  EXPECT_EQ(grad_of(a), (std::vector<float>{10, 20, 30, 10, 20, 30}));
  EXPECT_EQ(grad_of(b), (std::vector<float>{5, 7, 9}));
}

TEST(Backward, InputsNotRequiringGradGetNone) {
  Tensor x = leaf({1, 2}, {2});
  Tensor c = Tensor::from_vector(std::vector<float>{3, 4}, {2});
  sum(mul(x, c)).backward();
  EXPECT_EQ(grad_of(x), (std::vector<float>{3, 4}));
  EXPECT_FALSE(c.grad().defined());
}

TEST(Backward, SecondBackwardWithoutRetainGraphThrows) {
  Tensor x = leaf({1, 2}, {2});
  Tensor loss = sum(mul(x, x));
  loss.backward();
  EXPECT_THROW(loss.backward(), AutogradError);
  EXPECT_EQ(grad_of(x), (std::vector<float>{2, 4}));  // unchanged by the failed call
}

TEST(Backward, RetainGraphAllowsASecondBackward) {
  Tensor x = leaf({1, 2}, {2});
  Tensor loss = sum(mul(x, x));
  backward(loss, Tensor(), /*retain_graph=*/true);
  EXPECT_EQ(grad_of(x), (std::vector<float>{2, 4}));
  loss.backward();
  EXPECT_EQ(grad_of(x), (std::vector<float>{4, 8}));
  EXPECT_THROW(loss.backward(), AutogradError);  // the second call did not retain it

  Tensor y = mul(x, 3.0f);
  y.backward(Tensor::ones({2}), true);
  y.backward(Tensor::ones({2}), true);
  EXPECT_EQ(grad_of(x), (std::vector<float>{10, 14}));
}

TEST(GradMode, NoGradGuardStopsRecordingAndRestores) {
  Tensor x = leaf({1, 2}, {2});
  EXPECT_TRUE(grad_mode_enabled());
  {
    NoGradGuard no_grad;
    EXPECT_FALSE(grad_mode_enabled());
    Tensor y = mul(x, 2.0f);
    EXPECT_FALSE(y.requires_grad());
    EXPECT_TRUE(y.is_leaf());
    EXPECT_EQ(y.grad_fn(), nullptr);
    EXPECT_EQ(y.to_vector<float>(), (std::vector<float>{2, 4}));  // still computed
    EXPECT_FALSE(any_requires_grad({&x}));
    {
      NoGradGuard nested;
      EXPECT_FALSE(grad_mode_enabled());
    }
    EXPECT_FALSE(grad_mode_enabled());  // the nested guard restores "off", not "on"
  }
  EXPECT_TRUE(grad_mode_enabled());
  EXPECT_TRUE(any_requires_grad({&x}));
  Tensor z = mul(x, 2.0f);
  EXPECT_TRUE(z.requires_grad());
  EXPECT_NE(z.grad_fn(), nullptr);
}

TEST(Leaves, LeafAndNonLeafState) {
  Tensor x = leaf({1, 2}, {2});
  EXPECT_TRUE(x.is_leaf());
  EXPECT_EQ(x.grad_fn(), nullptr);
  Tensor y = mul(x, 2.0f);
  EXPECT_FALSE(y.is_leaf());
  ASSERT_NE(y.grad_fn(), nullptr);
  EXPECT_STREQ(y.grad_fn()->op_name, "mul_scalar");
  ASSERT_EQ(y.grad_fn()->inputs.size(), 1u);
  EXPECT_EQ(y.grad_fn()->inputs[0], x.meta());
  Tensor z = add(y, Tensor::ones({2}));
  ASSERT_NE(z.grad_fn(), nullptr);
  EXPECT_STREQ(z.grad_fn()->op_name, "add");
  ASSERT_EQ(z.grad_fn()->inputs.size(), 2u);
  EXPECT_EQ(z.grad_fn()->inputs[1], nullptr);  // the constant needs no gradient

  // Only leaves accumulate .grad.
  sum(z).backward();
  EXPECT_TRUE(x.grad().defined());
  EXPECT_FALSE(y.grad().defined());
  // A tensor computed from inputs without grad is a leaf without history.
  Tensor c = mul(Tensor::ones({2}), 2.0f);
  EXPECT_TRUE(c.is_leaf());
  EXPECT_FALSE(c.requires_grad());
}

TEST(Leaves, SetRequiresGradOnNonLeafThrows) {
  Tensor x = leaf({1, 2}, {2});
  Tensor y = mul(x, 2.0f);
  EXPECT_THROW(y.set_requires_grad(false), AutogradError);
  EXPECT_THROW(y.set_requires_grad(true), AutogradError);
  EXPECT_NO_THROW(y.detach().set_requires_grad(true));
}

TEST(Record, CustomOpGradientsFlowThroughRecord) {
  Tensor x = leaf({1, 2}, {2});
  Tensor out = record("times_five", x.detach().clone(), {&x},
                      [](const Tensor& g) { return std::vector<Tensor>{mul(g, 5.0f)}; });
  ASSERT_NE(out.grad_fn(), nullptr);
  EXPECT_STREQ(out.grad_fn()->op_name, "times_five");
  sum(out).backward();
  EXPECT_EQ(grad_of(x), (std::vector<float>{5, 5}));
}

TEST(Record, WrongGradientShapeFromABackwardFunctionThrows) {
  Tensor x = leaf({1, 2}, {2});
  Tensor out = record("broken", x.detach().clone(), {&x},
                      [](const Tensor&) { return std::vector<Tensor>{Tensor::ones({3})}; });
  EXPECT_THROW(sum(out).backward(), AutogradError);
}

TEST(GradcheckHarness, UnusedInputPassesButADisconnectedOneFails) {
  Generator gen(7);
  const std::vector<Tensor> in{testing::make_input({3}, gen), testing::make_input({3}, gen)};
  // x[1] is unused: no gradient reaches it and its finite differences are zero.
  EXPECT_TRUE(testing::gradcheck([](const std::vector<Tensor>& x) { return mul(x[0], 2.0f); }, in).ok);
  // x[1] is used, but through detach(): autograd gives no gradient while the output depends on it.
  EXPECT_FALSE(testing::gradcheck(
      [](const std::vector<Tensor>& x) { return add(mul(x[0], 2.0f), x[1].detach()); }, in).ok);
}

// Runs fn on a thread with a small stack, so that recursion proportional to the graph depth fails
// in any build type (not only where frames are large, as in debug or sanitizer builds).
void run_with_stack(std::size_t stack_bytes, const std::function<void()>& fn) {
  pthread_attr_t attr;
  ASSERT_EQ(pthread_attr_init(&attr), 0);
  ASSERT_EQ(pthread_attr_setstacksize(&attr, stack_bytes), 0);
  pthread_t thread;
  auto body = [](void* arg) -> void* {
    (*static_cast<const std::function<void()>*>(arg))();
    return nullptr;
  };
  ASSERT_EQ(pthread_create(&thread, &attr, body, const_cast<std::function<void()>*>(&fn)), 0);
  pthread_join(thread, nullptr);
  pthread_attr_destroy(&attr);
}

void deep_chain_backward_and_teardown() {
  constexpr int kDepth = 20000;
  Tensor x = leaf({0.5f, -1.0f}, {2});
  {
    Tensor y = x;
    for (int i = 0; i < kDepth; ++i) y = (i % 2 == 0) ? add(y, 1.0f) : mul(y, 1.0f);
    EXPECT_FLOAT_EQ(y.to_vector<float>()[0], 0.5f + kDepth / 2);
    sum(y).backward();
    EXPECT_EQ(grad_of(x), (std::vector<float>{1, 1}));
  }  // the whole chain is destroyed here
  // A deep chain that is never differentiated is destroyed as well.
  {
    Tensor y = x;
    for (int i = 0; i < kDepth; ++i) y = add(y, 0.0f);
  }
}

TEST(DeepGraph, LongChainDoesNotOverflowTheStack) { deep_chain_backward_and_teardown(); }

TEST(DeepGraph, LongChainOnASmallStack) {
  // 20000 levels in 256 KiB: about 13 bytes of stack per level allowed.
  run_with_stack(256 * 1024, deep_chain_backward_and_teardown);
}

}  // namespace
}  // namespace shiftq

namespace shiftq {
namespace {
TEST(EngineSeed, ExplicitGradientIsNeverAliasedByALeafGradient) {
  // backward(gradient) uses the caller's tensor without copying it; a leaf must still get its own
  // buffer, or later in-place accumulation would write into the caller's tensor.
  Tensor x = Tensor::from_vector(std::vector<float>{1.0f, 2.0f}, {2}).set_requires_grad(true);
  Tensor g = Tensor::from_vector(std::vector<float>{0.5f, -1.0f}, {2});
  reshape(x, {2, 1}).backward(g.view({2, 1}));
  EXPECT_FALSE(x.grad().shares_storage(g));
  reshape(x, {2, 1}).backward(g.view({2, 1}));  // accumulates into x.grad in place
  EXPECT_EQ(g.to_vector<float>(), (std::vector<float>{0.5f, -1.0f}));
  EXPECT_EQ(x.grad().to_vector<float>(), (std::vector<float>{1.0f, -2.0f}));
  x.backward(g);  // the leaf itself as the output
  EXPECT_EQ(g.to_vector<float>(), (std::vector<float>{0.5f, -1.0f}));
  EXPECT_EQ(x.grad().to_vector<float>(), (std::vector<float>{1.5f, -3.0f}));
}

// An operand whose partner needs no gradient is not kept for backward: with a constant factor or
// divisor, mul and div keep only the constant, so the other input is freed once its last user drops it.
TEST(SavedTensors, MulAndDivKeepOnlyWhatTheOtherGradientNeeds) {
  const Tensor x = Tensor::full({1 << 18}, 2.0f).set_requires_grad(true);  // 1 MiB
  const Tensor c = Tensor::full({1 << 18}, 4.0f);                           // a constant
  for (int op = 0; op < 2; ++op) {
    Tensor y;
    std::size_t with_h = 0;
    {
      const Tensor h = add(x, 1.0f);  // an intermediate of 1 MiB that only mul/div reads
      y = op == 0 ? mul(h, c) : div(h, c);
      with_h = allocated_memory_bytes();
    }
    EXPECT_EQ(allocated_memory_bytes(), with_h - (std::size_t{1} << 20)) << (op == 0 ? "mul" : "div") << " kept h";
    Tensor(x).zero_grad();
    sum(y).backward();
    EXPECT_FLOAT_EQ(x.grad().to_vector<float>()[0], op == 0 ? 4.0f : 0.25f);
  }
  // A gradient for both operands keeps both: h is held until backward.
  const Tensor w = Tensor::full({1 << 18}, 3.0f).set_requires_grad(true);
  Tensor y;
  std::size_t with_h = 0;
  {
    const Tensor h = add(x, 1.0f);
    y = mul(h, w);
    with_h = allocated_memory_bytes();
  }
  EXPECT_EQ(allocated_memory_bytes(), with_h);
}
}  // namespace
}  // namespace shiftq
