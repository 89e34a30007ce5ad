#include "shiftq/core/memory.hpp"

#include <sys/mman.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <iterator>
#include <map>
#include <mutex>
#include <new>

#include "core/block_cache.hpp"

namespace shiftq {
namespace {
constexpr std::size_t kMinCached = std::size_t{64} << 10;
// Segments are mapped in multiples of this; the part a request does not use is a free range. Two
// stage-1 activations of a batch-128 ResNet-20 fit one (2 MiB segments fragmented more).
constexpr std::size_t kSegmentGranule = std::size_t{16} << 20;
constexpr std::size_t kLargeBlock = std::size_t{1} << 20;

// Large blocks come from an arena of mapped segments: a request takes the smallest resident free
// range that holds it, else the smallest cold one, split if larger (blocks of 1 MiB and more from
// the range's top, smaller ones from its bottom), and a freed block is merged with the free ranges
// beside it. A free range is resident (it held a tensor) or cold (never touched, or given back with
// MADV_DONTNEED under the limit). The memory one stage of a network frees serves the next stage's
// tensors of any size, so the process holds little more than its peak of live tensors. Resident
// ranges go first because taking a better-fitting cold one touches new pages while resident ones
// sit free; large and small blocks split from opposite ends so that they do not interleave. Both
// would otherwise let RSS grow with the order of allocations (`docs/benchmarks.md`, memory).
// Steady-state steps reuse mapped pages and make no system calls.
class Arena {
 public:
  void* allocate(std::size_t size) {
    const std::lock_guard<std::mutex> lock(mu_);
    // The smallest resident free range that holds it (the lowest of equal ones), else the smallest
    // cold one: large ranges stay whole for large requests (the fp32 convolution's im2col matrices
    // are ~58 MiB), and pages already resident are reused before new ones are touched.
    auto best = free_.end();
    for (auto f = free_.begin(); f != free_.end(); ++f) {
      if (f->second.size < size) continue;
      if (best == free_.end() || f->second.resident > best->second.resident ||
          (f->second.resident == best->second.resident && f->second.size < best->second.size))
        best = f;
    }
    if (best != free_.end()) {
      const std::uintptr_t begin = best->first;
      const FreeRange taken = best->second;
      erase_free(begin);
      // Large blocks from the range's top, small ones from its bottom: the two kinds gather at
      // opposite ends instead of interleaving.
      const bool top = size >= kLargeBlock;
      const std::uintptr_t at = top ? begin + taken.size - size : begin;
      if (taken.size > size) insert_free(top ? begin : begin + size, taken.size - size, taken.resident);
      segment_of(at).used += size;
      return reinterpret_cast<void*>(at);
    }
    const std::size_t bytes = (size + kSegmentGranule - 1) / kSegmentGranule * kSegmentGranule;
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    const auto begin = reinterpret_cast<std::uintptr_t>(p);
    segments_[begin] = Segment{bytes, size};
    if (bytes > size) insert_free(begin + size, bytes - size, false);
    return p;
  }

  void release(void* p, std::size_t size) {
    const std::lock_guard<std::mutex> lock(mu_);
    auto begin = reinterpret_cast<std::uintptr_t>(p);
    const auto segment = std::prev(segments_.upper_bound(begin));
    segment->second.used -= size;
    bool resident = true;
    if (idle_bytes_ + size > limit_) {  // over the limit: its pages go back now
      madvise(p, size, MADV_DONTNEED);
      resident = false;
    }
    // Merged with the free neighbours of the same residency inside the same segment.
    const std::uintptr_t segment_end = segment->first + segment->second.bytes;
    const auto next = free_.find(begin + size);
    if (next != free_.end() && next->first < segment_end && next->second.resident == resident) {
      size += next->second.size;
      erase_free(next->first);
    }
    const auto after = free_.lower_bound(begin);
    if (after != free_.begin()) {
      const auto prev = std::prev(after);
      if (prev->first >= segment->first && prev->first + prev->second.size == begin &&
          prev->second.resident == resident) {
        begin = prev->first;
        size += prev->second.size;
        erase_free(begin);
      }
    }
    insert_free(begin, size, resident);
    if (segment->second.used == 0 && idle_bytes_ > limit_) trim_to(limit_);
  }

