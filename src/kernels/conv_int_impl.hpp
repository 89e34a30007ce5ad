// Internal: the implicit-GEMM builds of ConvForwardU8S8 and ConvWeightGradU8S8 (conv_int_vnni.cpp,
// compiled with AVX-512 VNNI), called by conv_int.cpp on CPUs that have it.
#pragma once

#include <cstdint>

#include "shiftq/kernels/epilogue.hpp"
#include "shiftq/kernels/im2col.hpp"

namespace shiftq::kernels::vnni {

// The packed weight and its compensation, as ConvForwardU8S8 holds them.
struct ImplicitConvWeight {
  const std::int8_t* packed;    // [KH][run_quads][padded_channels][4]
  const std::int32_t* offsets;  // [padded_channels]
  std::int64_t out_channels, padded_channels, run_quads;
};

// Bytes of the padded input rows that output pixels [p0, p0 + rows) can read.
std::int64_t implicit_conv_workspace_bytes(const Conv2dGeometry& g, std::int64_t rows);

void implicit_conv_forward(const Conv2dGeometry& g, const ImplicitConvWeight& w, const std::uint8_t* x,
                           std::uint8_t pad, std::int64_t p0, std::int64_t p1, const ScaleEpilogue& e, float* out,
                           std::int64_t ldo, std::uint8_t* workspace);

// dW^T over the rows [r0, r1) of a block (ConvWeightGradU8S8::run).
std::int64_t implicit_conv_weight_grad_workspace_bytes(const Conv2dGeometry& g, std::int64_t out_channels,
                                                       std::int64_t rows);
void implicit_conv_weight_grad(const Conv2dGeometry& g, std::int64_t out_channels, const std::uint8_t* x,
                               std::int64_t image_stride, std::int64_t r0, std::int64_t r1, const std::int8_t* dy,
                               std::int32_t* dwt, std::uint8_t* workspace);

}  // namespace shiftq::kernels::vnni
