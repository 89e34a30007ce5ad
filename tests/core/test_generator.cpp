// Philox4x32-10 known answers, Generator streams, checkpointing and distribution sanity checks.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "testing/gradcheck.hpp"

namespace shiftq {
namespace {

using Block = std::array<std::uint32_t, 4>;

std::vector<std::uint32_t> draw_u32(Generator& gen, int n) {
  std::vector<std::uint32_t> out(static_cast<std::size_t>(n));
  for (auto& v : out) v = gen.next_u32();
  return out;
}

// Random123's kat_vectors lines are "philox4x32 10 ctr0 ctr1 ctr2 ctr3 key0 key1 -> out0..out3";
// our API packs (ctr0, ctr1) into counter_lo, (ctr2, ctr3) into counter_hi and (key0, key1) into key.
Block philox_words(std::uint32_t c0, std::uint32_t c1, std::uint32_t c2, std::uint32_t c3,
                   std::uint32_t k0, std::uint32_t k1) {
  const std::uint64_t lo = (std::uint64_t{c1} << 32) | c0, hi = (std::uint64_t{c3} << 32) | c2;
  const std::uint64_t key = (std::uint64_t{k1} << 32) | k0;
  return philox4x32(key, hi, lo);
}

TEST(Philox, Random123KnownAnswerZero) {
  EXPECT_EQ(philox_words(0, 0, 0, 0, 0, 0), (Block{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}));
}

TEST(Philox, Random123KnownAnswerAllOnes) {
  const std::uint32_t f = 0xffffffffu;
  EXPECT_EQ(philox_words(f, f, f, f, f, f), (Block{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}));
}

TEST(Philox, Random123KnownAnswerPiDigits) {
  EXPECT_EQ(philox_words(0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u, 0xa4093822u, 0x299f31d0u),
            (Block{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}));
}

TEST(Philox, EveryInputWordMatters) {
  const Block base = philox4x32(5, 6, 7);
  EXPECT_NE(philox4x32(5 + (std::uint64_t{1} << 32), 6, 7), base);  // key word 1
  EXPECT_NE(philox4x32(4, 6, 7), base);                              // key word 0
  EXPECT_NE(philox4x32(5, 6 + (std::uint64_t{1} << 32), 7), base);   // counter word 3
  EXPECT_NE(philox4x32(5, 6, 7 + (std::uint64_t{1} << 32)), base);   // counter word 1
  EXPECT_EQ(philox4x32(5, 6, 7), base);                              // and it is a pure function
}

TEST(Philox, UnitFloatMapping) {
  EXPECT_EQ(u32_to_unit_float(0u), 0.0f);
  EXPECT_LT(u32_to_unit_float(0xffffffffu), 1.0f);
  EXPECT_EQ(u32_to_unit_float(0x80000000u), 0.5f);
}

TEST(Generator, StreamIsPhiloxBlocksOfTheSeed) {
  Generator gen(1234);
  for (std::uint64_t block = 0; block < 3; ++block) {
    const Block expected = philox4x32(1234, 0, block);
    for (int w = 0; w < 4; ++w) EXPECT_EQ(gen.next_u32(), expected[w]) << "block " << block << " word " << w;
  }
  EXPECT_EQ(gen.state().counter, 3u);
  EXPECT_EQ(gen.state().word, 4u);
}

TEST(Generator, SameSeedSameStream) {
  Generator a(42), b(42);
  EXPECT_EQ(a.seed(), 42u);
  EXPECT_EQ(draw_u32(a, 1000), draw_u32(b, 1000));
  EXPECT_EQ(a.normal(), b.normal());
  EXPECT_EQ(a.uniform(), b.uniform());
  EXPECT_EQ(a.randint(1000), b.randint(1000));
}

TEST(Generator, DifferentSeedsDiffer) {
  Generator a(42), b(43);
  const auto va = draw_u32(a, 1000), vb = draw_u32(b, 1000);
  int equal = 0;
  for (std::size_t i = 0; i < va.size(); ++i) equal += va[i] == vb[i];
  EXPECT_LE(equal, 2);
}

TEST(Generator, NextU64CombinesTwoWords) {
  Generator a(9), b(9);
  const std::uint64_t hi = a.next_u32(), lo = a.next_u32();
  EXPECT_EQ(b.next_u64(), (hi << 32) | lo);
}

TEST(Generator, StateRestoreResumesMidBlock) {
  for (int consumed : {0, 1, 3, 4, 5, 8, 11}) {
    Generator gen(77);
    draw_u32(gen, consumed);
    const GeneratorState saved = gen.state();
    const auto expected = draw_u32(gen, 13);

    // Same generator, rewound.
    gen.set_state(saved);
    EXPECT_EQ(gen.state(), saved);
    EXPECT_EQ(draw_u32(gen, 13), expected) << "consumed " << consumed;

    // A fresh generator with another seed, restored from the checkpoint.
    Generator other(5);
    draw_u32(other, 2);
    other.set_state(saved);
    EXPECT_EQ(other.seed(), 77u);
    EXPECT_EQ(draw_u32(other, 13), expected) << "consumed " << consumed;
  }
}

TEST(Generator, StateRestoreResumesFloatDraws) {
  Generator gen(8);
  gen.normal();
  gen.uniform();
  gen.next_u32();  // odd number of words: mid-block
  const GeneratorState saved = gen.state();
  std::vector<float> expected;
  for (int i = 0; i < 10; ++i) expected.push_back(gen.normal());
  Generator restored;
  restored.set_state(saved);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(restored.normal(), expected[static_cast<std::size_t>(i)]);
}

TEST(Generator, SetStateRejectsBadWordIndex) {
  Generator gen(1);
  EXPECT_THROW(gen.set_state(GeneratorState{1, 3, 5}), ValueError);
}

TEST(Generator, ForkIsDeterministicAndIndependent) {
  Generator p1(100), p2(100);
  Generator c1 = p1.fork(), c2 = p2.fork();
  EXPECT_EQ(c1.seed(), c2.seed());
  EXPECT_EQ(draw_u32(c1, 100), draw_u32(c2, 100));
  // The parents continue identically after forking.
  EXPECT_EQ(draw_u32(p1, 50), draw_u32(p2, 50));

  Generator parent(100);
  Generator child = parent.fork();
  EXPECT_NE(child.seed(), parent.seed());
  const auto vc = draw_u32(child, 200), vp = draw_u32(parent, 200);
  Generator fresh(100);
  const auto vf = draw_u32(fresh, 200);
  int same_as_parent = 0, same_as_fresh = 0;
  for (std::size_t i = 0; i < vc.size(); ++i) {
    same_as_parent += vc[i] == vp[i];
    same_as_fresh += vc[i] == vf[i];
  }
  EXPECT_LE(same_as_parent, 1);
  EXPECT_LE(same_as_fresh, 1);
  // Two successive forks differ from each other.
  Generator a = parent.fork(), b = parent.fork();
  EXPECT_NE(a.seed(), b.seed());
  EXPECT_NE(draw_u32(a, 8), draw_u32(b, 8));
}

TEST(Generator, UniformMeanAndRange) {
  Generator gen(2024);
  constexpr int n = 100000;
  double sum = 0.0, sum_sq = 0.0;
  for (int i = 0; i < n; ++i) {
    const float u = gen.uniform();
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    sum += u;
    sum_sq += static_cast<double>(u) * u;
  }
  const double mean = sum / n, var = sum_sq / n - mean * mean;
  const double se_mean = std::sqrt(1.0 / 12.0 / n);
  EXPECT_NEAR(mean, 0.5, 5.0 * se_mean);
  // Var of U^2-based estimator: sd of (U-0.5)^2 is 1/sqrt(180).
  EXPECT_NEAR(var, 1.0 / 12.0, 5.0 / std::sqrt(180.0 * n));
}

TEST(Generator, UniformRangeLoHi) {
  Generator gen(5);
  double sum = 0.0;
  for (int i = 0; i < 10000; ++i) {
    const float u = gen.uniform(-3.0f, 5.0f);
    ASSERT_GE(u, -3.0f);
    ASSERT_LT(u, 5.0f);
    sum += u;
  }
  EXPECT_NEAR(sum / 10000, 1.0, 5.0 * 8.0 / std::sqrt(12.0 * 10000));
}

TEST(Generator, NormalMomentsMatchStandardNormal) {
  Generator gen(31337);
  constexpr int n = 100000;
  double sum = 0.0, sum_sq = 0.0, sum_4 = 0.0;
  int beyond_3sd = 0;
  for (int i = 0; i < n; ++i) {
    const double z = gen.normal();
    ASSERT_TRUE(std::isfinite(z));
    sum += z;
    sum_sq += z * z;
    sum_4 += z * z * z * z;
    beyond_3sd += std::abs(z) > 3.0;
  }
  const double mean = sum / n, var = sum_sq / n - mean * mean;
  EXPECT_NEAR(mean, 0.0, 5.0 / std::sqrt(n));
  EXPECT_NEAR(var, 1.0, 5.0 * std::sqrt(2.0 / n));
  EXPECT_NEAR(sum_4 / n, 3.0, 5.0 * std::sqrt(96.0 / n));  // Var(z^4) = 105 - 9 = 96
  // P(|z| > 3) = 0.0027: 270 expected, sd ~16.4.
  EXPECT_NEAR(beyond_3sd, 270.0, 5.0 * 16.4);
}

TEST(Generator, RandintInRangeAndUniform) {
  Generator gen(99);
  constexpr int n = 100000, k = 10;
  std::vector<int> counts(k, 0);
  for (int i = 0; i < n; ++i) {
    const std::uint64_t r = gen.randint(k);
    ASSERT_LT(r, static_cast<std::uint64_t>(k));
    ++counts[r];
  }
  const double expected = static_cast<double>(n) / k;
  double chi2 = 0.0;
  for (int c : counts) chi2 += (c - expected) * (c - expected) / expected;
  // 9 degrees of freedom: P(chi2 > 40) ~ 7e-6.
  EXPECT_LT(chi2, 40.0) << "counts far from uniform";
}

TEST(Generator, RandintEdgeCases) {
  Generator gen(4);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(gen.randint(1), 0u);
  const std::uint64_t huge = (std::uint64_t{1} << 63) + 12345;
  bool upper_half = false;
  for (int i = 0; i < 200; ++i) {
    const std::uint64_t r = gen.randint(huge);
    ASSERT_LT(r, huge);
    upper_half |= r >= huge / 2;
  }
  EXPECT_TRUE(upper_half);
  EXPECT_THROW(gen.randint(0), ValueError);
}

TEST(Generator, RandnAndUniformTensorsAreReproducible) {
  Generator a(6), b(6);
  Tensor ta = Tensor::randn({4, 5}, a, 2.0f), tb = Tensor::randn({4, 5}, b, 2.0f);
  EXPECT_EQ(ta.to_vector<float>(), tb.to_vector<float>());
  Generator c(6);
  for (float v : ta.to_vector<float>()) EXPECT_FLOAT_EQ(v, 2.0f * c.normal());
}

}  // namespace
}  // namespace shiftq
