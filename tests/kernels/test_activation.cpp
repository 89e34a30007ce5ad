// The dispatched (per-ISA) ReLU, GELU and softmax kernels against their scalar references, bit for
// bit, on lengths with and without vector tails and on values where the exp saturates; and against
// tanh / exp in double precision.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "shiftq/core/generator.hpp"
#include "kernels/activation_isa.hpp"
#include "shiftq/kernels/activation.hpp"

namespace shiftq::kernels {
namespace {
std::vector<float> inputs(std::int64_t n, Generator& gen) {
  std::vector<float> x(static_cast<std::size_t>(n));
  for (float& v : x) v = 4.0f * gen.normal();
  // Zeros, tiny values, and values where the exp saturates (|u| > 87 from |x| of about 10 on).
  const float extremes[] = {0.0f, -0.0f, 1e-30f, -1e-30f, 9.0f, -9.0f, 11.0f, -11.0f, 60.0f, -60.0f, 1e4f, -1e4f};
  for (std::size_t i = 0; i < x.size() && i < std::size(extremes); ++i) x[i * 7 % x.size()] = extremes[i];
  return x;
}

std::vector<std::uint32_t> bits(const std::vector<float>& v) {
  std::vector<std::uint32_t> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = std::bit_cast<std::uint32_t>(v[i]);
  return out;
}

TEST(ActivationKernels, GeluForwardAndBackwardEqualReference) {
  Generator gen(5);
  for (std::int64_t n : {1, 7, 15, 16, 17, 33, 64, 1000, 4099}) {
    const std::vector<float> x = inputs(n, gen), g = inputs(n, gen);
    std::vector<float> got(x.size(), -1.0f), want(x.size(), -2.0f);
    gelu_f32(x.data(), got.data(), n);
    gelu_f32_ref(x.data(), want.data(), n);
    EXPECT_EQ(bits(got), bits(want)) << "forward, n = " << n;
    gelu_backward_f32(g.data(), x.data(), got.data(), n);
    gelu_backward_f32_ref(g.data(), x.data(), want.data(), n);
    EXPECT_EQ(bits(got), bits(want)) << "backward, n = " << n;
  }
}

TEST(ActivationKernels, ReluForwardEqualsReference) {
  Generator gen(7);
  for (std::int64_t n : {1, 7, 15, 16, 17, 33, 64, 1000, 4099}) {
    std::vector<float> x = inputs(n, gen), g = inputs(n, gen);
    x[n / 2] = std::nanf("");  // NaN and -0 give +0 (the first compare is false)
    std::vector<float> got(x.size(), -1.0f), want(x.size(), -2.0f);
    relu_f32(x.data(), got.data(), n);
    relu_f32_ref(x.data(), want.data(), n);
    EXPECT_EQ(bits(got), bits(want)) << "forward, n = " << n;
    for (std::int64_t i = 0; i < n; ++i) {
      EXPECT_EQ(std::bit_cast<std::uint32_t>(want[i]), std::bit_cast<std::uint32_t>(x[i] > 0.0f ? x[i] : 0.0f));
      EXPECT_FALSE(std::signbit(want[i]));
    }
  }
}

TEST(ActivationKernels, ReluMaskKernelsEqualReferenceAndTheOutputForm) {
  Generator gen(8);
  for (std::int64_t n : {1, 7, 8, 9, 15, 16, 17, 33, 64, 1000, 4099}) {
    std::vector<float> x = inputs(n, gen), g = inputs(n, gen);
    x[n / 2] = std::nanf("");
    const std::size_t bytes = static_cast<std::size_t>((n + 7) / 8);
    std::vector<float> y(x.size(), -1.0f), y_ref(x.size(), -2.0f), y_plain(x.size());
    std::vector<std::uint8_t> mask(bytes, 0xAA), mask_ref(bytes, 0x55);
    relu_mask_f32(x.data(), y.data(), mask.data(), n);
    relu_mask_f32_ref(x.data(), y_ref.data(), mask_ref.data(), n);
    relu_f32_ref(x.data(), y_plain.data(), n);
    EXPECT_EQ(bits(y), bits(y_ref)) << "forward, n = " << n;
    EXPECT_EQ(bits(y), bits(y_plain)) << "forward against relu_f32, n = " << n;
    EXPECT_EQ(mask, mask_ref) << "mask, n = " << n;
    for (std::int64_t i = 0; i < n; ++i) EXPECT_EQ((mask[i / 8] >> (i % 8)) & 1, x[i] > 0.0f ? 1 : 0) << i;
    if (n % 8 != 0) {
      EXPECT_EQ(mask.back() >> (n % 8), 0) << "unused bits, n = " << n;
    }
    std::vector<float> dx(x.size(), -1.0f), dx_ref(x.size(), -2.0f), dx_plain(x.size());
    relu_backward_mask_f32(g.data(), mask.data(), dx.data(), n);
    relu_backward_mask_f32_ref(g.data(), mask.data(), dx_ref.data(), n);
    for (std::int64_t i = 0; i < n; ++i) dx_plain[i] = y_plain[i] > 0.0f ? g[i] : 0.0f;  // from the output
    EXPECT_EQ(bits(dx), bits(dx_ref)) << "backward, n = " << n;
    EXPECT_EQ(bits(dx), bits(dx_plain)) << "backward against the output form, n = " << n;
  }
}

// Each ISA build of the mask kernels this CPU can run (their vector loops are intrinsics, not the
// auto-vectorizer's), not only the dispatched one, against the references.
TEST(ActivationKernels, EveryIsaBuildOfTheMaskKernelsEqualsReference) {
  struct Build {
    const char* name;
    bool runs;
    void (*forward)(const float*, float*, std::uint8_t*, std::int64_t);
    void (*backward)(const float*, const std::uint8_t*, float*, std::int64_t);
  };
  __builtin_cpu_init();
  const Build builds[] = {
      {"avx512", __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"),
       avx512::relu_mask_f32, avx512::relu_backward_mask_f32},
      {"avx2", static_cast<bool>(__builtin_cpu_supports("avx2")), avx2::relu_mask_f32, avx2::relu_backward_mask_f32},
      {"base", true, base::relu_mask_f32, base::relu_backward_mask_f32},
  };
  Generator gen(9);
  for (const Build& b : builds) {
    if (!b.runs) continue;
    for (std::int64_t n : {1, 7, 8, 9, 16, 17, 33, 1000, 4099}) {
      std::vector<float> x = inputs(n, gen), g = inputs(n, gen);
      x[n / 2] = std::nanf("");
      const std::size_t bytes = static_cast<std::size_t>((n + 7) / 8);
      std::vector<float> y(x.size(), -1.0f), y_ref(x.size(), -2.0f), dx(x.size(), -1.0f), dx_ref(x.size(), -2.0f);
      std::vector<std::uint8_t> mask(bytes, 0xAA), mask_ref(bytes, 0x55);
      b.forward(x.data(), y.data(), mask.data(), n);
      relu_mask_f32_ref(x.data(), y_ref.data(), mask_ref.data(), n);
      EXPECT_EQ(bits(y), bits(y_ref)) << b.name << " forward, n = " << n;
      EXPECT_EQ(mask, mask_ref) << b.name << " mask, n = " << n;
      b.backward(g.data(), mask_ref.data(), dx.data(), n);
      relu_backward_mask_f32_ref(g.data(), mask_ref.data(), dx_ref.data(), n);
      EXPECT_EQ(bits(dx), bits(dx_ref)) << b.name << " backward, n = " << n;
    }
  }
}

TEST(ActivationKernels, GeluMatchesTheTanhFormula) {
  Generator gen(6);
  const std::vector<float> x = inputs(4096, gen);
  std::vector<float> y(x.size());
  gelu_f32(x.data(), y.data(), static_cast<std::int64_t>(x.size()));
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double xi = x[i];
    const double want = 0.5 * xi * (1.0 + std::tanh(0.7978845608028654 * (xi + 0.044715 * xi * xi * xi)));
    EXPECT_NEAR(y[i], want, 1e-6 * std::max(1.0, std::fabs(want))) << "x = " << xi;
    EXPECT_TRUE(std::isfinite(y[i])) << "x = " << xi;
  }
}
// Rows of attention-like scores: random logits, a causal mask (-inf after the diagonal), a row
// with one huge value (the others underflow to exactly 0) and a row of equal values.
std::vector<float> score_rows(std::int64_t rows, std::int64_t cols, Generator& gen) {
  std::vector<float> x(static_cast<std::size_t>(rows * cols));
  for (float& v : x) v = 3.0f * gen.normal();
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t j = r % cols + 1; j < cols && r % 3 == 0; ++j) x[r * cols + j] = -INFINITY;
  if (rows > 1) x[cols + cols / 2] = 200.0f;
  if (rows > 2) std::fill_n(x.begin() + 2 * cols, cols, 0.25f);
  return x;
}

