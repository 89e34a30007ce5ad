// Tensor factories, properties, typed access, copies/views, dtype conversion and the shape helpers.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "testing/gradcheck.hpp"

namespace shiftq {
namespace {

// Runs fn and expects it to throw E; returns the exception's message (empty on failure).
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

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

TEST(TensorFactories, ZerosHasShapeNumelStridesAndZeroValues) {
  Tensor t = Tensor::zeros({2, 3, 4});
  EXPECT_TRUE(t.defined());
  EXPECT_EQ(t.dtype(), DType::f32);
  EXPECT_EQ(t.shape(), (Shape{2, 3, 4}));
  EXPECT_EQ(t.dim(), 3);
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t.nbytes(), 24u * 4u);
  EXPECT_EQ(t.strides(), (Shape{12, 4, 1}));
  for (float v : t.to_vector<float>()) EXPECT_EQ(v, 0.0f);
  EXPECT_EQ(t.str(), "Tensor[f32, [2, 3, 4]]");
}

TEST(TensorFactories, ZerosOfIntegerTypes) {
  Tensor s32 = Tensor::zeros({5}, DType::s32);
  EXPECT_EQ(s32.dtype(), DType::s32);
  EXPECT_EQ(s32.nbytes(), 20u);
  for (std::int32_t v : s32.to_vector<std::int32_t>()) EXPECT_EQ(v, 0);
  Tensor s8 = Tensor::zeros({3, 3}, DType::s8);
  EXPECT_EQ(s8.nbytes(), 9u);
  for (std::int8_t v : s8.to_vector<std::int8_t>()) EXPECT_EQ(v, 0);
}

TEST(TensorFactories, OnesFullScalar) {
  for (float v : Tensor::ones({2, 2}).to_vector<float>()) EXPECT_EQ(v, 1.0f);
  Tensor f = Tensor::full({3, 1}, -2.5f);
  EXPECT_EQ(f.shape(), (Shape{3, 1}));
  for (float v : f.to_vector<float>()) EXPECT_EQ(v, -2.5f);
  Tensor s = Tensor::scalar(7.0f);
  EXPECT_EQ(s.dim(), 0);
  EXPECT_EQ(s.numel(), 1);
  EXPECT_TRUE(s.strides().empty());
  EXPECT_EQ(s.item(), 7.0f);
}

TEST(TensorFactories, FromVectorKeepsRowMajorOrder) {
  Tensor t = Tensor::from_vector(std::vector<float>{1, 2, 3, 4, 5, 6}, {2, 3});
  EXPECT_EQ(t.at({0, 0}), 1.0f);
  EXPECT_EQ(t.at({0, 2}), 3.0f);
  EXPECT_EQ(t.at({1, 0}), 4.0f);
  EXPECT_EQ(t.at({1, 2}), 6.0f);
  EXPECT_THROW(t.at({2, 0}), ShapeError);
  EXPECT_THROW(t.at({0}), ShapeError);

  Tensor i = Tensor::from_vector(std::vector<std::int32_t>{-1, 7, 42}, {3});
  EXPECT_EQ(i.dtype(), DType::s32);
  EXPECT_EQ(i.to_vector<std::int32_t>(), (std::vector<std::int32_t>{-1, 7, 42}));
}

TEST(TensorFactories, FromVectorWithWrongCountThrowsShapeError) {
  EXPECT_THROW(Tensor::from_vector(std::vector<float>{1, 2, 3}, {2, 2}), ShapeError);
  EXPECT_THROW(Tensor::from_vector(std::vector<std::int32_t>{1, 2, 3, 4, 5}, {2, 2}), ShapeError);
}

TEST(TensorFactories, Arange) {
  Tensor t = Tensor::arange(5);
  EXPECT_EQ(t.shape(), (Shape{5}));
  EXPECT_EQ(t.to_vector<float>(), (std::vector<float>{0, 1, 2, 3, 4}));
  EXPECT_EQ(Tensor::arange(0).numel(), 0);
}

TEST(TensorFactories, UniformRangeAndInvalidBounds) {
  Generator gen(3);
  Tensor t = Tensor::uniform({1000}, -2.0f, 3.0f, gen);
  for (float v : t.to_vector<float>()) {
    EXPECT_GE(v, -2.0f);
    EXPECT_LT(v, 3.0f);
  }
  EXPECT_THROW(Tensor::uniform({2}, 1.0f, 0.0f, gen), ValueError);
}

TEST(TensorFactories, StorageIsAligned) {
  for (std::int64_t n : {1, 3, 17, 1000}) {
    Tensor t = Tensor::zeros({n});
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(t.data<float>()) % 64, 0u) << n;
  }
}

