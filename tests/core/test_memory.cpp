// The caching block allocator behind large tensors.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

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

// Freed memory serves requests of any size: a smaller large request (>= 1 MiB) takes the top of a
// free range, a small one the bottom of what is left, and freed neighbours merge back into one
// range that a full-size request takes again.
TEST(MemoryCache, FreedRangesSplitAndMerge) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "the cache is off under AddressSanitizer";
#endif
  release_cached_memory();
  const std::size_t mib = std::size_t{1} << 20;
  const unsigned char* block = nullptr;
  {
    const Tensor wide = Tensor::empty({1 << 19});  // 2 MiB of f32
    block = static_cast<const unsigned char*>(wide.raw_bytes());
  }
  EXPECT_EQ(cached_memory_bytes(), 2 * mib);
  {
    const Tensor narrow = Tensor::empty({3 << 17});  // 1.5 MiB: the top of the 2 MiB range
    EXPECT_EQ(narrow.raw_bytes(), block + mib / 2);
    EXPECT_EQ(cached_memory_bytes(), mib / 2);
    for (float v : narrow.to_vector<float>()) ASSERT_EQ(v, 0.0f);
    const Tensor small = Tensor::empty({1 << 16});  // 256 KiB: the bottom of the rest
    EXPECT_EQ(small.raw_bytes(), block);
    EXPECT_EQ(cached_memory_bytes(), mib / 4);
  }
  EXPECT_EQ(cached_memory_bytes(), 2 * mib);  // merged back
  {
    const Tensor wide_again = Tensor::empty({1 << 19});
    EXPECT_EQ(wide_again.raw_bytes(), block);
  }
  release_cached_memory();
  EXPECT_EQ(cached_memory_bytes(), 0u);
}

// Many live blocks of mixed sizes, freed in a shuffled order: 64-byte aligned, never overlapping
// (each keeps its own fill), and all idle memory can be given back afterwards.
// A request takes a free range whose pages are already resident before one never touched, even a
// better-fitting one: the process's resident memory then grows only when the live tensors do.
TEST(MemoryCache, ResidentRangesAreReusedBeforeColdOnes) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "the cache is off under AddressSanitizer";
#endif
  release_cached_memory();
  const std::size_t mib = std::size_t{1} << 20;
  const unsigned char* first = nullptr;
  {
    const Tensor a = Tensor::empty({1 << 21});  // 8 MiB at the bottom of a fresh 16 MiB segment
    first = static_cast<const unsigned char*>(a.raw_bytes());
    const Tensor b = Tensor::empty({3 << 19});  // 6 MiB from the top: 2 MiB never touched between them
    EXPECT_EQ(b.raw_bytes(), first + 10 * mib);
  }
  EXPECT_GE(cached_memory_bytes(), 14 * mib);
  const Tensor c = Tensor::empty({3 << 17});  // 1.5 MiB: from the resident 8 MiB range, not the cold 2 MiB one
  EXPECT_TRUE(c.raw_bytes() < first + 8 * mib || c.raw_bytes() >= first + 10 * mib);
}

TEST(MemoryCache, MixedSizesNeverOverlap) {
  Generator gen(3);
  std::vector<Tensor> live;
  for (int round = 0; round < 400; ++round) {
    const bool free_one = !live.empty() && (live.size() > 24 || gen.uniform() < 0.4f);
    if (free_one) {
      const std::size_t victim = static_cast<std::size_t>(gen.uniform() * static_cast<float>(live.size())) % live.size();
      const Tensor& t = live[victim];
      const float expect = t.data<float>()[0];
      for (float v : t.to_vector<float>()) ASSERT_EQ(v, expect);
      live.erase(live.begin() + static_cast<std::ptrdiff_t>(victim));
      continue;
    }
    const std::int64_t n = std::int64_t{1} << (12 + static_cast<int>(gen.uniform() * 9.0f));  // 16 KiB .. 4 MiB
    Tensor t = Tensor::full({n + static_cast<std::int64_t>(gen.uniform() * 5000.0f)}, static_cast<float>(round));
    ASSERT_EQ(reinterpret_cast<std::uintptr_t>(t.raw_bytes()) % 64, 0u);
    live.push_back(std::move(t));
  }
  for (const Tensor& t : live) {
    const float expect = t.data<float>()[0];
    for (float v : t.to_vector<float>()) ASSERT_EQ(v, expect);
  }
  live.clear();
  release_cached_memory();
  EXPECT_EQ(cached_memory_bytes(), 0u);
}

// Under a lowered limit freed memory is given back (its pages dropped), and what is reused then
// reads as zeros where Tensor::empty promises them.
TEST(MemoryCache, ALoweredLimitGivesMemoryBack) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "the cache is off under AddressSanitizer";
#endif
  const std::size_t limit = memory_cache_limit();
  { Tensor big = Tensor::full({1 << 20}, 5.0f); }  // 4 MiB
  EXPECT_GE(cached_memory_bytes(), std::size_t{4} << 20);
  set_memory_cache_limit(std::size_t{1} << 20);
  EXPECT_LE(cached_memory_bytes(), std::size_t{1} << 20);
  { Tensor big = Tensor::full({1 << 20}, 6.0f); }
  EXPECT_LE(cached_memory_bytes(), std::size_t{1} << 20);
  const Tensor again = Tensor::empty({1 << 20});
  for (float v : again.to_vector<float>()) ASSERT_EQ(v, 0.0f);
  set_memory_cache_limit(limit);
}

TEST(MemoryCache, ReusedBlocksAreZeroedByEmpty) {
  { Tensor dirty = Tensor::full({1 << 17}, 3.0f); }
  const Tensor clean = Tensor::empty({1 << 17});
  for (float v : clean.to_vector<float>()) ASSERT_EQ(v, 0.0f);
}

TEST(MemoryStats, AllocatedBytesFollowLiveTensorsAndTheirPeak) {
  const std::size_t base = allocated_memory_bytes();
  reset_peak_allocated_memory();
  EXPECT_EQ(peak_allocated_memory_bytes(), base);
  {
    const Tensor big = Tensor::uninitialized({1 << 20});  // 4 MiB: an arena block
    const Tensor small = Tensor::uninitialized({100});    // 400 bytes in a 448-byte block
    EXPECT_EQ(allocated_memory_bytes(), base + (std::size_t{4} << 20) + 448);
    { const Tensor more = Tensor::uninitialized({1 << 18}); }  // 1 MiB, freed at once
    EXPECT_EQ(allocated_memory_bytes(), base + (std::size_t{4} << 20) + 448);
    EXPECT_EQ(peak_allocated_memory_bytes(), base + (std::size_t{5} << 20) + 448);
  }
  EXPECT_EQ(allocated_memory_bytes(), base);  // idle cached blocks are not counted
  EXPECT_EQ(peak_allocated_memory_bytes(), base + (std::size_t{5} << 20) + 448);
  reset_peak_allocated_memory();
  EXPECT_EQ(peak_allocated_memory_bytes(), base);
}

}  // namespace
}  // namespace shiftq
