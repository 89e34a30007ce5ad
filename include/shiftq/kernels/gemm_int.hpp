// Integer GEMMs with int32 accumulation on raw row-major buffers:
//   C[M,N] = op(A) · op(B) (+ co[n] when `col_offset` is given), no saturation, no scaling.
// Transposition and leading dimensions as in gemm_f32 (gemm.hpp). The reference implementations
// are plain loops. The optimized path calls oneDNN's JIT int8 GEMM on CPUs with int8 dot products
// (AVX-512 VNNI / AVX-VNNI), our exact AVX2 kernels on other AVX2 CPUs (int16 multiply-adds, or
// int8 ones with int16 partial sums when the operands' value ranges make them exact), and the
// reference loops on the rest (int_gemm_kernel() says which).
#pragma once

#include <cstdint>

#include "shiftq/kernels/gemm.hpp"

namespace shiftq::kernels {

// Largest K for which sum_k a*b cannot overflow int32 when |a|, |b| <= 127: floor(2^31 / 127^2) = 133144.
inline constexpr std::int64_t kMaxGemmKs8s8 = (std::int64_t{1} << 31) / (127 * 127);
// With a u8 operand (up to 255): floor(2^31 / (255 * 127)) = 66311.
inline constexpr std::int64_t kMaxGemmKu8s8 = (std::int64_t{1} << 31) / (255 * 127);

void gemm_s8s8s32(Trans ta, Trans tb, std::int64_t M, std::int64_t N, std::int64_t K,
                  const std::int8_t* A, std::int64_t lda, const std::int8_t* B, std::int64_t ldb,
                  std::int32_t* C, std::int64_t ldc);
// `col_offset` (may be null): co[n] added to every element of column n (e.g. a zero-point
// compensation). Throws ValueError for K above kMaxGemmKu8s8.
void gemm_u8s8s32(Trans ta, Trans tb, std::int64_t M, std::int64_t N, std::int64_t K,
                  const std::uint8_t* A, std::int64_t lda, const std::int8_t* B, std::int64_t ldb,
                  std::int32_t* C, std::int64_t ldc, const std::int32_t* col_offset = nullptr);

// The references, callable directly (tests and benchmarks). No argument checks.
void gemm_s8s8s32_ref(Trans ta, Trans tb, std::int64_t M, std::int64_t N, std::int64_t K,
                      const std::int8_t* A, std::int64_t lda, const std::int8_t* B, std::int64_t ldb,
                      std::int32_t* C, std::int64_t ldc);
void gemm_u8s8s32_ref(Trans ta, Trans tb, std::int64_t M, std::int64_t N, std::int64_t K,
                      const std::uint8_t* A, std::int64_t lda, const std::int8_t* B, std::int64_t ldb,
                      std::int32_t* C, std::int64_t ldc, const std::int32_t* col_offset);
// Whether the CPU has int8 dot-product instructions (AVX-512 VNNI or AVX-VNNI). Without them
// oneDNN's u8·s8 kernels may saturate in int16 intermediates (vpmaddubsw), so the integer GEMMs
// use shiftq's exact AVX2 kernels instead, or the reference loops on CPUs without AVX2.
bool cpu_has_int8_dot_product();

// The kernels the optimized path runs on this CPU.
// avx2: the int16 path, or the int8 path where avx2_byte_path_depth() allows it, per call.
enum class IntGemmKernel { onednn_vnni, avx2, reference };
IntGemmKernel int_gemm_kernel();
const char* int_gemm_kernel_name(IntGemmKernel kernel);  // "onednn_vnni", "avx2", "reference"

// Whether gemm_u8s8s32 is the faster entry point for an A operand stored as u8 (a_is_u8) or as s8,
// on the kernels the current path runs: oneDNN's VNNI GEMM is fastest with an unsigned A (an s8 A
// is worth converting), shiftq's AVX2 kernels widen either form at the same cost (keep A's form),
// the reference loops take s8 directly.
bool int_gemm_prefers_u8(bool a_is_u8);

}  // namespace shiftq::kernels