TEST(TensorProperties, SizeWithNegativeDims) {
  Tensor t = Tensor::zeros({2, 3, 5});
  EXPECT_EQ(t.size(0), 2);
  EXPECT_EQ(t.size(2), 5);
  EXPECT_EQ(t.size(-1), 5);
  EXPECT_EQ(t.size(-3), 2);
  EXPECT_THROW(t.size(3), ShapeError);
  EXPECT_THROW(t.size(-4), ShapeError);
}

TEST(TensorProperties, UndefinedTensor) {
  Tensor t;
  EXPECT_FALSE(t.defined());
  EXPECT_EQ(t.str(), "Tensor[undefined]");
  EXPECT_THROW(t.data<float>(), Error);
  EXPECT_THROW(t.clone(), ValueError);
}

TEST(TensorAccess, WrongDTypeThrowsDTypeError) {
  Tensor f = Tensor::zeros({2});
  EXPECT_THROW(f.data<std::int32_t>(), DTypeError);
  EXPECT_THROW(f.data<std::int8_t>(), DTypeError);
  const Tensor& cf = f;
  EXPECT_THROW(cf.data<std::uint8_t>(), DTypeError);
  EXPECT_THROW(f.to_vector<std::int32_t>(), DTypeError);
  Tensor i = Tensor::zeros({2}, DType::s32);
  EXPECT_THROW(i.data<float>(), DTypeError);
  EXPECT_NO_THROW(i.data<std::int32_t>());
  // The message names the tensor when it has a name.
  i.set_name("labels");
  const std::string msg = thrown_message<DTypeError>([&] { i.data<float>(); });
  EXPECT_TRUE(contains(msg, "labels")) << msg;
}

TEST(TensorAccess, ItemNeedsOneElement) {
  EXPECT_EQ(Tensor::full({1, 1}, 3.0f).item(), 3.0f);
  EXPECT_THROW(Tensor::zeros({2}).item(), ShapeError);
  EXPECT_THROW(Tensor::zeros({0}).item(), ShapeError);
  EXPECT_THROW(Tensor::zeros({1}, DType::s32).item(), DTypeError);
}

TEST(TensorCopies, CloneIsDeep) {
  Tensor a = Tensor::from_vector(std::vector<float>{1, 2, 3}, {3});
  Tensor b = a.clone();
  EXPECT_FALSE(b.shares_storage(a));
  EXPECT_EQ(b.to_vector<float>(), a.to_vector<float>());
  b.data<float>()[0] = 100.0f;
  EXPECT_EQ(a.data<float>()[0], 1.0f);
}

TEST(TensorCopies, DetachSharesStorageWithoutHistory) {
  Tensor x = Tensor::from_vector(std::vector<float>{1, 2, 3}, {3}).set_requires_grad(true);
  Tensor y = mul(x, 2.0f);
  ASSERT_TRUE(y.requires_grad());
  Tensor d = y.detach();
  EXPECT_TRUE(d.shares_storage(y));
  EXPECT_FALSE(d.requires_grad());
  EXPECT_TRUE(d.is_leaf());
  EXPECT_EQ(d.grad_fn(), nullptr);
  d.data<float>()[1] = -5.0f;
  EXPECT_EQ(y.data<float>()[1], -5.0f);
  // Copying the handle shares storage as well.
  Tensor handle = x;
  EXPECT_TRUE(handle.shares_storage(x));
}

