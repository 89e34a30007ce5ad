// Integer GEMMs: the optimized kernels (oneDNN with VNNI, our AVX2 kernels on their int16 and int8
// paths) are bit-exact against the reference loops.
#include <gtest/gtest.h>

#include <algorithm>
#include <string_view>
#include <utility>
#include <vector>

#include "kernels/gemm_impl.hpp"  // the implementations behind the integer GEMMs
#include <shiftq/kernels/quantize.hpp>
#include <shiftq/shiftq.hpp>

#include "testing/synthetic.hpp"

namespace shiftq::kernels {
namespace {

using testing::random_ints;

struct Case {
  std::int64_t M, N, K;
};
const std::vector<Case> kCases = {{1, 1, 1}, {3, 17, 5}, {17, 3, 64}, {64, 65, 130}, {5, 7, 1000}, {1, 1030, 33}, {1031, 2, 9}};

class GemmIntTest : public ::testing::TestWithParam<std::tuple<Trans, Trans>> {};

TEST_P(GemmIntTest, DispatchedS8S8MatchesReferenceBitExact) {
  const auto [ta, tb] = GetParam();
  Generator gen(1);
  for (const Case& c : kCases) {
    const auto A = random_ints<std::int8_t>(c.M * c.K, -128, 127, gen);
    const auto B = random_ints<std::int8_t>(c.K * c.N, -128, 127, gen);
    const std::int64_t lda = ta == Trans::N ? c.K : c.M, ldb = tb == Trans::N ? c.N : c.K;
    std::vector<std::int32_t> fast(c.M * c.N, -1), ref(c.M * c.N, -2);
    gemm_s8s8s32(ta, tb, c.M, c.N, c.K, A.data(), lda, B.data(), ldb, fast.data(), c.N);
    gemm_s8s8s32_ref(ta, tb, c.M, c.N, c.K, A.data(), lda, B.data(), ldb, ref.data(), c.N);
    EXPECT_EQ(fast, ref) << "M=" << c.M << " N=" << c.N << " K=" << c.K;
  }
}

TEST_P(GemmIntTest, DispatchedU8S8WithColumnOffsetsMatchesReferenceBitExact) {
  const auto [ta, tb] = GetParam();
  Generator gen(2);
  for (const Case& c : kCases) {
    const auto A = random_ints<std::uint8_t>(c.M * c.K, 0, 255, gen);
    const auto B = random_ints<std::int8_t>(c.K * c.N, -127, 127, gen);
    const auto co = random_ints<std::int32_t>(c.N, -100000, 100000, gen);
    const std::int64_t lda = ta == Trans::N ? c.K : c.M, ldb = tb == Trans::N ? c.N : c.K;
    for (const std::int32_t* offsets : {static_cast<const std::int32_t*>(nullptr), co.data()}) {
      std::vector<std::int32_t> fast(c.M * c.N, -1), ref(c.M * c.N, -2);
      gemm_u8s8s32(ta, tb, c.M, c.N, c.K, A.data(), lda, B.data(), ldb, fast.data(), c.N, offsets);
      gemm_u8s8s32_ref(ta, tb, c.M, c.N, c.K, A.data(), lda, B.data(), ldb, ref.data(), c.N, offsets);
      EXPECT_EQ(fast, ref) << "M=" << c.M << " N=" << c.N << " K=" << c.K << " offsets=" << (offsets != nullptr);
    }
  }
}

TEST_P(GemmIntTest, OneDnnKernelsDirectlyWhenTheCpuHasVnni) {
  // The dispatcher only routes to oneDNN on CPUs with int8 dot products; check those kernels
  // directly there, and the dispatched kernels (AVX2 or reference) elsewhere.
  const auto [ta, tb] = GetParam();
  Generator gen(3);
  const Case c{37, 29, 300};
  const auto A = random_ints<std::int8_t>(c.M * c.K, -128, 127, gen);
  const auto Au = random_ints<std::uint8_t>(c.M * c.K, 0, 255, gen);
  const auto B = random_ints<std::int8_t>(c.K * c.N, -128, 127, gen);
  const std::int64_t lda = ta == Trans::N ? c.K : c.M, ldb = tb == Trans::N ? c.N : c.K;
  std::vector<std::int32_t> fast(c.M * c.N), ref(c.M * c.N);
  if (!cpu_has_int8_dot_product()) {
    set_kernel_path(KernelPath::optimized);
    gemm_s8s8s32(ta, tb, c.M, c.N, c.K, A.data(), lda, B.data(), ldb, fast.data(), c.N);
    gemm_s8s8s32_ref(ta, tb, c.M, c.N, c.K, A.data(), lda, B.data(), ldb, ref.data(), c.N);
    EXPECT_EQ(fast, ref);
    return;
  }
  gemm_s8s8s32_onednn(ta, tb, c.M, c.N, c.K, A.data(), lda, B.data(), ldb, fast.data(), c.N);
  gemm_s8s8s32_ref(ta, tb, c.M, c.N, c.K, A.data(), lda, B.data(), ldb, ref.data(), c.N);
  EXPECT_EQ(fast, ref);
  gemm_u8s8s32_onednn(ta, tb, c.M, c.N, c.K, Au.data(), lda, B.data(), ldb, fast.data(), c.N, nullptr);
  gemm_u8s8s32_ref(ta, tb, c.M, c.N, c.K, Au.data(), lda, B.data(), ldb, ref.data(), c.N, nullptr);
  EXPECT_EQ(fast, ref);
}

bool cpu_has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2");
}

// Every tile and k-block edge of the AVX2 kernels: M and N around the 8-wide tiles, K odd and even,
// shorter than a 16-value pack step and longer than one k-block (int16 path: 512 values, fewer for
// wide N; int8 path: 1024).
const std::vector<Case> kAvx2EdgeCases = {{1, 1, 1},     {8, 8, 16},    {9, 7, 17},      {7, 9, 15},
                                          {17, 23, 2},   {64, 16, 144}, {33, 64, 576},   {16, 300, 1030},
                                          {5, 1030, 700}, {100, 3, 1100}, {100, 3, 2100}};

// Leading dimensions 3 larger than the matrices (random padding the kernels must ignore), and the
// buffer sizes.
struct PaddedLayout {
  std::int64_t lda, ldb, ldc, a_size, b_size;
  PaddedLayout(Trans ta, Trans tb, const Case& c)
      : lda((ta == Trans::N ? c.K : c.M) + 3),
        ldb((tb == Trans::N ? c.N : c.K) + 3),
        ldc(c.N + 1),
        a_size((ta == Trans::N ? c.M : c.K) * lda),
        b_size((tb == Trans::N ? c.K : c.N) * ldb) {}
};

// Full-range operands (the int16 path), including their extremes.
TEST_P(GemmIntTest, Avx2KernelsMatchReferenceBitExact) {
  if (!cpu_has_avx2()) GTEST_SKIP() << "the CPU has no AVX2: the dispatcher never calls these kernels";
  const auto [ta, tb] = GetParam();
  Generator gen(4);
  for (const Case& c : kAvx2EdgeCases) {
    const auto [lda, ldb, ldc, a_size, b_size] = PaddedLayout(ta, tb, c);
    const auto A = random_ints<std::int8_t>(a_size, -128, 127, gen);
    const auto Au = random_ints<std::uint8_t>(a_size, 0, 255, gen);
    const auto B = random_ints<std::int8_t>(b_size, -128, 127, gen);
    const auto co = random_ints<std::int32_t>(c.N, -100000, 100000, gen);
    std::vector<std::int32_t> fast(c.M * ldc, -1), ref(c.M * ldc, -1);
    gemm_s8s8s32_avx2(ta, tb, c.M, c.N, c.K, A.data(), lda, B.data(), ldb, fast.data(), ldc);
    gemm_s8s8s32_ref(ta, tb, c.M, c.N, c.K, A.data(), lda, B.data(), ldb, ref.data(), ldc);
    EXPECT_EQ(fast, ref) << "s8 M=" << c.M << " N=" << c.N << " K=" << c.K;
    for (const std::int32_t* offsets : {static_cast<const std::int32_t*>(nullptr), co.data()}) {
      std::fill(fast.begin(), fast.end(), -1);
      std::fill(ref.begin(), ref.end(), -1);
      gemm_u8s8s32_avx2(ta, tb, c.M, c.N, c.K, Au.data(), lda, B.data(), ldb, fast.data(), ldc, offsets);
      gemm_u8s8s32_ref(ta, tb, c.M, c.N, c.K, Au.data(), lda, B.data(), ldb, ref.data(), ldc, offsets);
      EXPECT_EQ(fast, ref) << "u8 M=" << c.M << " N=" << c.N << " K=" << c.K << " offsets=" << (offsets != nullptr);
    }
  }
}

TEST_P(GemmIntTest, Avx2KernelsDoNotSaturate) {
  if (!cpu_has_avx2()) GTEST_SKIP() << "the CPU has no AVX2: the dispatcher never calls these kernels";
  // The pairs vpmaddubsw would saturate: 255 * 127 * 2 and (-128) * (-128) * 2 exceed int16. One
  // element at the other end of the range widens A's span to 255, so the int16 path runs.
  const auto [ta, tb] = GetParam();
  const std::int64_t M = 9, N = 10, K = 2001;
  std::vector<std::int8_t> A(M * K, -128), B(K * N, -128), Bp(K * N, 127);
  std::vector<std::uint8_t> Au(M * K, 255);
  A[0] = 127;  // op(A)[0, 0] in both layouts
  Au[0] = 0;
  ASSERT_EQ(avx2_byte_path_depth(255, 128), 0);
  const std::int64_t lda = ta == Trans::N ? K : M, ldb = tb == Trans::N ? N : K;
  std::vector<std::int32_t> C(M * N);
  gemm_s8s8s32_avx2(ta, tb, M, N, K, A.data(), lda, B.data(), ldb, C.data(), N);
  for (std::int64_t i = 0; i < M * N; ++i)
    EXPECT_EQ(C[i], i < N ? (K - 1) * 128 * 128 - 127 * 128 : K * 128 * 128) << i;
  gemm_u8s8s32_avx2(ta, tb, M, N, K, Au.data(), lda, Bp.data(), ldb, C.data(), N, nullptr);
  for (std::int64_t i = 0; i < M * N; ++i) EXPECT_EQ(C[i], (i < N ? K - 1 : K) * 255 * 127) << i;
}

// The int8 path of the AVX2 kernels (vpmaddubsw, DU results summed in int16) serves narrow value
// ranges. Its choice is a pure function of the ranges; each row below is a case of the table.
TEST(GemmInt, Avx2ByteDepthKeepsInt16SumsExact) {
  EXPECT_EQ(avx2_byte_path_depth(15, 112), 4);  // 4-bit activation codes x ShiftQuant 4-bit S=4
  EXPECT_EQ(avx2_byte_path_depth(62, 124), 2);  // signed 6-bit activations x ShiftQuant 6-bit S=2
  EXPECT_EQ(avx2_byte_path_depth(224, 112), 0);  // 4-bit gradients x weights: the int16 path
  EXPECT_EQ(avx2_byte_path_depth(255, 128), 0);
  EXPECT_EQ(avx2_byte_path_depth(0, 128), 4);
  EXPECT_EQ(avx2_byte_path_depth(63, 65), 4);  // 4 * 2 * 63 * 65 = 32760 <= 32767
  EXPECT_EQ(avx2_byte_path_depth(64, 64), 2);  // 4 * 8192 > 32767 >= 2 * 8192
  EXPECT_EQ(avx2_byte_path_depth(127, 64), 2);  // 2 * 2 * 127 * 64 = 32512 <= 32767
  EXPECT_EQ(avx2_byte_path_depth(128, 64), 0);  // 2 * 2 * 128 * 64 = 32768 > 32767
}

struct NarrowRange {
  int a_lo, a_hi, b_lo, b_hi, depth;  // A's values (u8 when a_lo >= 0), B's, the path's DU
};

// The smallest and largest value of a [lines, len] block with leading dimension ld.
template <class T>
std::pair<int, int> block_range(const std::vector<T>& v, std::int64_t lines, std::int64_t len, std::int64_t ld) {
  int lo = 255, hi = -128;
  for (std::int64_t l = 0; l < lines; ++l)
    for (std::int64_t i = 0; i < len; ++i) {
      lo = std::min<int>(lo, v[l * ld + i]);
      hi = std::max<int>(hi, v[l * ld + i]);
    }
  return {lo, hi};
}

// The DU the AVX2 kernels choose for these operands (0: the int16 path).
template <class TA>
int chosen_depth(Trans ta, Trans tb, const Case& c, const std::vector<TA>& A, std::int64_t lda,
                 const std::vector<std::int8_t>& B, std::int64_t ldb) {
  const auto [a_lo, a_hi] = ta == Trans::N ? block_range(A, c.M, c.K, lda) : block_range(A, c.K, c.M, lda);
  const auto [b_lo, b_hi] = tb == Trans::N ? block_range(B, c.K, c.N, ldb) : block_range(B, c.N, c.K, ldb);
  return avx2_byte_path_depth(a_hi - a_lo, std::max(-b_lo, b_hi));
}

// Bit-exact against the reference on the int8 path, at the tile and k-block edges, for
// the ranges training produces and for operands whose every product sits at the int16 bound.
TEST_P(GemmIntTest, Avx2Int8PathMatchesReferenceBitExact) {
  if (!cpu_has_avx2()) GTEST_SKIP() << "the CPU has no AVX2: the dispatcher never calls these kernels";
  const auto [ta, tb] = GetParam();
  Generator gen(5);
  const std::vector<NarrowRange> ranges = {
      {128, 143, -112, 112, 4},  // the conv's u8 activation codes (v + 128) x 4-bit S=4 weights
      {0, 15, -112, 112, 4},     // no shift (min 0 in large blocks)
      {-31, 31, -124, 124, 2},   // signed 6-bit activations x 6-bit S=2 weights
      {-128, -120, -128, 127, 4},
      {100, 163, -128, 127, 2},  // DU 2 with u8 A and B = -128: 2 * 2 * 63 * 128 = 32256
  };
  for (const NarrowRange& r : ranges) {
    EXPECT_EQ(avx2_byte_path_depth(r.a_hi - r.a_lo, std::max(-r.b_lo, r.b_hi)), r.depth);
    int cases_at_depth = 0;  // cases whose random operands reach the range's ends (the large ones)
    for (const Case& c : kAvx2EdgeCases) {
      const auto [lda, ldb, ldc, a_size, b_size] = PaddedLayout(ta, tb, c);
      const auto B = random_ints<std::int8_t>(b_size, r.b_lo, r.b_hi, gen);
      const auto co = random_ints<std::int32_t>(c.N, -100000, 100000, gen);
      std::vector<std::int32_t> fast(c.M * ldc, -1), ref(c.M * ldc, -1);
      if (r.a_lo >= 0) {
        const auto A = random_ints<std::uint8_t>(a_size, r.a_lo, r.a_hi, gen);
        const int depth = chosen_depth(ta, tb, c, A, lda, B, ldb);
        EXPECT_GE(depth, r.depth);
        cases_at_depth += depth == r.depth;
        for (const std::int32_t* offsets : {static_cast<const std::int32_t*>(nullptr), co.data()}) {
          gemm_u8s8s32_avx2(ta, tb, c.M, c.N, c.K, A.data(), lda, B.data(), ldb, fast.data(), ldc, offsets);
          gemm_u8s8s32_ref(ta, tb, c.M, c.N, c.K, A.data(), lda, B.data(), ldb, ref.data(), ldc, offsets);
          EXPECT_EQ(fast, ref) << "u8 [" << r.a_lo << "," << r.a_hi << "] M=" << c.M << " N=" << c.N << " K=" << c.K;
        }
      } else {
        const auto A = random_ints<std::int8_t>(a_size, r.a_lo, r.a_hi, gen);
        const int depth = chosen_depth(ta, tb, c, A, lda, B, ldb);
        EXPECT_GE(depth, r.depth);
        cases_at_depth += depth == r.depth;
        gemm_s8s8s32_avx2(ta, tb, c.M, c.N, c.K, A.data(), lda, B.data(), ldb, fast.data(), ldc);
        gemm_s8s8s32_ref(ta, tb, c.M, c.N, c.K, A.data(), lda, B.data(), ldb, ref.data(), ldc);
        EXPECT_EQ(fast, ref) << "s8 [" << r.a_lo << "," << r.a_hi << "] M=" << c.M << " N=" << c.N << " K=" << c.K;
      }
    }
    EXPECT_GE(cases_at_depth, 7) << "range [" << r.a_lo << "," << r.a_hi << "] x [" << r.b_lo << "," << r.b_hi << "]";
  }
}

TEST_P(GemmIntTest, Avx2Int8PathAtTheInt16Bound) {
  if (!cpu_has_avx2()) GTEST_SKIP() << "the CPU has no AVX2: the dispatcher never calls these kernels";
  // Every product at the bound the depth allows, all of one sign: each int16 lane of the int8 path
  // sums DU pairs of a' * b to 31744 (u8) and 32640 (s8) of 32767.
  //   u8: a in {100, 131} (a' = a - 100 = 31 almost everywhere), b = -128: 4 * 2 * 31 * 128 = 31744.
  //   s8: a in {-40, 40} (a' = 80), b = 102: 2 * 2 * 80 * 102 = 32640.
  const auto [ta, tb] = GetParam();
  const std::int64_t M = 13, N = 19, K = 1201;
  const std::int64_t lda = ta == Trans::N ? K : M, ldb = tb == Trans::N ? N : K;
  std::vector<std::int32_t> fast(M * N), ref(M * N);

  std::vector<std::uint8_t> Au(M * K, 131);
  Au[5] = 100;
  const std::vector<std::int8_t> Bn(K * N, -128);
  ASSERT_EQ(avx2_byte_path_depth(31, 128), 4);
  gemm_u8s8s32_avx2(ta, tb, M, N, K, Au.data(), lda, Bn.data(), ldb, fast.data(), N, nullptr);
  gemm_u8s8s32_ref(ta, tb, M, N, K, Au.data(), lda, Bn.data(), ldb, ref.data(), N, nullptr);
  EXPECT_EQ(fast, ref);

  std::vector<std::int8_t> As(M * K, 40);
  As[7] = -40;
  const std::vector<std::int8_t> Bp(K * N, 102);
  ASSERT_EQ(avx2_byte_path_depth(80, 102), 2);
  gemm_s8s8s32_avx2(ta, tb, M, N, K, As.data(), lda, Bp.data(), ldb, fast.data(), N);
  gemm_s8s8s32_ref(ta, tb, M, N, K, As.data(), lda, Bp.data(), ldb, ref.data(), N);
  EXPECT_EQ(fast, ref);
}

TEST_P(GemmIntTest, Avx2RangeScanSeesTheLastValues) {
  if (!cpu_has_avx2()) GTEST_SKIP() << "the CPU has no AVX2: the dispatcher never calls these kernels";
  // A is 0 except its last 256 bytes (in the scan's last, partial 4 KiB fold), which are 255;
  // against b = 112 those pairs saturate vpmaddubsw (2 * 255 * 112 > 32767). The range scan must see
  // them and choose the int16 path.
  const auto [ta, tb] = GetParam();
  const std::int64_t M = 70, N = 21, K = 304;  // A: 21280 bytes = 5 folds + 800, all in vector steps
  const std::int64_t lda = ta == Trans::N ? K : M, ldb = tb == Trans::N ? N : K;
  std::vector<std::uint8_t> A(M * K, 0);
  std::fill(A.end() - 256, A.end(), 255);
  const std::vector<std::int8_t> B(K * N, 112);
  std::vector<std::int32_t> fast(M * N), ref(M * N);
  gemm_u8s8s32_avx2(ta, tb, M, N, K, A.data(), lda, B.data(), ldb, fast.data(), N, nullptr);
  gemm_u8s8s32_ref(ta, tb, M, N, K, A.data(), lda, B.data(), ldb, ref.data(), N, nullptr);
  EXPECT_EQ(fast, ref);
}

TEST(GemmInt, DispatcherNamesItsKernels) {
  const IntGemmKernel kernel = int_gemm_kernel();
  if (cpu_has_int8_dot_product())
    EXPECT_EQ(kernel, IntGemmKernel::onednn_vnni);
  else if (std::string_view(quantize_isa_name()) != "x86-64")  // the dispatched ISA (SHIFTQ_MAX_ISA caps it)
    EXPECT_EQ(kernel, IntGemmKernel::avx2);
  else
    EXPECT_EQ(kernel, IntGemmKernel::reference);
  EXPECT_STREQ(int_gemm_kernel_name(IntGemmKernel::avx2), "avx2");
}

INSTANTIATE_TEST_SUITE_P(AllTranspositions, GemmIntTest,
                         ::testing::Combine(::testing::Values(Trans::N, Trans::T), ::testing::Values(Trans::N, Trans::T)));

TEST(GemmInt, ExtremeValuesDoNotSaturate) {
  // Every product at its maximum: sum = K * 128 * 128 (s8) and K * 255 * 127 (u8), far above int16.
  const std::int64_t M = 4, N = 4, K = 4096;
  std::vector<std::int8_t> A(M * K, -128), B(K * N, -128);
  std::vector<std::int32_t> C(M * N);
  gemm_s8s8s32(Trans::N, Trans::N, M, N, K, A.data(), K, B.data(), N, C.data(), N);
  for (std::int32_t v : C) EXPECT_EQ(v, K * 128 * 128);
  std::vector<std::uint8_t> Au(M * K, 255);
  std::vector<std::int8_t> Bp(K * N, 127);
  gemm_u8s8s32(Trans::N, Trans::N, M, N, K, Au.data(), K, Bp.data(), N, C.data(), N);
  for (std::int32_t v : C) EXPECT_EQ(v, K * 255 * 127);
}

TEST(GemmInt, ReferencePathCanBeForced) {
  set_kernel_path(KernelPath::reference);
  EXPECT_EQ(kernel_path(), KernelPath::reference);
  std::vector<std::int8_t> A{1, 2, 3, 4}, B{5, 6, 7, 8};  // [2,2] x [2,2]
  std::vector<std::int32_t> C(4);
  gemm_s8s8s32(Trans::N, Trans::N, 2, 2, 2, A.data(), 2, B.data(), 2, C.data(), 2);
  EXPECT_EQ(C, (std::vector<std::int32_t>{19, 22, 43, 50}));
  set_kernel_path(KernelPath::optimized);
}

// The limits are the longest contractions whose worst-case sum fits int32, and not one longer.
TEST(GemmInt, ContractionLimitsAreTheLargestThatCannotOverflow) {
  constexpr std::int64_t kInt32Max = 2147483647;
  EXPECT_LE(kMaxGemmKs8s8 * 127 * 127, kInt32Max + 1);  // |sum| <= K * 127^2 (-2^31 is representable)
  EXPECT_GT((kMaxGemmKs8s8 + 1) * 127 * 127, kInt32Max + 1);
  EXPECT_LE(kMaxGemmKu8s8 * 255 * 127, kInt32Max);
  EXPECT_GT((kMaxGemmKu8s8 + 1) * 255 * 127, kInt32Max);
  EXPECT_EQ(kMaxGemmKu8s8, 66311);
}

TEST(GemmInt, BadArgumentsThrow) {
  std::vector<std::int8_t> A(4), B(4);
  std::vector<std::uint8_t> Au(4);
  std::vector<std::int32_t> C(4);
  EXPECT_THROW(gemm_s8s8s32(Trans::N, Trans::N, -1, 2, 2, A.data(), 2, B.data(), 2, C.data(), 2), ShapeError);
  EXPECT_THROW(gemm_s8s8s32(Trans::N, Trans::N, 2, 2, 2, A.data(), 1, B.data(), 2, C.data(), 2), ShapeError);
  EXPECT_THROW(gemm_s8s8s32(Trans::N, Trans::N, 1, 1, kMaxGemmKs8s8 + 1, A.data(), kMaxGemmKs8s8 + 1, B.data(), 1,
                            C.data(), 1),
               ValueError);
  EXPECT_THROW(gemm_u8s8s32(Trans::N, Trans::N, 1, 1, kMaxGemmKu8s8 + 1, Au.data(), kMaxGemmKu8s8 + 1, B.data(), 1,
                            C.data(), 1),
               ValueError);
}

}  // namespace
}  // namespace shiftq::kernels
