#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include "shiftq/core/error.hpp"
#include "kernels/gemm_impl.hpp"

namespace shiftq::kernels {
namespace {
KernelPath path_from_env() {
  const char* env = std::getenv("SHIFTQ_KERNELS");
  if (env == nullptr || std::string_view(env).empty() || std::string_view(env) == "optimized")
    return KernelPath::optimized;
  if (std::string_view(env) == "reference") return KernelPath::reference;
  throw ValueError(detail::cat("SHIFTQ_KERNELS='", env, "': expected 'reference' or 'optimized'"));
}

std::atomic<KernelPath>& current_path() {
  static std::atomic<KernelPath> path{path_from_env()};
  return path;
}
}  // namespace

void set_kernel_path(KernelPath path) { current_path().store(path); }
KernelPath kernel_path() { return current_path().load(); }

void gemm_f32(Trans ta, Trans tb, std::int64_t M, std::int64_t N, std::int64_t K, float alpha,
              const float* A, std::int64_t lda, const float* B, std::int64_t ldb, float beta,
              float* C, std::int64_t ldc) {
  SHIFTQ_CHECK(M >= 0 && N >= 0 && K >= 0, ShapeError, "gemm_f32: negative size M=", M, " N=", N,
               " K=", K);
  SHIFTQ_CHECK(lda >= (ta == Trans::N ? K : M) && ldb >= (tb == Trans::N ? N : K) && ldc >= N,
               ShapeError, "gemm_f32: leading dimension too small (lda=", lda, " ldb=", ldb,
               " ldc=", ldc, " for M=", M, " N=", N, " K=", K, ")");
  if (M == 0 || N == 0) return;
  if (K == 0) {  // empty sum: C = beta * C
    for (std::int64_t i = 0; i < M; ++i)
      for (std::int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
    return;
  }
  if (kernel_path() == KernelPath::reference)
    gemm_f32_ref(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  else
    gemm_f32_onednn(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace shiftq::kernels
