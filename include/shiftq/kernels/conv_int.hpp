// The forward product of the channels-last int8 convolution with its int32 -> f32 epilogue:
//   out[p - p0, o] = float(sum_j cols[p, j] * w[o, j] + col_offset[o]) * ((row_scale * shift) * col_scale[o])
//                    (+ bias[o])
// for the output pixels p in [p0, p1) of one image, where cols: [OH*OW, KH*KW*C] is the channels-last
// im2col of the u8 codes x: [H, W, C] (padding taps read `pad`) and w: [O, KH*KW*C] holds s8 codes in
// the same (ky, kx, c) order. The scales are a ScaleEpilogue's, its rows counted from p0.
//
// A plan packs the weight once for the implementation chosen when it is built:
//   - implicit GEMM on CPUs with AVX-512 VNNI: no im2col matrix; each kernel row of a window is a
//     run of KW*C bytes of a padded copy of the input rows, broadcast four bytes at a time into
//     vpdpbusd against the weight packed in VNNI order, and the int32 tile is scaled in registers;
//   - elsewhere im2col rows, gemm_u8s8s32 and scale_s32_f32 (their dispatched builds);
//   - on the reference path (SHIFTQ_KERNELS=reference) their scalar references.
// Integer sums are exact and the epilogue does the same float operations in the same order, so
// every implementation gives the same bits.
#pragma once

#include <cstdint>
#include <vector>

#include "shiftq/kernels/epilogue.hpp"
#include "shiftq/kernels/im2col.hpp"

namespace shiftq::kernels {

class ConvForwardU8S8 {
 public:
  enum class Kernel : std::uint8_t { implicit_vnni, im2col_gemm, reference };

  // w: [O, KH*KW*C] s8 and col_offset: [O] must outlive the plan (the im2col paths read them in
  // place). Throws ValueError when KH*KW*C exceeds kMaxGemmKu8s8.
  ConvForwardU8S8(const Conv2dGeometry& g, std::int64_t out_channels, const std::int8_t* w,
                  const std::int32_t* col_offset, std::uint8_t pad);

  // Bytes of the workspace run() needs for blocks of up to `rows` output pixels.
  std::int64_t workspace_bytes(std::int64_t rows) const;
  // Rows p in [p0, p1) of one image x: [H, W, C] into out (row p at out + (p - p0) * ldo).
  // Single-threaded: callers run images or blocks in parallel.
  void run(const std::uint8_t* x, std::int64_t p0, std::int64_t p1, const ScaleEpilogue& e, float* out,
           std::int64_t ldo, void* workspace) const;

  Kernel kernel() const { return kernel_; }
  static const char* kernel_name(Kernel kernel);  // "implicit_vnni", "im2col_gemm", "reference"

 private:
  Conv2dGeometry g_;
  std::int64_t out_channels_;
  const std::int8_t* w_;
  const std::int32_t* col_offset_;
  std::uint8_t pad_;
  Kernel kernel_;
  std::int64_t run_quads_ = 0;           // implicit: 4-byte lanes per kernel row (KW*C rounded up)
  std::int64_t padded_channels_ = 0;     // implicit: O rounded up to 16
  std::vector<std::int8_t> packed_;      // implicit: [KH][run_quads][padded_channels][4]
  std::vector<std::int32_t> offsets_;    // implicit: col_offset padded with zeros to padded_channels
};

}  // namespace shiftq::kernels
