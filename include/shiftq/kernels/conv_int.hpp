// The two products of the channels-last int8 convolution that read its input codes, where cols:
// [OH*OW, KH*KW*C] is the channels-last im2col of the u8 codes x: [H, W, C] of one image (patch
// order ky, kx, c):
//   forward  out[p - p0, o] = float(sum_j cols[p, j] * w[o, j] + col_offset[o])
//                             * ((row_scale * shift) * col_scale[o]) (+ bias[o])   (ConvForwardU8S8)
//   dW^T     dwt[j, o] = sum_r (cols[r, j] - 128) * dy[r, o]                        (ConvWeightGradU8S8)
// w: [O, KH*KW*C] and dy: [rows, O] hold s8 codes; the forward's scales are a ScaleEpilogue's,
// its rows counted from p0.
//
// Each is a plan that makes its choice among the implementations (and packs what that one needs)
// once, when it is built:
//   - implicit GEMM on CPUs with AVX-512 VNNI: no im2col matrix. The input rows a block reads are
//     copied into a padded buffer (padding = the zero code), so that each kernel row of a window is
//     a run of KW*C bytes. The forward broadcasts four bytes of a run at a time into vpdpbusd
//     against the weight packed in VNNI order and scales the int32 tile in registers; dW
//     interleaves 16 bytes of four pixels' runs into one vector of 16 patch columns x 4 pixels and
//     multiplies it with a broadcast of each output channel's 4 gradient codes;
//   - elsewhere im2col rows and gemm_u8s8s32 (+ scale_s32_f32), their dispatched builds;
//   - on the reference path (SHIFTQ_KERNELS=reference) their scalar references.
// Integer sums are exact and the epilogue does the same float operations in the same order, so
// every implementation gives the same bits.
#pragma once

#include <cstdint>
#include <vector>

#include "shiftq/kernels/epilogue.hpp"
#include "shiftq/kernels/im2col.hpp"

namespace shiftq::kernels {

enum class ConvKernel : std::uint8_t { implicit_vnni, im2col_gemm, reference };
const char* conv_kernel_name(ConvKernel kernel);  // "implicit_vnni", "im2col_gemm", "reference"

class ConvForwardU8S8 {
 public:
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

  ConvKernel kernel() const { return kernel_; }

 private:
  Conv2dGeometry g_;
  std::int64_t out_channels_;
  const std::int8_t* w_;
  const std::int32_t* col_offset_;
  std::uint8_t pad_;
  ConvKernel kernel_;
  std::int64_t run_quads_ = 0;           // implicit: 4-byte lanes per kernel row (KW*C rounded up)
  std::int64_t padded_channels_ = 0;     // implicit: O rounded up to 16
  std::vector<std::int8_t> packed_;      // implicit: [KH][run_quads][padded_channels][4]
  std::vector<std::int32_t> offsets_;    // implicit: col_offset padded with zeros to padded_channels
};

class ConvWeightGradU8S8 {
 public:
  // x holds u8 codes v + 128 (the padding taps read 128, v = 0). Throws ValueError when
  // KH*KW*C or O exceeds kMaxGemmKu8s8.
  ConvWeightGradU8S8(const Conv2dGeometry& g, std::int64_t out_channels);

  // Bytes of the workspace run() needs for blocks of up to `rows` rows.
  std::int64_t workspace_bytes(std::int64_t rows) const;
  // dwt: [patch, O] (overwritten) = the sum over the rows r in [r0, r1) of the images x + n *
  // image_stride (row r: output pixel r % P of image r / P, P = OH*OW) with dy: [r1 - r0, O].
  // At most kMaxGemmKu8s8 rows (the int32 sums stay exact). Single-threaded.
  void run(const std::uint8_t* x, std::int64_t image_stride, std::int64_t r0, std::int64_t r1,
           const std::int8_t* dy, std::int32_t* dwt, void* workspace) const;

  ConvKernel kernel() const { return kernel_; }

 private:
  Conv2dGeometry g_;
  std::int64_t out_channels_;
  ConvKernel kernel_;
};

}  // namespace shiftq::kernels
