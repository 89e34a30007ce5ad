#include "shiftq/quant/qlayers.hpp"

#include "quant/qlayers_internal.hpp"
#include "quant/shiftmm_internal.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/parallel_for.hpp"
#include "shiftq/kernels/activation.hpp"
#include "shiftq/kernels/hadamard.hpp"
#include "shiftq/quant/shiftmm.hpp"

namespace shiftq::quant {
namespace {
thread_local std::int64_t t_saved_bytes = 0;

// Both axes' roles: `inner_axis` gets the power-of-two groups, the other the float scales.
QuantizeParams params_for(const TensorQConfig& c, int inner_axis, OuterScale outer) {
  switch (c.kind) {
    case QuantizerKind::shiftquant:
      return QuantizeParams::shiftquant(c.bits, c.shift_budget, inner_axis, outer);
    case QuantizerKind::per_row:
      return QuantizeParams::shiftquant(c.bits, 0, inner_axis, outer);
    case QuantizerKind::per_tensor:
      break;
  }
  return QuantizeParams::per_tensor(c.bits);
}

// W: [out, in]: groups over the output channels, one per-tensor base (reused as B in Y = X W^T and
// dX = dY W, where either axis is the contraction axis).
QuantizeParams weight_params(const TensorQConfig& c) {
  return params_for(c, 0, OuterScale::per_tensor).with_mse_clip(c.mse_clip);
}

QTensor with_signed_codes(const QTensor& q) {
  QTensor s = q;
  s.codes = q.signed_codes();
  return s;
}
}  // namespace

namespace internal {
QuantizeParams activation_params(const TensorQConfig& c, int inner_axis) {
  QuantizeParams p = params_for(c, inner_axis, OuterScale::per_tensor);
  return p.with_rounding(c.rounding)
      .with_unsigned_codes()
      .with_nonnegative_range(c.nonnegative_range)
      .with_mse_clip(c.mse_clip);
}

QuantizeParams gradient_params(const TensorQConfig& c, bool for_weight_grad, const StochasticKey& key) {
  const OuterScale outer = c.kind == QuantizerKind::per_tensor ? OuterScale::per_tensor : OuterScale::per_index;
  QuantizeParams p = params_for(c, for_weight_grad ? 0 : 1, outer);
  return p.with_rounding(c.rounding, key).with_unsigned_codes();
}

void count_saved_bytes(std::int64_t bytes) { t_saved_bytes += bytes; }

namespace {
// Delayed scaling with observed ShiftQuant groups: observer channel k is inner index k's range; the
// base is their max. Before the first training call the input's own ranges stand in.
QTensor quantize_observed_groups(const Tensor& x2d, QuantizeParams params, RangeObserver& observer,
                                 const QuantCall& call, const char* name) {
  const std::vector<float> own = inner_absmax(x2d, params.inner_axis, name);  // also rejects NaN/Inf
  const bool delayed = observer.observed();
  std::vector<float> groups = own;
  if (delayed)
    for (std::size_t k = 0; k < groups.size(); ++k) groups[k] = observer.range(static_cast<std::int64_t>(k));
  const float base = *std::max_element(groups.begin(), groups.end());
  params.with_observed_range(base, false).with_observed_group_ranges(groups);
  QTensor q = quantize_checked_input(x2d, params, name);
  if (call.training) {
    bool saturated = false;
    for (std::size_t k = 0; k < own.size(); ++k) saturated = saturated || own[k] > groups[k];
    observer.update(own, true, delayed && saturated);
  }
  return q;
}
}  // namespace

QTensor quantize_activation(const Tensor& x2d, QuantizeParams params, const QuantCall& call, const char* name,
                            std::int64_t channels_last_samples) {
  RangeObserver* observer = call.input_range;
  if (observer && observer->channels() > 1) {
    QTensor q = quantize_observed_groups(x2d, params, *observer, call, name);
    if (call.numerics) {
      call.numerics->input.merge(measure_quantization(x2d, q));
      ++call.numerics->calls;
    }
    return q;
  }
  const bool delayed = observer && observer->observed();
  float range = 0.0f;
  if (delayed) {
    range = observer->range();
    params.with_observed_range(range, observer->nonnegative());
  }
  QTensor q = channels_last_samples > 0 ? quantize_sample_channels(x2d, channels_last_samples, params, name)
                                        : quantize(x2d, params, name);
  if (observer && call.training) {
    const float own = q.input_range;
    observer->update(std::span<const float>(&own, 1), q.input_negative, delayed && own > range);
  }
  if (call.numerics) {
    call.numerics->input.merge(measure_quantization(x2d, q));
    ++call.numerics->calls;
  }
  return q;
}

void measure_gradient(const Tensor& g2d, const QTensor& gq, const std::shared_ptr<LayerNumerics>& numerics) {
  if (!numerics) return;
  numerics->grad_output.merge(measure_quantization(g2d, gq));
  ++numerics->backward_calls;
}
}  // namespace internal

const QTensor& PackedWeight::get(const Tensor& w, std::int64_t rows, std::int64_t cols, const TensorQConfig& config,
                                 const std::function<Tensor(const Tensor&)>& prepare, std::int64_t variant) {
  if (packed_.codes.defined() && storage_ == w.storage_id() && version_ == w.version() && config_ == config &&
      rows_ == rows && cols_ == cols && variant_ == variant)
    return packed_;
  const Tensor source = prepare ? prepare(w) : w;
  packed_ = quantize(source.view({rows, cols}), weight_params(config), w.name().empty() ? "weight" : w.name().c_str());
  packed_.compute_sums();
  config_ = config;
  rows_ = rows;
  cols_ = cols;
  variant_ = variant;
  storage_ = w.storage_id();
  version_ = w.version();
  ++packs_;
  return packed_;
}

std::int64_t saved_activation_bytes() { return t_saved_bytes; }
void reset_saved_activation_bytes() { t_saved_bytes = 0; }

namespace {
// The Hadamard block of a Linear's input rotation (0: not rotated; in_features without an even
// factor leave nothing to rotate).
std::int64_t rotation_block(const QConfig& config, std::int64_t in_features) {
  if (config.linear_input_rotation != LinearInputRotation::hadamard) return 0;
  const std::int64_t block = kernels::hadamard_block(in_features);
  return block > 1 ? block : 0;
}

// m: [rows, cols] -> m with each row's blocks Hadamard-transformed (a copy; m itself when block is 0).
Tensor rotated(const Tensor& m, std::int64_t block) {
  if (block == 0) return m;
  Tensor r = m.clone();
  kernels::hadamard_rows(r.data<float>(), r.size(0), r.size(1), block);
  return r;
}

// A gradient with respect to the rotated operand, rotated back (H is its own inverse), in place.
Tensor rotate_back(Tensor g, std::int64_t block) {
  if (block != 0) kernels::hadamard_rows(g.data<float>(), g.size(0), g.size(1), block);
  return g;
}

// x2d: [rows, in], the Linear's (rotated) input as the A operand of Y = X W^T: u8 codes with the
// groups or row scales of config.linear_input_groups.
QTensor quantize_linear_input(const Tensor& x2d, const QConfig& config, const QuantCall& call) {
  const char* name = "linear input";
  if (config.linear_input_groups != LinearInputGroups::row_scales) {
    const int group_axis = config.linear_input_groups == LinearInputGroups::rows ? 0 : 1;
    return internal::quantize_activation(x2d, internal::activation_params(config.activations, group_axis), call, name);
  }
  const TensorQConfig& c = config.activations;
  const QTensor q = quantize(
      x2d, QuantizeParams::per_row(c.bits).with_rounding(c.rounding).with_unsigned_codes().with_mse_clip(c.mse_clip), name);
  if (call.numerics) {
    call.numerics->input.merge(measure_quantization(x2d, q));
    ++call.numerics->calls;
  }
  return q;
}

// q's codes as s8 with one unit per-tensor scale: V itself, its row scales moved elsewhere.
QTensor unit_scaled_codes(const QTensor& q) {
  QTensor v = with_signed_codes(q);
  v.scales = Tensor::ones({1});
  v.outer = OuterScale::per_tensor;
  return v;
}

// y: [rows, out] <- gelu(y), in place, split as the gelu op splits it (the same bits).
void apply_gelu(Tensor& y) {
  float* p = y.data<float>();
  detail::parallel_for(y.numel(), detail::kElementwiseGrain,
                       [&](std::int64_t b, std::int64_t e) { kernels::gelu_f32(p + b, p + b, e - b); });
}

// pre: [rows, out], the recomputed pre-activation <- g * gelu'(pre), in place.
Tensor gelu_gradient(const Tensor& g, Tensor pre) {
  const float* pg = g.data<float>();
  float* p = pre.data<float>();
  detail::parallel_for(pre.numel(), detail::kElementwiseGrain,
                       [&](std::int64_t b, std::int64_t e) { kernels::gelu_backward_f32(pg + b, p + b, p + b, e - b); });
  return pre;
}

// Y = X W^T + b on int8, then GELU when `gelu` (its pre-activation recomputed in backward).
Tensor linear_impl(const Tensor& x, const Tensor& weight, const Tensor& bias, PackedWeight& packed,
                   const QConfig& config, const QuantCall& call, bool gelu) {
  config.validate();
  check_dtype(x, DType::f32, "quantized_linear", "x");
  check_dtype(weight, DType::f32, "quantized_linear", "weight");
  check_rank(weight, 2, "quantized_linear", "weight");
  const std::int64_t out_f = weight.size(0), in_f = weight.size(1);
  SHIFTQ_CHECK(x.dim() >= 1 && x.size(-1) == in_f, ShapeError, "quantized_linear: input ", x.str(),
               " does not end in in_features=", in_f, " of weight ", weight.str());
  if (bias.defined())
    SHIFTQ_CHECK(bias.shape() == Shape{out_f}, ShapeError, "quantized_linear: bias ", bias.str(), " must be [", out_f, "]");
  const std::int64_t rows = x.numel() / in_f;
  Shape out_shape = x.shape();
  out_shape.back() = out_f;

  // Y: [rows, out] = X: [rows, in] · W^T, X as u8 codes (per-tensor, or power-of-two groups over its
  // features or rows). With the Hadamard rotation both operands are rotated first: Y = (X H)(W H)^T.
  const std::int64_t block = rotation_block(config, in_f);
  const bool row_scales = config.linear_input_groups == LinearInputGroups::row_scales;
  const QTensor xq = quantize_linear_input(rotated(x.view({rows, in_f}), block), config, call);
  const QTensor wq = packed.get(
      weight, out_f, in_f, config.weights, [block](const Tensor& w) { return rotated(w, block); }, block);
  Tensor y = shiftmm(xq, Trans::N, wq, Trans::T, bias);
  if (gelu) apply_gelu(y);
  y = y.view(out_shape);
  const bool gx = x.requires_grad(), gw = weight.requires_grad(), gb = bias.defined() && bias.requires_grad();
  if (any_requires_grad({&x, &weight, &bias})) internal::count_saved_bytes(static_cast<std::int64_t>(xq.codes.nbytes()));
  const Tensor saved_bias = gelu && bias.defined() ? bias.detach() : Tensor();
  return record(gelu ? "quantized_linear_gelu" : "quantized_linear", y, {&x, &weight, &bias},
                [xq, wq, gradients = config.gradients, block, row_scales, dx_key = call.gradient_key(0),
                 dw_key = call.gradient_key(1), numerics = call.numerics, gx, gw, gb, rows, out_f,
                 in_shape = x.shape(), gelu, saved_bias, bias_version = saved_bias.defined() ? saved_bias.version() : 0](
                    const Tensor& g) {
    Tensor g2 = g.view({rows, out_f});
    if (gelu) {  // dY = g * gelu'(Y), Y recomputed as in forward
      SHIFTQ_CHECK(!saved_bias.defined() || saved_bias.version() == bias_version, AutogradError,
                   "quantized_linear_gelu: the bias was modified in place between forward and backward");
      g2 = gelu_gradient(g2, shiftmm(xq, Trans::N, wq, Trans::T, saved_bias));
    }
    Tensor dx, dw, db;
    if (gx) {  // dX: [rows, in] = dY · W (rotated: (dY · (W H)) H)
      const QTensor gq = quantize(g2, internal::gradient_params(gradients, false, dx_key), "linear output gradient");
      internal::measure_gradient(g2, gq, numerics);
      dx = rotate_back(shiftmm(gq, Trans::N, wq, Trans::N), block).view(in_shape);
    }
    if (gw) {  // dW: [out, in] = dY^T · X (X from its saved int8 codes; rotated: (dY^T · (X H)) H)
      // With row scales s, X^ = diag(s) V: dW = (diag(s) dY)^T V, the scales moved into dY's rows.
      const Tensor g_rows = row_scales ? mul(g2, xq.scales.view({rows, 1})) : g2;
      const QTensor gq = quantize(g_rows, internal::gradient_params(gradients, true, dw_key), "linear output gradient");
      dw = rotate_back(shiftmm(gq, Trans::T, row_scales ? unit_scaled_codes(xq) : with_signed_codes(xq), Trans::N), block);
    }
    if (gb) db = sum(g2, {0});
    return std::vector<Tensor>{dx, dw, db};
  });
}
}  // namespace

Tensor quantized_linear(const Tensor& x, const Tensor& weight, const Tensor& bias, PackedWeight& packed,
                        const QConfig& config, const QuantCall& call) {
  return linear_impl(x, weight, bias, packed, config, call, false);
}

Tensor quantized_linear_gelu(const Tensor& x, const Tensor& weight, const Tensor& bias, PackedWeight& packed,
                             const QConfig& config, const QuantCall& call) {
  return linear_impl(x, weight, bias, packed, config, call, true);
}

namespace {
// Matrix i of a [batch, R, C] tensor, as its own [R, C] tensor (a copy).
Tensor matrix(const Tensor& x, std::int64_t i) {
  const std::int64_t rows = x.size(-2), cols = x.size(-1);
  Tensor m = Tensor::uninitialized({rows, cols});
  std::copy_n(x.data<float>() + i * rows * cols, rows * cols, m.data<float>());
  return m;
}

// The parameters for matrix i: its own stochastic stream, tensor_id * 65536 + i.
QuantizeParams for_matrix(const QuantizeParams& params, std::int64_t i) {
  QuantizeParams p = params;
  p.key.tensor_id = params.key.tensor_id * 65536 + static_cast<std::uint64_t>(i);
  return p;
}

// m: matrix i of its batch.
QTensor quantize_matrix(const Tensor& m, std::int64_t i, const QuantizeParams& params) {
  return quantize(m, for_matrix(params, i), "matmul operand");
}

// fn(i) for every matrix i of a batch, the matrices spread over the threads (attention has many
// small ones: B * H of [T, Dh] or [T, T]); the quantizers and GEMMs inside run on one thread each.
// Results do not depend on the split: matrix i's stochastic stream is its own.
template <class F>
void for_each_matrix(std::int64_t batch, F&& fn) {
  detail::parallel_for_dynamic(batch, 1, [&](std::int64_t i0, std::int64_t i1) {
    for (std::int64_t i = i0; i < i1; ++i) fn(i);
  });
}

std::int64_t code_bytes(const std::vector<QTensor>& qs) {
  std::int64_t bytes = 0;
  for (const QTensor& q : qs) bytes += static_cast<std::int64_t>(q.codes.nbytes());
  return bytes;
}

// The quantizers of one batched int8 matmul out = a b, keyed by (seed, step, key_id). Forward
// operands per `scaling`; the codes saved for backward re-quantize each operand along the other
// product's contraction axis with nearest rounding (a deterministic function of the operand, so
// only codes are saved: a quarter of the fp32 bytes); the output gradient gets stochastic
// ShiftQuant. The A operand of each product is stored as u8 = v + 128, the form the u8·s8 GEMM
// takes (the same values; it saves shiftmm a conversion copy).
struct MatmulQuantizers {
  int bits;
  std::uint64_t seed, step, key_id;
  MatmulScaling scaling;

