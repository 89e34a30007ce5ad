// The quantized 2-D convolution: three int8 products per step over the channels-last im2col
// matrix, run block by block so that neither the im2col matrix nor a product is ever materialized
// for the whole batch.
//
// With x: [N, C, H, W] (or [N, H, W, C]: ImageLayout::nhwc), W: [O, C, KH, KW], P = OH*OW output
// pixels and patch = KH*KW*C, the three products over the rows r = n*P + p of the im2col matrix
// cols: [N*P, patch] are
//   forward  Y[r, o]      = cols[r, :] . W[o, :]
//   backward dcols[r, j]  = dY[r, :] . W[:, j]          (then col2im into dX)
//            dW^T[j, o]   = sum_r cols[r, j] dY[r, o]
// Threads claim chunks of whole samples and walk their rows in blocks of at most block_rows().
// Per block: the forward is one kernels::ConvForwardU8S8 product (an implicit GEMM that reads the
// windows from the codes where the CPU has AVX-512 VNNI, else im2col rows and a GEMM) that writes
// Y scaled (transposed to NCHW, or in place); the dX product is scaled and scattered (col2im) into
// the sample's channels-last gradient (then moved to NCHW, or in place); dW is one
// kernels::ConvWeightGradU8S8 product (the same two implementations) over the saved int8 codes,
// added exactly in int32 and then int64 (per chunk, then across chunks).
// Integer sums are exact, so results do not depend on the blocking, the chunks or the thread count,
// and the two layouts give the same bits (an MSE-clipped per-tensor input range, S = 0, samples
// the input in memory order, so with C > 1 it can differ between them).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <mutex>
#include <span>
#include <vector>

#include "core/parallel_for.hpp"
#include "kernels/conv_rows.hpp"
#include "quant/qlayers_internal.hpp"
#include "quant/shiftmm_internal.hpp"
#include "shiftq/kernels/conv_int.hpp"
#include "shiftq/kernels/epilogue.hpp"
#include "shiftq/kernels/gemm_int.hpp"
#include "shiftq/kernels/im2col.hpp"
#include "shiftq/kernels/quantize.hpp"
#include "shiftq/kernels/transpose.hpp"

namespace shiftq::quant {
namespace {
using kernels::Conv2dGeometry;
using internal::thread_scratch;
using kernels::Trans;

// Rows per block: the widest int32 block product (rows x max(patch, O)) stays within ~512 KiB, so
// it is consumed from the core's L2 cache; never more than the u8 GEMM's safe contraction length
// (the rows are dW's contraction).
std::int64_t block_rows(std::int64_t patch, std::int64_t out_channels) {
  constexpr std::int64_t kBlockBytes = 512 * 1024;
  const std::int64_t width = std::max(patch, out_channels);
  return std::clamp<std::int64_t>(kBlockBytes / (4 * width), 16, kernels::kMaxGemmKu8s8);
}

// The scale of index i along q's scaled axis (or its one per-tensor scale).
float scale_at(const QTensor& q, std::int64_t i) {
  return q.scales.data<float>()[q.scale_axis() >= 0 ? i : 0];
}

struct ConvShape {
  Conv2dGeometry g;
  std::int64_t N, C, O, P, patch, image;  // image: C*H*W
  bool x_channels_last;                   // x and dX in NHWC (ImageLayout::nhwc, or a coded input)
  bool y_channels_last;                   // Y and dY in NHWC (ImageLayout::nhwc)
};

// codes [N, C, HW] -> [N, HW, C] (u8)
Tensor to_channels_last(const Tensor& codes, const ConvShape& s) {
  const std::int64_t HW = s.g.height * s.g.width;
  Tensor out = Tensor::uninitialized(codes.shape(), DType::u8);
  const std::uint8_t* src = codes.data<std::uint8_t>();
  std::uint8_t* dst = out.data<std::uint8_t>();
  detail::parallel_for_dynamic(s.N, 1, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t n = b; n < e; ++n) kernels::transpose_u8(src + n * s.image, dst + n * s.image, s.C, HW);
  });
  return out;
}

