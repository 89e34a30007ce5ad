// Optimized fp32 GEMM: oneDNN's row-major sgemm (JIT AVX-512/AVX2, OpenMP threads).
#include <oneapi/dnnl/dnnl.h>

#include "shiftq/core/error.hpp"
#include "kernels/gemm_impl.hpp"

namespace shiftq::kernels {

void gemm_f32_onednn(Trans ta, Trans tb, std::int64_t M, std::int64_t N, std::int64_t K,
                     float alpha, const float* A, std::int64_t lda, const float* B,
                     std::int64_t ldb, float beta, float* C, std::int64_t ldc) {
  const dnnl_status_t status = dnnl_sgemm(ta == Trans::N ? 'N' : 'T', tb == Trans::N ? 'N' : 'T', M,
                                          N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  SHIFTQ_CHECK(status == dnnl_success, Error, "gemm_f32_onednn: dnnl_sgemm failed with status ",
               static_cast<int>(status), " (M=", M, " N=", N, " K=", K, ")");
}

}  // namespace shiftq::kernels
