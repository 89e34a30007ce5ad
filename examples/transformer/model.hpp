// A GPT-style decoder-only Transformer for character-level language modelling: token + learned
// position embeddings, N pre-norm blocks (causal multi-head self-attention, GELU MLP of 4x width),
// a final norm and an untied (or tied) output head. LayerNorm (L2) or L1LayerNorm by `norm`.
// With quantize(), every Linear runs its GEMMs on int8 forward and backward (quantize_model) and
// both attention matmuls (Q K^T, P V) run on int8 too (quant::quantized_attention).
#pragma once

#include <cmath>
#include <memory>
#include <string>

#include <shiftq/shiftq.hpp>

namespace shiftq::examples {

struct GPTOptions {
  std::int64_t vocab_size = 0;
  std::int64_t context = 128;
  std::int64_t layers = 4;
  std::int64_t d_model = 256;
  std::int64_t heads = 4;
  std::string norm = "l2";  // "l2": LayerNorm, "l1": L1LayerNorm
  bool tie_embeddings = false;
};

inline std::shared_ptr<nn::Module> make_layer_norm(const std::string& norm, std::int64_t d) {
  if (norm == "l1") return std::make_shared<nn::L1LayerNorm>(nn::L1LayerNormOptions{d});
  if (norm == "l2") return std::make_shared<nn::LayerNorm>(nn::LayerNormOptions{d});
  throw ValueError("unknown norm '" + norm + "' (expected l1 or l2)");
}

// Small init for the projections as in GPT-2 (std 0.02; residual projections scaled by 1/sqrt(2 N)).
inline std::shared_ptr<nn::Linear> gpt_linear(std::int64_t in, std::int64_t out, float std, Generator& gen) {
  auto layer = std::make_shared<nn::Linear>(nn::LinearOptions{in, out}, gen);
  NoGradGuard no_grad;
  layer->weight.copy_(Tensor::randn({out, in}, gen, std));
  layer->bias.fill_(0.0f);
  return layer;
}

class CausalSelfAttention : public nn::Module {
 public:
  CausalSelfAttention(const GPTOptions& o, std::int64_t index, Generator& gen)
      : Module("CausalSelfAttention"), heads_(o.heads), index_(index) {
    qkv_ = register_module("qkv", gpt_linear(o.d_model, 3 * o.d_model, 0.02f, gen));
    proj_ = register_module("proj", gpt_linear(o.d_model, o.d_model, 0.02f / std::sqrt(2.0f * static_cast<float>(o.layers)), gen));
  }

  // Runs Q K^T and P V on int8 with `bits` (0 = fp32); stochastic rounding keyed by `seed`.
  void set_attention_bits(int bits, std::uint64_t seed) {
    bits_ = bits;
    seed_ = seed;
  }

  nn::Linear& qkv() { return *qkv_; }

  // x: [B, T, D] -> [B, T, D]
  Tensor forward(const Tensor& x) override {
    const std::int64_t b = x.size(0), t = x.size(1), d = x.size(2), dh = d / heads_;
    if (bits_ > 0) {
      // Int8 attention straight from the [B, T, 3D] projection into the output projection's [B, T, D]
      // input. The qkv layer's call counter (checkpointed) keys the attention's stochastic rounding too.
      const Tensor qkv = (*qkv_)(x);  // [B, T, 3D]; before quant_calls(), which it advances
      return (*proj_)(quant::quantized_causal_self_attention(
          qkv, heads_, bits_, seed_, kAttentionKeyBase + static_cast<std::uint64_t>(index_), qkv_->quant_calls()));
    }
    Tensor q, k, v;  // [B, H, T, Dh] each
    {  // scoped: the [B, T, 3D] projection and its permuted copy are freed before the attention runs
      const Tensor qkv = (*qkv_)(x);  // [B, T, 3D]
      // [B, T, 3D] -> [3, B, H, T, Dh]
      const Tensor parts = permute(reshape(qkv, {b, t, 3, heads_, dh}), {2, 0, 3, 1, 4});
      q = reshape(slice(parts, 0, 0, 1), {b, heads_, t, dh});
      k = reshape(slice(parts, 0, 1, 2), {b, heads_, t, dh});
      v = reshape(slice(parts, 0, 2, 3), {b, heads_, t, dh});
    }
    const Tensor y = scaled_dot_product_attention(q, k, v, /*causal=*/true);
    return (*proj_)(reshape(permute(y, {0, 2, 1, 3}), {b, t, d}));  // [B, H, T, Dh] -> [B, T, D]
  }

 private:
  static constexpr std::uint64_t kAttentionKeyBase = 1u << 20;  // apart from the GEMM layers' key ids
  std::int64_t heads_, index_;
  int bits_ = 0;
  std::uint64_t seed_ = 0;
  std::shared_ptr<nn::Linear> qkv_, proj_;
};

// x + attn(norm1(x)), then x + mlp(norm2(x))
class Block : public nn::Module {
 public:
  Block(const GPTOptions& o, std::int64_t index, Generator& gen) : Module("Block") {
    const float residual_std = 0.02f / std::sqrt(2.0f * static_cast<float>(o.layers));
    norm1_ = register_module("norm1", make_layer_norm(o.norm, o.d_model));
    attn_ = register_module("attn", std::make_shared<CausalSelfAttention>(o, index, gen));
    norm2_ = register_module("norm2", make_layer_norm(o.norm, o.d_model));
    fc_ = register_module("fc", gpt_linear(o.d_model, 4 * o.d_model, 0.02f, gen));
    proj_ = register_module("proj", gpt_linear(4 * o.d_model, o.d_model, residual_std, gen));
  }
  CausalSelfAttention& attention() { return *attn_; }

