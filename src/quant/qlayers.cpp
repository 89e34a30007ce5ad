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
// dX = dY W, where either axis is the contraction axis); per_row: a float scale per output channel
// (Linear layers: dX = dY W moves them into dY's columns).
QuantizeParams weight_params(const TensorQConfig& c) {
  if (c.kind == QuantizerKind::per_row) return QuantizeParams::per_row(c.bits).with_mse_clip(c.mse_clip);
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

// Whether the Linear input's rows carry float scales (row_scales, row_blocks): dW = dY^T X then moves
// them into dY's rows.
bool has_row_scales(LinearInputGroups groups) {
  return groups == LinearInputGroups::row_scales || groups == LinearInputGroups::row_blocks;
}

// x2d: [rows, in], the Linear's (rotated) input as the A operand of Y = X W^T: u8 codes with the
// groups, row scales or block multipliers of config.linear_input_groups.
QTensor quantize_linear_input(const Tensor& x2d, const QConfig& config, const QuantCall& call) {
  const char* name = "linear input";
  if (!has_row_scales(config.linear_input_groups)) {
    const int group_axis = config.linear_input_groups == LinearInputGroups::rows ? 0 : 1;
    return internal::quantize_activation(x2d, internal::activation_params(config.activations, group_axis), call, name);
  }
  const TensorQConfig& c = config.activations;
  QuantizeParams params = internal::linear_input_blocks(config) ? QuantizeParams::row_blocks(c.bits, kLinearInputBlock)
                                                                 : QuantizeParams::per_row(c.bits).with_rounding(c.rounding);
  const QTensor q = quantize(x2d, params.with_unsigned_codes().with_mse_clip(c.mse_clip), name);
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
  const bool row_scales = has_row_scales(config.linear_input_groups);
  const bool channel_scales = config.weights.kind == QuantizerKind::per_row;
  const QTensor xq = quantize_linear_input(rotated(x.view({rows, in_f}), block), config, call);
  const QTensor wq = packed.get(
      weight, out_f, in_f, config.weights, [block](const Tensor& w) { return rotated(w, block); }, block);
  Tensor y = shiftmm(xq, Trans::N, wq, Trans::T, bias);
  if (gelu) apply_gelu(y);
  y = y.view(out_shape);
  const bool gx = x.requires_grad(), gw = weight.requires_grad(), gb = bias.defined() && bias.requires_grad();
  if (any_requires_grad({&x, &weight, &bias}))
    internal::count_saved_bytes(static_cast<std::int64_t>(
        xq.codes.nbytes() + (xq.block_multipliers.defined() ? xq.block_multipliers.nbytes() : 0)));
  const Tensor saved_bias = gelu && bias.defined() ? bias.detach() : Tensor();
  return record(gelu ? "quantized_linear_gelu" : "quantized_linear", y, {&x, &weight, &bias},
                [xq, wq, gradients = config.gradients, block, row_scales, channel_scales, dx_key = call.gradient_key(0),
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
      // With channel scales t, W^ = diag(t) V: dX = (dY diag(t)) V, the scales moved into dY's columns.
      const Tensor g_cols = channel_scales ? mul(g2, wq.scales.view({1, out_f})) : g2;
      const QTensor gq = quantize(g_cols, internal::gradient_params(gradients, false, dx_key), "linear output gradient");
      internal::measure_gradient(g_cols, gq, numerics);
      dx = rotate_back(shiftmm(gq, Trans::N, channel_scales ? unit_scaled_codes(wq) : wq, Trans::N), block).view(in_shape);
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

// Matrix i's gradients from its output gradient gi: da_i = g b^T (into da, from b's saved codes
// b_rows), db_i = a^T g (into db, from a's saved codes a_cols); a null output skips one.
void matmul_backward_matrix(const MatmulQuantizers& mq, std::int64_t i, const Tensor& gi, const QTensor* b_rows,
                            const QTensor* a_cols, float* da, float* db) {
  if (da) internal::shiftmm_into(quantize_matrix(gi, i, mq.gradient_for_a()), Trans::N, *b_rows, Trans::T, nullptr, da);
  if (db) internal::shiftmm_into(*a_cols, Trans::T, quantize_matrix(gi, i, mq.gradient_for_b()), Trans::N, nullptr, db);
}

std::int64_t code_bytes(const MatmulSaved& saved) { return code_bytes(saved.a_cols) + code_bytes(saved.b_rows); }

void check_bits(int bits, const char* op) {
  SHIFTQ_CHECK(bits >= 2 && bits <= 8, ValueError, op, ": bits must be in [2, 8], got ", bits);
}
}  // namespace

Tensor quantized_matmul(const Tensor& a, const Tensor& b, int bits, std::uint64_t seed, std::uint64_t key_id,
                        std::uint64_t step, MatmulScaling forward) {
  check_dtype(a, DType::f32, "quantized_matmul", "a");
  check_dtype(b, DType::f32, "quantized_matmul", "b");
  SHIFTQ_CHECK(a.dim() >= 2 && a.dim() == b.dim() && std::equal(a.shape().begin(), a.shape().end() - 2, b.shape().begin()),
               ShapeError, "quantized_matmul: operands need rank >= 2 and equal batch dims, got ", a.str(), " and ", b.str());
  SHIFTQ_CHECK(a.size(-1) == b.size(-2), ShapeError, "quantized_matmul: inner dims differ: ", a.str(), " x ", b.str());
  check_bits(bits, "quantized_matmul");
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
                [saved = std::move(saved), a_shape = a.shape(), b_shape = b.shape(), ga, gb, batch, M, K, N,
                 mq](const Tensor& g) {
    Tensor da = ga ? Tensor::uninitialized({batch, M, K}) : Tensor();
    Tensor db = gb ? Tensor::uninitialized({batch, K, N}) : Tensor();
    for_each_matrix(batch, [&](std::int64_t i) {
      const auto n = static_cast<std::size_t>(i);
      matmul_backward_matrix(mq, i, matrix(g, i), ga ? &saved.b_rows[n] : nullptr, gb ? &saved.a_cols[n] : nullptr,
                             ga ? da.data<float>() + i * M * K : nullptr, gb ? db.data<float>() + i * K * N : nullptr);
    });
    return std::vector<Tensor>{ga ? da.view(a_shape) : da, gb ? db.view(b_shape) : db};
  });
}

namespace {
// Matrix i = b * heads + h of an attention operand: rows of dh floats, either its own [B, H, T, Dh]
// tensor or one part of a [B, T, parts * H * Dh] tensor with the heads side by side (a fused qkv
// projection, or the [B, T, D] input of the output projection).
template <class T>
struct HeadMatrices {
  T* base;
  std::int64_t heads, rows, dh, batch_stride, head_stride, row_stride;

  T* row(std::int64_t i, std::int64_t r) const {
    return base + (i / heads) * batch_stride + (i % heads) * head_stride + r * row_stride;
  }
  // x: [B, H, rows, dh].
  static HeadMatrices split(T* x, std::int64_t heads, std::int64_t rows, std::int64_t dh) {
    return {x, heads, rows, dh, heads * rows * dh, rows * dh, dh};
  }
  // Part `part` of x: [B, rows, parts * heads * dh].
  static HeadMatrices merged(T* x, std::int64_t part, std::int64_t parts, std::int64_t heads, std::int64_t rows,
                             std::int64_t dh) {
    const std::int64_t d = heads * dh;
    return {x + part * d, heads, rows, dh, rows * parts * d, dh, parts * d};
  }
  // Matrix i as its own [rows, dh] tensor (a copy).
  Tensor matrix(std::int64_t i) const {
    Tensor m = Tensor::uninitialized({rows, dh});
    for (std::int64_t r = 0; r < rows; ++r) std::copy_n(row(i, r), dh, m.data<float>() + r * dh);
    return m;
  }
  // Matrix i transposed, [dh, rows] (a copy).
  Tensor transposed(std::int64_t i) const {
    Tensor m = Tensor::uninitialized({dh, rows});
    float* pm = m.data<float>();
    for (std::int64_t r = 0; r < rows; ++r) {
      const T* src = row(i, r);
      for (std::int64_t d = 0; d < dh; ++d) pm[d * rows + r] = src[d];
    }
    return m;
  }
};

using ConstHeads = HeadMatrices<const float>;
using Heads = HeadMatrices<float>;

// The attention's operands, matrix by matrix.
struct AttentionLayout {
  ConstHeads q, k, v;
};

// s_i: [Tk] <- the range of each position's value row in matrix i (1 for an all-zero row).
void value_row_ranges(const ConstHeads& v, std::int64_t i, float* s_i) {
  for (std::int64_t r = 0; r < v.rows; ++r) {
    const float* pv = v.row(i, r);
    float m = 0.0f;
    for (std::int64_t d = 0; d < v.dh; ++d) m = std::max(m, std::fabs(pv[d]));
    s_i[r] = m > 0.0f ? m : 1.0f;
  }
}

// P: [Tq, Tk] = softmax(causal_mask(scale * Q K^T)) of one matrix from its forward codes (rows as
// scaled_softmax computes them).
Tensor probabilities(const QTensor& q_codes, const QTensor& kt_codes, std::int64_t tq, std::int64_t tk, float scale) {
  Tensor scores = Tensor::uninitialized({tq, tk}), p = Tensor::uninitialized({tq, tk});
  internal::shiftmm_into(q_codes, Trans::N, kt_codes, Trans::N, nullptr, scores.data<float>());
  kernels::softmax_rows_f32(scores.data<float>(), p.data<float>(), 0, tq, tk, scale, tq);
  return p;
}

// m: [R, C] <- m diag(s), s: [C].
void scale_columns(Tensor& m, const float* s) {
  const std::int64_t rows = m.size(0), cols = m.size(1);
  float* pm = m.data<float>();
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) pm[r * cols + c] *= s[c];
}

// Copies src: [rows, dh] into matrix i of dst, scaling row r by 1 / s[r] when s is given.
void store_rows(const Heads& dst, std::int64_t i, const float* src, const float* s = nullptr) {
  for (std::int64_t r = 0; r < dst.rows; ++r) {
    float* out = dst.row(i, r);
    const float* in = src + r * dst.dh;
    if (s)
      for (std::int64_t d = 0; d < dst.dh; ++d) out[d] = in[d] / s[r];
    else
      std::copy_n(in, dst.dh, out);
  }
}

// Which operands need gradients, and where they go.
struct AttentionGradients {
  bool q, k, v;
  Heads dq, dk, dv;  // filled by backward
};

// What causal attention's forward keeps for backward, per matrix: Q's and K^T's forward codes (to
// recompute P), and for dQ and dK the codes of V / s (for dP), K^T (for dQ) and Q (for dK).
struct AttentionSaved {
  std::vector<QTensor> q_codes, kt_codes, vs_rows, kt_rows, q_cols;
  Tensor s;  // [B * H * Tk]: the value rows' ranges
  std::int64_t bytes() const {
    return code_bytes(q_codes) + code_bytes(kt_codes) + code_bytes(vs_rows) + code_bytes(kt_rows) + code_bytes(q_cols);
  }
};

// Causal int8 attention, matrix by matrix: the [B, H, Tq, Tk] scores and probabilities are never
// materialized for the batch. Backward recomputes each matrix's P from the forward codes of Q and K^T
// (the same int8 product, the same bits) instead of saving it, and re-quantizes P diag(s) for dV
// from it (nearest rounding of the same values: the same codes). The arithmetic is that of
// quantized_matmul -> scaled_softmax -> mul -> quantized_matmul (same quantizers, keys and kernels),
// so both give the same bits.
struct CausalAttention {
  MatmulQuantizers qk, pv;
  std::int64_t batch, tq, tk, dh;
  float scale;

  CausalAttention(int bits, std::uint64_t seed, std::uint64_t key_id, std::uint64_t step, std::int64_t batch_,
                  std::int64_t tq_, std::int64_t tk_, std::int64_t dh_)
      : qk{bits, seed, step, 2 * key_id, MatmulScaling::per_row},
        pv{bits, seed, step, 2 * key_id + 1, MatmulScaling::per_row_a_unit_b},
        batch(batch_), tq(tq_), tk(tk_), dh(dh_), scale(1.0f / std::sqrt(static_cast<float>(dh_))) {}

  // out: matrix i of the output; saved filled for the gradients `grad_qk` (dQ or dK) and `grad` (any).
  void forward(const AttentionLayout& in, const Heads& out, bool grad, bool grad_qk, AttentionSaved& saved) const {
    saved.s = Tensor::uninitialized({batch * tk});  // [B * H * Tk], filled matrix by matrix
    const std::size_t n = grad ? static_cast<std::size_t>(batch) : 0, n_qk = grad_qk ? n : 0;
    saved.q_codes.resize(n), saved.kt_codes.resize(n);
    saved.vs_rows.resize(n_qk), saved.kt_rows.resize(n_qk), saved.q_cols.resize(n_qk);
    for_each_matrix(batch, [&](std::int64_t i) {
      const Tensor qi = in.q.matrix(i), kti = in.k.transposed(i);
      QTensor qf = quantize_matrix(qi, i, qk.forward_a()), kf = quantize_matrix(kti, i, qk.forward_b());
      float* si = saved.s.data<float>() + i * tk;
      value_row_ranges(in.v, i, si);
      Tensor p = probabilities(qf, kf, tq, tk, scale);
      scale_columns(p, si);  // P diag(s)
      Tensor vi = in.v.matrix(i);  // diag(1/s) V
      float* pvi = vi.data<float>();
      for (std::int64_t r = 0; r < tk; ++r)
        for (std::int64_t d = 0; d < dh; ++d) pvi[r * dh + d] /= si[r];
      Tensor yi = Tensor::uninitialized({tq, dh});
      internal::shiftmm_into(quantize_matrix(p, i, pv.forward_a()), Trans::N, quantize_matrix(vi, i, pv.forward_b()),
                             Trans::N, nullptr, yi.data<float>());
      store_rows(out, i, yi.data<float>());
      if (!grad) return;
      const auto m = static_cast<std::size_t>(i);
      saved.q_codes[m] = std::move(qf);
      saved.kt_codes[m] = std::move(kf);
      if (!grad_qk) return;
      saved.vs_rows[m] = quantize_matrix(vi, i, pv.saved_b());
      saved.kt_rows[m] = quantize_matrix(kti, i, qk.saved_b());
      saved.q_cols[m] = quantize_matrix(qi, i, qk.saved_a());
    });
  }

  // g: the output gradient, laid out as the output was.
  void backward(const ConstHeads& g, const AttentionSaved& saved, const AttentionGradients& grads) const {
    for_each_matrix(batch, [&](std::int64_t i) {
      const auto m = static_cast<std::size_t>(i);
      const float* si = saved.s.data<float>() + i * tk;
      const Tensor gi = g.matrix(i);
      const Tensor p = probabilities(saved.q_codes[m], saved.kt_codes[m], tq, tk, scale);  // recomputed
      if (grads.v) {  // d(diag(1/s) V) = (P diag(s))^T g; dV = diag(1/s) d(diag(1/s) V)
        Tensor ps = grads.q || grads.k ? p.clone() : p;
        scale_columns(ps, si);
        const QTensor ps_cols = quantize_matrix(ps, i, pv.saved_a());
        Tensor dvs = Tensor::uninitialized({tk, dh});
        matmul_backward_matrix(pv, i, gi, nullptr, &ps_cols, nullptr, dvs.data<float>());
        store_rows(grads.dv, i, dvs.data<float>(), si);
      }
      if (!grads.q && !grads.k) return;
      // dP = d(P diag(s)) diag(s), d(P diag(s)) = g (V / s)^T; dScores by softmax's backward.
      Tensor dp = Tensor::uninitialized({tq, tk});
      matmul_backward_matrix(pv, i, gi, &saved.vs_rows[m], nullptr, dp.data<float>(), nullptr);
      scale_columns(dp, si);
      Tensor ds = Tensor::uninitialized({tq, tk});
      kernels::softmax_backward_rows_f32(p.data<float>(), dp.data<float>(), ds.data<float>(), 0, tq, tk, scale, tq);
      // Q K^T: dQ = dS K, dK = (Q^T dS)^T.
      Tensor dqi = grads.q ? Tensor::uninitialized({tq, dh}) : Tensor();
      Tensor dkt = grads.k ? Tensor::uninitialized({dh, tk}) : Tensor();
      matmul_backward_matrix(qk, i, ds, &saved.kt_rows[m], &saved.q_cols[m], grads.q ? dqi.data<float>() : nullptr,
                             grads.k ? dkt.data<float>() : nullptr);
      if (grads.q) store_rows(grads.dq, i, dqi.data<float>());
      if (grads.k) {
        const float* pkt = dkt.data<float>();
        for (std::int64_t c = 0; c < tk; ++c) {
          float* out = grads.dk.row(i, c);
          for (std::int64_t d = 0; d < dh; ++d) out[d] = pkt[d * tk + c];
        }
      }
    });
  }
};

// q: [B, H, Tq, Dh], k, v: [B, H, Tk, Dh] -> [B, H, Tq, Dh].
Tensor causal_attention(const Tensor& q, const Tensor& k, const Tensor& v, int bits, std::uint64_t seed,
                        std::uint64_t key_id, std::uint64_t step) {
  const std::int64_t heads = q.size(1), tq = q.size(2), tk = k.size(2), dh = q.size(3), batch = q.size(0) * heads;
  SHIFTQ_CHECK(tk >= tq, ShapeError, "quantized_attention: causal attention needs Tk >= Tq, got q ", q.str(), ", k ",
               k.str());
  const CausalAttention attention(bits, seed, key_id, step, batch, tq, tk, dh);
  const bool gq = q.requires_grad(), gk = k.requires_grad(), gv = v.requires_grad(), grad = gq || gk || gv;
  const AttentionLayout in{ConstHeads::split(q.data<float>(), heads, tq, dh),
                           ConstHeads::split(k.data<float>(), heads, tk, dh),
                           ConstHeads::split(v.data<float>(), heads, tk, dh)};
  Tensor out = Tensor::uninitialized(q.shape());
  AttentionSaved saved;
  attention.forward(in, Heads::split(out.data<float>(), heads, tq, dh), grad, gq || gk, saved);
  if (!grad) return out;
  internal::count_saved_bytes(saved.bytes());
  return record("quantized_causal_attention", out, {&q, &k, &v},
                [attention, saved = std::move(saved), gq, gk, gv, heads, q_shape = q.shape(),
                 k_shape = k.shape()](const Tensor& g) {
    const std::int64_t tq = attention.tq, tk = attention.tk, dh = attention.dh;
    Tensor dq = gq ? Tensor::uninitialized(q_shape) : Tensor();
    Tensor dk = gk ? Tensor::uninitialized(k_shape) : Tensor();
    Tensor dv = gv ? Tensor::uninitialized(k_shape) : Tensor();
    auto heads_of = [&](Tensor& t, std::int64_t rows) {
      return t.defined() ? Heads::split(t.data<float>(), heads, rows, dh) : Heads{};
    };
    attention.backward(ConstHeads::split(g.data<float>(), heads, tq, dh), saved,
                       AttentionGradients{gq, gk, gv, heads_of(dq, tq), heads_of(dk, tk), heads_of(dv, tk)});
    return std::vector<Tensor>{dq, dk, dv};
  });
}
}  // namespace

Tensor quantized_causal_self_attention(const Tensor& qkv, std::int64_t heads, int bits, std::uint64_t seed,
                                       std::uint64_t key_id, std::uint64_t step) {
  check_dtype(qkv, DType::f32, "quantized_causal_self_attention", "qkv");
  check_rank(qkv, 3, "quantized_causal_self_attention", "qkv");
  SHIFTQ_CHECK(heads >= 1 && qkv.size(2) % (3 * heads) == 0, ShapeError, "quantized_causal_self_attention: qkv ",
               qkv.str(), " must be [B, T, 3 * D] with D divisible by heads=", heads);
  check_bits(bits, "quantized_causal_self_attention");
  const std::int64_t b = qkv.size(0), t = qkv.size(1), d = qkv.size(2) / 3, dh = d / heads;
  const CausalAttention attention(bits, seed, key_id, step, b * heads, t, t, dh);
  const float* p = qkv.data<float>();
  const AttentionLayout in{ConstHeads::merged(p, 0, 3, heads, t, dh), ConstHeads::merged(p, 1, 3, heads, t, dh),
                           ConstHeads::merged(p, 2, 3, heads, t, dh)};
  Tensor out = Tensor::uninitialized({b, t, d});  // [B, T, D], heads side by side
  const bool grad = any_requires_grad({&qkv});
  AttentionSaved saved;
  attention.forward(in, Heads::merged(out.data<float>(), 0, 1, heads, t, dh), grad, grad, saved);
  if (!grad) return out;
  internal::count_saved_bytes(saved.bytes());
  return record("quantized_causal_self_attention", out, {&qkv},
                [attention, saved = std::move(saved), heads, qkv_shape = qkv.shape()](const Tensor& g) {
    const std::int64_t t = attention.tq, dh = attention.dh;
    Tensor dqkv = Tensor::uninitialized(qkv_shape);
    float* pd = dqkv.data<float>();
    attention.backward(ConstHeads::merged(g.data<float>(), 0, 1, heads, t, dh), saved,
                       AttentionGradients{true, true, true, Heads::merged(pd, 0, 3, heads, t, dh),
                                          Heads::merged(pd, 1, 3, heads, t, dh), Heads::merged(pd, 2, 3, heads, t, dh)});
    return std::vector<Tensor>{dqkv};
  });
}

Tensor quantized_attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, int bits,
                           std::uint64_t seed, std::uint64_t key_id, std::uint64_t step) {
  for (const Tensor* t : {&q, &k, &v}) {
    check_dtype(*t, DType::f32, "quantized_attention", "q/k/v");
    check_rank(*t, 4, "quantized_attention", "q/k/v");
  }
  SHIFTQ_CHECK(k.shape() == v.shape() && q.size(0) == k.size(0) && q.size(1) == k.size(1) && q.size(3) == k.size(3),
               ShapeError, "quantized_attention: q ", q.str(), ", k ", k.str(), ", v ", v.str(),
               " must be [B, H, Tq, Dh], [B, H, Tk, Dh], [B, H, Tk, Dh]");
  check_bits(bits, "quantized_attention");
  if (causal) return causal_attention(q, k, v, bits, seed, key_id, step);
  const float scale = 1.0f / std::sqrt(static_cast<float>(q.size(3)));
  const Tensor scores = quantized_matmul(q, transpose(k, -2, -1), bits, seed, 2 * key_id, step);
  return quantized_matmul(scaled_softmax(scores, scale, false), v, bits, seed, 2 * key_id + 1, step);
}

}  // namespace shiftq::quant
