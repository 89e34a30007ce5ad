// Matrix transposes for layout moves (NCHW <-> channels-last, [N, C, P] <-> [N*P, C]).
#pragma once

#include <cstdint>

namespace shiftq::kernels {

// dst: [cols, rows] = src: [rows, cols]^T, both contiguous. The optimized versions move 4x4 float
// or 16x16 byte blocks through SIMD registers; the _ref versions are the plain loops.
void transpose_f32(const float* src, float* dst, std::int64_t rows, std::int64_t cols);
void transpose_u8(const std::uint8_t* src, std::uint8_t* dst, std::int64_t rows, std::int64_t cols);
void transpose_f32_ref(const float* src, float* dst, std::int64_t rows, std::int64_t cols);
void transpose_u8_ref(const std::uint8_t* src, std::uint8_t* dst, std::int64_t rows, std::int64_t cols);

}  // namespace shiftq::kernels
