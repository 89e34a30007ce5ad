// Integer GEMM dispatch and argument checks.
#include "shiftq/core/error.hpp"
#include "kernels/gemm_impl.hpp"

#include "isa.hpp"

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

// The kernels of this call: the reference loops when forced (or for K = 0, which oneDNN rejects).
IntGemmKernel kernel_for(std::int64_t K) {
  if (kernel_path() == KernelPath::reference || K == 0) return IntGemmKernel::reference;
  return int_gemm_kernel();
}
}  // namespace

IntGemmKernel int_gemm_kernel() {
  static const IntGemmKernel kernel = [] {
    if (cpu_has_int8_dot_product()) return IntGemmKernel::onednn_vnni;
    if (dispatch::cpu_isa() != dispatch::Isa::base) return IntGemmKernel::avx2;
    return IntGemmKernel::reference;
  }();
  return kernel;
}

bool int_gemm_prefers_u8(bool a_is_u8) {
  switch (kernel_path() == KernelPath::reference ? IntGemmKernel::reference : int_gemm_kernel()) {
    case IntGemmKernel::onednn_vnni: return true;
    case IntGemmKernel::avx2: return a_is_u8;
    default: return false;
  }
}

const char* int_gemm_kernel_name(IntGemmKernel kernel) {
  switch (kernel) {
    case IntGemmKernel::onednn_vnni: return "onednn_vnni";
    case IntGemmKernel::avx2: return "avx2";
    default: return "reference";
  }
}

void gemm_s8s8s32(Trans ta, Trans tb, std::int64_t M, std::int64_t N, std::int64_t K, const std::int8_t* A,
                  std::int64_t lda, const std::int8_t* B, std::int64_t ldb, std::int32_t* C, std::int64_t ldc) {
  check_gemm_args("gemm_s8s8s32", ta, tb, M, N, K, lda, ldb, ldc, kMaxGemmKs8s8);
  if (M == 0 || N == 0) return;
  switch (kernel_for(K)) {
    case IntGemmKernel::onednn_vnni: return gemm_s8s8s32_onednn(ta, tb, M, N, K, A, lda, B, ldb, C, ldc);
    case IntGemmKernel::avx2: return gemm_s8s8s32_avx2(ta, tb, M, N, K, A, lda, B, ldb, C, ldc);
    default: return gemm_s8s8s32_ref(ta, tb, M, N, K, A, lda, B, ldb, C, ldc);
  }
}

void gemm_u8s8s32(Trans ta, Trans tb, std::int64_t M, std::int64_t N, std::int64_t K, const std::uint8_t* A,
                  std::int64_t lda, const std::int8_t* B, std::int64_t ldb, std::int32_t* C, std::int64_t ldc,
                  const std::int32_t* col_offset) {
  check_gemm_args("gemm_u8s8s32", ta, tb, M, N, K, lda, ldb, ldc, kMaxGemmKu8s8);
  if (M == 0 || N == 0) return;
  switch (kernel_for(K)) {
    case IntGemmKernel::onednn_vnni: return gemm_u8s8s32_onednn(ta, tb, M, N, K, A, lda, B, ldb, C, ldc, col_offset);
    case IntGemmKernel::avx2: return gemm_u8s8s32_avx2(ta, tb, M, N, K, A, lda, B, ldb, C, ldc, col_offset);
    default: return gemm_u8s8s32_ref(ta, tb, M, N, K, A, lda, B, ldb, C, ldc, col_offset);
  }
}

}  // namespace shiftq::kernels
