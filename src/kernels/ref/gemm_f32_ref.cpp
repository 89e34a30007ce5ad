// Reference fp32 GEMM through Eigen (row-major maps over the caller's buffers).
#include <Eigen/Core>

#include "shiftq/kernels/gemm.hpp"

namespace shiftq::kernels {
namespace {
using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstMap = Eigen::Map<const RowMajor, 0, Eigen::OuterStride<>>;
using Map = Eigen::Map<RowMajor, 0, Eigen::OuterStride<>>;
}  // namespace

void gemm_f32_ref(Trans ta, Trans tb, std::int64_t M, std::int64_t N, std::int64_t K, float alpha,
                  const float* A, std::int64_t lda, const float* B, std::int64_t ldb, float beta,
                  float* C, std::int64_t ldc) {
  const ConstMap a(A, ta == Trans::N ? M : K, ta == Trans::N ? K : M, Eigen::OuterStride<>(lda));
  const ConstMap b(B, tb == Trans::N ? K : N, tb == Trans::N ? N : K, Eigen::OuterStride<>(ldb));
  Map c(C, M, N, Eigen::OuterStride<>(ldc));
  if (beta == 0.0f)
    c.setZero();
  else if (beta != 1.0f)
    c *= beta;
  if (ta == Trans::N && tb == Trans::N) c.noalias() += alpha * a * b;
  if (ta == Trans::N && tb == Trans::T) c.noalias() += alpha * a * b.transpose();
  if (ta == Trans::T && tb == Trans::N) c.noalias() += alpha * a.transpose() * b;
  if (ta == Trans::T && tb == Trans::T) c.noalias() += alpha * a.transpose() * b.transpose();
}

}  // namespace shiftq::kernels
