// Tensor memory: large buffers (>= 64 KiB) freed by tensors are kept for reuse instead of being
// returned to the OS, because a training step allocates the same shapes every step and fresh pages
// cost page faults plus zeroing (on a 2-core machine that was measured at up to half of a conv
// layer's time). A request takes an idle block of its own size, or else the smallest idle one up
// to twice its size, so that blocks left by one stage of a network serve the next, narrower one
// instead of adding to the process's memory. Like PyTorch's caching allocators, the cache is
// bounded and can be emptied.
#pragma once

#include <cstddef>

namespace shiftq {

// Idle bytes the cache may hold (default 2 GiB); lowering it trims the cache at once. 0 disables it.
void set_memory_cache_limit(std::size_t bytes);
std::size_t memory_cache_limit();
// Bytes currently held idle by the cache.
std::size_t cached_memory_bytes();
// Returns every idle buffer to the system.
void release_cached_memory();

}  // namespace shiftq