TEST(ActivationKernels, SoftmaxRowsEqualReferenceInEveryIsaBuild) {
  struct Build {
    const char* name;
    bool runs;
    void (*forward)(const float*, float*, std::int64_t, std::int64_t, std::int64_t, float, std::int64_t);
    void (*backward)(const float*, const float*, float*, std::int64_t, std::int64_t, std::int64_t, float, std::int64_t);
  };
  __builtin_cpu_init();
  const Build builds[] = {
      {"dispatched", true, softmax_rows_f32, softmax_backward_rows_f32},
      {"avx512", __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"),
       avx512::softmax_rows_f32, avx512::softmax_backward_rows_f32},
      {"avx2", static_cast<bool>(__builtin_cpu_supports("avx2")), avx2::softmax_rows_f32, avx2::softmax_backward_rows_f32},
      {"base", true, base::softmax_rows_f32, base::softmax_backward_rows_f32},
  };
  Generator gen(10);
  for (const Build& b : builds) {
    if (!b.runs) continue;
    for (std::int64_t cols : {1, 7, 16, 17, 33, 128, 1000}) {
      const std::int64_t rows = 5;
      const std::vector<float> x = score_rows(rows, cols, gen), g = inputs(rows * cols, gen);
      std::vector<float> y(x.size(), -1.0f), y_ref(x.size(), -2.0f), dx(x.size(), -1.0f), dx_ref(x.size(), -2.0f);
      for (const std::int64_t causal_rows : {std::int64_t{0}, std::min<std::int64_t>(rows, cols)}) {
        b.forward(x.data(), y.data(), 0, rows, cols, 0.375f, causal_rows);
        softmax_rows_f32_ref(x.data(), y_ref.data(), 0, rows, cols, 0.375f, causal_rows);
        EXPECT_EQ(bits(y), bits(y_ref)) << b.name << " forward, cols = " << cols << ", causal " << causal_rows;
        b.backward(y_ref.data(), g.data(), dx.data(), 0, rows, cols, 0.375f, causal_rows);
        softmax_backward_rows_f32_ref(y_ref.data(), g.data(), dx_ref.data(), 0, rows, cols, 0.375f, causal_rows);
        EXPECT_EQ(bits(dx), bits(dx_ref)) << b.name << " backward, cols = " << cols << ", causal " << causal_rows;
      }
    }
  }
}

