// The channels-last im2col / col2im kernels of the quantized convolution: the dispatched (per-ISA)
// kernels are bit-exact against the scalar references on every geometry below, and the reference
// im2col equals the channels-first im2col_u8 up to the patch order.
#include <gtest/gtest.h>

#include <sstream>
#include <string>
#include <vector>

#include <shiftq/kernels/im2col.hpp>
#include <shiftq/shiftq.hpp>

#include "testing/synthetic.hpp"

namespace shiftq::kernels {
namespace {

using testing::random_ints;

// Channel counts around the vector widths, odd sizes, strides, paddings, 1x1 and 3x3 kernels.
std::vector<Conv2dGeometry> geometries() {
  std::vector<Conv2dGeometry> out;
  for (std::int64_t c : {1, 3, 16, 17, 64})
    for (std::int64_t hw : {5, 7})
      for (std::int64_t k : {1, 3})
        for (std::int64_t stride : {1, 2})
          for (std::int64_t pad : {0, 1}) {
            if (k == 1 && pad == 1) continue;
            out.push_back({c, hw, hw + 1, k, k, stride, stride, pad, pad});
          }
  out.push_back({16, 28, 28, 3, 3, 1, 1, 1, 1});  // ResNet-20's first stage
  out.push_back({4, 6, 6, 3, 3, 1, 1, 2, 2});     // padding wider than needed: whole padded rows
  return out;
}

std::string describe(const Conv2dGeometry& g) {
  std::ostringstream s;
  s << "C" << g.channels << " " << g.height << "x" << g.width << " k" << g.kernel_h << " s" << g.stride_h << " p"
    << g.pad_h;
  return s.str();
}

TEST(Im2colKernels, ChannelsLastIm2colEqualsReference) {
  Generator gen(1);
  for (const Conv2dGeometry& g : geometries()) {
    const std::int64_t P = g.out_h() * g.out_w(), patch = g.patch();
    const auto x = random_ints<std::uint8_t>(g.channels * g.height * g.width, 0, 255, gen);
    // All pixels, then a range starting and ending mid-image (cols points at p_begin's row).
    for (const auto& [p0, p1] : std::vector<std::pair<std::int64_t, std::int64_t>>{{0, P}, {P / 3, P - 1}}) {
      std::vector<std::uint8_t> a((p1 - p0) * patch + 1, 0xAB), b((p1 - p0) * patch + 1, 0xAB);
      im2col_nhwc_u8(g, x.data(), a.data(), 0x80, p0, p1);
      im2col_nhwc_u8_ref(g, x.data(), b.data(), 0x80, p0, p1);
      EXPECT_EQ(a, b) << describe(g) << " pixels " << p0 << ".." << p1;
      EXPECT_EQ(a.back(), 0xAB) << "wrote past the range";
    }
  }
}

TEST(Im2colKernels, ChannelsLastReferenceIsChannelsFirstIm2colPermuted) {
  Generator gen(2);
  for (const Conv2dGeometry& g : geometries()) {
    const std::int64_t C = g.channels, HW = g.height * g.width, P = g.out_h() * g.out_w(), taps = g.kernel_h * g.kernel_w;
    const auto x_nhwc = random_ints<std::uint8_t>(C * HW, 0, 255, gen);
    std::vector<std::uint8_t> x_nchw(C * HW);
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t i = 0; i < HW; ++i) x_nchw[c * HW + i] = x_nhwc[i * C + c];
    std::vector<std::uint8_t> last(P * g.patch()), first(P * g.patch());
    im2col_nhwc_u8_ref(g, x_nhwc.data(), last.data(), 7);
    im2col_u8(g, x_nchw.data(), first.data(), 7);
    for (std::int64_t p = 0; p < P; ++p)
      for (std::int64_t t = 0; t < taps; ++t)
        for (std::int64_t c = 0; c < C; ++c)
          ASSERT_EQ(last[p * g.patch() + t * C + c], first[p * g.patch() + c * taps + t]) << describe(g);
  }
}

TEST(Im2colKernels, ChannelsLastCol2imEqualsReference) {
  Generator gen(3);
  for (const Conv2dGeometry& g : geometries()) {
    const std::int64_t P = g.out_h() * g.out_w(), patch = g.patch(), image = g.channels * g.height * g.width;
    const auto acc = random_ints<std::int32_t>(P * patch, -100000, 100000, gen);
    std::vector<float> row_scale(P), col_scale(patch), start(image);
    for (float& v : row_scale) v = 1e-4f * (0.5f + gen.uniform());
    for (float& v : col_scale) v = 0.5f + gen.uniform();
    for (float& v : start) v = gen.uniform() - 0.5f;  // col2im adds into dx
    for (std::int64_t col_step : {0, 1})
      for (const auto& [p0, p1] : std::vector<std::pair<std::int64_t, std::int64_t>>{{0, P}, {1, P / 2 + 1}}) {
        std::vector<float> a = start, b = start;
        col2im_nhwc_s32_f32(g, acc.data() + p0 * patch, row_scale.data() + p0, col_scale.data(), col_step, a.data(),
                            p0, p1);
        col2im_nhwc_s32_f32_ref(g, acc.data() + p0 * patch, row_scale.data() + p0, col_scale.data(), col_step,
                                b.data(), p0, p1);
        EXPECT_EQ(a, b) << describe(g) << " col_step " << col_step << " pixels " << p0 << ".." << p1;
      }
  }
}

}  // namespace
}  // namespace shiftq::kernels
