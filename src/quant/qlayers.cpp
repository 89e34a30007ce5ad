#include "shiftq/quant/qlayers.hpp"

#include "quant/qlayers_internal.hpp"
#include "quant/shiftmm_internal.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/parallel_for.hpp"
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
}  // namespace

Tensor quantized_linear(const Tensor& x, const Tensor& weight, const Tensor& bias, PackedWeight& packed,
                        const QConfig& config, const QuantCall& call) {
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
  const Tensor y = shiftmm(xq, Trans::N, wq, Trans::T, bias).view(out_shape);
  const bool gx = x.requires_grad(), gw = weight.requires_grad(), gb = bias.defined() && bias.requires_grad();
  if (any_requires_grad({&x, &weight, &bias})) internal::count_saved_bytes(static_cast<std::int64_t>(xq.codes.nbytes()));
  return record("quantized_linear", y, {&x, &weight, &bias},
                [xq, wq, gradients = config.gradients, block, row_scales, dx_key = call.gradient_key(0),
                 dw_key = call.gradient_key(1), numerics = call.numerics, gx, gw, gb, rows, out_f,
                 in_shape = x.shape()](const Tensor& g) {
    const Tensor g2 = g.view({rows, out_f});
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

// out: [batch, R, C]; out[i] = op(a) op(b), the [R, C] product of matrix i's operands.
void store_product(Tensor& out, std::int64_t i, const QTensor& a, Trans ta, const QTensor& b, Trans tb) {
  const std::int64_t rows = out.size(-2), cols = out.size(-1);
  internal::shiftmm_into(a, ta, b, tb, nullptr, out.data<float>() + i * rows * cols);
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
}  // namespace

Tensor quantized_matmul(const Tensor& a, const Tensor& b, int bits, std::uint64_t seed, std::uint64_t key_id,
                        std::uint64_t step, MatmulScaling forward) {
  check_dtype(a, DType::f32, "quantized_matmul", "a");
  check_dtype(b, DType::f32, "quantized_matmul", "b");
  SHIFTQ_CHECK(a.dim() >= 2 && a.dim() == b.dim() && std::equal(a.shape().begin(), a.shape().end() - 2, b.shape().begin()),
               ShapeError, "quantized_matmul: operands need rank >= 2 and equal batch dims, got ", a.str(), " and ", b.str());
  SHIFTQ_CHECK(a.size(-1) == b.size(-2), ShapeError, "quantized_matmul: inner dims differ: ", a.str(), " x ", b.str());
  SHIFTQ_CHECK(bits >= 2 && bits <= 8, ValueError, "quantized_matmul: bits must be in [2, 8], got ", bits);
  const int S = max_shift_budget(bits, false);
  const std::int64_t M = a.size(-2), K = a.size(-1), N = b.size(-1), batch = a.numel() / std::max<std::int64_t>(M * K, 1);
  Shape out_shape(a.shape().begin(), a.shape().end() - 1);
  out_shape.push_back(N);
  // The A operand of each product is stored as u8 = v + 128, the form the u8·s8 GEMM takes (the
  // same values; it saves shiftmm a conversion copy).
  auto params = [bits, S, seed, step](int inner_axis, bool stochastic, std::uint64_t id, bool a_operand) {
    QuantizeParams p = QuantizeParams::shiftquant(bits, S, inner_axis);
    p.with_unsigned_codes(a_operand);
    return stochastic ? p.with_rounding(Rounding::stochastic, {seed, step, id}) : p;
  };
  const bool ga = a.requires_grad(), gb = b.requires_grad();
  // Backward re-quantizes each operand along the other product's contraction axis, with nearest
  // rounding: a deterministic function of the operand, so it is done here and only the codes are
  // saved (a quarter of the fp32 bytes). b for da = g b^T: groups over N (axis 1), per row;
  // a for db = a^T g: groups over M (axis 0), per column.
  std::vector<QTensor> b_rows(ga ? static_cast<std::size_t>(batch) : 0);
  std::vector<QTensor> a_cols(gb ? static_cast<std::size_t>(batch) : 0);
  Tensor out = Tensor::uninitialized({batch, M, N});
  // Forward operands: a groups over K (axis 1), scale per row; b groups over K (axis 0), scale per
  // column (ShiftQuant), or without groups (S = 0: per row / per column / per tensor).
  QuantizeParams a_fwd = params(1, false, 0, true), b_fwd = params(0, false, 0, false);
  if (forward != MatmulScaling::shiftquant) {
    a_fwd = QuantizeParams::shiftquant(bits, 0, 1).with_unsigned_codes();
    b_fwd = QuantizeParams::shiftquant(bits, 0, 0,
                                       forward == MatmulScaling::per_row ? OuterScale::per_index : OuterScale::per_tensor);
  }
  for_each_matrix(batch, [&](std::int64_t i) {
    const Tensor ai = matrix(a, i), bi = matrix(b, i);
    store_product(out, i, quantize_matrix(ai, i, a_fwd), Trans::N, quantize_matrix(bi, i, b_fwd), Trans::N);
    if (ga) b_rows[static_cast<std::size_t>(i)] = quantize_matrix(bi, i, params(1, false, 0, false));
    if (gb) a_cols[static_cast<std::size_t>(i)] = quantize_matrix(ai, i, params(0, false, 0, true));
  });
  out = out.view(out_shape);
  if (!ga && !gb) return out;
  internal::count_saved_bytes(code_bytes(b_rows) + code_bytes(a_cols));
  return record("quantized_matmul", out, {&a, &b},
                [a_cols = std::move(a_cols), b_rows = std::move(b_rows), a_shape = a.shape(), b_shape = b.shape(),
                 ga, gb, batch, M, K, N, params, key_id](const Tensor& g) {
    Tensor da = ga ? Tensor::uninitialized({batch, M, K}) : Tensor();
    Tensor db = gb ? Tensor::uninitialized({batch, K, N}) : Tensor();
    for_each_matrix(batch, [&](std::int64_t i) {
      const auto n = static_cast<std::size_t>(i);
      const Tensor gi = matrix(g, i);
      if (ga)  // da = g b^T: contraction over N; g: groups over N (axis 1), per row.
        store_product(da, i, quantize_matrix(gi, i, params(1, true, 4 * key_id, true)), Trans::N, b_rows[n], Trans::T);
      if (gb)  // db = a^T g: contraction over M; g: groups over M (axis 0), per column.
        store_product(db, i, a_cols[n], Trans::T, quantize_matrix(gi, i, params(0, true, 4 * key_id + 1, false)), Trans::N);
    });
    return std::vector<Tensor>{ga ? da.view(a_shape) : da, gb ? db.view(b_shape) : db};
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
  const float scale = 1.0f / std::sqrt(static_cast<float>(q.size(3)));
  if (!causal) {
    const Tensor scores = quantized_matmul(q, transpose(k, -2, -1), bits, seed, 2 * key_id, step);
    return quantized_matmul(scaled_softmax(scores, scale, false), v, bits, seed, 2 * key_id + 1, step);
  }
  const Tensor scores =
      quantized_matmul(q, transpose(k, -2, -1), bits, seed, 2 * key_id, step, MatmulScaling::per_row);
  // s: the range of each position's value row (1 for an all-zero row), a constant of the graph.
  const std::int64_t rows = v.numel() / v.size(3), dh = v.size(3);
  Shape s_shape = v.shape();
  s_shape.back() = 1;
  Tensor s = Tensor::uninitialized(s_shape);  // [B, H, Tk, 1]
  const float* pv = v.data<float>();
  float* ps = s.data<float>();
  for (std::int64_t r = 0; r < rows; ++r) {
    float m = 0.0f;
    for (std::int64_t d = 0; d < dh; ++d) m = std::max(m, std::fabs(pv[r * dh + d]));
    ps[r] = m > 0.0f ? m : 1.0f;
  }
  const Tensor p_scaled = mul(scaled_softmax(scores, scale, true), transpose(s, -2, -1));  // P diag(s): [B, H, Tq, Tk]
  return quantized_matmul(p_scaled, div(v, s), bits, seed, 2 * key_id + 1, step, MatmulScaling::per_row_a_unit_b);
}

}  // namespace shiftq::quant
