// Data-parallel pieces that need no second process: the sampler's shards, the int8 gradient codec
// (its exchange simulated for several ranks in-process), the gradient-ready hook, and DataParallel
// in a group of one.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <set>

#include <shiftq/shiftq.hpp>

namespace shiftq {
namespace {

TEST(ShardRange, EverySampleOfABatchGoesToExactlyOneRank) {
  for (std::int64_t world = 1; world <= 5; ++world)
    for (std::int64_t count = 0; count <= 13; ++count) {
      std::int64_t next = 0, smallest = count, largest = 0;
      for (std::int64_t rank = 0; rank < world; ++rank) {
        const auto [begin, end] = data::shard_range(count, {rank, world});
        EXPECT_EQ(begin, next) << "count " << count << " world " << world << " rank " << rank;
        EXPECT_LE(begin, end);
        next = end;
        smallest = std::min(smallest, end - begin);
        largest = std::max(largest, end - begin);
      }
      EXPECT_EQ(next, count);
      EXPECT_LE(largest - smallest, 1) << "count " << count << " world " << world;
    }
}

TEST(ShardRange, RejectsBadShards) {
  EXPECT_THROW(data::shard_range(4, {2, 2}), ValueError);
  EXPECT_THROW(data::shard_range(4, {-1, 2}), ValueError);
  EXPECT_THROW(data::shard_range(4, {0, 0}), ValueError);
  EXPECT_THROW(data::shard_range(-1, {0, 1}), ValueError);
}

TEST(ShardRange, ImageLoaderShardsAreTheWholeBatchesSlices) {
  const std::int64_t n = 23;
  data::LabeledImages d{Tensor::empty({n, 6, 6}, DType::u8), Tensor::empty({n}, DType::s32), 10};
  for (std::int64_t i = 0; i < n * 36; ++i) d.images.data<std::uint8_t>()[i] = static_cast<std::uint8_t>(i * 7 % 251);
  for (std::int64_t i = 0; i < n; ++i) d.labels.data<std::int32_t>()[i] = static_cast<std::int32_t>(i % 10);
  const data::ImageLoader loader(d, data::ImageLoaderOptions(8).seed(3).pad_crop(2).hflip(true));
  for (std::int64_t world : {2, 3, 9})
    for (std::int64_t b = 0; b < loader.num_batches(); ++b) {
      const data::ImageBatch whole = loader.batch(1, b);
      std::vector<float> images;
      std::vector<std::int32_t> labels;
      for (std::int64_t r = 0; r < world; ++r) {
        const data::ImageBatch part = loader.batch(1, b, {r, world});
        ASSERT_EQ(part.images.size(0), part.labels.numel());
        const auto pi = part.images.to_vector<float>();
        const auto pl = part.labels.to_vector<std::int32_t>();
        images.insert(images.end(), pi.begin(), pi.end());
        labels.insert(labels.end(), pl.begin(), pl.end());
      }
      EXPECT_EQ(images, whole.images.to_vector<float>()) << "world " << world << " batch " << b;
      EXPECT_EQ(labels, whole.labels.to_vector<std::int32_t>());
    }
}

// ---- the int8 codec ---------------------------------------------------------------------------

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
  dist::codec::group_exponents(x.data(), static_cast<std::int64_t>(x.size()), 64, e.data());
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
  dist::codec::group_exponents(x.data(), 10, 4, e.data());
  EXPECT_EQ(e[0], dist::codec::kZeroGroup);
  EXPECT_EQ(e[1], dist::codec::kNonFinite);
  EXPECT_EQ(e[2], dist::codec::kZeroGroup);  // a short last group
  std::vector<std::int8_t> codes(10, 9);
  dist::codec::quantize(x.data(), 10, 4, e.data(), 1, 2, codes.data());
  std::vector<float> back(10);
  dist::codec::dequantize(codes.data(), 10, 4, e.data(), back.data());
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
    dist::codec::quantize(x.data(), n, 16, e.data(), 77, static_cast<std::uint64_t>(s), codes.data());
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
    dist::codec::mean_codes(codes.data(), world, n, 9, static_cast<std::uint64_t>(s), out.data());
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
    std::fill(e.begin(), e.end(), dist::codec::kZeroGroup);
    for (const auto& g : grads) {
      dist::codec::group_exponents(g.data(), n, group, mine.data());
      for (std::size_t k = 0; k < e.size(); ++k) e[k] = std::max(e[k], mine[k]);
    }
  }
  const int steps = 4000;
  std::vector<double> sum(n, 0.0);
  std::vector<std::int8_t> codes(static_cast<std::size_t>(world * n)), mean(n);
  std::vector<float> back(n);
  for (int s = 0; s < steps; ++s) {
    for (int r = 0; r < world; ++r)
      dist::codec::quantize(grads[r].data(), n, group, e.data(), 100 + r, static_cast<std::uint64_t>(s),
                            codes.data() + r * n);
    dist::codec::mean_codes(codes.data(), world, n, 200, static_cast<std::uint64_t>(s), mean.data());
    dist::codec::dequantize(mean.data(), n, group, e.data(), back.data());
    for (std::int64_t i = 0; i < n; ++i) sum[i] += back[i];
  }
  for (std::int64_t i = 0; i < n; ++i) {
    // Per step: world roundings of variance <= 1/4 code^2 each, divided by world, plus one more.
    const double code = std::ldexp(1.0, e[i / group]);
    const double sigma = code * std::sqrt(0.25 / world + 0.25) / std::sqrt(steps);
    EXPECT_NEAR(sum[i] / steps, truth[i], 5 * sigma) << "element " << i;
  }
}

