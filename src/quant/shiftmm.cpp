#include "shiftq/quant/shiftmm.hpp"

#include <cmath>
#include <vector>

#include "detail/parallel.hpp"
#include "shiftq/kernels/gemm_int.hpp"

namespace shiftq::quant {
namespace {
// -128 * sum_k op(B)[k, n]: compensates A stored as u8 = v + 128.
std::vector<std::int32_t> u8_compensation(const std::int8_t* B, Trans tb, std::int64_t K, std::int64_t N) {
  std::vector<std::int32_t> sums(N, 0);
  if (tb == Trans::N) {  // B: [K, N]
    for (std::int64_t k = 0; k < K; ++k)
      for (std::int64_t n = 0; n < N; ++n) sums[n] += B[k * N + n];
  } else {  // B: [N, K]
    for (std::int64_t n = 0; n < N; ++n) {
      std::int32_t s = 0;
      for (std::int64_t k = 0; k < K; ++k) s += B[n * K + k];
      sums[n] = s;
    }
  }
  for (auto& s : sums) s *= -128;
  return sums;
}

void check_operand(const QTensor& q, const char* which) {
  check_dtype(q.codes, DType::s8, "shiftmm", which);
  SHIFTQ_CHECK(q.codes.dim() == 2, ShapeError, "shiftmm: operand ", which, " must be 2-D, got ", q.codes.str());
  check_dtype(q.scales, DType::f32, "shiftmm", which);
}
}  // namespace

ShiftMMResult shiftmm_s32(const QTensor& a, Trans ta, const QTensor& b, Trans tb) {
  check_operand(a, "a");
  check_operand(b, "b");
  const std::int64_t M = ta == Trans::N ? a.rows() : a.cols(), K = ta == Trans::N ? a.cols() : a.rows();
  const std::int64_t Kb = tb == Trans::N ? b.rows() : b.cols(), N = tb == Trans::N ? b.cols() : b.rows();
  SHIFTQ_CHECK(K == Kb, ShapeError, "shiftmm: contraction sizes differ: op(A) is [", M, ", ", K, "], op(B) is [",
               Kb, ", ", N, "]");
  const int a_axis = ta == Trans::N ? 0 : 1, b_axis = tb == Trans::N ? 1 : 0;
  SHIFTQ_CHECK(a.scale_axis() < 0 || a.scale_axis() == a_axis, ValueError,
               "shiftmm: A's outer scales run along the contraction axis; quantize A with inner_axis=",
               ta == Trans::N ? 1 : 0, " (power-of-two groups along K) instead");
  SHIFTQ_CHECK(b.scale_axis() < 0 || b.scale_axis() == b_axis, ValueError,
               "shiftmm: B's outer scales run along the contraction axis; quantize B with inner_axis=",
               tb == Trans::N ? 0 : 1, " (power-of-two groups along K) instead");
  SHIFTQ_CHECK(K <= kernels::kMaxGemmKs8s8, ValueError, "shiftmm: K=", K, " exceeds ", kernels::kMaxGemmKs8s8,
               ", the largest contraction whose int32 accumulation cannot overflow");

  ShiftMMResult out;
  out.acc = Tensor::empty({M, N}, DType::s32);
  out.row_scale = a.scales;
  out.col_scale = b.scales;
  out.shift_scale = std::ldexp(1.0f, -(a.shift_budget + b.shift_budget));
  const std::int64_t lda = a.cols(), ldb = b.cols();
  const std::int8_t* pa = a.codes.data<std::int8_t>();
  const std::int8_t* pb = b.codes.data<std::int8_t>();
  std::int32_t* pc = out.acc.data<std::int32_t>();
  const bool u8_path = kernels::kernel_path() == kernels::KernelPath::optimized &&
                       kernels::cpu_has_int8_dot_product() && K <= kernels::kMaxGemmKu8s8;
  if (!u8_path) {
    kernels::gemm_s8s8s32(ta, tb, M, N, K, pa, lda, pb, ldb, pc, N);
    return out;
  }
  // oneDNN's fastest int8 GEMM takes an unsigned A: store A as v + 128 (= v ^ 0x80) and subtract
  // 128 * colsum(B) through the GEMM's column offsets. Exact: the sum is the same integer.
  Tensor a_u8 = Tensor::empty(a.codes.shape(), DType::u8);
  const std::uint8_t* src = reinterpret_cast<const std::uint8_t*>(pa);
  std::uint8_t* dst = a_u8.data<std::uint8_t>();
  detail::parallel_for(a.codes.numel(), 1 << 16, [&](std::int64_t i0, std::int64_t i1) {
    for (std::int64_t i = i0; i < i1; ++i) dst[i] = src[i] ^ 0x80u;
  });
  const std::vector<std::int32_t> offsets = u8_compensation(pb, tb, K, N);
  kernels::gemm_u8s8s32(ta, tb, M, N, K, dst, lda, pb, ldb, pc, N, offsets.data());
  return out;
}

Tensor shiftmm(const QTensor& a, Trans ta, const QTensor& b, Trans tb) {
  const ShiftMMResult r = shiftmm_s32(a, ta, b, tb);
  const std::int64_t M = r.acc.size(0), N = r.acc.size(1);
  Tensor out = Tensor::empty({M, N});
  const std::int32_t* acc = r.acc.data<std::int32_t>();
  const float* rs = r.row_scale.data<float>();
  const float* cs = r.col_scale.data<float>();
  const bool row_per_index = r.row_scale.numel() > 1 || M == 1, col_per_index = r.col_scale.numel() > 1 || N == 1;
  float* o = out.data<float>();
  // C = acc * ((s_m * 2^-(S_A+S_B)) * t_n)
  detail::parallel_for(M, std::max<std::int64_t>(1, 16384 / std::max<std::int64_t>(N, 1)), [&](std::int64_t m0, std::int64_t m1) {
    for (std::int64_t m = m0; m < m1; ++m) {
      const float row = (row_per_index ? rs[m] : rs[0]) * r.shift_scale;
      for (std::int64_t n = 0; n < N; ++n)
        o[m * N + n] = static_cast<float>(acc[m * N + n]) * (row * (col_per_index ? cs[n] : cs[0]));
    }
  });
  return out;
}

}  // namespace shiftq::quant
