// Block multipliers (QuantizeParams::row_blocks, LinearInputGroups::row_blocks): a hand-computed
// row, the kernel against its reference, the MSE choice per block, the error against per-row
// scales, the numerics monitor's saturation per block, and bad parameters.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <vector>

#include <shiftq/kernels/quantize.hpp>
#include <shiftq/quant/monitor.hpp>
#include <shiftq/quant/qtensor.hpp>
#include <shiftq/shiftq.hpp>

namespace shiftq::quant {
namespace {

std::vector<int> codes_of(const QTensor& q) {
  const std::vector<std::int8_t> v = q.signed_codes().to_vector<std::int8_t>();
  return {v.begin(), v.end()};
}

std::vector<int> multipliers_of(const QTensor& q) {
  const std::vector<std::uint8_t> m = q.block_multipliers.to_vector<std::uint8_t>();
  return {m.begin(), m.end()};
}

double squared_error(const Tensor& a, const Tensor& b, std::int64_t begin, std::int64_t end) {
  double e = 0.0;
  for (std::int64_t i = begin; i < end; ++i) {
    const double d = double(a.data<float>()[i]) - b.data<float>()[i];
    e += d * d;
  }
  return e;
}

// One row of three blocks of 4 at 4 bits (qmax 7, S = 4, m in [1, 16]): the row max 8 gives
// s = 8/7 and u = s/16 = 1/14, so block m has step m/14 and top value m/2.
//   block 0, max 8:    m = ceil(8 / 0.5) = 16, step 8/7: codes round([8, 1, -2, 0.5] * 7/8) = [7, 1, -2, 0].
//   block 1, max 4.05: m = ceil(8.1) = 9, step 9/14: [4.05, 3.5, ...] -> [6, 5, 5, 5] (errors 0.037 + 3 * 0.082);
//                      with MSE, m = 8 (step 4/7): [7 (saturated at 4.0), 6, 6, 6], errors 0.0025 + 3 * 0.0051.
//                      m = 7 (step 1/2) and 6 clip 4.05 to 3.5 and 3.0: larger errors.
//   block 2, zeros:    m = 1, codes 0.
TEST(RowBlocks, HandComputedRow) {
  const Tensor x = Tensor::from_vector(
      std::vector<float>{8.0f, 1.0f, -2.0f, 0.5f, 4.05f, 3.5f, 3.5f, 3.5f, 0.0f, 0.0f, 0.0f, 0.0f}, {1, 12});
  const QTensor plain = quantize(x, QuantizeParams::row_blocks(4, 4));
  EXPECT_EQ(plain.shift_budget, 4);
  EXPECT_EQ(plain.scales.item(), 8.0f / 7.0f);
  EXPECT_EQ(multipliers_of(plain), (std::vector<int>{16, 9, 1}));
  EXPECT_EQ(codes_of(plain), (std::vector<int>{112, 16, -32, 0, 54, 45, 45, 45, 0, 0, 0, 0}));
  const QTensor mse = quantize(x, QuantizeParams::row_blocks(4, 4).with_mse_clip().with_unsigned_codes());
  EXPECT_TRUE(mse.unsigned_codes());
  EXPECT_EQ(multipliers_of(mse), (std::vector<int>{16, 8, 1}));
  EXPECT_EQ(codes_of(mse), (std::vector<int>{112, 16, -32, 0, 56, 48, 48, 48, 0, 0, 0, 0}));
  // X^ = s 2^-S v, and the monitor counts 4.05 as saturated (|v| = 7 * 8 at its block's top) and
  // 0.5 as rounded to zero.
  const Tensor xh = mse.dequantize();
  EXPECT_FLOAT_EQ(xh.data<float>()[4], 4.0f);
  EXPECT_FLOAT_EQ(xh.data<float>()[5], 6.0f * 4.0f / 7.0f);
  const TensorNumerics n = measure_quantization(x, mse);
  EXPECT_EQ(n.saturated, 1);
  EXPECT_EQ(n.zeros, 1);
  EXPECT_EQ(measure_quantization(x, plain).saturated, 0);
}

// Gaussian rows (what a Hadamard-rotated input looks like) and heavy-tailed ones, at 4 and 6 bits.
TEST(RowBlocks, TighterThanPerRowScalesAndEachBlockAtItsLeastError) {
  Generator gen(3);
  for (const bool heavy : {false, true})
    for (const int bits : {4, 6}) {
      Tensor x = Tensor::randn({64, 256}, gen);
      if (heavy)
        for (float& v : std::span<float>(x.data<float>(), 64 * 256)) v = v * v * v;
      const QTensor blocks = quantize(x, QuantizeParams::row_blocks(bits, 16).with_mse_clip());
      const QTensor plain = quantize(x, QuantizeParams::row_blocks(bits, 16));
      const QTensor rows = quantize(x, QuantizeParams::per_row(bits).with_mse_clip());
      const Tensor xb = blocks.dequantize(), xp = plain.dequantize();
      const double e_blocks = squared_error(xb, x, 0, x.numel()), e_rows = squared_error(rows.dequantize(), x, 0, x.numel());
      std::printf("[%d bits%s] squared error: blocks %.4g, per-row MSE-clipped %.4g (ratio %.3f)\n", bits,
                  heavy ? ", heavy tails" : "", e_blocks, e_rows, e_blocks / e_rows);
      // Measured ratios with this seed: 0.56 / 0.64 (Gaussian, 4 / 6 bits), 0.22 / 0.26 (cubed).
      EXPECT_LT(e_blocks, (heavy ? 0.35 : 0.75) * e_rows);
      // Every block at most the error of its unclipped multiplier (float sums: a 1e-5 margin).
      for (std::int64_t b = 0; b < x.numel() / 16; ++b)
        EXPECT_LE(squared_error(xb, x, 16 * b, 16 * b + 16), squared_error(xp, x, 16 * b, 16 * b + 16) * (1 + 1e-5) + 1e-12)
            << "block " << b;
      // Codes fit the int8 operand: |v| <= qmax 2^S, v a multiple of its block's m, and m <= 2^S.
      const std::vector<int> v = codes_of(blocks), m = multipliers_of(blocks);
      const int qmax = (1 << (bits - 1)) - 1;
      for (std::size_t i = 0; i < v.size(); ++i) {
        const int mi = m[i / 16];
        ASSERT_GE(mi, 1);
        ASSERT_LE(mi, 1 << blocks.shift_budget);
        ASSERT_LE(std::abs(v[i]), qmax * mi);
        ASSERT_EQ(v[i] % mi, 0);
      }
    }
}

// The dispatched kernel against the scalar reference: full blocks of 16 (one AVX-512 register), a
// shorter last block, other block lengths, 1 to 4 candidates, both code forms.
TEST(RowBlocks, KernelBitExactAgainstReference) {
  Generator gen(8);
  for (const std::int64_t n : {1, 15, 16, 17, 200, 1024})
    for (const std::int64_t block : {16, 7, 32}) {
      std::vector<float> x(static_cast<std::size_t>(n));
      for (std::int64_t i = 0; i < n; ++i) x[i] = gen.normal() * std::exp2(gen.uniform(-3.0f, 3.0f) * (i / 16 % 2));
      float row_max = 0.0f;
      for (float v : x) row_max = std::max(row_max, std::fabs(v));
      const std::int64_t blocks = (n + block - 1) / block;
      for (const int candidates : {1, 2, 3, 4})
        for (const std::uint8_t mask : {std::uint8_t{0}, std::uint8_t{0x80}}) {
          const float unit = row_max / 7.0f / 16.0f;
          std::vector<std::int8_t> ref(x.size()), fast(x.size());
          std::vector<std::uint8_t> m_ref(blocks), m_fast(blocks);
          kernels::quantize_row_blocks_f32_ref(x.data(), n, block, unit, 7.0f, 16, candidates, mask, ref.data(), m_ref.data());
          kernels::quantize_row_blocks_f32(x.data(), n, block, unit, 7.0f, 16, candidates, mask, fast.data(), m_fast.data());
          EXPECT_EQ(fast, ref) << "n=" << n << " block=" << block << " candidates=" << candidates
                               << " isa=" << kernels::quantize_isa_name();
          EXPECT_EQ(m_fast, m_ref) << "n=" << n << " block=" << block << " candidates=" << candidates;
        }
    }
}

// Rows are independent: a row quantizes alone as it does within any batch, at any thread count.
TEST(RowBlocks, RowsIndependentOfTheBatchAndTheThreads) {
  Generator gen(5);
  const Tensor x = Tensor::randn({300, 160}, gen);
  const QuantizeParams p = QuantizeParams::row_blocks(4, 16).with_mse_clip();
  const int threads = get_num_threads();
  set_num_threads(1);
  const QTensor one = quantize(x, p);
  set_num_threads(2);
  const QTensor two = quantize(x, p);
  set_num_threads(threads);
  EXPECT_EQ(codes_of(one), codes_of(two));
  EXPECT_EQ(multipliers_of(one), multipliers_of(two));
  EXPECT_EQ(one.scales.to_vector<float>(), two.scales.to_vector<float>());
  const QTensor alone = quantize(slice(x, 0, 123, 124).clone(), p);
  const std::vector<int> all = codes_of(two);
  EXPECT_EQ(codes_of(alone), std::vector<int>(all.begin() + 123 * 160, all.begin() + 124 * 160));
  EXPECT_EQ(alone.scales.item(), two.scales.data<float>()[123]);
}

// Rows near the ends of the float range: zeros stay 0, every value dequantizes finite and, where the
// row's scale is a normal float, close to its value. A row below ~1e-37 gets a scale of at least
// 2^S FLT_MIN (so that 1 / (s 2^-S) is finite), coarser than its own range would give.
TEST(RowBlocks, TinyAndHugeRows) {
  const float tiny = 1e-38f, huge = 3e38f;
  const Tensor x = Tensor::from_vector(std::vector<float>{0.0f, tiny, -tiny, 0.0f, 0.0f, 2e-37f, 0.0f, -1e-37f,
                                                          huge, 0.0f, -huge / 3.0f, 1.0f},
                                       {3, 4});
  for (const bool mse : {false, true}) {
    const QTensor q = quantize(x, QuantizeParams::row_blocks(4, 2).with_mse_clip(mse));
    const std::vector<int> v = codes_of(q);
    for (const int i : {0, 3, 4, 6, 9}) EXPECT_EQ(v[i], 0) << "element " << i;
    const Tensor xh = q.dequantize();
    for (std::int64_t i = 0; i < xh.numel(); ++i) EXPECT_TRUE(std::isfinite(xh.data<float>()[i])) << i;
    EXPECT_FLOAT_EQ(xh.data<float>()[8], huge);
    EXPECT_NEAR(xh.data<float>()[10] / huge, -1.0f / 3.0f, 1.0f / 14.0f);
    EXPECT_NEAR(xh.data<float>()[5], 2e-37f, 2e-37f / 14.0f);
  }
}

TEST(RowBlocks, BadParametersAndInputsThrow) {
  Generator gen(2);
  const Tensor x = Tensor::randn({4, 32}, gen);
  auto with = [](auto change) {
    QuantizeParams p = QuantizeParams::row_blocks(4, 16);
    change(p);
    return p;
  };
  EXPECT_THROW(quantize(x, QuantizeParams::row_blocks(8, 16)), ValueError);  // S = 0: no multipliers
  EXPECT_THROW(quantize(x, QuantizeParams::row_blocks(4, -1)), ValueError);
  EXPECT_THROW(quantize(x, with([](QuantizeParams& p) { p.inner_axis = 0; })), ValueError);
  EXPECT_THROW(quantize(x, with([](QuantizeParams& p) { p.outer = OuterScale::per_tensor; })), ValueError);
  EXPECT_THROW(quantize(x, with([](QuantizeParams& p) { p.with_rounding(Rounding::stochastic); })), ValueError);
  EXPECT_THROW(quantize(x, with([](QuantizeParams& p) { p.with_nonnegative_range(); })), ValueError);
  for (const float value : {NAN, INFINITY, -INFINITY}) {
    Tensor bad = x.clone();
    bad.data<float>()[40] = value;
    EXPECT_THROW(quantize(bad, QuantizeParams::row_blocks(4, 16), "fc.input"), NumericError);
  }
  // The kernel's own preconditions.
  const std::vector<float> row(16, 1.0f);
  std::vector<std::int8_t> out(16);
  std::uint8_t m[1];
  EXPECT_THROW(kernels::quantize_row_blocks_f32(row.data(), 16, 16, 1.0f / 112, 7.0f, 16, 5, 0, out.data(), m), ValueError);
  EXPECT_THROW(kernels::quantize_row_blocks_f32(row.data(), 16, 16, 0.0f, 7.0f, 16, 1, 0, out.data(), m), ValueError);
  EXPECT_THROW(kernels::quantize_row_blocks_f32(row.data(), 16, 16, 1.0f / 112, 7.0f, 32, 1, 0, out.data(), m), ValueError);
  EXPECT_THROW(kernels::quantize_row_blocks_f32(row.data(), 16, 0, 1.0f / 112, 7.0f, 16, 1, 0, out.data(), m), ValueError);
  EXPECT_THROW(quantize(x, QuantizeParams::row_blocks(4, std::int64_t{1} << 40)), ValueError);
  QConfig c = QConfig::bits(4);
  c.linear_input_groups = LinearInputGroups::row_blocks;
  c.activations.rounding = Rounding::stochastic;
  EXPECT_THROW(c.validate(), ValueError);
}

}  // namespace
}  // namespace shiftq::quant
