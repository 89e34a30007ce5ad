#include "shiftq/quant/shiftmm.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/parallel_for.hpp"
#include "quant/shiftmm_internal.hpp"
#include "shiftq/kernels/epilogue.hpp"
#include "shiftq/kernels/gemm_int.hpp"
#include "shiftq/kernels/quantize.hpp"

namespace shiftq::quant {
namespace internal {
std::vector<std::int32_t> u8_compensation(const Tensor& cached_sums, const std::int8_t* B, Trans tb, std::int64_t K,
                                          std::int64_t N) {
  std::vector<std::int32_t> sums(N, 0);
  if (cached_sums.defined() && cached_sums.numel() == N) {
    std::copy_n(cached_sums.data<std::int32_t>(), N, sums.begin());
  } else if (tb == Trans::N) {  // B: [K, N]: its column sums (the kernel's row sums are not needed)
    std::vector<std::int32_t> row_sums(static_cast<std::size_t>(K));
    kernels::code_sums_s8(B, 0, K, N, row_sums.data(), sums.data());
  } else {  // B: [N, K]
    detail::parallel_for(N, 64, [&](std::int64_t n0, std::int64_t n1) {
      for (std::int64_t n = n0; n < n1; ++n) {
        std::int32_t acc = 0;
        for (std::int64_t k = 0; k < K; ++k) acc += B[n * K + k];
        sums[n] = acc;
      }
    });
  }
  for (auto& v : sums) v *= -128;
  return sums;
}

Tensor flip_code_form(const Tensor& codes, DType to) {
  Tensor out = Tensor::uninitialized(codes.shape(), to);
  // The pointers in locals of the loop: read through the closure, every byte store (which may alias
  // anything, the closure included) made the loop reload them, and it ran scalar (~3.5% of the int8
  // Linear 256x1024x1024 step).
  const std::uint8_t* src = codes.dtype() == DType::u8 ? codes.data<std::uint8_t>()
                                                       : reinterpret_cast<const std::uint8_t*>(codes.data<std::int8_t>());
  std::uint8_t* dst = to == DType::u8 ? out.data<std::uint8_t>() : reinterpret_cast<std::uint8_t*>(out.data<std::int8_t>());
  detail::parallel_for(codes.numel(), 1 << 16, [src, dst](std::int64_t i0, std::int64_t i1) {
    const std::uint8_t* __restrict in = src;
    std::uint8_t* __restrict flipped = dst;
    for (std::int64_t i = i0; i < i1; ++i) flipped[i] = static_cast<std::uint8_t>(in[i] ^ 0x80u);
  });
  return out;
}
}  // namespace internal

namespace {
void check_operand(const QTensor& q, const char* which) {
  check_defined(q.codes, "shiftmm", which);
  SHIFTQ_CHECK(q.codes.dtype() == DType::s8 || q.codes.dtype() == DType::u8, DTypeError, "shiftmm: operand ", which,
               " codes must be s8 or u8, got ", q.codes.str());
  SHIFTQ_CHECK(q.codes.dim() == 2, ShapeError, "shiftmm: operand ", which, " must be 2-D, got ", q.codes.str());
  check_dtype(q.scales, DType::f32, "shiftmm", which);
}

struct GemmShape {
  std::int64_t M, N, K;
};

GemmShape check_operands(const QTensor& a, Trans ta, const QTensor& b, Trans tb) {
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
  return {M, N, K};
}

// The operands of one int32 product, in the forms the GEMM kernel takes, prepared once for all
// row blocks of the output.
struct IntegerOperands {
  Tensor a, b;                        // A's codes as u8 (u8 path) or s8; B's as s8
  std::vector<std::int32_t> offsets;  // u8 path: -128 * colsum(op(B))
  bool u8_path = false;
};

IntegerOperands integer_operands(const QTensor& a, const QTensor& b, Trans tb, const GemmShape& s) {
  IntegerOperands o;
  o.b = b.signed_codes();
  o.u8_path = s.K <= kernels::kMaxGemmKu8s8 && kernels::int_gemm_prefers_u8(a.unsigned_codes());
  if (!o.u8_path) {
    o.a = a.signed_codes();
    return o;
  }
  // oneDNN's fastest int8 GEMM takes an unsigned A: A as u8 = v + 128 (quantize it that way to skip
  // the conversion), with 128 * colsum(B) subtracted through the GEMM's column offsets. Exact.
  o.a = a.unsigned_codes() ? a.codes : internal::flip_code_form(a.codes, DType::u8);
  // B's precomputed sums when it has them (weights packed once per step).
  o.offsets = internal::u8_compensation(tb == Trans::N ? b.col_sums : b.row_sums, o.b.data<std::int8_t>(), tb, s.K,
                                        s.N);
  return o;
}

// acc rows [m0, m1) of op(A) op(B) into `c` (its row m0; ldc = N).
void integer_product_rows(const IntegerOperands& o, Trans ta, Trans tb, const GemmShape& s, std::int64_t lda,
                          std::int64_t ldb, std::int64_t m0, std::int64_t m1, std::int32_t* c) {
  const std::int64_t a_offset = ta == Trans::N ? m0 * lda : m0;  // row m0 of op(A)
  const std::int8_t* pb = o.b.data<std::int8_t>();
  if (o.u8_path)
    kernels::gemm_u8s8s32(ta, tb, m1 - m0, s.N, s.K, o.a.data<std::uint8_t>() + a_offset, lda, pb, ldb, c, s.N,
                          o.offsets.data());
  else
    kernels::gemm_s8s8s32(ta, tb, m1 - m0, s.N, s.K, o.a.data<std::int8_t>() + a_offset, lda, pb, ldb, c, s.N);
}

// acc[M, N] = sum_k vA vB into `c` (ldc = N).
void integer_product(const QTensor& a, Trans ta, const QTensor& b, Trans tb, const GemmShape& s, std::int32_t* c) {
  integer_product_rows(integer_operands(a, b, tb, s), ta, tb, s, a.cols(), b.cols(), 0, s.M, c);
}

// K too long for one int32 accumulation: s8 GEMMs over K chunks, summed exactly in int64, then
// scaled. Rare (conv weight gradients over > 133k pixels); the chunks are pointer offsets.
void chunked_product_f32(const QTensor& a, Trans ta, const QTensor& b, Trans tb, const GemmShape& s, float* out,
                         float shift) {
  const Tensor va = a.signed_codes(), vb = b.signed_codes();
  const std::int8_t* pa = va.data<std::int8_t>();
  const std::int8_t* pb = vb.data<std::int8_t>();
  const std::int64_t lda = a.cols(), ldb = b.cols(), chunk = kernels::kMaxGemmKs8s8;
  std::vector<std::int64_t> total(static_cast<std::size_t>(s.M * s.N), 0);
  std::vector<std::int32_t> part(static_cast<std::size_t>(s.M * s.N));
  for (std::int64_t k0 = 0; k0 < s.K; k0 += chunk) {
    const std::int64_t kc = std::min(chunk, s.K - k0);
    kernels::gemm_s8s8s32(ta, tb, s.M, s.N, kc, pa + (ta == Trans::N ? k0 : k0 * lda), lda,
                          pb + (tb == Trans::N ? k0 * ldb : k0), ldb, part.data(), s.N);
    for (std::size_t i = 0; i < part.size(); ++i) total[i] += part[i];
  }
  const float* rs = a.scales.data<float>();
  const float* cs = b.scales.data<float>();
  for (std::int64_t m = 0; m < s.M; ++m)
    for (std::int64_t n = 0; n < s.N; ++n)
      out[m * s.N + n] = static_cast<float>(total[m * s.N + n]) *
                         (((a.scale_axis() >= 0 ? rs[m] : rs[0]) * shift) * (b.scale_axis() >= 0 ? cs[n] : cs[0]));
}
}  // namespace

ShiftMMResult shiftmm_s32(const QTensor& a, Trans ta, const QTensor& b, Trans tb) {
  const GemmShape s = check_operands(a, ta, b, tb);
  SHIFTQ_CHECK(s.K <= kernels::kMaxGemmKs8s8, ValueError, "shiftmm_s32: K=", s.K, " exceeds ", kernels::kMaxGemmKs8s8,
               ", the largest contraction whose int32 accumulation cannot overflow (shiftmm() splits it)");
  ShiftMMResult out;
  out.acc = Tensor::uninitialized({s.M, s.N}, DType::s32);
  out.row_scale = a.scales;
  out.col_scale = b.scales;
  out.shift_scale = std::ldexp(1.0f, -(a.shift_budget + b.shift_budget));
  integer_product(a, ta, b, tb, s, out.acc.data<std::int32_t>());
  return out;
}

namespace {
// Rows of the output per block of shiftmm_into. The int32 -> f32 scaling, a separate pass over a
// large output, reads the accumulator back from memory (a 4096 x 1024 output: 18% of its shiftmm's
// time at 1 thread, 6.6% of the 6-bit char-GPT step). Row blocks of about kBlockBytes of int32 are
// scaled right after their GEMM, while in cache. Outputs up to 4 blocks keep one GEMM call: every
// block's call repacks op(B) (64-row blocks made a 256 x 4096 x 1024 product 10% slower).
std::int64_t product_row_block(const GemmShape& s) {
  constexpr std::int64_t kBlockBytes = std::int64_t{1} << 20;
  if (s.M * s.N * static_cast<std::int64_t>(sizeof(std::int32_t)) <= 4 * kBlockBytes) return s.M;
  return std::max<std::int64_t>(64, kBlockBytes / (static_cast<std::int64_t>(sizeof(std::int32_t)) * s.N));
}
}  // namespace

namespace internal {
void shiftmm_into(const QTensor& a, Trans ta, const QTensor& b, Trans tb, const float* bias, float* o) {
  const GemmShape s = check_operands(a, ta, b, tb);
  const float shift = std::ldexp(1.0f, -(a.shift_budget + b.shift_budget));
  if (s.K > kernels::kMaxGemmKs8s8) {
    chunked_product_f32(a, ta, b, tb, s, o, shift);
    if (bias)
      for (std::int64_t i = 0; i < s.M * s.N; ++i) o[i] += bias[i % s.N];
    return;
  }
  // The int32 accumulator is written into the output's own storage, then scaled to f32 in place
  // (kernels::scale_s32_f32 reads each element as int32 before storing its float).
  std::int32_t* acc = static_cast<std::int32_t*>(static_cast<void*>(o));
  // C = acc * ((s_m * 2^-(S_A+S_B)) * t_n) (+ bias)
  const kernels::ScaleEpilogue epilogue{a.scales.data<float>(), a.scale_axis() >= 0 ? 1 : 0, shift,
                                        b.scales.data<float>(), b.scale_axis() >= 0 ? 1 : 0, bias};
  const IntegerOperands operands = integer_operands(a, b, tb, s);
  const std::int64_t block = product_row_block(s);
  if (block >= s.M) {
    integer_product_rows(operands, ta, tb, s, a.cols(), b.cols(), 0, s.M, acc);
    detail::parallel_for(s.M, std::max<std::int64_t>(1, 16384 / std::max<std::int64_t>(s.N, 1)),
                         [&](std::int64_t m0, std::int64_t m1) {
                           kernels::scale_s32_f32(acc, s.N, epilogue, m0, m1, s.N, o, s.N);
                         });
    return;
  }
  // Row blocks on the threads, each GEMM'd and scaled while its accumulator is in cache.
  detail::parallel_for_dynamic((s.M + block - 1) / block, 1, [&](std::int64_t b0, std::int64_t b1) {
    for (std::int64_t blk = b0; blk < b1; ++blk) {
      const std::int64_t m0 = blk * block, m1 = std::min(s.M, m0 + block);
      integer_product_rows(operands, ta, tb, s, a.cols(), b.cols(), m0, m1, acc + m0 * s.N);
      kernels::scale_s32_f32(acc, s.N, epilogue, m0, m1, s.N, o, s.N);
    }
  });
}
}  // namespace internal

Tensor shiftmm(const QTensor& a, Trans ta, const QTensor& b, Trans tb, const Tensor& col_bias) {
  const GemmShape s = check_operands(a, ta, b, tb);
  if (col_bias.defined())
    SHIFTQ_CHECK(col_bias.dtype() == DType::f32 && col_bias.numel() == s.N, ShapeError, "shiftmm: bias ",
                 col_bias.str(), " must be f32 with ", s.N, " elements");
  Tensor out = Tensor::uninitialized({s.M, s.N}, DType::f32);
  internal::shiftmm_into(a, ta, b, tb, col_bias.defined() ? col_bias.data<float>() : nullptr, out.data<float>());
  return out;
}

}  // namespace shiftq::quant
