// Software prefetch of a short run of bytes, for loops over rows that lie far apart in memory (a
// BatchNorm channel's rows are C * H * W elements apart): the hardware prefetchers follow
// sequential streams, not those jumps.
#pragma once

#include <cstdint>

namespace shiftq::detail {

// Rows ahead that the strided loops fetch: far enough to hide a miss, near enough to stay in L1.
inline constexpr std::int64_t kPrefetchRows = 4;

// Every cache line of [p, p + bytes) towards L1, for reading. Prefetches never fault: a run may
// end past the tensor.
inline void prefetch_bytes(const void* p, std::int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (std::int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(c + b, 0, 3);
  if (bytes > 0) __builtin_prefetch(c + bytes - 1, 0, 3);  // the line a misaligned run ends in
}

}  // namespace shiftq::detail