// dY: [N, O, P] -> [N*P, O], the layout both gradient GEMMs read, together with the inner ranges of
// both gradient quantizers: max |dY| per row (output pixel; dW's groups) and per column (output
// channel; dX's groups). One pass over dY: each sample is scanned in its [O, P] layout, where both
// maxima are vertical or long-row reductions (the transposed rows are only O = 16..64 wide, one
// horizontal reduction per pixel), then transposed while in cache.
struct GradientRows {
  Tensor rows;                         // [N*P, O]
  std::span<const float> row_max;      // [N*P]
  std::span<const float> col_max;      // [O]
  std::vector<float> own_row_max, own_col_max;  // the spans' storage when taken here
};

// Channels-last dY is already [N*P, O]: its ranges were noted by the op that wrote it (the L1
// BatchNorm's backward), or are taken here per sample while its rows are in cache.
GradientRows gradient_rows(const Tensor& grad, const ConvShape& s) {
  GradientRows g;
  g.rows = s.y_channels_last ? grad.view({s.N * s.P, s.O}) : Tensor::uninitialized({s.N * s.P, s.O});
  if (s.y_channels_last)
    if (const internal::GradientRanges* noted = internal::find_gradient_ranges(grad, s.N * s.P, s.O)) {
      g.row_max = noted->row_max;
      g.col_max = noted->col_max;
      return g;
    }
  g.own_row_max.resize(static_cast<std::size_t>(s.N * s.P));
  g.own_col_max.assign(static_cast<std::size_t>(s.O), 0.0f);
  const float* src = grad.data<float>();
  float* dst = g.rows.data<float>();
  std::mutex col_mutex;
  std::atomic<bool> finite{true};
  detail::parallel_for_dynamic(s.N, 1, [&](std::int64_t b, std::int64_t e) {
    float* col = thread_scratch<float, 2>(2 * s.O);  // [O]: this thread's maxima, [O]: one sample's
    float* sample_col = col + s.O;
    std::fill_n(col, s.O, 0.0f);
    bool ok = true;
    for (std::int64_t n = b; n < e; ++n) {
      const float* sample = src + n * s.O * s.P;  // [O, P], or [P, O] channels-last
      float* pixel_max = g.own_row_max.data() + n * s.P;
      if (s.y_channels_last) {
        ok &= kernels::absmax_rows_f32(sample, 0, s.P, s.O, nullptr, pixel_max);
        ok &= kernels::absmax_cols_f32(sample, 0, s.P, s.O, nullptr, col);
        continue;
      }
      std::fill_n(pixel_max, s.P, 0.0f);
      ok &= kernels::absmax_cols_f32(sample, 0, s.O, s.P, nullptr, pixel_max);
      ok &= kernels::absmax_rows_f32(sample, 0, s.O, s.P, nullptr, sample_col);
      for (std::int64_t o = 0; o < s.O; ++o) col[o] = std::max(col[o], sample_col[o]);
      kernels::transpose_f32(sample, dst + n * s.P * s.O, s.O, s.P);
    }
    if (!ok) finite = false;
    const std::lock_guard<std::mutex> lock(col_mutex);  // max: exact in any order
    for (std::int64_t o = 0; o < s.O; ++o) g.own_col_max[o] = std::max(g.own_col_max[o], col[o]);
  });
  if (!finite) grad.check_finite("quantized_conv2d: output gradient");
  g.row_max = g.own_row_max;
  g.col_max = g.own_col_max;
  return g;
}

