// Internal: the block allocator behind Storage (see shiftq/core/memory.hpp).
#pragma once

#include <cstddef>

namespace shiftq::detail {
// The size actually allocated for nbytes (64-byte multiple; 64 KiB multiple for cached blocks).
std::size_t block_size(std::size_t nbytes);
void* allocate_block(std::size_t size);  // 64-byte aligned
void free_block(void* p, std::size_t size);
}  // namespace shiftq::detail