TEST(TensorCopies, ViewSharesStorageWithNewShape) {
  Tensor a = Tensor::arange(6);
  Tensor v = a.view({2, 3});
  EXPECT_TRUE(v.shares_storage(a));
  EXPECT_EQ(v.shape(), (Shape{2, 3}));
  EXPECT_EQ(v.at({1, 0}), 3.0f);
  v.data<float>()[4] = 40.0f;
  EXPECT_EQ(a.data<float>()[4], 40.0f);
  EXPECT_THROW(a.view({4, 2}), ShapeError);
  EXPECT_THROW(a.view({7}), ShapeError);
}

// The storage token names the storage without keeping it alive: views share it, a copy does not,
// holding it does not make a handle look shared, and it expires with the last handle.
TEST(TensorCopies, StorageTokenExpiresWithTheStorage) {
  Tensor a = Tensor::arange(6);
  const std::weak_ptr<const void> token = a.storage_token();
  EXPECT_EQ(token.lock().get(), a.storage_id());
  EXPECT_EQ(a.view({2, 3}).storage_token().lock().get(), a.storage_id());
  EXPECT_NE(a.clone().storage_token().lock().get(), a.storage_id());
  EXPECT_TRUE(a.storage_is_unique());
  EXPECT_FALSE(token.expired());
  a = Tensor();
  EXPECT_TRUE(token.expired());
  EXPECT_TRUE(Tensor().storage_token().expired());
}

TEST(TensorCopies, FillAndCopy) {
  Tensor a = Tensor::zeros({2, 2});
  a.fill_(4.0f);
  for (float v : a.to_vector<float>()) EXPECT_EQ(v, 4.0f);
  Tensor b = Tensor::from_vector(std::vector<float>{1, 2, 3, 4}, {2, 2});
  a.copy_(b);
  EXPECT_EQ(a.to_vector<float>(), b.to_vector<float>());
  EXPECT_FALSE(a.shares_storage(b));
  EXPECT_THROW(a.copy_(Tensor::zeros({4})), ShapeError);
  EXPECT_THROW(a.copy_(Tensor::zeros({2, 2}, DType::s32)), ShapeError);
  Tensor i = Tensor::zeros({2}, DType::s32);
  EXPECT_THROW(i.fill_(1.0f), DTypeError);
}

TEST(TensorConvert, FloatToS8RoundsHalfToEvenAndSaturates) {
  Tensor f = Tensor::from_vector(
      std::vector<float>{2.5f, 3.5f, 300.0f, -300.0f, -2.5f, 0.49f, -0.5f, 1.5f, -127.6f, 126.5f,
                         INFINITY, -INFINITY},
      {12});
  Tensor q = f.to(DType::s8);
  EXPECT_EQ(q.dtype(), DType::s8);
  EXPECT_EQ(q.shape(), f.shape());
  EXPECT_EQ(q.to_vector<std::int8_t>(),
            (std::vector<std::int8_t>{2, 4, 127, -128, -2, 0, 0, 2, -128, 126, 127, -128}));
}

TEST(TensorConvert, FloatToU8AndS32) {
  Tensor f = Tensor::from_vector(std::vector<float>{-5.0f, 0.5f, 254.5f, 255.5f, 1000.0f}, {5});
  EXPECT_EQ(f.to(DType::u8).to_vector<std::uint8_t>(), (std::vector<std::uint8_t>{0, 0, 254, 255, 255}));
  Tensor big = Tensor::from_vector(std::vector<float>{3e9f, -3e9f, 6.5f, -7.5f}, {4});
  EXPECT_EQ(big.to(DType::s32).to_vector<std::int32_t>(),
            (std::vector<std::int32_t>{std::numeric_limits<std::int32_t>::max(),
                                       std::numeric_limits<std::int32_t>::min(), 6, -8}));
}

