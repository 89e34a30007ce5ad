// Dense GEMM kernels on raw row-major buffers. Each kernel has a plain reference implementation
// beside the optimized one; the entry point picks the optimized one unless the reference path is
// forced (set_kernel_path(KernelPath::reference) or SHIFTQ_KERNELS=reference; dispatch.hpp).
#pragma once

#include <cstdint>

#include "shiftq/kernels/dispatch.hpp"

namespace shiftq::kernels {

enum class Trans : std::uint8_t { N, T };

// C[M,N] = alpha * op(A) · op(B) + beta * C, all row-major.
//   op(A) is [M,K]: A is [M,K] (lda >= K) for Trans::N, [K,M] (lda >= M) for Trans::T.
//   op(B) is [K,N]: B is [K,N] (ldb >= N) for Trans::N, [N,K] (ldb >= K) for Trans::T.
// beta == 0 overwrites C (NaN in C is not propagated).
void gemm_f32(Trans ta, Trans tb, std::int64_t M, std::int64_t N, std::int64_t K, float alpha,
              const float* A, std::int64_t lda, const float* B, std::int64_t ldb, float beta,
              float* C, std::int64_t ldc);

// The reference (Eigen), callable directly (tests and benchmarks).
void gemm_f32_ref(Trans ta, Trans tb, std::int64_t M, std::int64_t N, std::int64_t K, float alpha,
                  const float* A, std::int64_t lda, const float* B, std::int64_t ldb, float beta,
                  float* C, std::int64_t ldc);

}  // namespace shiftq::kernels