  // x: [B, T, D] -> [B, T, D]
  Tensor forward(const Tensor& x) override { return forward_residual(x); }

  // forward() taking the residual stream by value: a caller that moves it in frees it once the
  // attention's residual add has used it, before the MLP's widest tensors exist.
  Tensor forward_residual(Tensor x) {
    const Tensor h = add(x, (*attn_)((*norm1_)(x)));
    x = Tensor();
    // The fc layer's GELU recomputes its pre-activation in backward instead of saving it.
    return add(h, (*proj_)(fc_->forward_gelu((*norm2_)(h))));
  }

 private:
  std::shared_ptr<nn::Module> norm1_, norm2_;
  std::shared_ptr<CausalSelfAttention> attn_;
  std::shared_ptr<nn::Linear> fc_, proj_;
};

class GPT : public nn::Module {
 public:
  GPT(const GPTOptions& o, Generator& gen) : Module("GPT"), options_(o) {
    if (o.vocab_size < 1 || o.context < 1 || o.layers < 1 || o.heads < 1 || o.d_model % o.heads != 0)
      throw ValueError("GPT: need vocab_size, context, layers, heads >= 1 and d_model divisible by heads");
    token_ = register_module("token", std::make_shared<nn::Embedding>(
                                          nn::EmbeddingOptions{o.vocab_size, o.d_model}.init_std(0.02f), gen));
    position_ = register_module("position", std::make_shared<nn::Embedding>(
                                                nn::EmbeddingOptions{o.context, o.d_model}.init_std(0.02f), gen));
    blocks_ = register_module("blocks", std::make_shared<nn::Sequential>());
    for (std::int64_t i = 0; i < o.layers; ++i) blocks_->push_back(std::make_shared<Block>(o, i, gen));
    norm_ = register_module("norm", make_layer_norm(o.norm, o.d_model));
    if (!o.tie_embeddings) head_ = register_module("head", gpt_linear(o.d_model, o.vocab_size, 0.02f, gen));
  }

  // tokens: s32 [B, T] (T <= context) -> logits [B, T, V]
  Tensor forward(const Tensor& tokens) override {
    const std::int64_t t = tokens.size(1);
    if (t > options_.context)
      throw ShapeError("GPT: sequence of " + std::to_string(t) + " tokens exceeds the context of " +
                       std::to_string(options_.context));
    std::vector<std::int32_t> positions(static_cast<std::size_t>(t));
    for (std::int64_t i = 0; i < t; ++i) positions[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(i);
    const Tensor pos = (*position_)(Tensor::from_vector(positions, {t}));  // [T, D], broadcast over B
    Tensor h = add((*token_)(tokens), pos);  // [B, T, D]; the token embeddings are freed here
    // The blocks in order, each taking the residual stream over (Block::forward_residual).
    for (const auto& [name, block] : blocks_->named_children())
      h = dynamic_cast<Block&>(*block).forward_residual(std::move(h));
    h = (*norm_)(h);
    return head_ ? (*head_)(h) : linear(h, token_->weight);
  }

  // Integer training per `config` (Linear layers; the output head at config.first_last_bits, the
  // first block's qkv at the common bits) and int8 attention matmuls at `attention_bits` (0 = the
  // activation bits).
  void quantize(const quant::QConfig& config, std::uint64_t seed, int attention_bits = 0) {
    const int gemm_layers = nn::quantize_model(*this, config, seed);
    if (gemm_layers > 1) {
      // quantize_model keeps the first GEMM layer at first_last_bits, meant for a network's input
      // layer; here the input layer is the embedding, so block 0's qkv gets the common bits.
      auto& first_block = dynamic_cast<Block&>(*blocks_->named_children().front().second);
      first_block.attention().qkv().set_quantization(config.for_layer(false), seed, 0);
    }
    attention_bits_ = attention_bits > 0 ? attention_bits : config.activations.bits;
    attention_seed_ = seed;
    set_attention_quantized(true);
  }

  // Switches the int8 attention matmuls off and on again (after quantize(); fp32 comparisons).
  void set_attention_quantized(bool on) {
    for (const auto& [name, block] : blocks_->named_children())
      dynamic_cast<Block&>(*block).attention().set_attention_bits(on ? attention_bits_ : 0, attention_seed_);
  }

  const GPTOptions& options() const { return options_; }

 private:
  GPTOptions options_;
  int attention_bits_ = 0;
  std::uint64_t attention_seed_ = 0;
  std::shared_ptr<nn::Embedding> token_, position_;
  std::shared_ptr<nn::Sequential> blocks_;
  std::shared_ptr<nn::Module> norm_;
  std::shared_ptr<nn::Linear> head_;
};

}  // namespace shiftq::examples
