// Tensor memory: large buffers (>= 64 KiB) freed by tensors are kept for reuse instead of being
// returned to the OS, because a training step allocates the same shapes every step and fresh pages
// cost page faults plus zeroing (on a 2-core machine that was measured at up to half of a conv
// layer's time). They live in an arena of mapped segments: a request takes the smallest free range
// that holds it (split if larger), and freed blocks merge with the free ranges beside them, so the
// memory one stage of a network frees serves the next stage's tensors of any size. Like PyTorch's
// caching allocators, the idle memory is bounded and can be given back. Under AddressSanitizer
// every buffer is a plain allocation, so that every free is checked.
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
// Bytes of the blocks held by live tensor storages (every size; block_size rounding included), now
// and at most since the process started or the last reset_peak_allocated_memory(). Unlike the
// process RSS they leave out idle cached memory, fragmentation and everything that is not a tensor,
// so they show what a model's tensors need (torch.cuda.memory_allocated's counterpart).
std::size_t allocated_memory_bytes();
std::size_t peak_allocated_memory_bytes();
// Starts a new peak at the current allocated bytes.
void reset_peak_allocated_memory();

}  // namespace shiftq