// Y: [N, O, OH, OW] (channels-last: [N, OH, OW, O]) = cols · W^T (+ bias), x codes [N, HW, C] u8:
// one ConvForwardU8S8 product per block of rows (implicit GEMM where the CPU has AVX-512 VNNI).
Tensor conv_forward(const ConvShape& s, const QTensor& x_nhwc, const QTensor& wq, const Tensor& bias) {
  Tensor out = s.y_channels_last ? Tensor::uninitialized({s.N, s.g.out_h(), s.g.out_w(), s.O})
                               : Tensor::uninitialized({s.N, s.O, s.g.out_h(), s.g.out_w()});
  const float x_scale = scale_at(x_nhwc, 0);
  const std::uint8_t* x = x_nhwc.codes.data<std::uint8_t>();
  const std::int8_t* w = wq.codes.data<std::int8_t>();
  // B = W^T: the packed weight's row sums
  const std::vector<std::int32_t> offsets = internal::u8_compensation(wq.row_sums, w, Trans::T, s.patch, s.O);
  const kernels::ConvForwardU8S8 product(s.g, s.O, w, offsets.data(), 0x80);  // padding 128 = v 0
  const kernels::ScaleEpilogue epilogue{&x_scale, 0, std::ldexp(1.0f, -(x_nhwc.shift_budget + wq.shift_budget)),
                                        wq.scales.data<float>(), wq.scale_axis() >= 0 ? 1 : 0,
                                        bias.defined() ? bias.data<float>() : nullptr};
  float* y = out.data<float>();
  const std::int64_t rows_per_block = block_rows(s.patch, s.O);
  detail::parallel_for_dynamic(s.N, 1, [&](std::int64_t b, std::int64_t e) {
    std::uint8_t* workspace = thread_scratch<std::uint8_t, 0>(product.workspace_bytes(rows_per_block));
    float* block = thread_scratch<float, 0>(rows_per_block * s.O);  // the block's Y: [rows, O]
    for (std::int64_t r0 = b * s.P; r0 < e * s.P; r0 += rows_per_block) {
      const std::int64_t r1 = std::min(e * s.P, r0 + rows_per_block);
      // Straight into channels-last Y, or moved to NCHW by a blocked transpose per sample part.
      kernels::conv_rows::for_each_image_part(r0, r1, s.P, [&](std::int64_t n, std::int64_t p0, std::int64_t p1, std::int64_t r) {
        float* dst = s.y_channels_last ? y + (n * s.P + p0) * s.O : block + r * s.O;
        product.run(x + n * s.image, p0, p1, epilogue, dst, s.O, workspace);
        if (!s.y_channels_last)
          kernels::transpose_f32(block + r * s.O, s.O, y + n * s.O * s.P + p0, s.P, p1 - p0, s.O);
      });
    }
  });
  return out;
}

// dX: [N, C, H, W] from dY's codes gq: [N*P, O] (u8, scale per row or per tensor).
Tensor conv_input_grad(const ConvShape& s, const QTensor& gq, const QTensor& wq, const Shape& x_shape) {
  SHIFTQ_CHECK(wq.scale_axis() < 0, Error, "quantized_conv2d: internal error: packed weight needs a per-tensor scale");
  Tensor dx = Tensor::uninitialized(x_shape);
  const float shift = std::ldexp(1.0f, -(gq.shift_budget + wq.shift_budget));
  const std::int64_t HW = s.g.height * s.g.width, rows_per_block = block_rows(s.patch, s.O);
  const std::uint8_t* g = gq.codes.data<std::uint8_t>();
  const std::int8_t* w = wq.codes.data<std::int8_t>();
  // B = W: the packed weight's column sums
  const std::vector<std::int32_t> offsets = internal::u8_compensation(wq.col_sums, w, Trans::N, s.O, s.patch);
  float* px = dx.data<float>();
  detail::parallel_for_dynamic(s.N, 1, [&](std::int64_t b, std::int64_t e) {
    std::int32_t* acc = thread_scratch<std::int32_t, 0>(rows_per_block * s.patch);
    float* row_scale = thread_scratch<float, 0>(rows_per_block);
    // The current sample's dX: [H, W, C], channels-last in place, else scratch moved to NCHW
    float* scratch = s.x_channels_last ? nullptr : thread_scratch<float, 1>(s.image);
    if (scratch) std::fill_n(scratch, s.image, 0.0f);
    for (std::int64_t r0 = b * s.P; r0 < e * s.P; r0 += rows_per_block) {
      const std::int64_t r1 = std::min(e * s.P, r0 + rows_per_block);
      kernels::gemm_u8s8s32(Trans::N, Trans::N, r1 - r0, s.patch, s.O, g + r0 * s.O, s.O, w, s.patch, acc,
                            s.patch, offsets.data());
      for (std::int64_t r = r0; r < r1; ++r) row_scale[r - r0] = scale_at(gq, r) * shift;
      kernels::conv_rows::for_each_image_part(r0, r1, s.P, [&](std::int64_t n, std::int64_t p0, std::int64_t p1, std::int64_t r) {
        float* sample = scratch ? scratch : px + n * s.image;
        if (!scratch && p0 == 0) std::fill_n(sample, s.image, 0.0f);
        kernels::col2im_nhwc_s32_f32(s.g, acc + r * s.patch, row_scale + r, wq.scales.data<float>(), 0,
                                     sample, p0, p1);
        if (!scratch || p1 < s.P) return;
        kernels::transpose_f32(sample, px + n * s.image, HW, s.C);
        std::fill_n(sample, s.image, 0.0f);
      });
    }
  });
  return dx;
}

