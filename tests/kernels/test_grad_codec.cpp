// The int8 gradient codec of data-parallel training (kernels/grad_codec.hpp): every ISA build equals
// the scalar reference bit for bit, exponents are minimal, both stochastic roundings are bounded and
// unbiased, and a whole exchange simulated for several ranks is an unbiased mean.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include <shiftq/shiftq.hpp>

namespace shiftq {
namespace {

// A distinct key per (seed, draw).
std::uint64_t key_of(std::uint64_t seed, std::uint64_t draw) {
  const auto block = philox4x32(seed, draw, 0);
  return (static_cast<std::uint64_t>(block[0]) << 32) | block[1];
}

TEST(GradCodec, KernelsEqualTheReference) {
  Generator gen(3);
  for (std::int64_t n : {1, 7, 63, 64, 65, 300, 1024 + 5})
    for (std::int64_t group : {1, 16, 64, 100}) {
      std::vector<float> x(static_cast<std::size_t>(n));
      for (std::size_t i = 0; i < x.size(); ++i) {
        const int g = static_cast<int>(static_cast<std::int64_t>(i) / group);
        x[i] = std::ldexp(2 * gen.uniform() - 1, g % 9 * 7 - 30);  // magnitudes 2^-30 .. 2^26 by group
      }
      if (n > 5) x[3] = 0.0f, x[4] = -0.0f;
      if (n > 70) x[70] = std::numeric_limits<float>::quiet_NaN();
      if (n > 200) std::fill(x.begin() + 128, x.begin() + 200, 0.0f);
      if (n > 300) {  // the edges of float: subnormals (exponent clamped at -126), FLT_MAX, Inf
        x[210] = std::numeric_limits<float>::denorm_min();
        x[211] = -std::numeric_limits<float>::min() / 8;
        x[250] = std::numeric_limits<float>::max();
        x[290] = -std::numeric_limits<float>::infinity();
      }
      const auto groups = static_cast<std::size_t>((n + group - 1) / group);
      std::vector<std::int8_t> e(groups), e_ref(groups);
      kernels::grad_group_exponents_f32(x.data(), n, group, e.data());
      kernels::grad_group_exponents_f32_ref(x.data(), n, group, e_ref.data());
      ASSERT_EQ(e, e_ref) << "n " << n << " group " << group;
      std::vector<std::int8_t> c(x.size()), c_ref(x.size());
      kernels::grad_quantize_f32(x.data(), n, group, e.data(), 42, c.data());
      kernels::grad_quantize_f32_ref(x.data(), n, group, e.data(), 42, c_ref.data());
      ASSERT_EQ(c, c_ref) << "n " << n << " group " << group;
      std::vector<float> y(x.size()), y_ref(x.size());
      kernels::grad_dequantize_s8(c.data(), n, group, e.data(), y.data());
      kernels::grad_dequantize_s8_ref(c.data(), n, group, e.data(), y_ref.data());
      for (std::size_t i = 0; i < y.size(); ++i)
        ASSERT_TRUE(y[i] == y_ref[i] || (std::isnan(y[i]) && std::isnan(y_ref[i]))) << i;
      for (int world : {1, 2, 3, 7}) {
        std::vector<std::int8_t> codes(x.size() * static_cast<std::size_t>(world));
        for (auto& v : codes) v = static_cast<std::int8_t>(static_cast<int>(gen.randint(255)) - 127);
        std::vector<std::int8_t> m(x.size()), m_ref(x.size());
        kernels::grad_mean_codes_s8(codes.data(), world, n, 9, m.data());
        kernels::grad_mean_codes_s8_ref(codes.data(), world, n, 9, m_ref.data());
        ASSERT_EQ(m, m_ref) << "n " << n << " world " << world;
      }
    }
  std::int8_t e = 0;
  float x = 1;
  EXPECT_THROW(kernels::grad_group_exponents_f32(&x, 1, 0, &e), ValueError);
  EXPECT_THROW(kernels::grad_mean_codes_s8(&e, 0, 1, 1, &e), ValueError);
}


TEST(GradCodec, TinyGroupsClampTheExponentAndStayUnbiasedInRange) {
  // A group of subnormals: e is clamped to -126, the codes are 0 or 1 in magnitude.
  std::vector<float> x(8, std::numeric_limits<float>::denorm_min() * 3);
  x[1] = -x[1];
  std::vector<std::int8_t> e(1), c(8);
  kernels::grad_group_exponents_f32(x.data(), 8, 8, e.data());
  EXPECT_EQ(e[0], -126);
  kernels::grad_quantize_f32(x.data(), 8, 8, e.data(), 5, c.data());
  for (std::int8_t code : c) EXPECT_LE(std::abs(code), 1);
  // FLT_MAX: a finite group (not the non-finite sentinel), codes in the upper half of the range.
  x.assign(8, std::numeric_limits<float>::max());
  kernels::grad_group_exponents_f32(x.data(), 8, 8, e.data());
  EXPECT_LT(e[0], kernels::kGradNonFinite);
  kernels::grad_quantize_f32(x.data(), 8, 8, e.data(), 5, c.data());
  for (std::int8_t code : c) {
    EXPECT_GE(code, 63);
    EXPECT_LE(code, 127);
  }
}

TEST(GradCodec, ExponentIsTheSmallestThatHoldsTheGroup) {
  Generator gen(5);
  std::vector<float> x(64 * 40);
  for (std::size_t i = 0; i < x.size(); ++i) {
    const float magnitude = std::ldexp(1.0f, static_cast<int>(i / 64) - 20);  // groups from 2^-20 to 2^19
    x[i] = magnitude * (2.0f * gen.uniform() - 1.0f);
  }
  x[64 * 3] = 127.0f * 0.25f;  // exactly 127 * 2^-2: e = -2, not -1
  x[64 * 4] = std::ldexp(127.0f, -3) * (1.0f + 1.0f / 1024);  // just above 127 * 2^-3: e = -2
  std::vector<std::int8_t> e(40);
  kernels::grad_group_exponents_f32(x.data(), static_cast<std::int64_t>(x.size()), 64, e.data());
  for (std::size_t g = 0; g < e.size(); ++g) {
    float m = 0;
    for (std::size_t i = g * 64; i < g * 64 + 64; ++i) m = std::max(m, std::fabs(x[i]));
    EXPECT_LE(m, std::ldexp(127.0, e[g])) << "group " << g;
    EXPECT_GT(m, std::ldexp(127.0, e[g] - 1)) << "group " << g;
  }
  EXPECT_EQ(e[3], -2);
  EXPECT_EQ(e[4], -2);
}

TEST(GradCodec, ZeroAndNonFiniteGroups) {
  std::vector<float> x(10, 0.0f);
  x[7] = std::numeric_limits<float>::quiet_NaN();
  std::vector<std::int8_t> e(3);
  kernels::grad_group_exponents_f32(x.data(), 10, 4, e.data());
  EXPECT_EQ(e[0], kernels::kGradZeroGroup);
  EXPECT_EQ(e[1], kernels::kGradNonFinite);
  EXPECT_EQ(e[2], kernels::kGradZeroGroup);  // a short last group
  std::vector<std::int8_t> codes(10, 9);
  kernels::grad_quantize_f32(x.data(), 10, 4, e.data(), key_of(1, 2), codes.data());
  std::vector<float> back(10);
  kernels::grad_dequantize_s8(codes.data(), 10, 4, e.data(), back.data());
  EXPECT_EQ(back[0], 0.0f);
  for (int i = 4; i < 8; ++i) EXPECT_TRUE(std::isnan(back[i]));
  EXPECT_EQ(back[9], 0.0f);
}

TEST(GradCodec, StochasticRoundingIsBoundedAndUnbiased) {
  // One group, e = 0: values are codes plus fractions.
  const std::vector<float> x{126.75f, -126.5f, 0.3f, -0.3f, 5.0f, -7.0f, 127.0f, -127.0f, 0.001f, 64.5f};
  const auto n = static_cast<std::int64_t>(x.size());
  const std::vector<std::int8_t> e{0};
  std::vector<double> mean(x.size(), 0.0);
  const int draws = 20000;
  std::vector<std::int8_t> codes(x.size());
  for (int s = 0; s < draws; ++s) {
    kernels::grad_quantize_f32(x.data(), n, 16, e.data(), key_of(77, static_cast<std::uint64_t>(s)), codes.data());
    for (std::size_t i = 0; i < x.size(); ++i) {
      ASSERT_TRUE(codes[i] == std::floor(x[i]) || codes[i] == std::ceil(x[i])) << x[i] << " -> " << int{codes[i]};
      mean[i] += codes[i];
    }
  }
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double frac = x[i] - std::floor(x[i]);
    const double sigma = std::sqrt(frac * (1 - frac) / draws);
    EXPECT_NEAR(mean[i] / draws, x[i], 5 * sigma + 1e-6) << "value " << x[i];  // 5 sigma of the mean
  }
}

TEST(GradCodec, MeanOfCodesIsExactWhenDivisibleAndUnbiasedOtherwise) {
  const int world = 3;
  // codes[r * n + i]: sums 9 (exact 3), -9 (exact -3), 10 (3 1/3), -10 (-3 1/3), 381 (127), -381 (-127)
  const std::vector<std::int8_t> codes{3, -3, 3, -3, 127, -127,  //
                                       3, -3, 3, -4, 127, -127,  //
                                       3, -3, 4, -3, 127, -127};
  const std::int64_t n = 6;
  std::vector<double> mean(n, 0.0);
  std::vector<std::int8_t> out(n);
  const int draws = 30000;
  for (int s = 0; s < draws; ++s) {
    kernels::grad_mean_codes_s8(codes.data(), world, n, key_of(9, static_cast<std::uint64_t>(s)), out.data());
    EXPECT_EQ(out[0], 3);
    EXPECT_EQ(out[1], -3);
    EXPECT_TRUE(out[2] == 3 || out[2] == 4);
    EXPECT_TRUE(out[3] == -4 || out[3] == -3);
    EXPECT_EQ(out[4], 127);
    EXPECT_EQ(out[5], -127);
    for (std::int64_t i = 0; i < n; ++i) mean[i] += out[i];
  }
  const double sigma = std::sqrt((1.0 / 3) * (2.0 / 3) / draws);
  EXPECT_NEAR(mean[2] / draws, 10.0 / 3, 5 * sigma);
  EXPECT_NEAR(mean[3] / draws, -10.0 / 3, 5 * sigma);
}

// The whole int8 exchange of DataParallel for `world` simulated ranks: agreed exponents (max),
// each rank's codes, each owner's rounded mean, dequantized. Averaged over many steps it must give
// the weighted mean of the ranks' gradients.
TEST(GradCodec, SimulatedExchangeIsAnUnbiasedMeanOverRanks) {
  const int world = 3;
  const std::int64_t n = 96, group = 32;
  Generator gen(11);
  std::vector<std::vector<float>> grads(world, std::vector<float>(n));
  for (auto& g : grads)
    for (std::int64_t i = 0; i < n; ++i) g[i] = std::ldexp(1.0f, static_cast<int>(i / group) * 3 - 6) * (2 * gen.uniform() - 1);
  std::vector<double> truth(n, 0.0);
  for (const auto& g : grads)
    for (std::int64_t i = 0; i < n; ++i) truth[i] += g[i] / world;

  std::vector<std::int8_t> e(n / group);
  {
    std::vector<std::int8_t> mine(n / group);
    std::fill(e.begin(), e.end(), kernels::kGradZeroGroup);
    for (const auto& g : grads) {
      kernels::grad_group_exponents_f32(g.data(), n, group, mine.data());
      for (std::size_t k = 0; k < e.size(); ++k) e[k] = std::max(e[k], mine[k]);
    }
  }
  const int steps = 4000;
  std::vector<double> sum(n, 0.0);
  std::vector<std::int8_t> codes(static_cast<std::size_t>(world * n)), mean(n);
  std::vector<float> back(n);
  for (int s = 0; s < steps; ++s) {
    for (int r = 0; r < world; ++r)
      kernels::grad_quantize_f32(grads[r].data(), n, group, e.data(), key_of(100 + r, static_cast<std::uint64_t>(s)),
                                 codes.data() + r * n);
    kernels::grad_mean_codes_s8(codes.data(), world, n, key_of(200, static_cast<std::uint64_t>(s)), mean.data());
    kernels::grad_dequantize_s8(mean.data(), n, group, e.data(), back.data());
    for (std::int64_t i = 0; i < n; ++i) sum[i] += back[i];
  }
  for (std::int64_t i = 0; i < n; ++i) {
    // Per step: world roundings of variance <= 1/4 code^2 each, divided by world, plus one more.
    const double code = std::ldexp(1.0, e[i / group]);
    const double sigma = code * std::sqrt(0.25 / world + 0.25) / std::sqrt(steps);
    EXPECT_NEAR(sum[i] / steps, truth[i], 5 * sigma) << "element " << i;
  }
}

}  // namespace
}  // namespace shiftq
