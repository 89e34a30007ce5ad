// L1-norm kernels: the dispatched (per-ISA) kernels are bit-exact against the scalar references,
// on short, odd and strided runs and on extreme codes; the strided quantization kernels equal
// their row-by-row calls.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include <shiftq/kernels/l1norm.hpp>
#include <shiftq/kernels/quantize.hpp>
#include <shiftq/shiftq.hpp>

#include "testing/synthetic.hpp"

namespace shiftq::kernels {
namespace {

using testing::random_ints;

struct RunLayout {
  std::int64_t runs, len, stride;
};
// One run, short runs (BatchNorm 7x7), odd lengths, lengths across the 16-lane steps, strided.
const std::vector<RunLayout> kLayouts = {{1, 2, 2},   {1, 17, 17},  {3, 49, 49 * 5}, {128, 49, 49 * 64},
                                         {4, 1, 3},   {2, 100, 150}, {1, 256, 256},  {5, 33, 40}};
// Code ranges: full, one-sided (mean at the edge), constant.
const std::vector<std::pair<int, int>> kRanges = {{-128, 127}, {0, 7}, {-128, -120}, {5, 5}, {-1, 1}};

TEST(L1NormKernels, GroupAndGradientSumsMatchReference) {
  Generator gen(1);
  for (const RunLayout& l : kLayouts)
    for (const auto& [lo, hi] : kRanges) {
      const std::int64_t n = (l.runs - 1) * l.stride + l.len;
      const auto q = random_ints<std::int8_t>(n, lo, hi, gen), d = random_ints<std::int8_t>(n, -128, 127, gen);
      const L1GroupSums a = l1_group_sums_s8(q.data(), l.runs, l.len, l.stride);
      const L1GroupSums b = l1_group_sums_s8_ref(q.data(), l.runs, l.len, l.stride);
      EXPECT_EQ(a.s1, b.s1);
      EXPECT_EQ(a.abs_dev, b.abs_dev) << l.runs << "x" << l.len << " codes " << lo << ".." << hi;
      EXPECT_EQ(a.sign, b.sign);
      const L1GradientSums ga = l1_gradient_sums_s8(d.data(), q.data(), l.runs, l.len, l.stride);
      const L1GradientSums gb = l1_gradient_sums_s8_ref(d.data(), q.data(), l.runs, l.len, l.stride);
      EXPECT_EQ(ga.sum_d, gb.sum_d);
      EXPECT_EQ(ga.sum_dq, gb.sum_dq);
    }
}

TEST(L1NormKernels, StridedElementwiseKernelsMatchReferenceAndSkipTheGaps) {
  Generator gen(4);
  for (const RunLayout& l : kLayouts) {
    const std::int64_t n = (l.runs - 1) * l.stride + l.len;
    const auto q = random_ints<std::int8_t>(n, -128, 127, gen), d = random_ints<std::int8_t>(n, -128, 127, gen);
    const std::int32_t m = static_cast<std::int32_t>(l.runs * l.len);
    for (std::int32_t s1 : {3 * m + 1, -2 * m}) {
      // Sentinels in the gaps between runs: the kernels must write the runs only.
      std::vector<float> a(n, -7.0f), b(n, -7.0f);
      affine_s8_f32(q.data(), l.runs, l.len, l.stride, 0.37f, -1.3f, a.data());
      affine_s8_f32_ref(q.data(), l.runs, l.len, l.stride, 0.37f, -1.3f, b.data());
      EXPECT_EQ(a, b) << l.runs << "x" << l.len << " stride " << l.stride;
      const L1BatchNormBackward k{m, s1, 0.01f, -0.3f, 0.05f};
      std::vector<float> da(n, -7.0f), db(n, -7.0f);
      l1_bn_backward_s8_f32(k, q.data(), d.data(), l.runs, l.len, l.stride, da.data());
      l1_bn_backward_s8_f32_ref(k, q.data(), d.data(), l.runs, l.len, l.stride, db.data());
      EXPECT_EQ(da, db) << l.runs << "x" << l.len << " stride " << l.stride << " s1 " << s1;
      for (std::int64_t i = 0; i < n; ++i)
        if (i % l.stride >= l.len) {
          EXPECT_EQ(a[i], -7.0f) << "affine wrote the gap at " << i;
          EXPECT_EQ(da[i], -7.0f) << "bn backward wrote the gap at " << i;
        }
    }
  }
}

TEST(L1NormKernels, SignThresholdsGiveTheSignOfTheDeviation) {
  for (const std::int64_t m : {1, 2, 7, 49, 6272})
    for (const std::int64_t s1 : {std::int64_t{0}, std::int64_t{1}, std::int64_t{-1}, 3 * m, -3 * m, 3 * m + 1,
                                  -3 * m - 1, 127 * m - 1, -128 * m + 1}) {
      const L1SignThresholds t = l1_sign_thresholds(s1, m);
      for (int q = -128; q <= 127; ++q) {
        const std::int64_t dev = m * q - s1;
        EXPECT_EQ((q > t.above) - (q < t.below), (dev > 0) - (dev < 0)) << "m " << m << " s1 " << s1 << " q " << q;
      }
    }
}

TEST(L1NormKernels, ColumnKernelsMatchReferenceBitExact) {
  // Stretches of several groups' runs with per-column coefficients, at lengths around the steps.
  Generator gen(5);
  for (std::int64_t n : {1, 15, 16, 17, 49, 98, 1568, 1571}) {
    const auto q = random_ints<std::int8_t>(n, -128, 127, gen), d = random_ints<std::int8_t>(n, -128, 127, gen);
    std::vector<float> a(n), b(n), k_d(n), k_s(n), k_0(n);
    std::vector<std::int32_t> above(n), below(n);
    for (std::int64_t j = 0; j < n; ++j) {
      a[j] = gen.uniform() - 0.5f;
      b[j] = 2.0f * gen.uniform();
      k_d[j] = 0.01f * gen.uniform();
      k_s[j] = -0.3f * gen.uniform();
      k_0[j] = gen.uniform() - 0.5f;
      const L1SignThresholds t = l1_sign_thresholds(static_cast<std::int64_t>(gen.uniform() * 2000.0f) - 1000, 17);
      above[j] = t.above;
      below[j] = t.below;
    }
    // Three rows of n codes, `stride` = n + 2 apart: the two values between rows stay untouched.
    const std::int64_t rows = 3, stride = n + 2, total = (rows - 1) * stride + n;
    const auto q3 = random_ints<std::int8_t>(total, -128, 127, gen), d3 = random_ints<std::int8_t>(total, -128, 127, gen);
    std::vector<std::int8_t> qs = q3, ds = d3;  // row 0 holds q and d themselves
    std::copy(q.begin(), q.end(), qs.begin());
    std::copy(d.begin(), d.end(), ds.begin());
    std::vector<float> ya(total + 1, -7.0f), yb(total + 1, -7.0f);  // a sentinel past the end
    affine_cols_s8_f32(qs.data(), rows, n, stride, a.data(), b.data(), ya.data());
    affine_cols_s8_f32_ref(qs.data(), rows, n, stride, a.data(), b.data(), yb.data());
    EXPECT_EQ(ya, yb) << "n " << n;
    EXPECT_EQ(ya[n], -7.0f);
    EXPECT_EQ(ya[total], -7.0f);
    const L1BatchNormBackwardCols k{k_d.data(), k_s.data(), k_0.data(), above.data(), below.data()};
    std::vector<float> da(total + 1, -7.0f), db(total + 1, -7.0f);
    l1_bn_backward_cols_s8_f32(k, qs.data(), ds.data(), rows, n, stride, da.data());
    l1_bn_backward_cols_s8_f32_ref(k, qs.data(), ds.data(), rows, n, stride, db.data());
    EXPECT_EQ(da, db) << "n " << n;
    EXPECT_EQ(da[n + 1], -7.0f);
    EXPECT_EQ(da[total], -7.0f);
  }
  // The per-column forms equal the per-group kernels on a group laid out as one stretch.
  const std::int64_t len = 49;
  const auto q = random_ints<std::int8_t>(len, -128, 127, gen), d = random_ints<std::int8_t>(len, -128, 127, gen);
  const L1BatchNormBackward group{static_cast<std::int32_t>(len), 300, 0.02f, -0.1f, 0.3f};
  const L1SignThresholds t = l1_sign_thresholds(group.s1, group.m);
  const std::vector<float> a(len, 0.37f), b(len, -1.3f), k_d(len, group.k_d), k_s(len, group.k_s), k_0(len, group.k_0);
  const std::vector<std::int32_t> above(len, t.above), below(len, t.below);
  std::vector<float> by_cols(len), by_group(len);
  affine_cols_s8_f32(q.data(), 1, len, len, a.data(), b.data(), by_cols.data());
  affine_s8_f32(q.data(), 1, len, len, 0.37f, -1.3f, by_group.data());
  EXPECT_EQ(by_cols, by_group);
  l1_bn_backward_cols_s8_f32({k_d.data(), k_s.data(), k_0.data(), above.data(), below.data()}, q.data(), d.data(), 1,
                             len, len, by_cols.data());
  l1_bn_backward_s8_f32(group, q.data(), d.data(), 1, len, len, by_group.data());
  EXPECT_EQ(by_cols, by_group);
}

// The channels-last sums: bit-exact against the references, and equal to the per-group kernels on
// each column (a channel's codes strided by the column count), also when the rows are split into
// parts whose sums are added.
TEST(L1NormKernels, ColumnSumsMatchReferenceAndGroupKernels) {
  Generator gen(8);
  for (std::int64_t cols : {1, 3, 16, 17, 64}) {
    const std::int64_t rows = 211;
    const auto q = random_ints<std::int8_t>(rows * cols, -128, 127, gen);
    const auto d = random_ints<std::int8_t>(rows * cols, -128, 127, gen);
    std::vector<std::int64_t> s1(cols, 0), s1_ref(cols, 0);
    l1_col_sums_s8(q.data(), 100, cols, s1.data());  // two parts: rows [0, 100) and [100, rows)
    l1_col_sums_s8(q.data() + 100 * cols, rows - 100, cols, s1.data());
    l1_col_sums_s8_ref(q.data(), rows, cols, s1_ref.data());
    EXPECT_EQ(s1, s1_ref) << cols;
    std::vector<std::int64_t> dev(cols, 0), sign(cols, 0), dev_ref(cols, 0), sign_ref(cols, 0);
    l1_col_deviation_s8(q.data(), 57, cols, rows, s1.data(), dev.data(), sign.data());
    l1_col_deviation_s8(q.data() + 57 * cols, rows - 57, cols, rows, s1.data(), dev.data(), sign.data());
    l1_col_deviation_s8_ref(q.data(), rows, cols, rows, s1.data(), dev_ref.data(), sign_ref.data());
    EXPECT_EQ(dev, dev_ref) << cols;
    EXPECT_EQ(sign, sign_ref) << cols;
    std::vector<std::int64_t> sd(cols, 0), sdq(cols, 0), sd_ref(cols, 0), sdq_ref(cols, 0);
    l1_col_gradient_sums_s8(d.data(), q.data(), rows, cols, sd.data(), sdq.data());
    l1_col_gradient_sums_s8_ref(d.data(), q.data(), rows, cols, sd_ref.data(), sdq_ref.data());
    EXPECT_EQ(sd, sd_ref) << cols;
    EXPECT_EQ(sdq, sdq_ref) << cols;
    for (std::int64_t c = 0; c < cols; ++c) {
      const L1GroupSums g = l1_group_sums_s8(q.data() + c, rows, 1, cols);
      EXPECT_EQ(g.s1, s1[c]);
      EXPECT_EQ(g.abs_dev, dev[c]);
      EXPECT_EQ(g.sign, sign[c]);
      const L1GradientSums gs = l1_gradient_sums_s8(d.data() + c, q.data() + c, rows, 1, cols);
      EXPECT_EQ(gs.sum_d, sd[c]);
      EXPECT_EQ(gs.sum_dq, sdq[c]);
    }
  }
}

TEST(L1NormKernels, ColumnSumsDoNotOverflowOnLargeGroups) {
  // 2^18 rows of -128: column sums past int32 in one chunk's lane products (d q = 2^14 each).
  const std::int64_t rows = std::int64_t{1} << 18, cols = 2;
  const std::vector<std::int8_t> q(rows * cols, -128);
  std::vector<std::int64_t> sd(cols, 0), sdq(cols, 0), s1(cols, 0), dev(cols, 0), sign(cols, 0);
  l1_col_gradient_sums_s8(q.data(), q.data(), rows, cols, sd.data(), sdq.data());
  l1_col_sums_s8(q.data(), rows, cols, s1.data());
  l1_col_deviation_s8(q.data(), rows, cols, rows, s1.data(), dev.data(), sign.data());
  for (std::int64_t c = 0; c < cols; ++c) {
    EXPECT_EQ(sd[c], -128 * rows);
    EXPECT_EQ(sdq[c], 16384 * rows);
    EXPECT_EQ(s1[c], -128 * rows);
    EXPECT_EQ(dev[c], 0);
    EXPECT_EQ(sign[c], 0);
  }
}

TEST(L1NormKernels, GradientSumsDoNotOverflowOnLargeGroups) {
  // 2^20 products of -128 * -128: far past int32 in one lane without the periodic flush.
  const std::int64_t n = std::int64_t{1} << 20;
  const std::vector<std::int8_t> q(n, -128), d(n, -128);
  const L1GradientSums s = l1_gradient_sums_s8(d.data(), q.data(), 1, n, n);
  EXPECT_EQ(s.sum_dq, n * 128 * 128);
  EXPECT_EQ(s.sum_d, -128 * n);
}

TEST(L1NormKernels, ElementwiseKernelsMatchReferenceBitExact) {
  Generator gen(2);
  for (std::int64_t n : {1, 15, 16, 17, 49, 64, 255, 256, 1000}) {
    const auto q = random_ints<std::int8_t>(n, -128, 127, gen), d = random_ints<std::int8_t>(n, -128, 127, gen);
    std::vector<float> gamma(n), beta(n);
    for (std::int64_t j = 0; j < n; ++j) {
      gamma[j] = 0.5f + gen.uniform();
      beta[j] = gen.uniform() - 0.5f;
    }
    std::vector<float> a(n), b(n);
    affine_s8_f32(q.data(), 1, n, n, 0.37f, -1.3f, a.data());
    affine_s8_f32_ref(q.data(), 1, n, n, 0.37f, -1.3f, b.data());
    EXPECT_EQ(a, b);
    // s1 with a remainder and an exact multiple of m (the sign is 0 for codes at the mean).
    for (std::int32_t s1 : {static_cast<std::int32_t>(3 * n + 1), static_cast<std::int32_t>(-2 * n)}) {
      const L1BatchNormBackward k{static_cast<std::int32_t>(n), s1, 0.01f, -0.3f, 0.05f};
      l1_bn_backward_s8_f32(k, q.data(), d.data(), 1, n, n, a.data());
      l1_bn_backward_s8_f32_ref(k, q.data(), d.data(), 1, n, n, b.data());
      EXPECT_EQ(a, b) << "n " << n << " s1 " << s1;
      for (const float* g : {static_cast<const float*>(nullptr), static_cast<const float*>(gamma.data())}) {
        const float* bt = g ? beta.data() : nullptr;
        l1_ln_forward_row_s8_f32(q.data(), n, 0.02f, 1.7f, g, bt, a.data());
        l1_ln_forward_row_s8_f32_ref(q.data(), n, 0.02f, 1.7f, g, bt, b.data());
        EXPECT_EQ(a, b);
        const L1RowGradientSums sa = l1_ln_backward_sums_s8(q.data(), d.data(), n, s1, g);
        const L1RowGradientSums sb = l1_ln_backward_sums_s8_ref(q.data(), d.data(), n, s1, g);
        EXPECT_EQ(sa.sum_g, sb.sum_g);
        EXPECT_EQ(sa.sum_gd, sb.sum_gd);
        const L1LayerNormBackward lk{s1, 0.003f, 1.9f, 0.01f, 0.2f, -0.1f, 0.05f, 0.7f};
        std::vector<float> ga(n, 0.5f), gb(n, 0.5f), ba(n, -0.25f), bb(n, -0.25f);
        l1_ln_backward_row_s8_f32(lk, q.data(), d.data(), n, g, a.data(), ga.data(), ba.data());
        l1_ln_backward_row_s8_f32_ref(lk, q.data(), d.data(), n, g, b.data(), gb.data(), bb.data());
        EXPECT_EQ(a, b);
        EXPECT_EQ(ga, gb);
        EXPECT_EQ(ba, bb);
      }
    }
  }
}

TEST(QuantizeKernels, CodeSumsEqualReference) {
  // Row sums of [r0, r1) and column sums added to what col_sums held, at widths around the vector
  // steps and with extreme codes (a column of 1024 rows of -128 passes int16).
  Generator gen(6);
  for (const auto& [rows, cols] : std::vector<std::pair<std::int64_t, std::int64_t>>{
           {1, 1}, {3, 15}, {7, 16}, {5, 17}, {2, 63}, {9, 64}, {4, 65}, {1024, 33}, {64, 1024}}) {
    for (const auto& [lo, hi] : std::vector<std::pair<int, int>>{{-128, 127}, {-128, -128}, {127, 127}}) {
      const auto v = random_ints<std::int8_t>(rows * cols, lo, hi, gen);
      const std::int64_t r0 = rows / 3, r1 = rows;
      std::vector<std::int32_t> rs_a(rows, -1), rs_b(rows, -1), cs_a(cols), cs_b;
      for (std::int64_t c = 0; c < cols; ++c) cs_a[c] = static_cast<std::int32_t>(c) - 5;
      cs_b = cs_a;
      code_sums_s8(v.data(), r0, r1, cols, rs_a.data(), cs_a.data());
      code_sums_s8_ref(v.data(), r0, r1, cols, rs_b.data(), cs_b.data());
      EXPECT_EQ(rs_a, rs_b) << rows << "x" << cols << " codes " << lo << ".." << hi;
      EXPECT_EQ(cs_a, cs_b) << rows << "x" << cols << " codes " << lo << ".." << hi;
      if (r0 > 0) {
        EXPECT_EQ(rs_a[0], -1) << "a row below r0 was written";
      }
    }
  }
  // The reference itself, on a case worked by hand.
  const std::int8_t v[6] = {1, -2, 3, -128, 127, 0};  // [2, 3]
  std::int32_t rs[2], cs[3] = {10, 0, 0};
  code_sums_s8_ref(v, 0, 2, 3, rs, cs);
  EXPECT_EQ(rs[0], 2);
  EXPECT_EQ(rs[1], -1);
  EXPECT_EQ(cs[0], 10 + 1 - 128);
  EXPECT_EQ(cs[1], -2 + 127);
  EXPECT_EQ(cs[2], 3);
}

TEST(QuantizeKernels, StridedRowsEqualRowByRowCalls) {
  Generator gen(3);
  const std::int64_t rows = 12, cols = 49, step = 4;
  const Tensor x = Tensor::randn({rows, cols}, gen);
  std::vector<float> max_strided(rows, -1.0f), max_single(rows, -1.0f);
  ASSERT_TRUE(absmax_rows_f32(x.data<float>(), 1, rows, cols, nullptr, max_strided.data(), nullptr, step));
  for (std::int64_t r = 1; r < rows; r += step)
    ASSERT_TRUE(absmax_rows_f32(x.data<float>(), r, r + 1, cols, nullptr, max_single.data()));
  EXPECT_EQ(max_strided, max_single);  // rows off the stride untouched (-1) in both
  std::vector<float> inv(rows, 20.0f), ones(std::max(rows, cols), 1.0f);
  for (bool stochastic : {false, true}) {
    std::vector<std::int8_t> strided(rows * cols, 99), single(rows * cols, 99), ref(rows * cols, 99);
    QuantizePackArgs a{x.data<float>(), rows, cols, inv.data(), ones.data(), ones.data(), ones.data(),
                       127.0f, stochastic, 12345, 0, strided.data()};
    quantize_pack_f32_s8(a, 1, rows, step);
    a.out = ref.data();
    quantize_pack_f32_s8_ref(a, 1, rows, step);
    a.out = single.data();
    for (std::int64_t r = 1; r < rows; r += step) quantize_pack_f32_s8(a, r, r + 1);
    EXPECT_EQ(strided, single);
    EXPECT_EQ(strided, ref);
    // The unit-factor promise skips multiplies by 1 and changes nothing.
    std::vector<std::int8_t> unit(rows * cols, 99);
    a.out = unit.data();
    a.unit_factors = true;
    quantize_pack_f32_s8(a, 1, rows, step);
    EXPECT_EQ(unit, ref);
  }
}

// absmax_rows_f32 against its definition, row by row: short rows go through the 16-row max
// network (whole groups of 16 rows, then the rest one by one), longer ones through the per-row
// loops; with and without column weights, contiguous and strided rows, and the negative and
// non-finite flags raised by a value in any row, including one inside a network group.
TEST(QuantizeKernels, RowMaximaEqualTheirDefinition) {
  Generator gen(11);
  for (std::int64_t cols : {1, 7, 16, 17, 32, 49, 64, 65, 196, 300}) {
    for (std::int64_t rows : {1, 15, 16, 17, 40}) {
      for (std::int64_t step : {1, 3}) {
        Tensor x = Tensor::randn({rows, cols}, gen);
        for (std::int64_t i = 0; i < rows * cols; ++i) x.data<float>()[i] = std::fabs(x.data<float>()[i]);  // no negative value
        std::vector<float> weight(cols);
        for (std::int64_t c = 0; c < cols; ++c) weight[c] = std::ldexp(1.0f, static_cast<int>(c % 5));
        for (const float* w : {static_cast<const float*>(nullptr), static_cast<const float*>(weight.data())}) {
          std::vector<float> got(rows, -1.0f), want(rows, -1.0f);
          bool negative = false;
          ASSERT_TRUE(absmax_rows_f32(x.data<float>(), 0, rows, cols, w, got.data(), &negative, step));
          for (std::int64_t r = 0; r < rows; r += step) {
            float m = 0.0f;
            for (std::int64_t c = 0; c < cols; ++c)
              m = std::max(m, std::fabs(x.data<float>()[r * cols + c]) * (w ? w[c] : 1.0f));
            want[r] = m;
          }
          EXPECT_EQ(got, want) << rows << "x" << cols << " step " << step << " weights " << (w != nullptr);
          EXPECT_FALSE(negative) << rows << "x" << cols;
        }
        // One negative value, then one NaN, in the last row the stride reaches.
        const std::int64_t last = (rows - 1) / step * step;
        Tensor y = x.clone();
        y.data<float>()[last * cols + cols / 2] = -0.5f;
        std::vector<float> out(rows);
        bool negative = false;
        ASSERT_TRUE(absmax_rows_f32(y.data<float>(), 0, rows, cols, nullptr, out.data(), &negative, step));
        EXPECT_TRUE(negative) << rows << "x" << cols << " step " << step;
        y.data<float>()[last * cols + cols / 2] = std::numeric_limits<float>::quiet_NaN();
        EXPECT_FALSE(absmax_rows_f32(y.data<float>(), 0, rows, cols, nullptr, out.data(), nullptr, step))
            << rows << "x" << cols << " step " << step;
      }
    }
  }
}

// absmax_cols_f32 against its definition: it accumulates into col_max (max with what is there),
// with and without row weights, around the 16-lane steps and the 64-column register path; a NaN
// anywhere is reported.
TEST(QuantizeKernels, ColumnMaximaEqualTheirDefinition) {
  Generator gen(12);
  for (std::int64_t cols : {1, 7, 16, 17, 32, 33, 48, 49, 64, 65, 100}) {
    // 23 rows from row 2: 21, which the register path takes in sets of 4, 2 or 1 with a tail.
    const std::int64_t rows = 23;
    const Tensor x = Tensor::randn({rows, cols}, gen);
    std::vector<float> weight(rows);
    for (std::int64_t r = 0; r < rows; ++r) weight[r] = std::ldexp(1.0f, static_cast<int>(r % 4) - 1);
    for (const float* w : {static_cast<const float*>(nullptr), static_cast<const float*>(weight.data())}) {
      std::vector<float> got(cols), want(cols);
      for (std::int64_t c = 0; c < cols; ++c) got[c] = want[c] = c % 3 == 0 ? 2.5f : 0.0f;  // prior maxima
      ASSERT_TRUE(absmax_cols_f32(x.data<float>(), 2, rows, cols, w, got.data()));
      for (std::int64_t r = 2; r < rows; ++r)
        for (std::int64_t c = 0; c < cols; ++c)
          want[c] = std::max(want[c], std::fabs(x.data<float>()[r * cols + c]) * (w ? w[r] : 1.0f));
      EXPECT_EQ(got, want) << rows << "x" << cols << " weights " << (w != nullptr);
    }
    Tensor y = x.clone();
    y.data<float>()[(rows - 1) * cols + cols - 1] = std::numeric_limits<float>::infinity();
    std::vector<float> out(cols, 0.0f);
    EXPECT_FALSE(absmax_cols_f32(y.data<float>(), 0, rows, cols, nullptr, out.data())) << cols;
    // The sign flag: set by one negative value anywhere (also the last column), never by -0 or by
    // non-negative inputs, never reset.
    Tensor z = x.clone();
    for (std::int64_t i = 0; i < rows * cols; ++i) z.data<float>()[i] = std::fabs(z.data<float>()[i]);
    z.data<float>()[0] = -0.0f;
    bool negative = false;
    std::fill(out.begin(), out.end(), 0.0f);
    ASSERT_TRUE(absmax_cols_f32(z.data<float>(), 0, rows, cols, nullptr, out.data(), &negative));
    EXPECT_FALSE(negative) << cols;
    z.data<float>()[(rows - 1) * cols + cols - 1] = -1e-30f;
    ASSERT_TRUE(absmax_cols_f32(z.data<float>(), 0, rows, cols, nullptr, out.data(), &negative));
    EXPECT_TRUE(negative) << cols;
    ASSERT_TRUE(absmax_cols_f32(z.data<float>(), 0, 1, cols, nullptr, out.data(), &negative));
    EXPECT_TRUE(negative) << cols;
  }
}

// The per-column MSE-clip errors have the bits of the one-group kernel on each column gathered,
// around the 8-lane and 16-lane steps, with and without a lower clamp at 0.
TEST(QuantizeKernels, ShiftClipErrorsOfColumnsEqualOneGroupAtATime) {
  Generator gen(14);
  for (std::int64_t cols : {1, 5, 16, 17, 40}) {
    for (std::int64_t rows : {1, 7, 8, 9, 49, 100}) {
      const Tensor x = mul(Tensor::randn({rows, cols}, gen), 3.0f);
      std::vector<float> a(cols);
      for (std::int64_t c = 0; c < cols; ++c) a[c] = std::ldexp(1.0f, static_cast<int>(c % 3)) * 1.7f;
      for (const float lo : {-7.0f, 0.0f}) {
        std::vector<float> lanes(std::max(16 * cols, rows)), keep(cols), halve(cols), keep_ref(cols), halve_ref(cols);
        shift_clip_errors_cols_f32(x.data<float>(), rows, cols, a.data(), lo, 7.0f, lanes.data(), keep.data(), halve.data());
        shift_clip_errors_cols_f32_ref(x.data<float>(), rows, cols, a.data(), lo, 7.0f, lanes.data(), keep_ref.data(),
                                       halve_ref.data());
        EXPECT_EQ(keep, keep_ref) << rows << "x" << cols;
        EXPECT_EQ(halve, halve_ref) << rows << "x" << cols;
        for (std::int64_t c = 0; c < cols; ++c) {
          std::vector<float> column(rows);
          for (std::int64_t i = 0; i < rows; ++i) column[i] = x.data<float>()[i * cols + c];
          float errors[2];
          shift_clip_errors_f32(column.data(), rows, a[c], lo, 7.0f, errors);
          EXPECT_EQ(keep[c], errors[0]) << rows << "x" << cols << " column " << c;
          EXPECT_EQ(halve[c], errors[1]) << rows << "x" << cols << " column " << c;
        }
      }
    }
  }
}

// Rows of up to 64 columns take the narrow-row loop (AVX-512: column factors in registers, the
// element index advanced row by row); it must equal the reference in every factor form and
// rounding mode, from a first row other than 0, with row steps above 1, with channels-last index
// planes (the index of a row's image and pixel is carried from row to row) and with bases whose
// indices cross 2^32 inside the rows (those rows take the scalar path).
TEST(QuantizeKernels, PackOfManyShortRowsEqualsReference) {
  Generator gen(13);
  for (std::int64_t cols : {5, 16, 24, 32, 48, 64}) {
    const std::int64_t rows = 37;
    const Tensor x = mul(Tensor::randn({rows, cols}, gen), 5.0f);
    std::vector<float> row_mul(rows), row_pack(rows), col_mul(cols), col_pack(cols), ones(std::max(rows, cols), 1.0f);
    for (std::int64_t r = 0; r < rows; ++r) {
      row_mul[r] = 0.5f + 0.125f * static_cast<float>(r % 7);
      row_pack[r] = std::ldexp(1.0f, static_cast<int>(r % 3));
    }
    for (std::int64_t c = 0; c < cols; ++c) {
      col_mul[c] = std::ldexp(1.0f, static_cast<int>(c % 3));
      col_pack[c] = std::ldexp(1.0f, static_cast<int>(2 - c % 3));
    }
    for (int form = 0; form < 3; ++form) {  // general, unit_factors, col_mul_only
      for (bool stochastic : {false, true}) {
        for (std::uint64_t index_base : {std::uint64_t{0}, (std::uint64_t{1} << 32) - 5 * static_cast<std::uint64_t>(cols) - 3}) {
          for (const auto& [plane, r0, step] : std::vector<std::tuple<std::int64_t, std::int64_t, std::int64_t>>{
                   {0, 0, 1}, {0, 3, 2}, {7, 0, 1}, {7, 5, 1}, {7, 4, 3}, {1, 2, 5}}) {
            std::vector<std::int8_t> got(rows * cols, 99), want(rows * cols, 99);
            QuantizePackArgs a{x.data<float>(), rows, cols, row_mul.data(), col_mul.data(), row_pack.data(),
                               col_pack.data(), 7.0f, stochastic, 4242, 0x80, got.data()};
            if (form == 1) {
              a.unit_factors = true;
              a.col_mul = a.row_pack = a.col_pack = ones.data();
            } else if (form == 2) {
              a.col_mul_only = true;
              a.row_mul = a.row_pack = a.col_pack = ones.data();
            }
            a.index_base = index_base;
            a.index_plane = plane;
            quantize_pack_f32_s8(a, r0, rows, step);
            a.out = want.data();
            quantize_pack_f32_s8_ref(a, r0, rows, step);
            EXPECT_EQ(got, want) << "cols " << cols << " form " << form << " stochastic " << stochastic << " base "
                                 << index_base << " plane " << plane << " rows " << r0 << ".." << rows << " step " << step;
          }
        }
      }
    }
  }
}

// Stochastic rounding at the top of the range: with y = qmax, floor(qmax + u) in float is qmax + 1
// for draws u within an ulp of 1, a code outside the range (it wrapped to -128 in int8: the largest
// positive value became the most negative). Every y here is qmax, at element indices chosen to hold
// such draws (found with stochastic_uniform itself), in 8-bit codes (qmax 127) and 4-bit ShiftQuant
// codes (qmax 7, v = q * 2^4), on 16-lane, 64-code and tail paths: every code must be qmax (times
// its pack factor), in the dispatched kernel and the reference.
TEST(QuantizeKernels, StochasticRoundingStaysInTheRange) {
  constexpr std::uint64_t kKey = 0x5eed5eedULL;
  for (const float qmax : {127.0f, 7.0f}) {
    std::vector<std::uint64_t> overflowing;  // indices whose draw takes floor(qmax + u) past qmax
    for (std::uint64_t i = 0; i < (std::uint64_t{1} << 24) && overflowing.size() < 3; ++i)
      if (std::floor(qmax + stochastic_uniform(kKey, i)) > qmax) overflowing.push_back(i);
    ASSERT_EQ(overflowing.size(), 3u) << qmax;
    const float pack = qmax == 7.0f ? 16.0f : 1.0f;
    for (std::int64_t cols : {16, 64, 100}) {
      const std::int64_t rows = static_cast<std::int64_t>(overflowing.back()) / cols + 1;
      std::vector<float> x(static_cast<std::size_t>(rows * cols), qmax), ones(static_cast<std::size_t>(rows + cols), 1.0f),
          col_pack(static_cast<std::size_t>(cols), pack);
      std::vector<std::int8_t> got(x.size()), want(x.size());
      QuantizePackArgs a{x.data(), rows, cols, ones.data(), ones.data(), ones.data(), col_pack.data(), qmax, true, kKey, 0,
                         got.data()};
      quantize_pack_f32_s8(a, 0, rows);
      a.out = want.data();
      quantize_pack_f32_s8_ref(a, 0, rows);
      const auto top = static_cast<std::int8_t>(qmax * pack);
      for (const std::uint64_t i : overflowing) {
        EXPECT_EQ(got[i], top) << "qmax " << qmax << " cols " << cols << " index " << i;
        EXPECT_EQ(want[i], top) << "qmax " << qmax << " cols " << cols << " index " << i << " (reference)";
      }
      EXPECT_EQ(std::count(got.begin(), got.end(), top), rows * cols) << "qmax " << qmax << " cols " << cols;
      EXPECT_EQ(got, want) << "qmax " << qmax << " cols " << cols;
    }
  }
}

// index_plane: a channels-last [N * P, C] pack draws what the channels-first [N, C, P] pack draws
// for each element, so its codes are the channels-first codes transposed per sample, in the
// dispatched kernel and the reference, for channel counts around the vector steps, with a base
// whose channels-first indices cross 2^32 inside a sample (those rows take the scalar path).
TEST(QuantizeKernels, ChannelsLastPackDrawsTheChannelsFirstIndices) {
  Generator gen(15);
  const std::int64_t N = 3, P = 10;
  for (std::int64_t C : {1, 5, 16, 17, 40, 64, 70}) {
    const Tensor first = mul(Tensor::randn({N, C, P}, gen), 4.0f);  // [N, C, P]
    Tensor last = Tensor::empty({N * P, C});                         // [N * P, C]
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t c = 0; c < C; ++c)
        for (std::int64_t p = 0; p < P; ++p)
          last.data<float>()[(n * P + p) * C + c] = first.data<float>()[(n * C + c) * P + p];
    std::vector<float> channel_mul(C), ones(static_cast<std::size_t>(std::max(N * C, N * P) + P + C), 1.0f);
    std::vector<float> row_mul(N * C);  // channels-first: the channel's factor on each of its rows
    for (std::int64_t c = 0; c < C; ++c) channel_mul[c] = 0.75f + 0.25f * static_cast<float>(c % 5);
    for (std::int64_t r = 0; r < N * C; ++r) row_mul[r] = channel_mul[r % C];
    for (std::uint64_t base : {std::uint64_t{0}, (std::uint64_t{1} << 32) - static_cast<std::uint64_t>(C * P) - 7}) {
      std::vector<std::int8_t> want(N * C * P), got(N * P * C), got_ref(N * P * C);
      QuantizePackArgs a{first.data<float>(), N * C, P, row_mul.data(), ones.data(), ones.data(), ones.data(),
                         31.0f, true, 99, 0, want.data()};
      a.unit_factors = true;
      a.index_base = base;
      quantize_pack_f32_s8_ref(a, 0, N * C);
      QuantizePackArgs b{last.data<float>(), N * P, C, ones.data(), channel_mul.data(), ones.data(), ones.data(),
                         31.0f, true, 99, 0, got.data()};
      b.col_mul_only = true;
      b.index_base = base;
      b.index_plane = P;
      quantize_pack_f32_s8(b, 0, N * P);
      b.out = got_ref.data();
      quantize_pack_f32_s8_ref(b, 0, N * P);
      for (std::int64_t n = 0; n < N; ++n)
        for (std::int64_t c = 0; c < C; ++c)
          for (std::int64_t p = 0; p < P; ++p) {
            const std::int8_t w = want[(n * C + c) * P + p];
            ASSERT_EQ(got[(n * P + p) * C + c], w) << "C " << C << " base " << base << " at " << n << "," << c << "," << p;
            ASSERT_EQ(got_ref[(n * P + p) * C + c], w) << "C " << C << " base " << base;
          }
    }
  }
}

// The dispatched pack (AVX-512: 64-code steps with saturating packs, then 16-lane masked steps;
// AVX2: 32-code steps, 8-lane steps, a masked tail) equals the scalar reference at every length
// around those step sizes, with power-of-two pack factors, in
// both rounding modes and both code forms, and with codes at the int8 range's ends (+-127).
TEST(QuantizeKernels, PackEqualsReferenceAcrossStepBoundaries) {
  Generator gen(5);
  for (std::int64_t cols : {1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 40, 48, 63, 64, 65, 80, 127, 128, 129, 144, 200, 1024}) {
    const std::int64_t rows = 3;
    const Tensor x = mul(Tensor::randn({rows, cols}, gen), 9.0f);  // many values clamp at +-qmax
    std::vector<float> row_mul{1.0f, 0.5f, 2.0f}, row_pack{1.0f, 1.0f, 1.0f};  // |v| <= 15 * 2^3
    std::vector<float> col_mul(cols), col_pack(cols);
    for (std::int64_t c = 0; c < cols; ++c) {
      const int e = static_cast<int>(c % 4);  // exponent e: y = x 2^e, v = q 2^(3 - e) with qmax 15
      col_mul[c] = std::ldexp(1.0f, e);
      col_pack[c] = std::ldexp(1.0f, 3 - e);
    }
    for (bool stochastic : {false, true}) {
      for (std::uint8_t xor_mask : {std::uint8_t{0}, std::uint8_t{0x80}}) {
        std::vector<std::int8_t> got(rows * cols, 99), want(rows * cols, 99);
        QuantizePackArgs a{x.data<float>(), rows,         cols,  row_mul.data(), col_mul.data(), row_pack.data(),
                           col_pack.data(), 15.0f,        stochastic, 777,       xor_mask,       got.data()};
        quantize_pack_f32_s8(a, 0, rows);
        a.out = want.data();
        quantize_pack_f32_s8_ref(a, 0, rows);
        EXPECT_EQ(got, want) << "cols " << cols << " stochastic " << stochastic << " xor " << int(xor_mask);
        const auto extreme = std::minmax_element(want.begin(), want.end());
        if (cols >= 64 && xor_mask == 0) {  // clamped codes: +-15 * 2^3
          EXPECT_EQ(*extreme.first, -120) << cols;
          EXPECT_EQ(*extreme.second, 120) << cols;
        }
      }
    }
    // 8-bit codes with unit factors: +-127 itself goes through the packs.
    std::vector<float> ones(std::max<std::int64_t>(rows, cols), 1.0f);
    std::vector<std::int8_t> got(rows * cols), want(rows * cols);
    std::vector<float> big_mul{20.0f, 20.0f, 20.0f};
    QuantizePackArgs a{x.data<float>(), rows, cols, big_mul.data(), ones.data(), ones.data(), ones.data(),
                       127.0f, false, 0, 0, got.data()};
    a.unit_factors = true;
    quantize_pack_f32_s8(a, 0, rows);
    a.out = want.data();
    quantize_pack_f32_s8_ref(a, 0, rows);
    EXPECT_EQ(got, want) << "cols " << cols;
    if (cols >= 64) {
      EXPECT_EQ(*std::min_element(want.begin(), want.end()), -127);
      EXPECT_EQ(*std::max_element(want.begin(), want.end()), 127);
    }
  }
}

// The two error sums of QuantizeParams::mse_clip's exponent choice: the dispatched kernel equals
// the scalar reference bit for bit at every tail length, and the reference equals the definition
// (lane i % 8, lanes added in order) computed here once more.
TEST(QuantizeKernels, ShiftClipErrorsEqualReference) {
  Generator gen(12);
  for (std::int64_t n : {0, 1, 7, 8, 9, 15, 16, 17, 31, 49, 196, 784, 1000}) {
    Tensor x = Tensor::randn({std::max<std::int64_t>(n, 1)}, gen);
    for (const bool relu : {true, false}) {
      std::vector<float> v(x.data<float>(), x.data<float>() + n);
      if (relu) {
        for (float& e : v) e = std::max(e, 0.0f);
      }
      const float qmax = relu ? 15.0f : 7.0f, lo = relu ? 0.0f : -7.0f;
      for (const float a : {0.5f, 3.0f, 4.75f, 12.0f}) {
        float got[2] = {-1, -1}, want[2] = {-1, -1};
        shift_clip_errors_f32(v.data(), n, a, lo, qmax, got);
        shift_clip_errors_f32_ref(v.data(), n, a, lo, qmax, want);
        EXPECT_EQ(got[0], want[0]) << "n " << n << " a " << a;
        EXPECT_EQ(got[1], want[1]) << "n " << n << " a " << a;
        float lanes[2][8] = {};
        for (std::int64_t i = 0; i < n; ++i) {
          const float y = v[i] * a;
          const float d0 = std::nearbyint(std::clamp(y, lo, qmax)) - y;
          const float d1 = std::nearbyint(std::clamp(2 * y, lo, qmax)) - 2 * y;
          lanes[0][i % 8] += d0 * d0;
          lanes[1][i % 8] += d1 * d1;
        }
        float sums[2] = {0.0f, 0.0f};
        for (int k = 0; k < 2; ++k)
          for (float l : lanes[k]) sums[k] += l;
        EXPECT_EQ(want[0], sums[0]) << "n " << n;
        EXPECT_EQ(want[1], sums[1]) << "n " << n;
        if (n > 0 && a >= 12.0f) {
          EXPECT_GT(want[1], want[0]);  // most values saturate at 2y
        }
      }
    }
  }
}

// One candidate of the MSE clipping search: the dispatched kernel equals the reference bit for bit
// at every tail length, and the reference is the sum of squared errors in value units (checked in
// double, to float rounding), zero where the step divides every value exactly.
TEST(QuantizeKernels, ClipErrorEqualsReference) {
  Generator gen(13);
  for (std::int64_t n : {0, 1, 7, 8, 9, 15, 16, 17, 31, 49, 196, 784, 1000}) {
    const Tensor x = Tensor::randn({std::max<std::int64_t>(n, 1)}, gen);
    const float* v = x.data<float>();
    for (const bool relu : {true, false}) {
      std::vector<float> u(v, v + n);
      if (relu) {
        for (float& e : u) e = std::max(e, 0.0f);
      }
      const float qmax = relu ? 15.0f : 7.0f, lo = relu ? 0.0f : -7.0f;
      const float scales[] = {0.05f, 0.3f, 1.0f};
      const float invs[] = {1.0f / scales[0], 1.0f / scales[1], 1.0f / scales[2]};
      float all[3];  // the three candidates in one call
      clip_errors_f32(u.data(), n, invs, scales, 3, lo, qmax, all);
      for (int k = 0; k < 3; ++k) {
        float got, want;
        clip_errors_f32(u.data(), n, &invs[k], &scales[k], 1, lo, qmax, &got);
        clip_errors_f32_ref(u.data(), n, &invs[k], &scales[k], 1, lo, qmax, &want);
        EXPECT_EQ(got, want) << "n " << n << " scale " << scales[k];
        EXPECT_EQ(all[k], want) << "n " << n << " scale " << scales[k] << " among three candidates";
        double exact = 0.0;
        for (float e : u) exact += std::pow(std::nearbyint(std::clamp(e * invs[k], lo, qmax)) * scales[k] - e, 2.0);
        EXPECT_NEAR(want, exact, 1e-5 * exact + 1e-12) << "n " << n;
      }
    }
  }
  const std::vector<float> on_grid = {0.5f, -1.0f, 1.5f, 3.0f, -3.5f};
  const float inv = 2.0f, scale = 0.5f;
  float error = -1.0f;
  clip_errors_f32(on_grid.data(), 5, &inv, &scale, 1, -7.0f, 7.0f, &error);
  EXPECT_EQ(error, 0.0f);
}

TEST(QuantizeKernels, AbsmaxRowsEqualsPlainLoopAtEveryTailLength) {
  Generator gen(4);
  for (std::int64_t cols : {1, 7, 15, 16, 17, 31, 49, 64, 100, 255, 256, 300}) {
    const std::int64_t rows = 5;
    const Tensor x = Tensor::randn({rows, cols}, gen);
    const Tensor w = add(relu(Tensor::randn({cols}, gen)), 0.25f);  // positive column weights
    for (const float* weight : {static_cast<const float*>(nullptr), w.data<float>()}) {
      std::vector<float> got(rows, -1.0f);
      bool negative = false;
      ASSERT_TRUE(absmax_rows_f32(x.data<float>(), 0, rows, cols, weight, got.data(), &negative, 1));
      bool any_negative = false;
      for (std::int64_t r = 0; r < rows; ++r) {
        float want = 0.0f;
        for (std::int64_t c = 0; c < cols; ++c) {
          const float v = x.data<float>()[r * cols + c];
          want = std::max(want, std::fabs(v) * (weight ? weight[c] : 1.0f));
          any_negative |= v < 0.0f;
        }
        EXPECT_EQ(got[r], want) << "cols " << cols << " row " << r;
      }
      EXPECT_EQ(negative, any_negative) << "cols " << cols;
    }
    // NaN or Inf anywhere, the masked tail's last element included, is reported.
    for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
      Tensor y = x.clone();
      y.data<float>()[2 * cols + cols - 1] = bad;
      std::vector<float> got(rows);
      EXPECT_FALSE(absmax_rows_f32(y.data<float>(), 0, rows, cols, nullptr, got.data(), nullptr, 1)) << cols;
    }
    // Non-negative rows leave the flag unset.
    const Tensor pos = relu(x);
    std::vector<float> got(rows);
    bool negative = false;
    ASSERT_TRUE(absmax_rows_f32(pos.data<float>(), 0, rows, cols, nullptr, got.data(), &negative, 1));
    EXPECT_FALSE(negative);
  }
}

}  // namespace
}  // namespace shiftq::kernels
