// Reference integer GEMMs: plain loops, int32 accumulation (parallel over rows only).
#include "core/parallel_for.hpp"
#include "shiftq/kernels/gemm_int.hpp"

namespace shiftq::kernels {
namespace {
template <class TA>
void gemm_ref(Trans ta, Trans tb, std::int64_t M, std::int64_t N, std::int64_t K, const TA* A, std::int64_t lda,
              const std::int8_t* B, std::int64_t ldb, std::int32_t* C, std::int64_t ldc, const std::int32_t* co) {
  detail::parallel_for(M, 4, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t m = begin; m < end; ++m)
      for (std::int64_t n = 0; n < N; ++n) {
        std::int32_t acc = co ? co[n] : 0;
        for (std::int64_t k = 0; k < K; ++k) {
          const std::int32_t a = ta == Trans::N ? A[m * lda + k] : A[k * lda + m];
          const std::int32_t b = tb == Trans::N ? B[k * ldb + n] : B[n * ldb + k];
          acc += a * b;
        }
        C[m * ldc + n] = acc;
      }
  });
}
}  // namespace

void gemm_s8s8s32_ref(Trans ta, Trans tb, std::int64_t M, std::int64_t N, std::int64_t K, const std::int8_t* A,
                      std::int64_t lda, const std::int8_t* B, std::int64_t ldb, std::int32_t* C, std::int64_t ldc) {
  gemm_ref(ta, tb, M, N, K, A, lda, B, ldb, C, ldc, nullptr);
}

void gemm_u8s8s32_ref(Trans ta, Trans tb, std::int64_t M, std::int64_t N, std::int64_t K, const std::uint8_t* A,
                      std::int64_t lda, const std::int8_t* B, std::int64_t ldb, std::int32_t* C, std::int64_t ldc,
                      const std::int32_t* col_offset) {
  gemm_ref(ta, tb, M, N, K, A, lda, B, ldb, C, ldc, col_offset);
}

}  // namespace shiftq::kernels
