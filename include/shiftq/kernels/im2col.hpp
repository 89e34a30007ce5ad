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
// kernel row inside the input is a contiguous run of KW*C values, so a row is KH copies instead of
// C*KH*KW gathers. Only output pixels [p_begin, p_end) are written (p_end < 0: all), cols pointing
// at p_begin's row.
void im2col_nhwc_u8(const Conv2dGeometry& g, const std::uint8_t* x, std::uint8_t* cols, std::uint8_t pad,
                    std::int64_t p_begin = 0, std::int64_t p_end = -1);
// The transpose of im2col_nhwc for an int32 product with its scales applied on the way: for the
// acc: [OH*OW, KH*KW*C] of dcols = dY W, adds float(acc[p, j]) * (row_scale[p] * col_scale[j * col_step])
// into dx: [H, W, C] (zeroed by the caller), output pixels in increasing order. col_step is 0 for
// one scale for all columns, 1 for a scale per column. Pixel range as in im2col_nhwc_u8 (acc and
// row_scale pointing at p_begin's row).
void col2im_nhwc_s32_f32(const Conv2dGeometry& g, const std::int32_t* acc, const float* row_scale,
                         const float* col_scale, std::int64_t col_step, float* dx, std::int64_t p_begin = 0,
                         std::int64_t p_end = -1);
// Plain scalar references of the two channels-last kernels, from the definitions (the kernels are
// compiled per ISA and picked at run time; all are bit-identical to these).
void im2col_nhwc_u8_ref(const Conv2dGeometry& g, const std::uint8_t* x, std::uint8_t* cols, std::uint8_t pad,
                        std::int64_t p_begin = 0, std::int64_t p_end = -1);
void col2im_nhwc_s32_f32_ref(const Conv2dGeometry& g, const std::int32_t* acc, const float* row_scale,
                             const float* col_scale, std::int64_t col_step, float* dx, std::int64_t p_begin = 0,
                             std::int64_t p_end = -1);
// Adds cols: [OH*OW, C*KH*KW] back into dx: [C, H, W] (dx must be zeroed by the caller).
void col2im_f32(const Conv2dGeometry& g, const float* cols, float* dx);

}  // namespace shiftq::kernels