TEST(TensorConvert, NaNToIntegerThrowsNumericError) {
  Tensor f = Tensor::from_vector(std::vector<float>{1.0f, NAN}, {2});
  EXPECT_THROW(f.to(DType::s8), NumericError);
  EXPECT_THROW(f.to(DType::s32), NumericError);
  EXPECT_THROW(f.to(DType::u8), NumericError);
}

TEST(TensorConvert, IntegerToFloatAndWidening) {
  Tensor q = Tensor::from_vector(std::vector<float>{-128, -1, 0, 5, 127}, {5}).to(DType::s8);
  EXPECT_EQ(q.to(DType::f32).to_vector<float>(), (std::vector<float>{-128, -1, 0, 5, 127}));
  EXPECT_EQ(q.to(DType::s32).to_vector<std::int32_t>(), (std::vector<std::int32_t>{-128, -1, 0, 5, 127}));
  // Narrowing between integer types is refused.
  EXPECT_THROW(Tensor::zeros({2}, DType::s32).to(DType::s8), DTypeError);
}

TEST(TensorConvert, SameDTypeIsACopy) {
  Tensor a = Tensor::arange(3);
  Tensor b = a.to(DType::f32);
  EXPECT_FALSE(b.shares_storage(a));
  EXPECT_EQ(b.to_vector<float>(), a.to_vector<float>());
}

TEST(TensorChecks, CheckFiniteNamesTheTensor) {
  Tensor ok = Tensor::from_vector(std::vector<float>{1, -2, 3}, {3});
  EXPECT_NO_THROW(ok.check_finite("weights"));
  EXPECT_TRUE(ok.all_finite());
  Tensor bad = Tensor::from_vector(std::vector<float>{1, 2, NAN, 4}, {4});
  EXPECT_FALSE(bad.all_finite());
  const std::string msg = thrown_message<NumericError>([&] { bad.check_finite("fc1.weight"); });
  EXPECT_TRUE(contains(msg, "fc1.weight")) << msg;
  EXPECT_TRUE(contains(msg, "index 2")) << msg;
  Tensor inf = Tensor::from_vector(std::vector<float>{-INFINITY}, {1});
  EXPECT_THROW(inf.check_finite("x"), NumericError);
  // Integer tensors always pass.
  EXPECT_NO_THROW(Tensor::zeros({3}, DType::s32).check_finite("labels"));
}

TEST(TensorChecks, CheckHelpers) {
  Tensor a = Tensor::zeros({2, 3});
  EXPECT_NO_THROW(check_rank(a, 2, "op", "a"));
  EXPECT_THROW(check_rank(a, 3, "op", "a"), ShapeError);
  EXPECT_THROW(check_dtype(a, DType::s32, "op", "a"), DTypeError);
  EXPECT_THROW(check_defined(Tensor(), "op", "a"), ValueError);
  const std::string msg = thrown_message<ShapeError>([&] { check_same_shape(a, Tensor::zeros({3, 2}), "myop"); });
  EXPECT_TRUE(contains(msg, "myop")) << msg;
  EXPECT_TRUE(contains(msg, "[2, 3]")) << msg;
  EXPECT_TRUE(contains(msg, "[3, 2]")) << msg;
}

TEST(TensorAutogradState, SetRequiresGradOnlyForF32) {
  Tensor i = Tensor::zeros({2}, DType::s32);
  EXPECT_THROW(i.set_requires_grad(true), DTypeError);
  EXPECT_FALSE(i.requires_grad());
  EXPECT_NO_THROW(i.set_requires_grad(false));
  Tensor f = Tensor::zeros({2});
  EXPECT_FALSE(f.requires_grad());
  f.set_requires_grad(true);
  EXPECT_TRUE(f.requires_grad());
  EXPECT_TRUE(f.is_leaf());
  EXPECT_FALSE(f.grad().defined());
  f.set_requires_grad(false);
  EXPECT_FALSE(f.requires_grad());
}

