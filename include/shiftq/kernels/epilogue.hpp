// The int32 -> f32 epilogue of a scaled integer product: ShiftMM's result and the quantized
// convolution's forward blocks become floats through this kernel (the convolution's dX scales while
// col2im scatters; int64 sums, dW and ShiftMM's K-chunked path, scale on their own). Compiled once per ISA
// (AVX-512 / AVX2 / x86-64, picked at run time) beside a scalar reference; every build gives the
// same bits (no FMA contraction, the same order of multiplies).
#pragma once

#include <cstdint>

namespace shiftq::kernels {

// The scales of C = acc * diag(row) * 2^shift * diag(col) (+ bias).
struct ScaleEpilogue {
  const float* row_scale = nullptr;  // [rows * row_step]; row_step 0: one scale for every row
  std::int64_t row_step = 1;
  float shift = 1.0f;                // a power of two: 2^-(S_A + S_B)
  const float* col_scale = nullptr;  // [cols * col_step]; col_step 0: one scale for every column
  std::int64_t col_step = 1;
  const float* bias = nullptr;       // [cols] or null
};

// out[r, c] = float(acc[r, c]) * ((row_scale[r * row_step] * shift) * col_scale[c * col_step])
//             (+ bias[c]), r in [r0, r1), c in [0, cols); acc row r at acc + r * lda, out row r at
// out + r * ldo. `out` may be `acc`'s own storage (same address and leading dimension): each element
// is read as int32 before its float is stored (no float/int32 aliasing).
void scale_s32_f32(const std::int32_t* acc, std::int64_t lda, const ScaleEpilogue& e, std::int64_t r0,
                   std::int64_t r1, std::int64_t cols, float* out, std::int64_t ldo);
void scale_s32_f32_ref(const std::int32_t* acc, std::int64_t lda, const ScaleEpilogue& e, std::int64_t r0,
                       std::int64_t r1, std::int64_t cols, float* out, std::int64_t ldo);

}  // namespace shiftq::kernels