// sums[i] += terms[i], i < n (exact integer sums; a loop the compiler vectorizes).
template <class Term, class Sum>
void add_sums(const Term* __restrict terms, Sum* __restrict sums, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) sums[i] += terms[i];
}

// dW: [O, C, KH, KW] from dY's codes gq: [N*P, O] (s8, scale per output channel or per tensor).
Tensor conv_weight_grad(const ConvShape& s, const QTensor& gq, const QTensor& x_nhwc, const Shape& w_shape) {
  // dW^T: [patch, O]. The sums' loops take a local count and restrict pointers (add_sums): with
  // s.patch * s.O re-read after every store they stayed scalar.
  const std::int64_t n_sums = s.patch * s.O;
  std::vector<std::int64_t> total(static_cast<std::size_t>(n_sums), 0);
  std::mutex total_mutex;
  const std::int64_t rows_per_block = block_rows(s.patch, s.O);
  const kernels::ConvWeightGradU8S8 product(s.g, s.O);
  const std::uint8_t* x = x_nhwc.codes.data<std::uint8_t>();
  const std::int8_t* g = gq.codes.data<std::int8_t>();
  detail::parallel_for_dynamic(s.N, 1, [&](std::int64_t b, std::int64_t e) {
    std::uint8_t* workspace = thread_scratch<std::uint8_t, 0>(product.workspace_bytes(rows_per_block));
    std::int32_t* const acc = thread_scratch<std::int32_t, 0>(n_sums);
    std::int64_t* const part = thread_scratch<std::int64_t, 0>(n_sums);  // this call's dW^T sums
    // The block products are summed in int32 over up to kMaxGemmKu8s8 rows (|sum| <= rows * 128 *
    // 127 < 2^31: exact), then moved into the int64 sums.
    std::int32_t* const part32 = thread_scratch<std::int32_t, 1>(n_sums);
    std::fill_n(part, n_sums, 0);
    std::fill_n(part32, n_sums, 0);
    std::int64_t rows_in_part32 = 0;
    auto flush = [&] {
      add_sums(part32, part, n_sums);
      std::fill_n(part32, n_sums, 0);
      rows_in_part32 = 0;
    };
    for (std::int64_t r0 = b * s.P; r0 < e * s.P; r0 += rows_per_block) {
      const std::int64_t r1 = std::min(e * s.P, r0 + rows_per_block);
      // [patch, O] = cols^T · dY over this block's rows
      product.run(x, s.image, r0, r1, g + r0 * s.O, acc, workspace);
      if (rows_in_part32 + (r1 - r0) > kernels::kMaxGemmKu8s8) flush();
      add_sums(acc, part32, n_sums);
      rows_in_part32 += r1 - r0;
    }
    flush();
    const std::lock_guard<std::mutex> lock(total_mutex);
    add_sums(part, total.data(), n_sums);
  });
  Tensor dw = Tensor::uninitialized(w_shape);
  const float shift = std::ldexp(1.0f, -(gq.shift_budget + x_nhwc.shift_budget)), xs = scale_at(x_nhwc, 0);
  const std::int64_t taps = s.g.kernel_h * s.g.kernel_w;
  float* pw = dw.data<float>();
  for (std::int64_t o = 0; o < s.O; ++o) {
    const float scale = (scale_at(gq, o) * shift) * xs;
    for (std::int64_t c = 0; c < s.C; ++c)
      for (std::int64_t t = 0; t < taps; ++t)
        pw[(o * s.C + c) * taps + t] = static_cast<float>(total[(t * s.C + c) * s.O + o]) * scale;
  }
  return dw;
}
}  // namespace