TEST(TensorAutogradState, SetGradChecksShape) {
  Tensor f = Tensor::zeros({2}).set_requires_grad(true);
  f.set_grad(Tensor::ones({2}));
  EXPECT_EQ(f.grad().to_vector<float>(), (std::vector<float>{1, 1}));
  EXPECT_THROW(f.set_grad(Tensor::ones({3})), ShapeError);
  f.zero_grad();
  EXPECT_FALSE(f.grad().defined());
}

TEST(Shape, NumelAndErrors) {
  EXPECT_EQ(shape_numel({}), 1);
  EXPECT_EQ(shape_numel({2, 3, 4}), 24);
  EXPECT_EQ(shape_numel({3, 0, 5}), 0);
  EXPECT_THROW(shape_numel({2, -1}), ShapeError);
  EXPECT_THROW(shape_numel({-3}), ShapeError);
  EXPECT_THROW(shape_numel({std::int64_t{1} << 40, std::int64_t{1} << 40}), ShapeError);
  EXPECT_THROW(Tensor::zeros({2, -2}), ShapeError);
}

TEST(Shape, StrAndStrides) {
  EXPECT_EQ(shape_str({}), "[]");
  EXPECT_EQ(shape_str({2, 3, 4}), "[2, 3, 4]");
  EXPECT_EQ(contiguous_strides({2, 3, 4}), (Shape{12, 4, 1}));
  EXPECT_EQ(contiguous_strides({7}), (Shape{1}));
  EXPECT_EQ(contiguous_strides({5, 1, 2}), (Shape{2, 2, 1}));
}

TEST(Shape, NormalizeDim) {
  EXPECT_EQ(normalize_dim(0, 3), 0);
  EXPECT_EQ(normalize_dim(2, 3), 2);
  EXPECT_EQ(normalize_dim(-1, 3), 2);
  EXPECT_EQ(normalize_dim(-3, 3), 0);
  EXPECT_THROW(normalize_dim(3, 3), ShapeError);
  EXPECT_THROW(normalize_dim(-4, 3), ShapeError);
  EXPECT_THROW(normalize_dim(0, 0), ShapeError);
  EXPECT_THROW(normalize_dim(-1, 0), ShapeError);
}

TEST(Shape, BroadcastShapes) {
  EXPECT_EQ(broadcast_shapes({2, 3}, {2, 3}), (Shape{2, 3}));
  EXPECT_EQ(broadcast_shapes({2, 3}, {3}), (Shape{2, 3}));
  EXPECT_EQ(broadcast_shapes({2, 1}, {1, 3}), (Shape{2, 3}));
  EXPECT_EQ(broadcast_shapes({2, 1, 3}, {4, 1}), (Shape{2, 4, 3}));
  EXPECT_EQ(broadcast_shapes({}, {3, 2}), (Shape{3, 2}));
  EXPECT_EQ(broadcast_shapes({5, 1}, {}), (Shape{5, 1}));
  EXPECT_EQ(broadcast_shapes({0, 1}, {1, 4}), (Shape{0, 4}));
}

TEST(Shape, BroadcastErrorNamesBothShapes) {
  const std::string msg = thrown_message<ShapeError>([] { broadcast_shapes({2, 3}, {3, 2}); });
  EXPECT_TRUE(contains(msg, "[2, 3]")) << msg;
  EXPECT_TRUE(contains(msg, "[3, 2]")) << msg;
  EXPECT_THROW(broadcast_shapes({4}, {3}), ShapeError);
  EXPECT_THROW(broadcast_shapes({2, 3, 4}, {5, 4}), ShapeError);
}

}  // namespace
}  // namespace shiftq
