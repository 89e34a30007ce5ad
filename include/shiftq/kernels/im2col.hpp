// im2col / col2im for 2-D convolution as GEMM.
#pragma once

#include <cstdint>

namespace shiftq::kernels {

struct Conv2dGeometry {
  std::int64_t channels, height, width;        // input C, H, W
  std::int64_t kernel_h, kernel_w;
  std::int64_t stride_h, stride_w;
  std::int64_t pad_h, pad_w;
  std::int64_t out_h() const { return (height + 2 * pad_h - kernel_h) / stride_h + 1; }
  std::int64_t out_w() const { return (width + 2 * pad_w - kernel_w) / stride_w + 1; }
  std::int64_t patch() const { return channels * kernel_h * kernel_w; }
};

// x: [C, H, W] of one image -> cols: [OH*OW, C*KH*KW] (row = output pixel, zero padding).
void im2col_f32(const Conv2dGeometry& g, const float* x, float* cols);
// The same for 8-bit codes; padding positions get `pad` (the code of 0: 0 for s8, 128 for u8 = v + 128).
void im2col_u8(const Conv2dGeometry& g, const std::uint8_t* x, std::uint8_t* cols, std::uint8_t pad);
// Channels-last variants: x: [H, W, C] -> cols: [OH*OW, KH*KW*C] (patch order ky, kx, c): each
// tap is a contiguous run of C values, so a row is KH*KW copies instead of C*KH*KW gathers.
void im2col_nhwc_u8(const Conv2dGeometry& g, const std::uint8_t* x, std::uint8_t* cols, std::uint8_t pad);
// Adds cols: [OH*OW, KH*KW*C] into dx: [H, W, C] (zeroed by the caller).
void col2im_nhwc_f32(const Conv2dGeometry& g, const float* cols, float* dx);
// Adds cols: [OH*OW, C*KH*KW] back into dx: [C, H, W] (dx must be zeroed by the caller).
void col2im_f32(const Conv2dGeometry& g, const float* cols, float* dx);

}  // namespace shiftq::kernels