namespace {
// The convolution's checks and shape, from x's batch and the input's channels, height and width.
ConvShape conv_shape(const Tensor& x, std::int64_t in_c, std::int64_t in_h, std::int64_t in_w, const Tensor& weight,
                     const Tensor& bias, const Conv2dParams& params, bool x_channels_last) {
  check_dtype(weight, DType::f32, "quantized_conv2d", "weight");
  check_rank(weight, 4, "quantized_conv2d", "weight");
  SHIFTQ_CHECK(params.stride >= 1 && params.padding >= 0, ValueError, "quantized_conv2d: stride must be >= 1 and padding >= 0");
  const Conv2dGeometry g{in_c, in_h, in_w, weight.size(2), weight.size(3),
                         params.stride, params.stride, params.padding, params.padding};
  SHIFTQ_CHECK(weight.size(1) == g.channels, ShapeError, "quantized_conv2d: weight ", weight.str(), " expects ",
               weight.size(1), " input channels, input is ", x.str());
  SHIFTQ_CHECK(g.height + 2 * g.pad_h >= g.kernel_h && g.width + 2 * g.pad_w >= g.kernel_w, ShapeError,
               "quantized_conv2d: kernel larger than the padded input ", x.str());
  const ConvShape s{g, x.size(0), g.channels, weight.size(0), g.out_h() * g.out_w(), g.patch(),
                    g.channels * g.height * g.width, x_channels_last, params.layout == ImageLayout::nhwc};
  SHIFTQ_CHECK(s.patch <= kernels::kMaxGemmKu8s8 && s.O <= kernels::kMaxGemmKu8s8, ValueError,
               "quantized_conv2d: C_in*KH*KW = ", s.patch, " and C_out = ", s.O, " must be at most ",
               kernels::kMaxGemmKu8s8, " (the longest int8 contraction whose int32 sum cannot overflow)");
  if (bias.defined())
    SHIFTQ_CHECK(bias.shape() == Shape{s.O}, ShapeError, "quantized_conv2d: bias ", bias.str(), " must be [", s.O, "]");
  return s;
}

// Y from the channels-last input codes, and the node whose backward gives dX (f32 of `input`'s
// shape: NCHW, or channels-last when s.x_channels_last), dW and db. `input` is the tensor that
// carries the input's autograd edge (x itself, or a coded activation's codes).
Tensor conv_on_codes(const ConvShape& s, const QTensor& x_nhwc, const Tensor& input, const Tensor& weight,
                     const Tensor& bias, PackedWeight& packed, const QConfig& config, const QuantCall& call) {
  SHIFTQ_CHECK(config.weights.kind != QuantizerKind::per_row, ValueError,
               "quantized_conv2d: per-channel weight scales (QuantizerKind::per_row) apply to Linear layers only; "
               "quantize convolution weights with shiftquant or per_tensor");
  SHIFTQ_CHECK(x_nhwc.unsigned_codes() && x_nhwc.scale_axis() < 0, Error,
               "quantized_conv2d: internal error: activation codes must be u8 with a per-tensor scale");
  // W: [O, C, KH, KW] -> [O, KH, KW, C], the patch order of the channels-last im2col.
  const QTensor wq = packed.get(weight, s.O, s.patch, config.weights,
                                [](const Tensor& w) { NoGradGuard no_grad; return permute(w.detach(), {0, 2, 3, 1}); });
  const Tensor out = conv_forward(s, x_nhwc, wq, bias);
  const bool gx = input.requires_grad(), gw = weight.requires_grad(), gb = bias.defined() && bias.requires_grad();
  if (any_requires_grad({&input, &weight, &bias})) internal::count_saved_bytes(static_cast<std::int64_t>(x_nhwc.codes.nbytes()));
  return record("quantized_conv2d", out, {&input, &weight, &bias},
                [x_nhwc, wq, gradients = config.gradients, dx_key = call.gradient_key(0), dw_key = call.gradient_key(1),
                 numerics = call.numerics, s, gx, gw, gb, x_shape = input.shape(),
                 w_shape = weight.shape()](const Tensor& grad) {
    const GradientRows g = gradient_rows(grad, s);  // dY: [N*P, O] and its ranges
    // dX's operand: groups over O, a scale per row (output pixel). dW's: groups over the rows (the
    // contraction), a scale per output channel, s8 codes (GEMM operand B).
    const QuantizeParams dx_params = internal::gradient_params(gradients, false, dx_key);
    const QuantizeParams dw_params = internal::gradient_params(gradients, true, dw_key).with_unsigned_codes(false);
    constexpr const char* kName = "conv2d output gradient";
    internal::GradientCodes codes;
    if (gx && gw)
      codes = internal::quantize_gradient_pair(g.rows, dx_params, g.col_max, dw_params, g.row_max, kName);
    else if (gx)
      codes.for_input = quantize(g.rows, dx_params, g.col_max, kName);
    else if (gw)
      codes.for_weight = quantize(g.rows, dw_params, g.row_max, kName);
    Tensor dx, dw, db;
    if (gx) {
      internal::measure_gradient(g.rows, codes.for_input, numerics);
      dx = conv_input_grad(s, codes.for_input, wq, x_shape);
    }
    if (gw) dw = conv_weight_grad(s, codes.for_weight, x_nhwc, w_shape);
    if (gb) db = sum(g.rows, {0});
    return std::vector<Tensor>{dx, dw, db};
  });
}
}  // namespace

