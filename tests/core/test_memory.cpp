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

TEST(MemoryCache, ReusedBlocksAreZeroedByEmpty) {
  { Tensor dirty = Tensor::full({1 << 17}, 3.0f); }
  const Tensor clean = Tensor::empty({1 << 17});
  for (float v : clean.to_vector<float>()) ASSERT_EQ(v, 0.0f);
}

}  // namespace
}  // namespace shiftq
