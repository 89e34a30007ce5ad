// Optimized integer GEMMs: oneDNN's row-major int8 GEMM (JIT, VNNI where available).
#include <oneapi/dnnl/dnnl.h>

#include "shiftq/core/error.hpp"
#include "kernels/gemm_impl.hpp"

namespace shiftq::kernels {
namespace {
void check_status(dnnl_status_t status, const char* op, std::int64_t M, std::int64_t N, std::int64_t K) {
  SHIFTQ_CHECK(status == dnnl_success, Error, op, ": oneDNN failed with status ", static_cast<int>(status),
               " (M=", M, " N=", N, " K=", K, ")");
}
char flag(Trans t) { return t == Trans::N ? 'N' : 'T'; }
}  // namespace

bool cpu_has_int8_dot_product() {
  static const bool has = [] {
    const unsigned isa = static_cast<unsigned>(dnnl_get_effective_cpu_isa());
    const unsigned avx512_vnni = dnnl_cpu_isa_avx512_core_vnni, avx2_vnni = dnnl_cpu_isa_avx2_vnni;
    return (isa & avx512_vnni) == avx512_vnni || (isa & avx2_vnni) == avx2_vnni;
  }();
  return has;
}

void gemm_s8s8s32_onednn(Trans ta, Trans tb, std::int64_t M, std::int64_t N, std::int64_t K, const std::int8_t* A,
                         std::int64_t lda, const std::int8_t* B, std::int64_t ldb, std::int32_t* C, std::int64_t ldc) {
  const std::int32_t zero = 0;
  check_status(dnnl_gemm_s8s8s32(flag(ta), flag(tb), 'F', M, N, K, 1.0f, A, lda, 0, B, ldb, 0, 0.0f, C, ldc, &zero),
               "gemm_s8s8s32", M, N, K);
}

void gemm_u8s8s32_onednn(Trans ta, Trans tb, std::int64_t M, std::int64_t N, std::int64_t K, const std::uint8_t* A,
                         std::int64_t lda, const std::int8_t* B, std::int64_t ldb, std::int32_t* C, std::int64_t ldc,
                         const std::int32_t* col_offset) {
  const std::int32_t zero = 0;
  // offsetc 'R': one offset per column n (oneDNN: "individual offset within each row").
  check_status(dnnl_gemm_u8s8s32(flag(ta), flag(tb), col_offset ? 'R' : 'F', M, N, K, 1.0f, A, lda, 0, B, ldb, 0,
                                 0.0f, C, ldc, col_offset ? col_offset : &zero),
               "gemm_u8s8s32", M, N, K);
}

}  // namespace shiftq::kernels
