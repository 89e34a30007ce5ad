// ConvForwardU8S8: the choice among its implementations (conv_int.hpp), the weight packing of the
// implicit GEMM, and the two im2col paths.
#include "shiftq/kernels/conv_int.hpp"

#include <algorithm>
#include <cstring>

#include "shiftq/core/error.hpp"
#include "shiftq/kernels/dispatch.hpp"
#include "shiftq/kernels/gemm_int.hpp"
#include "kernels/conv_int_impl.hpp"

namespace shiftq::kernels {
namespace {
bool cpu_has_avx512_vnni() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
  }();
  return has;
}

constexpr std::int64_t kAlign = 64;
std::int64_t aligned(std::int64_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }
}  // namespace

ConvForwardU8S8::ConvForwardU8S8(const Conv2dGeometry& g, std::int64_t out_channels, const std::int8_t* w,
                                 const std::int32_t* col_offset, std::uint8_t pad)
    : g_(g), out_channels_(out_channels), w_(w), col_offset_(col_offset), pad_(pad) {
  SHIFTQ_CHECK(g.channels > 0 && g.kernel_h > 0 && g.kernel_w > 0 && g.stride_h > 0 && g.stride_w > 0 &&
                   g.pad_h >= 0 && g.pad_w >= 0 && g.out_h() > 0 && g.out_w() > 0 && out_channels > 0,
               ShapeError, "ConvForwardU8S8: invalid geometry (C=", g.channels, ", ", g.height, "x", g.width,
               ", kernel ", g.kernel_h, "x", g.kernel_w, ", O=", out_channels, ")");
  SHIFTQ_CHECK(g.patch() <= kMaxGemmKu8s8, ValueError, "ConvForwardU8S8: C*KH*KW = ", g.patch(), " exceeds ",
               kMaxGemmKu8s8, ", the longest u8 x s8 contraction whose int32 sum cannot overflow");
  if (kernel_path() == KernelPath::reference) {
    kernel_ = Kernel::reference;
    return;
  }
  if (!cpu_has_avx512_vnni()) {
    kernel_ = Kernel::im2col_gemm;
    return;
  }
  kernel_ = Kernel::implicit_vnni;
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

const char* ConvForwardU8S8::kernel_name(Kernel kernel) {
  switch (kernel) {
    case Kernel::implicit_vnni: return "implicit_vnni";
    case Kernel::im2col_gemm: return "im2col_gemm";
    default: return "reference";
  }
}

std::int64_t ConvForwardU8S8::workspace_bytes(std::int64_t rows) const {
  if (kernel_ == Kernel::implicit_vnni) return vnni::implicit_conv_workspace_bytes(g_, rows);
  // cols: [rows, patch] u8, then acc: [rows, O] int32
  return aligned(rows * g_.patch()) + rows * out_channels_ * static_cast<std::int64_t>(sizeof(std::int32_t));
}

void ConvForwardU8S8::run(const std::uint8_t* x, std::int64_t p0, std::int64_t p1, const ScaleEpilogue& e,
                          float* out, std::int64_t ldo, void* workspace) const {
  if (p1 <= p0) return;
  auto* bytes = static_cast<std::uint8_t*>(workspace);
  if (kernel_ == Kernel::implicit_vnni) {
    const vnni::ImplicitConvWeight w{packed_.data(), offsets_.data(), out_channels_, padded_channels_, run_quads_};
    return vnni::implicit_conv_forward(g_, w, x, pad_, p0, p1, e, out, ldo, bytes);
  }
  const std::int64_t rows = p1 - p0, patch = g_.patch(), O = out_channels_;
  std::uint8_t* cols = bytes;
  auto* acc = reinterpret_cast<std::int32_t*>(bytes + aligned(rows * patch));
  if (kernel_ == Kernel::reference) {
    im2col_nhwc_u8_ref(g_, x, cols, pad_, p0, p1);
    gemm_u8s8s32_ref(Trans::N, Trans::T, rows, O, patch, cols, patch, w_, patch, acc, O, col_offset_);
    scale_s32_f32_ref(acc, O, e, 0, rows, O, out, ldo);
    return;
  }
  im2col_nhwc_u8(g_, x, cols, pad_, p0, p1);
  gemm_u8s8s32(Trans::N, Trans::T, rows, O, patch, cols, patch, w_, patch, acc, O, col_offset_);
  scale_s32_f32(acc, O, e, 0, rows, O, out, ldo);
}

}  // namespace shiftq::kernels
