#include "shiftq/core/memory.hpp"

#include <cstdlib>
#include <iterator>
#include <map>
#include <mutex>
#include <new>

#include "core/block_cache.hpp"

namespace shiftq {
namespace {
constexpr std::size_t kMinCached = std::size_t{64} << 10;
// A request with no idle block of its size takes the smallest idle one up to this many times larger.
constexpr std::size_t kMaxReuseFactor = 2;

struct BlockCache {
  std::mutex mu;
  std::multimap<std::size_t, void*> idle;  // size -> block, ordered for the next size up
  std::size_t idle_bytes = 0;
#if defined(__SANITIZE_ADDRESS__)
  std::size_t limit = 0;  // let AddressSanitizer see every free
#else
  std::size_t limit = std::size_t{2} << 30;
#endif

  void trim_to(std::size_t bytes) {  // caller holds mu; frees the largest blocks first
    while (idle_bytes > bytes && !idle.empty()) {
      const auto largest = std::prev(idle.end());
      idle_bytes -= largest->first;
      std::free(largest->second);
      idle.erase(largest);
    }
  }
};

// Never destroyed: tensors may be freed during static destruction.
BlockCache& cache() {
  static BlockCache* c = new BlockCache;
  return *c;
}
}  // namespace

namespace detail {
std::size_t block_size(std::size_t nbytes) {
  const std::size_t padded = nbytes == 0 ? 64 : ((nbytes + 63) / 64) * 64;
  return padded < kMinCached ? padded : ((padded + kMinCached - 1) / kMinCached) * kMinCached;
}

void* allocate_block(std::size_t size, std::size_t* allocated) {
  if (size >= kMinCached) {
    BlockCache& c = cache();
    std::lock_guard<std::mutex> lock(c.mu);
    // The exact size, or else a larger idle block that would otherwise sit unused (a ResNet's
    // wider stage leaves blocks that its narrower stages can take) instead of fresh memory.
    auto it = c.idle.lower_bound(size);
    // Of the idle blocks of that size, the one freed last: its lines are the likeliest to be in cache.
    if (it != c.idle.end()) it = std::prev(c.idle.upper_bound(it->first));
    if (it != c.idle.end() && it->first <= kMaxReuseFactor * size) {
      void* p = it->second;
      *allocated = it->first;
      c.idle_bytes -= it->first;
      c.idle.erase(it);
      return p;
    }
  }
  void* p = std::aligned_alloc(64, size);
  if (p == nullptr) throw std::bad_alloc();
  *allocated = size;
  return p;
}

void free_block(void* p, std::size_t size) {
  if (size >= kMinCached) {
    BlockCache& c = cache();
    std::lock_guard<std::mutex> lock(c.mu);
    if (c.idle_bytes + size <= c.limit) {
      c.idle.emplace(size, p);
      c.idle_bytes += size;
      return;
    }
  }
  std::free(p);
}
}  // namespace detail

void set_memory_cache_limit(std::size_t bytes) {
  BlockCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  c.limit = bytes;
  c.trim_to(bytes);
}

std::size_t memory_cache_limit() {
  BlockCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  return c.limit;
}

std::size_t cached_memory_bytes() {
  BlockCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  return c.idle_bytes;
}

void release_cached_memory() {
  BlockCache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  c.trim_to(0);
}

}  // namespace shiftq
