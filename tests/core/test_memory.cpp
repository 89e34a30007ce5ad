// The caching block allocator behind large tensors.
#include <gtest/gtest.h>

#include <shiftq/shiftq.hpp>

namespace shiftq {
namespace {

TEST(MemoryCache, LargeBuffersAreReusedAndCanBeReleased) {
#if defined(__SANITIZE_ADDRESS__)
  // Disabled under AddressSanitizer so that every free is checked: nothing may be kept.
  { Tensor big = Tensor::empty({1 << 18}); }
  EXPECT_EQ(cached_memory_bytes(), 0u);
  EXPECT_EQ(memory_cache_limit(), 0u);
  return;
#endif
  release_cached_memory();
  const std::size_t limit = memory_cache_limit();
  EXPECT_EQ(cached_memory_bytes(), 0u);
  const void* first = nullptr;
  {
    Tensor big = Tensor::empty({1 << 18});  // 1 MiB
    first = big.data<float>();
  }
  EXPECT_GE(cached_memory_bytes(), std::size_t{1} << 20);
  {
    Tensor again = Tensor::uninitialized({1 << 18});  // same size: the cached block comes back
    EXPECT_EQ(static_cast<const void*>(again.data<float>()), first);
    EXPECT_EQ(cached_memory_bytes(), 0u);
    Tensor zeroed = Tensor::zeros({1 << 18});  // a fresh block, zero-filled
    for (float v : zeroed.to_vector<float>()) ASSERT_EQ(v, 0.0f);
  }
  release_cached_memory();
  EXPECT_EQ(cached_memory_bytes(), 0u);
  set_memory_cache_limit(0);  // disabled: nothing is kept
  { Tensor big = Tensor::empty({1 << 18}); }
  EXPECT_EQ(cached_memory_bytes(), 0u);
  set_memory_cache_limit(limit);
}

// A request with no idle block of its size takes the smallest idle block up to twice as large, and
// gives the whole block back when freed; a block more than twice the request stays idle.
TEST(MemoryCache, ASmallerRequestTakesABlockUpToTwiceItsSize) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "the cache is off under AddressSanitizer";
#endif
  release_cached_memory();
  const std::size_t two_mib = std::size_t{2} << 20;
  const void* block = nullptr;
  {
    const Tensor wide = Tensor::empty({1 << 19});  // 2 MiB of f32
    block = wide.raw_bytes();
  }
  EXPECT_EQ(cached_memory_bytes(), two_mib);
  {
    const Tensor narrow = Tensor::empty({3 << 17});  // 1.5 MiB: takes the 2 MiB block
    EXPECT_EQ(narrow.raw_bytes(), block);
    EXPECT_EQ(cached_memory_bytes(), 0u);
    for (float v : narrow.to_vector<float>()) ASSERT_EQ(v, 0.0f);
  }
  EXPECT_EQ(cached_memory_bytes(), two_mib);  // the whole block came back
  {
    const Tensor small = Tensor::empty({1 << 17});  // 0.5 MiB: the 2 MiB block is too large for it
    EXPECT_NE(small.raw_bytes(), block);
    EXPECT_EQ(cached_memory_bytes(), two_mib);
  }
  {
    const Tensor wide_again = Tensor::empty({1 << 19});  // the exact size is still there
    EXPECT_EQ(wide_again.raw_bytes(), block);
  }
  release_cached_memory();
}

TEST(MemoryCache, ReusedBlocksAreZeroedByEmpty) {
  { Tensor dirty = Tensor::full({1 << 17}, 3.0f); }
  const Tensor clean = Tensor::empty({1 << 17});
  for (float v : clean.to_vector<float>()) ASSERT_EQ(v, 0.0f);
}

}  // namespace
}  // namespace shiftq
