// Normalized Walsh-Hadamard transforms along the rows of a matrix: H_n / sqrt(n) with
// H_1 = [1], H_2n = [[H_n, H_n], [H_n, -H_n]]. The transform is symmetric and orthogonal, so it is
// its own inverse; it spreads a row's large values over all n entries of its block.
#pragma once

#include <cstdint>

namespace shiftq::kernels {

// The largest power of two that divides n (n >= 1): the block size of hadamard_rows for rows of
// n values (1: no transform).
std::int64_t hadamard_block(std::int64_t n);

// x: [rows, cols], contiguous. Replaces every block of `block` consecutive values of each row by
// its normalized Walsh-Hadamard transform, in place. `block` must be a power of two dividing cols
// (ShapeError otherwise). The fast transform: log2(block) butterfly passes per block, rows spread
// over the threads; the result does not depend on the thread count.
void hadamard_rows(float* x, std::int64_t rows, std::int64_t cols, std::int64_t block);
// The same by the definition, H[i][j] = (-1)^popcount(i & j) / sqrt(block), O(block^2) per block
// (tests).
void hadamard_rows_ref(float* x, std::int64_t rows, std::int64_t cols, std::int64_t block);

}  // namespace shiftq::kernels
