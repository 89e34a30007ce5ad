// ShiftMM: one int8 GEMM equals the float GEMM of the dequantized operands.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include <shiftq/quant/shiftmm.hpp>
#include <shiftq/shiftq.hpp>

namespace shiftq::quant {
namespace {

Tensor heavy_tailed(std::int64_t rows, std::int64_t cols, Generator& gen) {
  Tensor t = Tensor::empty({rows, cols});
  float* p = t.data<float>();
  std::vector<float> col_range(cols), row_range(rows);
  for (auto& v : col_range) v = std::exp2(gen.uniform(-8.0f, 0.0f));
  for (auto& v : row_range) v = std::exp2(gen.uniform(-3.0f, 3.0f));
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) p[r * cols + c] = gen.normal() * col_range[c] * row_range[r];
  return t;
}

// Reference: the product of the dequantized operands in double.
std::vector<double> reference_product(const QTensor& a, Trans ta, const QTensor& b, Trans tb) {
  const std::int64_t M = ta == Trans::N ? a.rows() : a.cols(), K = ta == Trans::N ? a.cols() : a.rows();
  const std::int64_t N = tb == Trans::N ? b.cols() : b.rows();
  std::vector<double> out(M * N, 0.0);
  // Dequantize in double from the codes to avoid the f32 rounding of X^ itself.
  auto value = [](const QTensor& q, std::int64_t r, std::int64_t c) {
    const int axis = q.scale_axis();
    const double s = q.scales.data<float>()[axis < 0 ? 0 : (axis == 0 ? r : c)];
    return s * std::ldexp(1.0, -q.shift_budget) * q.codes.data<std::int8_t>()[r * q.cols() + c];
  };
  for (std::int64_t m = 0; m < M; ++m)
    for (std::int64_t n = 0; n < N; ++n) {
      double acc = 0.0;
      for (std::int64_t k = 0; k < K; ++k)
        acc += (ta == Trans::N ? value(a, m, k) : value(a, k, m)) * (tb == Trans::N ? value(b, k, n) : value(b, n, k));
      out[m * N + n] = acc;
    }
  return out;
}

struct Layout {
  Trans ta, tb;
};

TEST(ShiftMM, EqualsFloatGemmOfDequantizedOperandsForTheThreeTrainingGemms) {
  Generator gen(1);
  const std::int64_t N = 37, Cin = 45, Cout = 29;  // odd sizes
  const Tensor X = heavy_tailed(N, Cin, gen), W = heavy_tailed(Cout, Cin, gen), dY = heavy_tailed(N, Cout, gen);
  // Weights: ShiftQuant groups over Cout (axis 0), per-tensor base; reused in forward and dX.
  const QTensor Wq = quantize(W, QuantizeParams::shiftquant(4, 4, 0, OuterScale::per_tensor));
  // Forward Y = X W^T: X groups over Cin (axis 1), per-tensor outer (reused by dW).
  const QTensor Xq = quantize(X, QuantizeParams::shiftquant(4, 4, 1, OuterScale::per_tensor));
  // dX = dY W: dY groups over Cout (axis 1), per-row outer, stochastic.
  const QTensor dYrow = quantize(dY, QuantizeParams::shiftquant(4, 4, 1).with_rounding(Rounding::stochastic, {1, 1, 1}));
  // dW = dY^T X: dY groups over N (axis 0), per-column (per channel) outer.
  const QTensor dYcol = quantize(dY, QuantizeParams::shiftquant(4, 4, 0).with_rounding(Rounding::stochastic, {1, 1, 2}));
  struct Gemm {
    const QTensor *a, *b;
    Trans ta, tb;
  };
  for (const Gemm& g : {Gemm{&Xq, &Wq, Trans::N, Trans::T}, Gemm{&dYrow, &Wq, Trans::N, Trans::N},
                        Gemm{&dYcol, &Xq, Trans::T, Trans::N}}) {
    for (auto path : {kernels::KernelPath::reference, kernels::KernelPath::optimized}) {
      kernels::set_kernel_path(path);
      const Tensor C = shiftmm(*g.a, g.ta, *g.b, g.tb);
      const std::vector<double> ref = reference_product(*g.a, g.ta, *g.b, g.tb);
      ASSERT_EQ(static_cast<std::size_t>(C.numel()), ref.size());
      for (std::size_t i = 0; i < ref.size(); ++i)
        ASSERT_NEAR(C.data<float>()[i], ref[i], 4e-7 * std::fabs(ref[i]) + 1e-30) << "i=" << i;
    }
  }
  kernels::set_kernel_path(kernels::KernelPath::optimized);
}

TEST(ShiftMM, OptimizedAccumulatorBitExactAgainstReferenceAllTranspositions) {
  Generator gen(2);
  for (std::int64_t K : {1, 3, 17, 1000, 2050}) {
    for (Trans ta : {Trans::N, Trans::T})
      for (Trans tb : {Trans::N, Trans::T}) {
        const std::int64_t M = 19, N = 23;
        const Tensor A = ta == Trans::N ? heavy_tailed(M, K, gen) : heavy_tailed(K, M, gen);
        const Tensor B = tb == Trans::N ? heavy_tailed(K, N, gen) : heavy_tailed(N, K, gen);
        const QTensor qa = quantize(A, QuantizeParams::shiftquant(4, 4, ta == Trans::N ? 1 : 0));
        const QTensor qb = quantize(B, QuantizeParams::shiftquant(4, 4, tb == Trans::N ? 0 : 1));
        kernels::set_kernel_path(kernels::KernelPath::reference);
        const ShiftMMResult ref = shiftmm_s32(qa, ta, qb, tb);
        kernels::set_kernel_path(kernels::KernelPath::optimized);
        const ShiftMMResult fast = shiftmm_s32(qa, ta, qb, tb);
        EXPECT_EQ(fast.acc.to_vector<std::int32_t>(), ref.acc.to_vector<std::int32_t>()) << "K=" << K;
      }
  }
}

// Outputs above 4 MiB of int32 are computed in row blocks, each GEMM'd and scaled on its own (on
// the threads): the result must equal one GEMM over all rows (shiftmm_s32) scaled by the reference
// epilogue, for every transposition, both A code forms, a partial last block and 1 or 2 threads.
TEST(ShiftMM, RowBlockedLargeOutputsEqualOneGemmBitForBit) {
  Generator gen(7);
  const std::int64_t M = 1100, N = 1000, K = 24;  // 4.4 MB of int32: blocks of 262 rows, the last 52
  const int threads_before = get_num_threads();
  for (Trans ta : {Trans::N, Trans::T})
    for (Trans tb : {Trans::N, Trans::T})
      for (bool u8 : {false, true}) {
        SCOPED_TRACE(testing::Message() << "ta " << (ta == Trans::N ? "N" : "T") << " tb " << (tb == Trans::N ? "N" : "T")
                                        << (u8 ? " u8 A" : " s8 A"));
        const Tensor A = ta == Trans::N ? heavy_tailed(M, K, gen) : heavy_tailed(K, M, gen);
        const Tensor B = tb == Trans::N ? heavy_tailed(K, N, gen) : heavy_tailed(N, K, gen);
        QuantizeParams pa = QuantizeParams::shiftquant(4, 4, ta == Trans::N ? 1 : 0);
        const QTensor qa = quantize(A, u8 ? pa.with_unsigned_codes() : pa);
        const QTensor qb = quantize(B, QuantizeParams::shiftquant(4, 4, tb == Trans::N ? 0 : 1));
        const ShiftMMResult acc = shiftmm_s32(qa, ta, qb, tb);
        std::vector<float> expected(static_cast<std::size_t>(M * N));
        const kernels::ScaleEpilogue e{acc.row_scale.data<float>(), 1, acc.shift_scale, acc.col_scale.data<float>(), 1,
                                       nullptr};
        kernels::scale_s32_f32_ref(acc.acc.data<std::int32_t>(), N, e, 0, M, N, expected.data(), N);
        for (int threads : {1, 2}) {
          set_num_threads(threads);
          EXPECT_EQ(shiftmm(qa, ta, qb, tb).to_vector<float>(), expected) << threads << " threads";
        }
      }
  set_num_threads(threads_before);
}

TEST(ShiftMM, ShiftQuantProductBeatsPerTensorOnHeavyTailedGradients) {
  // The point of the method: dX = dY W with 4-bit ShiftQuant dY is far closer to the fp32 product
  // than with 4-bit per-tensor dY.
  Generator gen(3);
  const Tensor dY = heavy_tailed(256, 128, gen), W = Tensor::randn({128, 96}, gen, 0.1f);
  const Tensor exact = matmul(dY, W);
  const QTensor Wq = quantize(W, QuantizeParams::shiftquant(8, 0, 0, OuterScale::per_tensor));
  auto err = [&](const QuantizeParams& p) {
    const Tensor C = shiftmm(quantize(dY, p), Trans::N, Wq, Trans::N);
    double e = 0.0;
    for (std::int64_t i = 0; i < C.numel(); ++i) e += std::pow(C.data<float>()[i] - exact.data<float>()[i], 2);
    return e;
  };
  EXPECT_LT(err(QuantizeParams::shiftquant(4, 4, 1)) * 3.0, err(QuantizeParams::per_tensor(4)));
}

TEST(ShiftMM, UnsignedCodesAndPrecomputedSumsGiveTheSameProduct) {
  // A quantized straight to u8 (v + 128) and B with cached row/column sums take the fast path's
  // shortcuts; the result must be identical to the plain s8 operands.
  Generator gen(5);
  for (Trans tb : {Trans::N, Trans::T}) {
    const Tensor A = heavy_tailed(33, 70, gen);
    const Tensor B = tb == Trans::N ? heavy_tailed(70, 21, gen) : heavy_tailed(21, 70, gen);
    const QuantizeParams pa = QuantizeParams::shiftquant(4, 4, 1).with_rounding(Rounding::stochastic, {4, 4, 4});
    const QTensor a_s8 = quantize(A, pa);
    QuantizeParams pa_u8 = pa;
    const QTensor a_u8 = quantize(A, pa_u8.with_unsigned_codes());
    ASSERT_EQ(a_u8.codes.dtype(), DType::u8);
    EXPECT_EQ(a_u8.signed_codes().to_vector<std::int8_t>(), a_s8.codes.to_vector<std::int8_t>());
    EXPECT_EQ(a_u8.dequantize().to_vector<float>(), a_s8.dequantize().to_vector<float>());
    const QTensor b_plain = quantize(B, QuantizeParams::shiftquant(4, 4, tb == Trans::N ? 0 : 1));
    QTensor b_sums = b_plain;
    b_sums.compute_sums();
    const std::vector<float> expected = shiftmm(a_s8, Trans::N, b_plain, tb).to_vector<float>();
    EXPECT_EQ(shiftmm(a_u8, Trans::N, b_plain, tb).to_vector<float>(), expected);
    EXPECT_EQ(shiftmm(a_u8, Trans::N, b_sums, tb).to_vector<float>(), expected);
    EXPECT_EQ(shiftmm(a_s8, Trans::N, b_sums, tb).to_vector<float>(), expected);
    // The sums themselves.
    const std::int8_t* v = b_plain.codes.data<std::int8_t>();
    std::int32_t row0 = 0, col0 = 0;
    for (std::int64_t c = 0; c < b_plain.cols(); ++c) row0 += v[c];
    for (std::int64_t r = 0; r < b_plain.rows(); ++r) col0 += v[r * b_plain.cols()];
    EXPECT_EQ(b_sums.row_sums.data<std::int32_t>()[0], row0);
    EXPECT_EQ(b_sums.col_sums.data<std::int32_t>()[0], col0);
  }
}

TEST(ShiftMM, RejectsScalesAlongTheContractionAxisAndMismatchedShapes) {
  Generator gen(4);
  const Tensor A = Tensor::randn({8, 16}, gen), B = Tensor::randn({16, 4}, gen);
  const QTensor a_rows = quantize(A, QuantizeParams::shiftquant(4, 4, 1));  // scales along M: fine for N
  const QTensor b_cols = quantize(B, QuantizeParams::shiftquant(4, 4, 0));  // scales along N: fine for N
  EXPECT_NO_THROW(shiftmm(a_rows, Trans::N, b_cols, Trans::N));
  EXPECT_THROW(shiftmm(a_rows, Trans::T, b_cols, Trans::N), ShapeError);  // op(A) = [16, 8] vs [16, 4]
  const QTensor a_bad = quantize(A, QuantizeParams::shiftquant(4, 4, 0));  // scales per column = along K
  EXPECT_THROW(shiftmm(a_bad, Trans::N, b_cols, Trans::N), ValueError);
  const QTensor b_bad = quantize(B, QuantizeParams::shiftquant(4, 4, 1));  // scales per row = along K
  EXPECT_THROW(shiftmm(a_rows, Trans::N, b_bad, Trans::N), ValueError);
}

}  // namespace
}  // namespace shiftq::quant