  QuantizeParams params(int inner_axis, bool stochastic, std::uint64_t id, bool a_operand) const {
    QuantizeParams p = QuantizeParams::shiftquant(bits, max_shift_budget(bits, false), inner_axis);
    p.with_unsigned_codes(a_operand);
    return stochastic ? p.with_rounding(Rounding::stochastic, {seed, step, id}) : p;
  }
  // a: groups over K (axis 1), scale per row; b: groups over K (axis 0), scale per column
  // (ShiftQuant), or without groups (S = 0: per row / per column / per tensor).
  QuantizeParams forward_a() const {
    return scaling == MatmulScaling::shiftquant ? params(1, false, 0, true)
                                                : QuantizeParams::shiftquant(bits, 0, 1).with_unsigned_codes();
  }
  QuantizeParams forward_b() const {
    if (scaling == MatmulScaling::shiftquant) return params(0, false, 0, false);
    return QuantizeParams::shiftquant(bits, 0, 0,
                                      scaling == MatmulScaling::per_row ? OuterScale::per_index : OuterScale::per_tensor);
  }
  QuantizeParams saved_a() const { return params(0, false, 0, true); }   // for db = a^T g: groups over M, per column
  QuantizeParams saved_b() const { return params(1, false, 0, false); }  // for da = g b^T: groups over N, per row
  QuantizeParams gradient_for_a() const { return params(1, true, 4 * key_id, true); }  // g: groups over N, per row
  QuantizeParams gradient_for_b() const { return params(0, true, 4 * key_id + 1, false); }  // g: groups over M, per column
};

// The codes one batched matmul saves for backward, one per matrix (empty when that input needs no
// gradient).
struct MatmulSaved {
  std::vector<QTensor> a_cols, b_rows;
};

// Matrix i's forward product out[i] = a_i b_i from its f32 operands; keeps the codes backward needs.
void matmul_forward_matrix(const MatmulQuantizers& mq, std::int64_t i, const Tensor& ai, const Tensor& bi, bool ga,
                           bool gb, MatmulSaved& saved, float* out) {
  internal::shiftmm_into(quantize_matrix(ai, i, mq.forward_a()), Trans::N, quantize_matrix(bi, i, mq.forward_b()),
                         Trans::N, nullptr, out);
  const auto n = static_cast<std::size_t>(i);
  if (ga) saved.b_rows[n] = quantize_matrix(bi, i, mq.saved_b());
  if (gb) saved.a_cols[n] = quantize_matrix(ai, i, mq.saved_a());
}

// Matrix i's gradients from its output gradient gi: da_i = g b^T (into da), db_i = a^T g (into db);
// a null pointer skips one.
void matmul_backward_matrix(const MatmulQuantizers& mq, std::int64_t i, const Tensor& gi, const MatmulSaved& saved,
                            float* da, float* db) {
  const auto n = static_cast<std::size_t>(i);
  if (da) internal::shiftmm_into(quantize_matrix(gi, i, mq.gradient_for_a()), Trans::N, saved.b_rows[n], Trans::T, nullptr, da);
  if (db) internal::shiftmm_into(saved.a_cols[n], Trans::T, quantize_matrix(gi, i, mq.gradient_for_b()), Trans::N, nullptr, db);
}

std::int64_t code_bytes(const MatmulSaved& saved) { return code_bytes(saved.a_cols) + code_bytes(saved.b_rows); }
}  // namespace

Tensor quantized_matmul(const Tensor& a, const Tensor& b, int bits, std::uint64_t seed, std::uint64_t key_id,
                        std::uint64_t step, MatmulScaling forward) {
  check_dtype(a, DType::f32, "quantized_matmul", "a");
  check_dtype(b, DType::f32, "quantized_matmul", "b");
  SHIFTQ_CHECK(a.dim() >= 2 && a.dim() == b.dim() && std::equal(a.shape().begin(), a.shape().end() - 2, b.shape().begin()),
               ShapeError, "quantized_matmul: operands need rank >= 2 and equal batch dims, got ", a.str(), " and ", b.str());
  SHIFTQ_CHECK(a.size(-1) == b.size(-2), ShapeError, "quantized_matmul: inner dims differ: ", a.str(), " x ", b.str());
  SHIFTQ_CHECK(bits >= 2 && bits <= 8, ValueError, "quantized_matmul: bits must be in [2, 8], got ", bits);
  const std::int64_t M = a.size(-2), K = a.size(-1), N = b.size(-1), batch = a.numel() / std::max<std::int64_t>(M * K, 1);
  Shape out_shape(a.shape().begin(), a.shape().end() - 1);
  out_shape.push_back(N);
  const MatmulQuantizers mq{bits, seed, step, key_id, forward};
  const bool ga = a.requires_grad(), gb = b.requires_grad();
  MatmulSaved saved{std::vector<QTensor>(gb ? static_cast<std::size_t>(batch) : 0),
                    std::vector<QTensor>(ga ? static_cast<std::size_t>(batch) : 0)};
  Tensor out = Tensor::uninitialized({batch, M, N});
  for_each_matrix(batch, [&](std::int64_t i) {
    matmul_forward_matrix(mq, i, matrix(a, i), matrix(b, i), ga, gb, saved, out.data<float>() + i * M * N);
  });
  out = out.view(out_shape);
  if (!ga && !gb) return out;
  internal::count_saved_bytes(code_bytes(saved));
  return record("quantized_matmul", out, {&a, &b},
                [saved = std::move(saved), a_shape = a.shape(), b_shape = b.shape(), ga, gb, batch, M, K, N, mq](const Tensor& g) {
    Tensor da = ga ? Tensor::uninitialized({batch, M, K}) : Tensor();
    Tensor db = gb ? Tensor::uninitialized({batch, K, N}) : Tensor();
    for_each_matrix(batch, [&](std::int64_t i) {
      matmul_backward_matrix(mq, i, matrix(g, i), saved, ga ? da.data<float>() + i * M * K : nullptr,
                             gb ? db.data<float>() + i * K * N : nullptr);
    });
    return std::vector<Tensor>{ga ? da.view(a_shape) : da, gb ? db.view(b_shape) : db};
  });
}

namespace {
// s: [B, H, Tk, 1], the range of each position's value row (1 for an all-zero row).
Tensor value_row_ranges(const Tensor& v) {
  const std::int64_t rows = v.numel() / v.size(3), dh = v.size(3);
  Shape s_shape = v.shape();
  s_shape.back() = 1;
  Tensor s = Tensor::uninitialized(s_shape);
  const float* pv = v.data<float>();
  float* ps = s.data<float>();
  for (std::int64_t r = 0; r < rows; ++r) {
    float m = 0.0f;
    for (std::int64_t d = 0; d < dh; ++d) m = std::max(m, std::fabs(pv[r * dh + d]));
    ps[r] = m > 0.0f ? m : 1.0f;
  }
  return s;
}

// P: [Tq, Tk] = softmax(causal_mask(scale * Q K^T)) of one matrix from its forward codes (rows as
// scaled_softmax computes them).
Tensor causal_probabilities(const QTensor& q_codes, const QTensor& kt_codes, std::int64_t tq, std::int64_t tk,
                            float scale) {
  Tensor scores = Tensor::uninitialized({tq, tk}), p = Tensor::uninitialized({tq, tk});
  internal::shiftmm_into(q_codes, Trans::N, kt_codes, Trans::N, nullptr, scores.data<float>());
  kernels::softmax_rows_f32(scores.data<float>(), p.data<float>(), 0, tq, tk, scale, tq);
  return p;
}

// Causal int8 attention as one node, matrix by matrix: the [B, H, Tq, Tk] scores and probabilities
// are never materialized for the batch, and backward recomputes each matrix's P from the forward
// codes of Q and K^T (the same int8 product, the same bits) instead of saving it. The arithmetic is
// that of quantized_matmul -> scaled_softmax -> mul -> quantized_matmul (same quantizers, keys and
// kernels), so both give the same bits.
Tensor causal_attention(const Tensor& q, const Tensor& k, const Tensor& v, int bits, std::uint64_t seed,
                        std::uint64_t key_id, std::uint64_t step) {
  const std::int64_t tq = q.size(2), tk = k.size(2), dh = q.size(3), batch = q.size(0) * q.size(1);
  SHIFTQ_CHECK(tk >= tq, ShapeError, "quantized_attention: causal attention needs Tk >= Tq, got q ", q.str(), ", k ", k.str());
  const float scale = 1.0f / std::sqrt(static_cast<float>(dh));
  const MatmulQuantizers qk{bits, seed, step, 2 * key_id, MatmulScaling::per_row};
  const MatmulQuantizers pv{bits, seed, step, 2 * key_id + 1, MatmulScaling::per_row_a_unit_b};
  const bool gq = q.requires_grad(), gk = k.requires_grad(), gv = v.requires_grad();
  const bool grad = any_requires_grad({&q, &k, &v});
  const Tensor kt = transpose(k.detach(), -2, -1);  // [B, H, Dh, Tk]
  const Tensor s = value_row_ranges(v);             // [B, H, Tk, 1]
  const std::size_t n = grad ? static_cast<std::size_t>(batch) : 0;
  // Backward needs P's codes for dV and V's for dP, Q's and K's for dK and dQ, and Q's and K's
  // forward codes to recompute the scores.
  MatmulSaved qk_saved{std::vector<QTensor>(n), std::vector<QTensor>(n)}, pv_saved{std::vector<QTensor>(n), std::vector<QTensor>(n)};
  std::vector<QTensor> q_codes(n), kt_codes(n);
  Tensor out = Tensor::uninitialized({batch, tq, dh});
  for_each_matrix(batch, [&](std::int64_t i) {
    const Tensor qi = matrix(q, i), kti = matrix(kt, i);
    QTensor qf = quantize_matrix(qi, i, qk.forward_a()), kf = quantize_matrix(kti, i, qk.forward_b());
    Tensor p = causal_probabilities(qf, kf, tq, tk, scale);  // then P diag(s)
    float* pp = p.data<float>();
    const float* si = s.data<float>() + i * tk;
    for (std::int64_t r = 0; r < tq; ++r)
      for (std::int64_t c = 0; c < tk; ++c) pp[r * tk + c] *= si[c];
    Tensor vi = matrix(v, i);  // diag(1/s) V
    float* pvi = vi.data<float>();
    for (std::int64_t r = 0; r < tk; ++r)
      for (std::int64_t d = 0; d < dh; ++d) pvi[r * dh + d] /= si[r];
    matmul_forward_matrix(pv, i, p, vi, grad, grad, pv_saved, out.data<float>() + i * tq * dh);
    if (!grad) return;
    const auto m = static_cast<std::size_t>(i);
    qk_saved.b_rows[m] = quantize_matrix(kti, i, qk.saved_b());
    qk_saved.a_cols[m] = quantize_matrix(qi, i, qk.saved_a());
    q_codes[m] = std::move(qf);
    kt_codes[m] = std::move(kf);
  });
  out = out.view(q.shape());
  if (!grad) return out;
  internal::count_saved_bytes(code_bytes(qk_saved) + code_bytes(pv_saved) + code_bytes(q_codes) + code_bytes(kt_codes));
  return record("quantized_causal_attention", out, {&q, &k, &v},
                [qk_saved = std::move(qk_saved), pv_saved = std::move(pv_saved), q_codes = std::move(q_codes),
                 kt_codes = std::move(kt_codes), s, qk, pv, gq, gk, gv, batch, tq, tk, dh, scale,
                 q_shape = q.shape(), k_shape = k.shape()](const Tensor& g) {
    Tensor dq = gq ? Tensor::uninitialized({batch, tq, dh}) : Tensor();
    Tensor dk = gk ? Tensor::uninitialized({batch, tk, dh}) : Tensor();
    Tensor dv = gv ? Tensor::uninitialized({batch, tk, dh}) : Tensor();
    for_each_matrix(batch, [&](std::int64_t i) {
      const float* si = s.data<float>() + i * tk;
      // P V: d(P diag(s)) and d(diag(1/s) V) -> dV = diag(1/s) d(diag(1/s) V).
      Tensor dp = Tensor::uninitialized({tq, tk});
      Tensor dvs = gv ? Tensor::uninitialized({tk, dh}) : Tensor();
      matmul_backward_matrix(pv, i, matrix(g, i), pv_saved, dp.data<float>(), gv ? dvs.data<float>() : nullptr);
      if (gv) {
        const float* pdvs = dvs.data<float>();
        float* pdv = dv.data<float>() + i * tk * dh;
        for (std::int64_t r = 0; r < tk; ++r)
          for (std::int64_t d = 0; d < dh; ++d) pdv[r * dh + d] = pdvs[r * dh + d] / si[r];
      }
      if (!gq && !gk) return;
      // P recomputed from the forward codes; dP = d(P diag(s)) diag(s); dScores by softmax's backward.
      const auto m = static_cast<std::size_t>(i);
      const Tensor p = causal_probabilities(q_codes[m], kt_codes[m], tq, tk, scale);
      float* pdp = dp.data<float>();
      for (std::int64_t r = 0; r < tq; ++r)
        for (std::int64_t c = 0; c < tk; ++c) pdp[r * tk + c] *= si[c];
      Tensor ds = Tensor::uninitialized({tq, tk});
      kernels::softmax_backward_rows_f32(p.data<float>(), pdp, ds.data<float>(), 0, tq, tk, scale, tq);
      // Q K^T: dQ = dS K, dK = (Q^T dS)^T.
      Tensor dkt = gk ? Tensor::uninitialized({dh, tk}) : Tensor();
      matmul_backward_matrix(qk, i, ds, qk_saved, gq ? dq.data<float>() + i * tq * dh : nullptr,
                             gk ? dkt.data<float>() : nullptr);
      if (gk) {
        const float* pkt = dkt.data<float>();
        float* pdk = dk.data<float>() + i * tk * dh;
        for (std::int64_t d = 0; d < dh; ++d)
          for (std::int64_t c = 0; c < tk; ++c) pdk[c * dh + d] = pkt[d * tk + c];
      }
    });
    return std::vector<Tensor>{gq ? dq.view(q_shape) : dq, gk ? dk.view(k_shape) : dk, gv ? dv.view(k_shape) : dv};
  });
}
}  // namespace

Tensor quantized_attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, int bits,
                           std::uint64_t seed, std::uint64_t key_id, std::uint64_t step) {
  for (const Tensor* t : {&q, &k, &v}) {
    check_dtype(*t, DType::f32, "quantized_attention", "q/k/v");
    check_rank(*t, 4, "quantized_attention", "q/k/v");
  }
  SHIFTQ_CHECK(k.shape() == v.shape() && q.size(0) == k.size(0) && q.size(1) == k.size(1) && q.size(3) == k.size(3),
               ShapeError, "quantized_attention: q ", q.str(), ", k ", k.str(), ", v ", v.str(),
               " must be [B, H, Tq, Dh], [B, H, Tk, Dh], [B, H, Tk, Dh]");
  SHIFTQ_CHECK(bits >= 2 && bits <= 8, ValueError, "quantized_attention: bits must be in [2, 8], got ", bits);
  if (causal) return causal_attention(q, k, v, bits, seed, key_id, step);
  const float scale = 1.0f / std::sqrt(static_cast<float>(q.size(3)));
  const Tensor scores = quantized_matmul(q, transpose(k, -2, -1), bits, seed, 2 * key_id, step);
  return quantized_matmul(scaled_softmax(scores, scale, false), v, bits, seed, 2 * key_id + 1, step);
}

}  // namespace shiftq::quant
