// ConvForwardU8S8 and ConvWeightGradU8S8: the choice among their implementations (conv_int.hpp),
// the weight packing of the implicit forward, and the im2col paths.
#include "shiftq/kernels/conv_int.hpp"

#include <algorithm>

#include "shiftq/core/error.hpp"
#include "shiftq/kernels/dispatch.hpp"
#include "shiftq/kernels/gemm_int.hpp"
#include "shiftq/kernels/quantize.hpp"
#include "kernels/conv_int_impl.hpp"
#include "kernels/conv_rows.hpp"
#include "isa.hpp"

namespace shiftq::kernels {
namespace {
constexpr std::int64_t kAlign = 64;
std::int64_t aligned(std::int64_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

// The implementation a plan built now runs.
ConvKernel choose_kernel() {
  if (kernel_path() == KernelPath::reference) return ConvKernel::reference;
  return dispatch::cpu_has_avx512_vnni() ? ConvKernel::implicit_vnni : ConvKernel::im2col_gemm;
}

void check_geometry(const char* op, const Conv2dGeometry& g, std::int64_t out_channels) {
  SHIFTQ_CHECK(g.channels > 0 && g.kernel_h > 0 && g.kernel_w > 0 && g.stride_h > 0 && g.stride_w > 0 &&
                   g.pad_h >= 0 && g.pad_w >= 0 && g.out_h() > 0 && g.out_w() > 0 && out_channels > 0,
               ShapeError, op, ": invalid geometry (C=", g.channels, ", ", g.height, "x", g.width, ", kernel ",
               g.kernel_h, "x", g.kernel_w, ", O=", out_channels, ")");
  SHIFTQ_CHECK(g.patch() <= kMaxGemmKu8s8, ValueError, op, ": C*KH*KW = ", g.patch(), " exceeds ", kMaxGemmKu8s8,
               ", the longest u8 x s8 contraction whose int32 sum cannot overflow");
}
}  // namespace

const char* conv_kernel_name(ConvKernel kernel) {
  switch (kernel) {
    case ConvKernel::implicit_vnni: return "implicit_vnni";
    case ConvKernel::im2col_gemm: return "im2col_gemm";
    default: return "reference";
  }
}

ConvForwardU8S8::ConvForwardU8S8(const Conv2dGeometry& g, std::int64_t out_channels, const std::int8_t* w,
                                 const std::int32_t* col_offset, std::uint8_t pad)
    : g_(g), out_channels_(out_channels), w_(w), col_offset_(col_offset), pad_(pad), kernel_(choose_kernel()) {
  check_geometry("ConvForwardU8S8", g, out_channels);
  if (kernel_ != ConvKernel::implicit_vnni) return;
  // W: [O, KH, KW*C] -> [KH][run_quads][padded_channels][4]: lane q of kernel row ky holds bytes
  // 4q..4q+3 of the run, zero past KW*C and for the padding channels.
  const std::int64_t run = g.kernel_w * g.channels, patch = g.patch();
  run_quads_ = (run + 3) / 4;
  padded_channels_ = (out_channels + 15) / 16 * 16;
  packed_.assign(static_cast<std::size_t>(g.kernel_h * run_quads_ * padded_channels_ * 4), 0);
  for (std::int64_t ky = 0; ky < g.kernel_h; ++ky)
    for (std::int64_t i = 0; i < run; ++i)
      for (std::int64_t o = 0; o < out_channels; ++o)
        packed_[static_cast<std::size_t>(((ky * run_quads_ + i / 4) * padded_channels_ + o) * 4 + i % 4)] =
            w[o * patch + ky * run + i];
  offsets_.assign(static_cast<std::size_t>(padded_channels_), 0);
  if (col_offset) std::copy_n(col_offset, out_channels, offsets_.begin());
}

std::int64_t ConvForwardU8S8::workspace_bytes(std::int64_t rows) const {
  if (kernel_ == ConvKernel::implicit_vnni) return vnni::implicit_conv_workspace_bytes(g_, rows);
  // cols: [rows, patch] u8, then acc: [rows, O] int32
  return aligned(rows * g_.patch()) + rows * out_channels_ * static_cast<std::int64_t>(sizeof(std::int32_t));
}

void ConvForwardU8S8::run(const std::uint8_t* x, std::int64_t p0, std::int64_t p1, const ScaleEpilogue& e,
                          float* out, std::int64_t ldo, void* workspace) const {
  if (p1 <= p0) return;
  auto* bytes = static_cast<std::uint8_t*>(workspace);
  if (kernel_ == ConvKernel::implicit_vnni) {
    const vnni::ImplicitConvWeight w{packed_.data(), offsets_.data(), out_channels_, padded_channels_, run_quads_};
    return vnni::implicit_conv_forward(g_, w, x, pad_, p0, p1, e, out, ldo, bytes);
  }
  const std::int64_t rows = p1 - p0, patch = g_.patch(), O = out_channels_;
  std::uint8_t* cols = bytes;
  auto* acc = reinterpret_cast<std::int32_t*>(bytes + aligned(rows * patch));
  if (kernel_ == ConvKernel::reference) {
    im2col_nhwc_u8_ref(g_, x, cols, pad_, p0, p1);
    gemm_u8s8s32_ref(Trans::N, Trans::T, rows, O, patch, cols, patch, w_, patch, acc, O, col_offset_);
    scale_s32_f32_ref(acc, O, e, 0, rows, O, out, ldo);
    return;
  }
  im2col_nhwc_u8(g_, x, cols, pad_, p0, p1);
  gemm_u8s8s32(Trans::N, Trans::T, rows, O, patch, cols, patch, w_, patch, acc, O, col_offset_);
  scale_s32_f32(acc, O, e, 0, rows, O, out, ldo);
}

ConvWeightGradU8S8::ConvWeightGradU8S8(const Conv2dGeometry& g, std::int64_t out_channels)
    : g_(g), out_channels_(out_channels), kernel_(choose_kernel()) {
  check_geometry("ConvWeightGradU8S8", g, out_channels);
  SHIFTQ_CHECK(out_channels <= kMaxGemmKu8s8, ValueError, "ConvWeightGradU8S8: O = ", out_channels, " exceeds ",
               kMaxGemmKu8s8);
}

std::int64_t ConvWeightGradU8S8::workspace_bytes(std::int64_t rows) const {
  if (kernel_ == ConvKernel::implicit_vnni) return vnni::implicit_conv_weight_grad_workspace_bytes(g_, out_channels_, rows);
  // cols: [rows, patch] u8, then the column offsets: [O] and dY's row sums: [rows] int32
  return aligned(rows * g_.patch()) + (out_channels_ + rows) * static_cast<std::int64_t>(sizeof(std::int32_t));
}

void ConvWeightGradU8S8::run(const std::uint8_t* x, std::int64_t image_stride, std::int64_t r0, std::int64_t r1,
                             const std::int8_t* dy, std::int32_t* dwt, void* workspace) const {
  const std::int64_t rows = r1 - r0, patch = g_.patch(), O = out_channels_;
  SHIFTQ_CHECK(rows >= 1 && rows <= kMaxGemmKu8s8, ValueError, "ConvWeightGradU8S8: ", rows,
               " rows; a block holds 1 to ", kMaxGemmKu8s8, " (the int32 sums stay exact)");
  auto* bytes = static_cast<std::uint8_t*>(workspace);
  if (kernel_ == ConvKernel::implicit_vnni)
    return vnni::implicit_conv_weight_grad(g_, O, x, image_stride, r0, r1, dy, dwt, bytes);
  // cols: the block's im2col rows, image part by image part; offsets: -128 * the column sums of dY.
  const std::int64_t P = g_.out_h() * g_.out_w();
  std::uint8_t* cols = bytes;
  auto* offsets = reinterpret_cast<std::int32_t*>(bytes + aligned(rows * patch));
  std::int32_t* row_sums = offsets + O;  // [rows]: code_sums_s8 gives them too; not needed here
  const bool reference = kernel_ == ConvKernel::reference;
  conv_rows::for_each_image_part(r0, r1, P, [&](std::int64_t n, std::int64_t p0, std::int64_t p1, std::int64_t row) {
    std::uint8_t* dst = cols + row * patch;
    if (reference)
      im2col_nhwc_u8_ref(g_, x + n * image_stride, dst, 0x80, p0, p1);
    else
      im2col_nhwc_u8(g_, x + n * image_stride, dst, 0x80, p0, p1);
  });
  std::fill_n(offsets, O, 0);
  if (reference)
    code_sums_s8_ref(dy, 0, rows, O, row_sums, offsets);
  else
    code_sums_s8(dy, 0, rows, O, row_sums, offsets);
  for (std::int64_t o = 0; o < O; ++o) offsets[o] *= -128;
  if (reference)
    gemm_u8s8s32_ref(Trans::T, Trans::N, patch, O, rows, cols, patch, dy, O, dwt, O, offsets);
  else
    gemm_u8s8s32(Trans::T, Trans::N, patch, O, rows, cols, patch, dy, O, dwt, O, offsets);
}

}  // namespace shiftq::kernels
