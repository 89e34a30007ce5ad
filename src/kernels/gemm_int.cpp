// Integer GEMM dispatch and argument checks.
#include "shiftq/core/error.hpp"
#include "shiftq/kernels/gemm_int.hpp"

namespace shiftq::kernels {
namespace {
void check_gemm_args(const char* op, Trans ta, Trans tb, std::int64_t M, std::int64_t N, std::int64_t K,
                     std::int64_t lda, std::int64_t ldb, std::int64_t ldc, std::int64_t max_k) {
  SHIFTQ_CHECK(M >= 0 && N >= 0 && K >= 0, ShapeError, op, ": negative size M=", M, " N=", N, " K=", K);
  SHIFTQ_CHECK(lda >= (ta == Trans::N ? K : M) && ldb >= (tb == Trans::N ? N : K) && ldc >= N, ShapeError,
               op, ": leading dimension too small (lda=", lda, " ldb=", ldb, " ldc=", ldc, " for M=", M,
               " N=", N, " K=", K, ")");
  SHIFTQ_CHECK(K <= max_k, ValueError, op, ": K=", K, " exceeds ", max_k,
               ", the largest contraction whose int32 accumulation cannot overflow; split the GEMM");
}

bool use_optimized() { return kernel_path() == KernelPath::optimized && cpu_has_int8_dot_product(); }
}  // namespace

void gemm_s8s8s32(Trans ta, Trans tb, std::int64_t M, std::int64_t N, std::int64_t K, const std::int8_t* A,
                  std::int64_t lda, const std::int8_t* B, std::int64_t ldb, std::int32_t* C, std::int64_t ldc) {
  check_gemm_args("gemm_s8s8s32", ta, tb, M, N, K, lda, ldb, ldc, kMaxGemmKs8s8);
  if (M == 0 || N == 0) return;
  if (use_optimized() && K > 0)
    gemm_s8s8s32_onednn(ta, tb, M, N, K, A, lda, B, ldb, C, ldc);
  else
    gemm_s8s8s32_ref(ta, tb, M, N, K, A, lda, B, ldb, C, ldc);
}

void gemm_u8s8s32(Trans ta, Trans tb, std::int64_t M, std::int64_t N, std::int64_t K, const std::uint8_t* A,
                  std::int64_t lda, const std::int8_t* B, std::int64_t ldb, std::int32_t* C, std::int64_t ldc,
                  const std::int32_t* col_offset) {
  check_gemm_args("gemm_u8s8s32", ta, tb, M, N, K, lda, ldb, ldc, kMaxGemmKu8s8);
  if (M == 0 || N == 0) return;
  if (use_optimized() && K > 0)
    gemm_u8s8s32_onednn(ta, tb, M, N, K, A, lda, B, ldb, C, ldc, col_offset);
  else
    gemm_u8s8s32_ref(ta, tb, M, N, K, A, lda, B, ldb, C, ldc, col_offset);
}

}  // namespace shiftq::kernels