  // Unmaps segments without live blocks (every one for 0) while more than `bytes` are idle, then
  // gives back the pages of resident free ranges until at most `bytes` are.
  void trim_to(std::size_t bytes) {
    for (auto it = segments_.begin(); it != segments_.end();) {
      if (it->second.used != 0 || (bytes > 0 && idle_bytes_ <= bytes)) {
        ++it;
        continue;
      }
      const std::uintptr_t end = it->first + it->second.bytes;
      for (auto f = free_.lower_bound(it->first); f != free_.end() && f->first < end;) erase_free((f++)->first);
      munmap(reinterpret_cast<void*>(it->first), it->second.bytes);
      it = segments_.erase(it);
    }
    for (auto f = free_.begin(); f != free_.end() && idle_bytes_ > bytes; ++f) {
      if (!f->second.resident) continue;
      madvise(reinterpret_cast<void*>(f->first), f->second.size, MADV_DONTNEED);
      f->second.resident = false;
      idle_bytes_ -= f->second.size;
    }
  }

  void set_limit(std::size_t bytes) {
    const std::lock_guard<std::mutex> lock(mu_);
    limit_ = bytes;
    trim_to(bytes);
  }
  void release_all() {
    const std::lock_guard<std::mutex> lock(mu_);
    trim_to(0);
  }
  std::size_t limit() {
    const std::lock_guard<std::mutex> lock(mu_);
    return limit_;
  }
  std::size_t idle_bytes() {
    const std::lock_guard<std::mutex> lock(mu_);
    return idle_bytes_;
  }

 private:
  struct Segment {
    std::size_t bytes, used;  // mapped, and held by live blocks
  };
  struct FreeRange {
    std::size_t size;
    bool resident;
  };

  Segment& segment_of(std::uintptr_t p) { return std::prev(segments_.upper_bound(p))->second; }
  void insert_free(std::uintptr_t begin, std::size_t size, bool resident) {
    free_[begin] = FreeRange{size, resident};
    if (resident) idle_bytes_ += size;
  }
  void erase_free(std::uintptr_t begin) {
    const auto it = free_.find(begin);
    if (it->second.resident) idle_bytes_ -= it->second.size;
    free_.erase(it);
  }

  std::mutex mu_;
  std::map<std::uintptr_t, Segment> segments_;  // by first address
  std::map<std::uintptr_t, FreeRange> free_;    // by first address
  std::size_t idle_bytes_ = 0;                  // in resident free ranges
  std::size_t limit_ = std::size_t{2} << 30;
};

// Never destroyed: tensors may be freed during static destruction.
Arena& arena() {
  static Arena* a = new Arena;
  return *a;
}

// Bytes of live blocks, and their peak.
std::atomic<std::size_t> g_allocated{0}, g_peak_allocated{0};

void count_allocated(std::size_t size) {
  const std::size_t now = g_allocated.fetch_add(size, std::memory_order_relaxed) + size;
  std::size_t peak = g_peak_allocated.load(std::memory_order_relaxed);
  while (now > peak && !g_peak_allocated.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
  }
}

// AddressSanitizer checks every free: under it large blocks are plain allocations too.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kArena = false;
#else
constexpr bool kArena = true;
#endif
}  // namespace

namespace detail {
std::size_t block_size(std::size_t nbytes) {
  const std::size_t padded = nbytes == 0 ? 64 : ((nbytes + 63) / 64) * 64;
  return padded < kMinCached ? padded : ((padded + kMinCached - 1) / kMinCached) * kMinCached;
}

void* allocate_block(std::size_t size, std::size_t* allocated) {
  *allocated = size;
  void* p = kArena && size >= kMinCached ? arena().allocate(size) : std::aligned_alloc(64, size);
  if (p == nullptr) throw std::bad_alloc();
  count_allocated(size);
  return p;
}

void free_block(void* p, std::size_t size) {
  g_allocated.fetch_sub(size, std::memory_order_relaxed);
  if (kArena && size >= kMinCached) {
    arena().release(p, size);
    return;
  }
  std::free(p);
}
}  // namespace detail

void set_memory_cache_limit(std::size_t bytes) {
  if (kArena) arena().set_limit(bytes);
}

std::size_t memory_cache_limit() { return kArena ? arena().limit() : 0; }

std::size_t cached_memory_bytes() { return kArena ? arena().idle_bytes() : 0; }

void release_cached_memory() {
  if (kArena) arena().release_all();
}

std::size_t allocated_memory_bytes() { return g_allocated.load(std::memory_order_relaxed); }

std::size_t peak_allocated_memory_bytes() { return g_peak_allocated.load(std::memory_order_relaxed); }

void reset_peak_allocated_memory() {
  g_peak_allocated.store(g_allocated.load(std::memory_order_relaxed), std::memory_order_relaxed);
}

}  // namespace shiftq