TEST(ActivationKernels, CausalSoftmaxRowsSeeTheirKeysOnly) {
  // Tq = 4 queries over Tk = 6 keys: query i sees keys 0..i+2; more queries than keys (Tq = 5,
  // Tk = 3) leaves the first rows with no key (all 0), never writing outside a row.
  Generator gen(12);
  for (const auto& [tq, tk] : {std::pair<std::int64_t, std::int64_t>{4, 6}, {5, 3}}) {
    const std::int64_t rows = 2 * tq;
    const std::vector<float> x = inputs(rows * tk, gen);
    std::vector<float> y(x.size() + 1, -7.0f);
    softmax_rows_f32(x.data(), y.data(), 0, rows, tk, 1.0f, tq);
    EXPECT_EQ(y.back(), -7.0f);
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::int64_t visible = std::clamp<std::int64_t>(r % tq + 1 + tk - tq, 0, tk);
      double total = 0.0;
      for (std::int64_t j = 0; j < tk; ++j) {
        if (j >= visible) {
          EXPECT_EQ(y[r * tk + j], 0.0f) << "row " << r << " key " << j;
        }
        total += y[r * tk + j];
      }
      EXPECT_NEAR(total, visible > 0 ? 1.0 : 0.0, 1e-6) << "row " << r;
    }
  }
}

TEST(ActivationKernels, SoftmaxRowsMatchDoublePrecision) {
  // Against the double-precision softmax of the same float differences x - max (their rounding is
  // the input's, in any float softmax): the exp's relative error (< 2e-7), the sum's roundings
  // (they grow with the lane length) and the final scaling. Measured at most 2e-7 (9 columns),
  // 3e-7 (128), 5e-7 (1000) and 8e-7 (4096) relative; the bound 2e-6 leaves 4x over 1000.
  Generator gen(11);
  for (std::int64_t cols : {1, 9, 128, 1000}) {
    const std::int64_t rows = 6;
    const std::vector<float> x = score_rows(rows, cols, gen), g = inputs(rows * cols, gen);
    std::vector<float> y(x.size()), dx(x.size());
    softmax_rows_f32(x.data(), y.data(), 0, rows, cols, 1.0f, 0);
    softmax_backward_rows_f32(y.data(), g.data(), dx.data(), 0, rows, cols, 1.0f, 0);
    for (std::int64_t r = 0; r < rows; ++r) {
      const float* xr = x.data() + r * cols;
      float m = -INFINITY;
      for (std::int64_t j = 0; j < cols; ++j) m = std::max(m, xr[j]);
      double total = 0.0, dot = 0.0;
      for (std::int64_t j = 0; j < cols; ++j) total += std::exp(static_cast<double>(xr[j] - m));
      for (std::int64_t j = 0; j < cols; ++j) dot += static_cast<double>(g[r * cols + j]) * y[r * cols + j];
      for (std::int64_t j = 0; j < cols; ++j) {
        const double want = std::exp(static_cast<double>(xr[j] - m)) / total;
        const float got = y[r * cols + j];
        if (std::isinf(xr[j])) {
          EXPECT_EQ(std::bit_cast<std::uint32_t>(got), 0u) << "masked entries are exactly +0";
        } else {
          EXPECT_NEAR(got, want, 2e-6 * want + 1e-30) << "row " << r << " col " << j << " of " << cols;
        }
        const double dx_want = y[r * cols + j] * (g[r * cols + j] - dot);
        EXPECT_NEAR(dx[r * cols + j], dx_want, 1e-5 * (std::fabs(dx_want) + y[r * cols + j] * std::fabs(dot)) + 1e-30);
      }
    }
  }
}
}  // namespace
}  // namespace shiftq::kernels
