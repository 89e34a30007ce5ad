// fp32 GEMM: oneDNN and reference (Eigen) paths against a double-precision loop, the dispatcher,
// alpha/beta semantics, leading dimensions and argument checks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <vector>

#include "kernels/gemm_impl.hpp"  // the implementations behind gemm_f32
#include "testing/gradcheck.hpp"

namespace shiftq {
namespace {
using kernels::KernelPath;
using kernels::Trans;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// Restores the process-wide kernel path on scope exit.
class KernelPathGuard {
 public:
  KernelPathGuard() : saved_(kernels::kernel_path()) {}
  ~KernelPathGuard() { kernels::set_kernel_path(saved_); }

 private:
  KernelPath saved_;
};

// A row-major matrix of `rows` x `cols` stored with leading dimension `ld`; the padding columns
// hold NaN so a kernel that reads outside the matrix poisons its result.
struct Matrix {
  std::int64_t rows, cols, ld;
  std::vector<float> data;
  Matrix(std::int64_t r, std::int64_t c, std::int64_t l, Generator& gen, float pad = kNaN)
      : rows(r), cols(c), ld(l), data(static_cast<std::size_t>(std::max<std::int64_t>(r * l, 1)), pad) {
    for (std::int64_t i = 0; i < r; ++i)
      for (std::int64_t j = 0; j < c; ++j) at(i, j) = gen.uniform(-1.0f, 1.0f);
  }
  float& at(std::int64_t i, std::int64_t j) { return data[static_cast<std::size_t>(i * ld + j)]; }
  float at(std::int64_t i, std::int64_t j) const { return data[static_cast<std::size_t>(i * ld + j)]; }
};

struct Case {
  Trans ta, tb;
  std::int64_t M, N, K;
  float alpha = 1.0f, beta = 0.0f;
  std::int64_t pad_a = 0, pad_b = 0, pad_c = 0;  // extra leading-dimension elements
};

std::string describe(const Case& c) {
  std::ostringstream os;
  os << "ta=" << (c.ta == Trans::N ? 'N' : 'T') << " tb=" << (c.tb == Trans::N ? 'N' : 'T') << " M=" << c.M
     << " N=" << c.N << " K=" << c.K << " alpha=" << c.alpha << " beta=" << c.beta << " pads=" << c.pad_a
     << "," << c.pad_b << "," << c.pad_c;
  return os.str();
}

using GemmFn = void (*)(Trans, Trans, std::int64_t, std::int64_t, std::int64_t, float, const float*,
                        std::int64_t, const float*, std::int64_t, float, float*, std::int64_t);

// Runs `fn` on one case and compares it with a double-precision loop (and checks the padding of C
// is untouched). The tolerance grows with sqrt(K) and the magnitude of the result.
void check_case(GemmFn fn, const char* name, const Case& c, std::uint64_t seed) {
  Generator gen(seed);
  // A is [M,K] (N) or [K,M] (T); B is [K,N] (N) or [N,K] (T).
  const std::int64_t a_rows = c.ta == Trans::N ? c.M : c.K, a_cols = c.ta == Trans::N ? c.K : c.M;
  const std::int64_t b_rows = c.tb == Trans::N ? c.K : c.N, b_cols = c.tb == Trans::N ? c.N : c.K;
  const Matrix A(a_rows, a_cols, a_cols + c.pad_a, gen);
  const Matrix B(b_rows, b_cols, b_cols + c.pad_b, gen);
  Matrix C(c.M, c.N, c.N + c.pad_c, gen, -777.0f);
  const Matrix C0 = C;
  auto op_a = [&](std::int64_t i, std::int64_t k) { return c.ta == Trans::N ? A.at(i, k) : A.at(k, i); };
  auto op_b = [&](std::int64_t k, std::int64_t j) { return c.tb == Trans::N ? B.at(k, j) : B.at(j, k); };

  fn(c.ta, c.tb, c.M, c.N, c.K, c.alpha, A.data.data(), A.ld, B.data.data(), B.ld, c.beta, C.data.data(), C.ld);

  int failures = 0;
  for (std::int64_t i = 0; i < c.M; ++i) {
    for (std::int64_t j = 0; j < c.N; ++j) {
      double dot = 0.0;
      for (std::int64_t k = 0; k < c.K; ++k) dot += static_cast<double>(op_a(i, k)) * op_b(k, j);
      const double expected = c.alpha * dot + (c.beta == 0.0f ? 0.0 : c.beta * static_cast<double>(C0.at(i, j)));
      const double tol = 1e-4 * std::sqrt(static_cast<double>(std::max<std::int64_t>(c.K, 1))) *
                         std::max(1.0, std::abs(expected));
      if (!(std::abs(C.at(i, j) - expected) <= tol) && failures++ < 5)
        ADD_FAILURE() << name << " " << describe(c) << " C[" << i << "," << j << "] = " << C.at(i, j)
                      << ", expected " << expected;
    }
    for (std::int64_t j = c.N; j < C.ld; ++j)
      if (C.at(i, j) != -777.0f && failures++ < 5)
        ADD_FAILURE() << name << " " << describe(c) << " wrote into the padding of C at [" << i << "," << j << "]";
  }
}

void check_both(const Case& c, std::uint64_t seed) {
  check_case(&kernels::gemm_f32_onednn, "onednn", c, seed);
  check_case(&kernels::gemm_f32_ref, "reference", c, seed);
}

const Trans kTrans[] = {Trans::N, Trans::T};

TEST(Gemm, AllTranspositionsAndShapes) {
  const std::int64_t sizes[] = {1, 3, 17, 64, 130};
  std::uint64_t seed = 1;
  for (Trans ta : kTrans)
    for (Trans tb : kTrans)
      for (std::int64_t M : sizes)
        for (std::int64_t N : sizes)
          for (std::int64_t K : sizes) {
            // The full cube for the small sizes; the large ones with the rest kept small.
            if ((M >= 64) + (N >= 64) + (K >= 64) > 1) continue;
            check_both(Case{ta, tb, M, N, K}, seed++);
          }
}

TEST(Gemm, LargeSquareAllTranspositions) {
  std::uint64_t seed = 500;
  for (Trans ta : kTrans)
    for (Trans tb : kTrans) check_both(Case{ta, tb, 130, 64, 130}, seed++);
}

TEST(Gemm, LongInnerDimension) {
  std::uint64_t seed = 600;
  for (Trans ta : kTrans)
    for (Trans tb : kTrans) check_both(Case{ta, tb, 17, 33, 1000}, seed++);
}

TEST(Gemm, AlphaAndBeta) {
  std::uint64_t seed = 700;
  for (Trans ta : kTrans)
    for (Trans tb : kTrans)
      for (auto [alpha, beta] : {std::pair{0.5f, 0.0f}, std::pair{1.0f, 1.0f}, std::pair{-2.0f, 0.25f},
                                 std::pair{0.0f, 1.0f}, std::pair{1.5f, -1.0f}})
        check_both(Case{ta, tb, 17, 64, 3, alpha, beta}, seed++);
}

TEST(Gemm, LeadingDimensionsLargerThanTheMinimum) {
  std::uint64_t seed = 800;
  for (Trans ta : kTrans)
    for (Trans tb : kTrans) {
      check_both(Case{ta, tb, 17, 3, 64, 1.0f, 0.0f, 5, 7, 3}, seed++);
      check_both(Case{ta, tb, 64, 17, 3, 0.5f, 1.0f, 1, 13, 11}, seed++);
    }
}

// beta == 0 overwrites C, even where C holds NaN.
TEST(Gemm, BetaZeroOverwritesNaN) {
  Generator gen(9);
  for (GemmFn fn : {&kernels::gemm_f32_onednn, &kernels::gemm_f32_ref, &kernels::gemm_f32}) {
    for (Trans ta : kTrans) {
      const std::int64_t M = 5, N = 6, K = 7;
      Matrix A(ta == Trans::N ? M : K, ta == Trans::N ? K : M, ta == Trans::N ? K : M, gen);
      Matrix B(K, N, N, gen);
      std::vector<float> C(M * N, kNaN);
      fn(ta, Trans::N, M, N, K, 1.0f, A.data.data(), A.ld, B.data.data(), B.ld, 0.0f, C.data(), N);
      for (float v : C) ASSERT_TRUE(std::isfinite(v));
    }
  }
}

TEST(Gemm, BetaOneAccumulatesRepeatedCalls) {
  Generator gen(10);
  const std::int64_t M = 4, N = 5, K = 6;
  Matrix A(M, K, K, gen), B(K, N, N, gen);
  for (GemmFn fn : {&kernels::gemm_f32_onednn, &kernels::gemm_f32_ref}) {
    std::vector<float> once(M * N, 0.0f), thrice(M * N, 0.0f);
    fn(Trans::N, Trans::N, M, N, K, 1.0f, A.data.data(), K, B.data.data(), N, 0.0f, once.data(), N);
    for (int r = 0; r < 3; ++r)
      fn(Trans::N, Trans::N, M, N, K, 1.0f, A.data.data(), K, B.data.data(), N, 1.0f, thrice.data(), N);
    for (std::size_t i = 0; i < once.size(); ++i) EXPECT_NEAR(thrice[i], 3.0f * once[i], 1e-5f);
  }
}

TEST(Gemm, KnownSmallProduct) {
  // [[1,2,3],[4,5,6]] x [[7,8],[9,10],[11,12]] = [[58,64],[139,154]]
  const std::vector<float> a{1, 2, 3, 4, 5, 6}, b{7, 8, 9, 10, 11, 12};
  for (GemmFn fn : {&kernels::gemm_f32_onednn, &kernels::gemm_f32_ref, &kernels::gemm_f32}) {
    std::vector<float> c(4, 1.0f);
    fn(Trans::N, Trans::N, 2, 2, 3, 1.0f, a.data(), 3, b.data(), 2, 0.0f, c.data(), 2);
    EXPECT_EQ(c, (std::vector<float>{58, 64, 139, 154}));
    // A^T (A stored [K=2, M=3]) x B^T (B stored [N=3, K=2]): [[1,4],[2,5],[3,6]] x [[7,9,11],[8,10,12]]
    std::vector<float> d(9, 0.0f);
    fn(Trans::T, Trans::T, 3, 3, 2, 1.0f, a.data(), 3, b.data(), 2, 0.0f, d.data(), 3);
    EXPECT_EQ(d, (std::vector<float>{39, 49, 59, 54, 68, 82, 69, 87, 105}));
  }
}

TEST(GemmDispatch, ReferencePathIsUsedWhenForced) {
  KernelPathGuard guard;
  Generator gen(11);
  const std::int64_t M = 33, N = 47, K = 129;
  Matrix A(M, K, K, gen), B(N, K, K, gen);
  auto run = [&](GemmFn fn) {
    std::vector<float> c(M * N, 0.0f);
    fn(Trans::N, Trans::T, M, N, K, 1.0f, A.data.data(), K, B.data.data(), K, 0.0f, c.data(), N);
    return c;
  };
  const std::vector<float> ref = run(&kernels::gemm_f32_ref), opt = run(&kernels::gemm_f32_onednn);

  kernels::set_kernel_path(KernelPath::reference);
  EXPECT_EQ(kernels::kernel_path(), KernelPath::reference);
  EXPECT_EQ(run(&kernels::gemm_f32), ref);  // bit-identical: the very same code ran

  kernels::set_kernel_path(KernelPath::optimized);
  EXPECT_EQ(kernels::kernel_path(), KernelPath::optimized);
  EXPECT_EQ(run(&kernels::gemm_f32), opt);
}

TEST(GemmDispatch, MatmulFollowsTheKernelPath) {
  KernelPathGuard guard;
  Generator gen(12);
  Tensor a = Tensor::uniform({9, 31}, -1.0f, 1.0f, gen), b = Tensor::uniform({31, 5}, -1.0f, 1.0f, gen);
  kernels::set_kernel_path(KernelPath::reference);
  const std::vector<float> via_ref = matmul(a, b).to_vector<float>();
  std::vector<float> direct(9 * 5, 0.0f);
  kernels::gemm_f32_ref(Trans::N, Trans::N, 9, 5, 31, 1.0f, a.data<float>(), 31, b.data<float>(), 5, 0.0f,
                        direct.data(), 5);
  EXPECT_EQ(via_ref, direct);
}

TEST(GemmChecks, NegativeSizesThrowShapeError) {
  std::vector<float> buf(64, 0.0f);
  const float* p = buf.data();
  EXPECT_THROW(kernels::gemm_f32(Trans::N, Trans::N, -1, 2, 2, 1.0f, p, 2, p, 2, 0.0f, buf.data(), 2), ShapeError);
  EXPECT_THROW(kernels::gemm_f32(Trans::N, Trans::N, 2, -1, 2, 1.0f, p, 2, p, 2, 0.0f, buf.data(), 2), ShapeError);
  EXPECT_THROW(kernels::gemm_f32(Trans::N, Trans::N, 2, 2, -1, 1.0f, p, 2, p, 2, 0.0f, buf.data(), 2), ShapeError);
}

TEST(GemmChecks, TooSmallLeadingDimensionsThrowShapeError) {
  std::vector<float> buf(256, 0.0f);
  const float* p = buf.data();
  float* c = buf.data();
  const std::int64_t M = 3, N = 4, K = 5;
  // Valid calls, at the minimum leading dimensions.
  EXPECT_NO_THROW(kernels::gemm_f32(Trans::N, Trans::N, M, N, K, 1.0f, p, K, p, N, 0.0f, c, N));
  EXPECT_NO_THROW(kernels::gemm_f32(Trans::T, Trans::T, M, N, K, 1.0f, p, M, p, K, 0.0f, c, N));
  // lda: K for N, M for T.
  EXPECT_THROW(kernels::gemm_f32(Trans::N, Trans::N, M, N, K, 1.0f, p, K - 1, p, N, 0.0f, c, N), ShapeError);
  EXPECT_THROW(kernels::gemm_f32(Trans::T, Trans::N, M, N, K, 1.0f, p, M - 1, p, N, 0.0f, c, N), ShapeError);
  // ldb: N for N, K for T.
  EXPECT_THROW(kernels::gemm_f32(Trans::N, Trans::N, M, N, K, 1.0f, p, K, p, N - 1, 0.0f, c, N), ShapeError);
  EXPECT_THROW(kernels::gemm_f32(Trans::N, Trans::T, M, N, K, 1.0f, p, K, p, K - 1, 0.0f, c, N), ShapeError);
  // ldc: N.
  EXPECT_THROW(kernels::gemm_f32(Trans::N, Trans::N, M, N, K, 1.0f, p, K, p, N, 0.0f, c, N - 1), ShapeError);
}

TEST(GemmChecks, EmptyInnerDimensionGivesBetaTimesC) {
  for (KernelPath path : {KernelPath::reference, KernelPath::optimized}) {
    KernelPathGuard guard;
    kernels::set_kernel_path(path);
    const float dummy = 0.0f;
    std::vector<float> c{1, 2, 3, 4, 5, 6};
    kernels::gemm_f32(Trans::N, Trans::N, 2, 3, 0, 1.0f, &dummy, 0, &dummy, 3, 0.5f, c.data(), 3);
    EXPECT_EQ(c, (std::vector<float>{0.5f, 1, 1.5f, 2, 2.5f, 3}));
    std::vector<float> nan_c(6, kNaN);
    kernels::gemm_f32(Trans::N, Trans::N, 2, 3, 0, 1.0f, &dummy, 0, &dummy, 3, 0.0f, nan_c.data(), 3);
    EXPECT_EQ(nan_c, std::vector<float>(6, 0.0f));
  }
}

TEST(GemmChecks, EmptyOutputLeavesCUntouched) {
  const float dummy = 0.0f;
  std::vector<float> c{7, 8};
  kernels::gemm_f32(Trans::N, Trans::N, 0, 2, 3, 1.0f, &dummy, 3, &dummy, 2, 0.0f, c.data(), 2);
  kernels::gemm_f32(Trans::N, Trans::N, 1, 0, 3, 1.0f, &dummy, 3, &dummy, 0, 0.0f, c.data(), 0);
  EXPECT_EQ(c, (std::vector<float>{7, 8}));
}

}  // namespace
}  // namespace shiftq
