// Dense GEMM kernels on raw row-major buffers. Each kernel has a plain reference implementation
// beside the optimized one; the dispatcher picks the optimized one unless the reference path is
// forced (set_kernel_path(KernelPath::reference) or SHIFTQ_KERNELS=reference in the environment).
#pragma once

#include <cstdint>

namespace shiftq::kernels {

enum class Trans : std::uint8_t { N, T };

enum class KernelPath : std::uint8_t {
  optimized,  // oneDNN / shiftq's own vectorized kernels
  reference,  // plain loops or Eigen: slow, simple, the ground truth in tests
};

// Process-wide kernel path. Initialized from SHIFTQ_KERNELS ("reference" or "optimized").
void set_kernel_path(KernelPath path);
KernelPath kernel_path();

// C[M,N] = alpha * op(A) · op(B) + beta * C, all row-major.
//   op(A) is [M,K]: A is [M,K] (lda >= K) for Trans::N, [K,M] (lda >= M) for Trans::T.
//   op(B) is [K,N]: B is [K,N] (ldb >= N) for Trans::N, [N,K] (ldb >= K) for Trans::T.
// beta == 0 overwrites C (NaN in C is not propagated).
void gemm_f32(Trans ta, Trans tb, std::int64_t M, std::int64_t N, std::int64_t K, float alpha,
              const float* A, std::int64_t lda, const float* B, std::int64_t ldb, float beta,
              float* C, std::int64_t ldc);

// The two implementations, callable directly (tests and benchmarks).
void gemm_f32_ref(Trans ta, Trans tb, std::int64_t M, std::int64_t N, std::int64_t K, float alpha,
                  const float* A, std::int64_t lda, const float* B, std::int64_t ldb, float beta,
                  float* C, std::int64_t ldc);  // Eigen
void gemm_f32_onednn(Trans ta, Trans tb, std::int64_t M, std::int64_t N, std::int64_t K,
                     float alpha, const float* A, std::int64_t lda, const float* B,
                     std::int64_t ldb, float beta, float* C, std::int64_t ldc);

}  // namespace shiftq::kernels
