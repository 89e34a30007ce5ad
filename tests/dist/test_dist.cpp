// Data-parallel pieces that need no second process: the sampler's shards, the gradient-ready hook,
// and DataParallel in a group of one. The int8 codec's tests are in tests/kernels/test_grad_codec.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

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
  // Every parameter used, small buckets: each bucket completes during backward (nothing to
  // exchange in a group of one, so nothing may be sent).
  nn::Linear single(nn::LinearOptions(3, 5), gen);
  for (auto exchange : {dist::GradExchange::fp32, dist::GradExchange::int8}) {
    dist::DataParallel dp(single, dist::DataParallelOptions().exchange(exchange).bucket_bytes(8));
    single.zero_grad();
    dp.backward(sum(single.forward(Tensor::randn({2, 3}, gen))));
    EXPECT_TRUE(single.weight.grad().defined());
    EXPECT_EQ(dp.stats().bytes_sent, 0);
  }
  EXPECT_THROW(dist::DataParallel(model, dist::DataParallelOptions().group_size(0)), ValueError);
  EXPECT_THROW(dist::DataParallel(model, dist::DataParallelOptions().bucket_bytes(0)), ValueError);
  EXPECT_THROW(dist::parse_grad_exchange("fp16"), ValueError);
}

}  // namespace
}  // namespace shiftq
