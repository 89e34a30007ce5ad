// Internal: the optimized GEMM implementations behind kernels::gemm_f32 / gemm_s8s8s32 /
// gemm_u8s8s32 (their entry points choose among these and the references). Declared for the
// kernel tests and benchmarks, which compare and time each implementation; not installed.
#pragma once

#include <cstdint>

#include "shiftq/kernels/gemm_int.hpp"

namespace shiftq::kernels {

void gemm_f32_onednn(Trans ta, Trans tb, std::int64_t M, std::int64_t N, std::int64_t K,
                     float alpha, const float* A, std::int64_t lda, const float* B,
                     std::int64_t ldb, float beta, float* C, std::int64_t ldc);

// AVX2 (exact int16 multiply-adds, or int8 ones with int16 partial sums where the operands' ranges
// make them exact; callable only where the CPU has AVX2).
void gemm_s8s8s32_avx2(Trans ta, Trans tb, std::int64_t M, std::int64_t N, std::int64_t K,
                       const std::int8_t* A, std::int64_t lda, const std::int8_t* B, std::int64_t ldb,
                       std::int32_t* C, std::int64_t ldc);
void gemm_u8s8s32_avx2(Trans ta, Trans tb, std::int64_t M, std::int64_t N, std::int64_t K,
                       const std::uint8_t* A, std::int64_t lda, const std::int8_t* B, std::int64_t ldb,
                       std::int32_t* C, std::int64_t ldc, const std::int32_t* col_offset);
// Which AVX2 kernels serve op(A) values spanning `a_span` = max - min (<= 255) against |op(B)| <=
// `b_absmax` (<= 128): the int8 path with DU = 4 or 2 vpmaddubsw results summed per int16 lane
// (returns DU) when DU * 2 * a_span * b_absmax <= 32767, else 0 (the int16 path). Both are exact.
int avx2_byte_path_depth(int a_span, int b_absmax);
void gemm_s8s8s32_onednn(Trans ta, Trans tb, std::int64_t M, std::int64_t N, std::int64_t K,
                         const std::int8_t* A, std::int64_t lda, const std::int8_t* B,
                         std::int64_t ldb, std::int32_t* C, std::int64_t ldc);
void gemm_u8s8s32_onednn(Trans ta, Trans tb, std::int64_t M, std::int64_t N, std::int64_t K,
                         const std::uint8_t* A, std::int64_t lda, const std::int8_t* B,
                         std::int64_t ldb, std::int32_t* C, std::int64_t ldc,
                         const std::int32_t* col_offset);

}  // namespace shiftq::kernels
