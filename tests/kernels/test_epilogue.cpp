// The int32 -> f32 epilogue (kernels::scale_s32_f32): the dispatched build against the scalar
// reference bit for bit (row/column scales per index, broadcast or strided, with and without bias,
// vector tails, leading dimensions, row ranges), in place on the accumulator's own storage, and
// against the exact product in double.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "shiftq/core/generator.hpp"
#include "shiftq/kernels/epilogue.hpp"

namespace shiftq::kernels {
namespace {
struct Case {
  std::int64_t rows, cols, row_step, col_step;
  bool bias;
};

std::vector<std::int32_t> accumulators(std::int64_t n, Generator& gen) {
  std::vector<std::int32_t> acc(static_cast<std::size_t>(n));
  // Up to |2^30|: above 2^24 the int32 -> float conversion rounds too.
  for (auto& v : acc) v = static_cast<std::int32_t>(std::clamp(std::ldexp(gen.normal(), 27), -0x1p30f, 0x1p30f));
  acc[0] = 2147483647;
  if (n > 1) acc[1] = -2147483647 - 1;
  return acc;
}

std::vector<float> scales(std::int64_t n, Generator& gen) {
  std::vector<float> s(static_cast<std::size_t>(std::max<std::int64_t>(n, 1)));
  for (float& v : s) v = std::exp(gen.normal());
  return s;
}

std::vector<std::uint32_t> bits(const float* v, std::int64_t n) {
  std::vector<std::uint32_t> out(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) out[i] = std::bit_cast<std::uint32_t>(v[i]);
  return out;
}

const Case kCases[] = {{1, 1, 1, 1, false},   {3, 7, 1, 1, true},    {5, 17, 0, 1, false}, {4, 255, 1, 0, true},
                       {2, 256, 0, 0, false}, {6, 257, 1, 3, true},  {9, 600, 1, 1, true}, {2, 1000, 0, 1, false}};

TEST(EpilogueKernel, EqualsReferenceBitForBit) {
  Generator gen(11);
  for (const Case& c : kCases) {
    const std::int64_t lda = c.cols + 5, ldo = c.cols + 3;
    const std::vector<std::int32_t> acc = accumulators(c.rows * lda, gen);
    const std::vector<float> rs = scales(c.rows, gen), cs = scales(c.cols * c.col_step, gen), bias = scales(c.cols, gen);
    const ScaleEpilogue e{rs.data(), c.row_step, 0.0625f, cs.data(), c.col_step, c.bias ? bias.data() : nullptr};
    std::vector<float> got(static_cast<std::size_t>(c.rows * ldo), -1.0f), want(got.size(), -1.0f);
    const std::int64_t r0 = c.rows > 2 ? 1 : 0;  // a row range, as the parallel callers pass
    scale_s32_f32(acc.data(), lda, e, r0, c.rows, c.cols, got.data(), ldo);
    scale_s32_f32_ref(acc.data(), lda, e, r0, c.rows, c.cols, want.data(), ldo);
    EXPECT_EQ(bits(got.data(), c.rows * ldo), bits(want.data(), c.rows * ldo))
        << c.rows << "x" << c.cols << " row_step " << c.row_step << " col_step " << c.col_step << " bias " << c.bias;
  }
}

TEST(EpilogueKernel, InPlaceOnTheAccumulatorsStorageEqualsOutOfPlace) {
  Generator gen(12);
  for (const Case& c : kCases) {
    const std::vector<std::int32_t> acc = accumulators(c.rows * c.cols, gen);
    const std::vector<float> rs = scales(c.rows, gen), cs = scales(c.cols * c.col_step, gen), bias = scales(c.cols, gen);
    const ScaleEpilogue e{rs.data(), c.row_step, 0.25f, cs.data(), c.col_step, c.bias ? bias.data() : nullptr};
    std::vector<float> want(acc.size());
    scale_s32_f32(acc.data(), c.cols, e, 0, c.rows, c.cols, want.data(), c.cols);
    std::vector<float> storage(acc.size());
    std::memcpy(storage.data(), acc.data(), acc.size() * sizeof(std::int32_t));
    auto* in_place = static_cast<std::int32_t*>(static_cast<void*>(storage.data()));
    scale_s32_f32(in_place, c.cols, e, 0, c.rows, c.cols, storage.data(), c.cols);
    EXPECT_EQ(bits(storage.data(), c.rows * c.cols), bits(want.data(), c.rows * c.cols)) << c.rows << "x" << c.cols;
  }
}

// float(acc), row * col and the product round once each (the power-of-two shift is exact), the
// bias add once more: |error| <= 3 u |exact product| + u |result| with u = 2^-24, plus slack.
TEST(EpilogueKernel, MatchesTheExactProductWithinThreeRoundings) {
  Generator gen(13);
  const std::int64_t rows = 7, cols = 301;
  const std::vector<std::int32_t> acc = accumulators(rows * cols, gen);
  const std::vector<float> rs = scales(rows, gen), cs = scales(cols, gen), bias = scales(cols, gen);
  const float shift = std::ldexp(1.0f, -6);
  const ScaleEpilogue e{rs.data(), 1, shift, cs.data(), 1, bias.data()};
  std::vector<float> out(acc.size());
  scale_s32_f32(acc.data(), cols, e, 0, rows, cols, out.data(), cols);
  const double u = std::ldexp(1.0, -24);
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) {
      const double product = static_cast<double>(acc[r * cols + c]) * rs[r] * shift * cs[c];
      const double exact = product + bias[c];
      EXPECT_NEAR(out[r * cols + c], exact, 3.01 * u * std::fabs(product) + 1.01 * u * std::fabs(exact))
          << r << ", " << c;
    }
}
}  // namespace
}  // namespace shiftq::kernels