// ---- the gradient-ready hook and DataParallel in a group of one --------------------------------

TEST(GradReadyHook, FiresOncePerLeafWithItsWholeGradient) {
  Tensor w = Tensor::from_vector(std::vector<float>{1.0f, 2.0f}, {2});
  w.set_requires_grad();
  Tensor v = Tensor::from_vector(std::vector<float>{3.0f, 4.0f}, {2});
  v.set_requires_grad();
  std::vector<std::pair<const AutogradMeta*, std::vector<float>>> seen;
  {
    GradReadyHookGuard guard([&](const AutogradMeta& leaf) { seen.push_back({&leaf, leaf.grad->to_vector<float>()}); });
    // w is used twice: the hook must see the sum of both paths.
    sum(add(mul(w, v), mul(w, w))).backward();
  }
  ASSERT_EQ(seen.size(), 2u);
  for (const auto& [leaf, grad] : seen) {
    if (leaf == w.meta().get()) EXPECT_EQ(grad, (std::vector<float>{3 + 2 * 1.0f, 4 + 2 * 2.0f}));
    else EXPECT_EQ(grad, (std::vector<float>{1.0f, 2.0f}));
  }
  w.zero_grad();
  sum(w).backward();  // the guard is gone: nothing more is recorded
  EXPECT_EQ(seen.size(), 2u);
}

TEST(DataParallel, OneProcessScalesByTheWeightAndZeroesUnusedParameters) {
  ASSERT_EQ(dist::world_size(), 1);
  Generator gen(1);
  nn::Sequential model{std::make_shared<nn::Linear>(nn::LinearOptions(3, 2), gen)};
  auto unused = std::make_shared<nn::Linear>(nn::LinearOptions(2, 2), gen);
  model.push_back(unused);
  for (auto exchange : {dist::GradExchange::fp32, dist::GradExchange::int8}) {
    dist::DataParallel dp(model, dist::DataParallelOptions().exchange(exchange).bucket_bytes(16));
    const Tensor x = Tensor::randn({4, 3}, gen);
    auto& first = dynamic_cast<nn::Linear&>(*model.named_children()[0].second);
    model.zero_grad();
    sum(first.forward(x)).backward();
    const std::vector<float> full = first.weight.grad().to_vector<float>();
    model.zero_grad();
    dp.backward(sum(first.forward(x)), 0.25);
    const std::vector<float> scaled = first.weight.grad().to_vector<float>();
    for (std::size_t i = 0; i < full.size(); ++i) EXPECT_EQ(scaled[i], 0.25f * full[i]);
    ASSERT_TRUE(unused->weight.grad().defined());
    for (float g : unused->weight.grad().to_vector<float>()) EXPECT_EQ(g, 0.0f);
    EXPECT_EQ(dp.step(), 1);
    EXPECT_THROW(dp.backward(sum(first.forward(x)), -0.5), ValueError);
  }
  EXPECT_THROW(dist::DataParallel(model, dist::DataParallelOptions().group_size(0)), ValueError);
  EXPECT_THROW(dist::DataParallel(model, dist::DataParallelOptions().bucket_bytes(0)), ValueError);
  EXPECT_THROW(dist::parse_grad_exchange("fp16"), ValueError);
}

}  // namespace
}  // namespace shiftq