Tensor quantized_conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dParams& params,
                        PackedWeight& packed, const QConfig& config, const QuantCall& call) {
  config.validate();
  check_dtype(x, DType::f32, "quantized_conv2d", "x");
  check_rank(x, 4, "quantized_conv2d", "x");
  const bool channels_last = params.layout == ImageLayout::nhwc;
  const ConvShape s = conv_shape(x, x.size(channels_last ? 3 : 1), x.size(channels_last ? 1 : 2),
                                 x.size(channels_last ? 2 : 3), weight, bias, params, channels_last);
  // The activation is quantized once, with groups per (sample, channel) plane and a per-tensor base
  // (u8 codes), into channels-last codes so that im2col copies runs of KW*C bytes; they are kept
  // for backward. NCHW input is quantized as [N*C, H*W] and its codes transposed; NHWC input as
  // [N*H*W, C], the groups per sample's column.
  const QuantizeParams x_params = internal::activation_params(config.activations, 0);
  const std::int64_t HW = s.g.height * s.g.width;
  QTensor x_nhwc = channels_last ? internal::quantize_activation(x.view({s.N * HW, s.C}), x_params, call,
                                                                 "conv2d input", x_params.shift_budget > 0 ? s.N : 0)
                                 : internal::quantize_activation(x.view({s.N * s.C, HW}), x_params, call, "conv2d input");
  if (!channels_last) {  // the same codes and exponents, now as channels-last [N*H*W, C]
    x_nhwc.codes = to_channels_last(x_nhwc.codes, s).view({s.N * HW, s.C});
    if (x_nhwc.exponents.defined()) x_nhwc.sample_groups = s.N;
  }
  return conv_on_codes(s, x_nhwc, x, weight, bias, packed, config, call);
}

Tensor quantized_conv2d(const CodedActivation& x, const Tensor& weight, const Tensor& bias, const Conv2dParams& params,
                        PackedWeight& packed, const QConfig& config, const QuantCall& call) {
  config.validate();
  const Tensor& codes = x.codes;
  check_dtype(codes, DType::u8, "quantized_conv2d", "x.codes");
  check_rank(codes, 4, "quantized_conv2d", "x.codes");
  const std::int64_t N = codes.size(0), H = codes.size(1), W = codes.size(2), C = codes.size(3);
  SHIFTQ_CHECK(x.q.codes.defined() && x.q.codes.storage_id() == codes.storage_id() && x.q.rows() == N * H * W &&
                   x.q.cols() == C && x.q.unsigned_codes() && x.q.scale_axis() < 0 && x.q.inner_axis == 0 &&
                   x.q.sample_groups == N && x.q.exponents.numel() == N * C,
               ValueError, "quantized_conv2d: a coded input needs q.codes = its codes viewed as [N*H*W, C] (u8), a "
               "per-tensor scale and one exponent per (sample, channel); got codes ", codes.str());
  SHIFTQ_CHECK(!x.observer || !call.input_range || x.observer == call.input_range, ValueError,
               "quantized_conv2d: the codes were quantized with another layer's input range (pass each layer "
               "the codes made for it)");
  const ConvShape s = conv_shape(codes, C, H, W, weight, bias, params, /*x_channels_last=*/true);
  return conv_on_codes(s, x.q, codes, weight, bias, packed, config, call);
}

}  // namespace shiftq::quant
