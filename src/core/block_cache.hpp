// Internal: the block allocator behind Storage (see shiftq/core/memory.hpp).
#pragma once

#include <cstddef>

namespace shiftq::detail {
// The size actually allocated for nbytes (64-byte multiple; 64 KiB multiple for cached blocks).
std::size_t block_size(std::size_t nbytes);
// A 64-byte aligned block of at least `size` bytes (block_size); *allocated is its actual size,
// the one free_block takes back.
void* allocate_block(std::size_t size, std::size_t* allocated);
void free_block(void* p, std::size_t allocated);
}  // namespace shiftq::detail
