// Ops that recompute in backward what the composed ops would save, or skip their copies: the
// quantized Linear + GELU (its pre-activation), the causal int8 attention (its probabilities) and
// the self-attention straight from a fused qkv projection (no head split or merge copies). Each must
// give the bits of the composition it replaces, forward and backward, at any thread count.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include <shiftq/shiftq.hpp>

namespace shiftq {
namespace {

void expect_same_bits(const Tensor& a, const Tensor& b, const char* what) {
  ASSERT_EQ(a.shape(), b.shape()) << what;
  EXPECT_EQ(std::memcmp(a.data<float>(), b.data<float>(), static_cast<std::size_t>(a.numel()) * sizeof(float)), 0)
      << what << " differs";
}

class RecomputeThreads : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override { saved_ = get_num_threads(), set_num_threads(GetParam()); }
  void TearDown() override { set_num_threads(saved_); }

 private:
  int saved_ = 1;
};

// The causal attention as the composition of batched ops it fuses: Q K^T with a scale per row,
// softmax, P diag(s) times diag(1/s) V with s the per-position range of V.
Tensor composed_causal_attention(const Tensor& q, const Tensor& k, const Tensor& v, int bits, std::uint64_t seed,
                                 std::uint64_t key_id, std::uint64_t step) {
  const std::int64_t rows = v.numel() / v.size(3), dh = v.size(3);
  Shape s_shape = v.shape();
  s_shape.back() = 1;
  Tensor s = Tensor::uninitialized(s_shape);
  for (std::int64_t r = 0; r < rows; ++r) {
    float m = 0.0f;
    for (std::int64_t d = 0; d < dh; ++d) m = std::max(m, std::fabs(v.data<float>()[r * dh + d]));
    s.data<float>()[r] = m > 0.0f ? m : 1.0f;
  }
  const Tensor scores =
      quant::quantized_matmul(q, transpose(k, -2, -1), bits, seed, 2 * key_id, step, quant::MatmulScaling::per_row);
  const Tensor p = mul(scaled_softmax(scores, 1.0f / std::sqrt(static_cast<float>(q.size(3))), true), transpose(s, -2, -1));
  return quant::quantized_matmul(p, div(v, s), bits, seed, 2 * key_id + 1, step, quant::MatmulScaling::per_row_a_unit_b);
}

struct AttentionRun {
  Tensor y, dq, dk, dv;
};

AttentionRun run_attention(bool fused, const Tensor& q0, const Tensor& k0, const Tensor& v0, const Tensor& r, int bits,
                           bool grad_qk) {
  const Tensor q = q0.clone().set_requires_grad(grad_qk), k = k0.clone().set_requires_grad(grad_qk),
               v = v0.clone().set_requires_grad(true);
  const Tensor y = fused ? quant::quantized_attention(q, k, v, true, bits, 5, 3, 11)
                         : composed_causal_attention(q, k, v, bits, 5, 3, 11);
  sum(mul(y, r)).backward();
  return {y.detach(), grad_qk ? q.grad() : Tensor(), grad_qk ? k.grad() : Tensor(), v.grad()};
}

TEST_P(RecomputeThreads, CausalAttentionEqualsTheComposedOpsBitForBit) {
  Generator gen(41);
  struct Case {
    Shape q, kv;
  };
  for (const Case& c : {Case{{2, 3, 16, 8}, {2, 3, 16, 8}}, Case{{1, 2, 5, 8}, {1, 2, 9, 8}}, Case{{3, 1, 7, 5}, {3, 1, 7, 5}}})
    for (int bits : {4, 6, 8})
      for (bool grad_qk : {true, false}) {
        SCOPED_TRACE(testing::Message() << "q " << shape_str(c.q) << " k " << shape_str(c.kv) << " bits " << bits
                                        << (grad_qk ? "" : ", only v requires grad"));
        const Tensor q = Tensor::randn(c.q, gen), k = Tensor::randn(c.kv, gen), v = Tensor::randn(c.kv, gen);
        const Tensor r = Tensor::randn(c.q, gen);
        const AttentionRun fused = run_attention(true, q, k, v, r, bits, grad_qk);
        const AttentionRun composed = run_attention(false, q, k, v, r, bits, grad_qk);
        expect_same_bits(fused.y, composed.y, "output");
        expect_same_bits(fused.dv, composed.dv, "dV");
        if (grad_qk) {
          expect_same_bits(fused.dq, composed.dq, "dQ");
          expect_same_bits(fused.dk, composed.dk, "dK");
        }
      }
}

// The heads of a [B, T, 3D] projection split into [B, H, T, Dh] tensors, attended, and merged back.
Tensor split_heads_attention(const Tensor& qkv, std::int64_t heads, int bits) {
  const std::int64_t b = qkv.size(0), t = qkv.size(1), d = qkv.size(2) / 3, dh = d / heads;
  const Tensor parts = permute(reshape(qkv, {b, t, 3, heads, dh}), {2, 0, 3, 1, 4});
  const Tensor q = reshape(slice(parts, 0, 0, 1), {b, heads, t, dh});
  const Tensor k = reshape(slice(parts, 0, 1, 2), {b, heads, t, dh});
  const Tensor v = reshape(slice(parts, 0, 2, 3), {b, heads, t, dh});
  return reshape(permute(quant::quantized_attention(q, k, v, true, bits, 5, 3, 11), {0, 2, 1, 3}), {b, t, d});
}

TEST_P(RecomputeThreads, SelfAttentionFromTheFusedProjectionEqualsTheSplitHeadsBitForBit) {
  Generator gen(45);
  for (std::int64_t heads : {1, 2, 4})
    for (int bits : {4, 6}) {
      SCOPED_TRACE(testing::Message() << heads << " heads, " << bits << " bits");
      const Tensor qkv0 = Tensor::randn({3, 11, 3 * 16}, gen), r = Tensor::randn({3, 11, 16}, gen);
      Tensor y[2], dqkv[2];
      for (int fused = 0; fused < 2; ++fused) {
        const Tensor qkv = qkv0.clone().set_requires_grad(true);
        y[fused] = fused ? quant::quantized_causal_self_attention(qkv, heads, bits, 5, 3, 11)
                         : split_heads_attention(qkv, heads, bits);
        sum(mul(y[fused], r)).backward();
        dqkv[fused] = qkv.grad();
      }
      expect_same_bits(y[1], y[0], "output");
      expect_same_bits(dqkv[1], dqkv[0], "d(qkv)");
    }
}

TEST(QuantizedAttention, SelfAttentionRejectsBadShapesAndBits) {
  Generator gen(46);
  const Tensor qkv = Tensor::randn({2, 5, 24}, gen);
  EXPECT_THROW(quant::quantized_causal_self_attention(qkv, 5, 6, 0, 0, 0), ShapeError);  // 8 features, 5 heads
  EXPECT_THROW(quant::quantized_causal_self_attention(Tensor::randn({2, 5, 25}, gen), 1, 6, 0, 0, 0), ShapeError);
  EXPECT_THROW(quant::quantized_causal_self_attention(Tensor::randn({10, 24}, gen), 2, 6, 0, 0, 0), ShapeError);
  EXPECT_THROW(quant::quantized_causal_self_attention(qkv, 2, 1, 0, 0, 0), ValueError);
  EXPECT_EQ(quant::quantized_causal_self_attention(qkv, 2, 6, 0, 0, 0).shape(), (Shape{2, 5, 8}));
}

TEST(QuantizedAttention, CausalSavesCodesNotProbabilities) {
  Generator gen(42);
  const std::int64_t b = 2, h = 3, t = 16, dh = 8;
  const Tensor q = Tensor::randn({b, h, t, dh}, gen).set_requires_grad(true);
  const Tensor k = Tensor::randn({b, h, t, dh}, gen).set_requires_grad(true);
  const Tensor v = Tensor::randn({b, h, t, dh}, gen).set_requires_grad(true);
  quant::reset_saved_activation_bytes();
  (void)quant::quantized_attention(q, k, v, true, 6, 1, 0, 0);
  // One byte per element: the codes of Q and K^T twice (forward, to recompute P; and for dK, dQ) and
  // V / s's for dP. Neither P (4 bytes per element of [B, H, T, T]) nor its codes are kept.
  EXPECT_EQ(quant::saved_activation_bytes(), b * h * 5 * t * dh);
  quant::reset_saved_activation_bytes();
  (void)quant::quantized_attention(q.detach(), k.detach(), v, true, 6, 1, 0, 0);  // dV only: Q's and K^T's forward codes
  EXPECT_EQ(quant::saved_activation_bytes(), b * h * 2 * t * dh);
  quant::reset_saved_activation_bytes();
  (void)quant::quantized_attention(q.detach(), k.detach(), v.detach(), true, 6, 1, 0, 0);
  EXPECT_EQ(quant::saved_activation_bytes(), 0);
  EXPECT_THROW(quant::quantized_attention(q, k, v, true, 9, 1, 0, 0), ValueError);
  EXPECT_THROW(quant::quantized_attention(Tensor::randn({1, 1, 9, 8}, gen), Tensor::randn({1, 1, 5, 8}, gen),
                                          Tensor::randn({1, 1, 5, 8}, gen), true, 6, 1, 0, 0),
               ShapeError);
}

struct LinearRun {
  Tensor y, dx, dw, db;
};

// Three training calls of a Linear (observers and call counters advance) with gelu, fused or not;
// the last call's values.
LinearRun run_linear_gelu(bool fused, const quant::QConfig* config, const Tensor& x0, const Tensor& r) {
  Generator init(3);
  nn::Linear fc(nn::LinearOptions{x0.size(-1), r.size(-1)}, init);
  if (config) fc.set_quantization(*config, 7, 2);
  LinearRun run;
  for (int call = 0; call < 3; ++call) {
    const Tensor x = mul(x0, 1.0f + 0.25f * static_cast<float>(call)).set_requires_grad(true);
    fc.zero_grad();
    const Tensor y = fused ? fc.forward_gelu(x) : gelu(fc.forward(x));
    sum(mul(y, r)).backward();
    run = {y.detach(), x.grad(), fc.weight.grad(), fc.bias.grad()};
  }
  return run;
}

TEST_P(RecomputeThreads, LinearGeluEqualsGeluOfLinearBitForBit) {
  Generator gen(43);
  const Tensor x = Tensor::randn({2, 9, 32}, gen), r = Tensor::randn({2, 9, 24}, gen);
  quant::QConfig six = quant::QConfig::bits(6);
  quant::QConfig rotated = quant::QConfig::bits(4);  // the 4-bit char-GPT's best configuration
  rotated.linear_input_rotation = quant::LinearInputRotation::hadamard;
  rotated.linear_input_groups = quant::LinearInputGroups::row_scales;
  rotated.activations.mse_clip = true;
  rotated.weights.mse_clip = true;
  for (const quant::QConfig* config : std::initializer_list<const quant::QConfig*>{nullptr, &six, &rotated}) {
    SCOPED_TRACE(config ? config->str() : std::string("fp32"));
    const LinearRun fused = run_linear_gelu(true, config, x, r), composed = run_linear_gelu(false, config, x, r);
    expect_same_bits(fused.y, composed.y, "output");
    expect_same_bits(fused.dx, composed.dx, "dX");
    expect_same_bits(fused.dw, composed.dw, "dW");
    expect_same_bits(fused.db, composed.db, "db");
  }
}

TEST(QuantizedLinear, GeluRecomputationRefusesABiasModifiedSinceForward) {
  Generator gen(44);
  nn::Linear fc(nn::LinearOptions{16, 8}, gen);
  fc.set_quantization(quant::QConfig::bits(6), 7, 0);
  const Tensor x = Tensor::randn({4, 16}, gen).set_requires_grad(true);
  const Tensor y = fc.forward_gelu(x);
  {
    NoGradGuard no_grad;
    fc.bias.copy_(add(fc.bias, 1.0f));  // an in-place update, as an optimizer step makes
  }
  EXPECT_THROW(sum(y).backward(), AutogradError);
}

INSTANTIATE_TEST_SUITE_P(Threads, RecomputeThreads, ::testing::Values(1, 2));

}  // namespace
}  // namespace shiftq
