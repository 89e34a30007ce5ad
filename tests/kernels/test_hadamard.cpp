// The fast Walsh-Hadamard transform against its definition; orthogonality, exact outlier spreading,
// thread independence and bad arguments.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "shiftq/core/error.hpp"
#include "shiftq/core/generator.hpp"
#include "shiftq/core/parallel.hpp"
#include "shiftq/kernels/dispatch.hpp"
#include "shiftq/kernels/hadamard.hpp"

namespace shiftq::kernels {
namespace {
std::vector<float> normal_values(std::int64_t n, std::uint64_t seed) {
  Generator gen(seed);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (float& x : v) x = gen.normal();
  return v;
}

// Float rounding of the butterflies: log2(n) passes, each adding at most one rounding of partial
// sums bounded by sum |v| <= n max|v|; after the 1/sqrt(n) scale, log2(n) * eps * sqrt(n) * max|v|.
// Values here are N(0, 1) (max |v| < 6); twice that bound.
double tolerance(std::int64_t block) {
  return 2.0 * std::log2(static_cast<double>(block) + 1) * 6e-8 * std::sqrt(static_cast<double>(block)) * 6.0;
}

TEST(HadamardKernel, FastTransformEqualsTheDefinition) {
  for (std::int64_t block : {1, 2, 4, 8, 16, 64, 256}) {
    for (std::int64_t cols : {block, 3 * block}) {
      const std::int64_t rows = 5;
      std::vector<float> got = normal_values(rows * cols, 11 + block), want = got;
      hadamard_rows(got.data(), rows, cols, block);
      hadamard_rows_ref(want.data(), rows, cols, block);
      for (std::size_t i = 0; i < got.size(); ++i)
        ASSERT_NEAR(got[i], want[i], tolerance(block)) << "block " << block << " cols " << cols << " at " << i;
    }
  }
}

// Every ISA build returns the bits of the plain butterfly loops: pass by pass over the whole block,
// then the scale (the optimized kernel unrolls the first three passes and scales in the last).
TEST(HadamardKernel, ButterfliesGiveTheBitsOfThePlainPasses) {
  if (kernel_path() == KernelPath::reference) GTEST_SKIP() << "the reference path runs the definition";
  for (std::int64_t block : {2, 4, 8, 16, 32, 256, 1024}) {
    const std::int64_t rows = 3, cols = 2 * block;
    std::vector<float> got = normal_values(rows * cols, 40 + block), want = got;
    hadamard_rows(got.data(), rows, cols, block);
    const float scale = 1.0f / std::sqrt(static_cast<float>(block));
    for (std::int64_t b = 0; b < rows * cols; b += block) {
      float* v = want.data() + b;
      for (std::int64_t half = 1; half < block; half *= 2)
        for (std::int64_t start = 0; start < block; start += 2 * half)
          for (std::int64_t i = start; i < start + half; ++i) {
            const float s = v[i], d = v[i + half];
            v[i] = s + d;
            v[i + half] = s - d;
          }
      for (std::int64_t i = 0; i < block; ++i) v[i] *= scale;
    }
    for (std::size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], want[i]) << "block " << block << " at " << i;
  }
}

TEST(HadamardKernel, IsOrthogonalAndItsOwnInverse) {
  const std::int64_t rows = 7, cols = 512, block = 128;
  const std::vector<float> x = normal_values(rows * cols, 3);
  std::vector<float> y = x;
  hadamard_rows(y.data(), rows, cols, block);
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; c += block) {  // each block keeps its squared norm
      double before = 0, after = 0;
      for (std::int64_t i = 0; i < block; ++i) {
        before += double(x[r * cols + c + i]) * x[r * cols + c + i];
        after += double(y[r * cols + c + i]) * y[r * cols + c + i];
      }
      EXPECT_NEAR(after, before, 1e-5 * before);
    }
  hadamard_rows(y.data(), rows, cols, block);
  for (std::size_t i = 0; i < x.size(); ++i) ASSERT_NEAR(y[i], x[i], 2 * tolerance(block)) << i;
}

// A single large value becomes +-value / sqrt(n) on every entry of its block (exact: 1/16 for
// n = 256), and no other block changes.
TEST(HadamardKernel, SpreadsAnOutlierOverItsBlockExactly) {
  const std::int64_t cols = 512, block = 256;
  std::vector<float> x(cols, 0.0f);
  x[37] = 48.0f;
  hadamard_rows(x.data(), 1, cols, block);
  for (std::int64_t i = 0; i < block; ++i) EXPECT_EQ(std::fabs(x[i]), 3.0f) << i;
  EXPECT_EQ(x[0], 3.0f);
  for (std::int64_t i = block; i < cols; ++i) EXPECT_EQ(x[i], 0.0f) << i;
}

TEST(HadamardKernel, DoesNotDependOnTheThreadCount) {
  const std::int64_t rows = 300, cols = 1024, block = 1024;
  const std::vector<float> x = normal_values(rows * cols, 9);
  const int threads = get_num_threads();
  std::vector<float> one = x, two = x;
  set_num_threads(1);
  hadamard_rows(one.data(), rows, cols, block);
  set_num_threads(2);
  hadamard_rows(two.data(), rows, cols, block);
  set_num_threads(threads);
  EXPECT_EQ(one, two);
}

TEST(HadamardKernel, BlockSizeAndBadArguments) {
  EXPECT_EQ(hadamard_block(1), 1);
  EXPECT_EQ(hadamard_block(12), 4);
  EXPECT_EQ(hadamard_block(1024), 1024);
  EXPECT_EQ(hadamard_block(63), 1);
  EXPECT_THROW(hadamard_block(0), ShapeError);
  std::vector<float> x(24, 1.0f);
  EXPECT_THROW(hadamard_rows(x.data(), 2, 12, 3), ShapeError);   // not a power of two
  EXPECT_THROW(hadamard_rows(x.data(), 2, 12, 8), ShapeError);   // does not divide cols
  EXPECT_THROW(hadamard_rows(x.data(), -1, 12, 4), ShapeError);
  EXPECT_THROW(hadamard_rows_ref(x.data(), 2, 12, 0), ShapeError);
  hadamard_rows(x.data(), 0, 12, 4);  // no rows: nothing to do
}

}  // namespace
}  // namespace shiftq::kernels
