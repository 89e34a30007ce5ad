// Matrix transposes for layout moves (NCHW <-> channels-last, [N, C, P] <-> [N*P, C]).
#pragma once

#include <cstdint>

namespace shiftq::kernels {

// dst: [cols, rows] = src: [rows, cols]^T, both contiguous. The optimized versions move 8x8 float
// (AVX; 4x4 on the x86-64 baseline) or 16x16 byte blocks through SIMD registers; the _ref versions
// are the plain loops.
void transpose_f32(const float* src, float* dst, std::int64_t rows, std::int64_t cols);
// The same with leading dimensions (src_ld >= cols, dst_ld >= rows): dst[c * dst_ld + r] =
// src[r * src_ld + c], e.g. a block of rows into a column range of a larger matrix. Throws
// ShapeError for negative sizes or a leading dimension below them.
void transpose_f32(const float* src, std::int64_t src_ld, float* dst, std::int64_t dst_ld, std::int64_t rows,
                   std::int64_t cols);
void transpose_u8(const std::uint8_t* src, std::uint8_t* dst, std::int64_t rows, std::int64_t cols);
void transpose_f32_ref(const float* src, float* dst, std::int64_t rows, std::int64_t cols);
void transpose_u8_ref(const std::uint8_t* src, std::uint8_t* dst, std::int64_t rows, std::int64_t cols);

}  // namespace shiftq::kernels
