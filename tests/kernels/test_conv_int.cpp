// ConvForwardU8S8 and ConvWeightGradU8S8, the products of the channels-last int8 convolution that
// read its input codes: the implementation this CPU runs (implicit GEMM with AVX-512 VNNI, else
// im2col + GEMM) equals the reference path (scalar im2col, GEMM and epilogue) bit for bit, on
// geometries around the vector widths, output channel counts around the 16-lane tiles and
// 64-channel chunks, strides, paddings, pixel ranges, blocks spanning images, and epilogues; the
// forward writes nothing outside its rows and columns. The references equal the definitions.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <shiftq/kernels/conv_int.hpp>
#include <shiftq/kernels/dispatch.hpp>
#include <shiftq/shiftq.hpp>

#include "testing/synthetic.hpp"

namespace shiftq::kernels {
namespace {

using testing::random_ints;

struct Case {
  Conv2dGeometry g;
  std::int64_t out_channels;
};

std::vector<Case> cases() {
  std::vector<Case> out;
  for (std::int64_t c : {1, 3, 16, 17})
    for (std::int64_t k : {1, 3})
      for (std::int64_t stride : {1, 2})
        for (std::int64_t pad : {0, 1})
          for (std::int64_t o : {5, 16, 40}) {
            if (k == 1 && pad == 1) continue;
            out.push_back({{c, 7, 8, k, k, stride, stride, pad, pad}, o});
          }
  for (std::int64_t o : {1, 15, 33, 48, 64, 65, 130}) out.push_back({{16, 9, 9, 3, 3, 1, 1, 1, 1}, o});
  out.push_back({{16, 28, 28, 3, 3, 1, 1, 1, 1}, 16});  // ResNet-20's stages
  out.push_back({{32, 14, 14, 3, 3, 1, 1, 1, 1}, 32});
  out.push_back({{32, 14, 14, 1, 1, 2, 2, 0, 0}, 64});  // the 1x1 stride-2 shortcut
  out.push_back({{64, 7, 7, 3, 3, 1, 1, 1, 1}, 64});
  out.push_back({{4, 6, 6, 3, 3, 1, 1, 2, 2}, 8});      // padding wider than needed
  out.push_back({{5, 6, 9, 5, 3, 2, 1, 2, 1}, 20});     // non-square kernel, strides and padding
  return out;
}

std::string describe(const Case& c) {
  std::ostringstream s;
  const Conv2dGeometry& g = c.g;
  s << "C" << g.channels << " " << g.height << "x" << g.width << " k" << g.kernel_h << "x" << g.kernel_w << " s"
    << g.stride_h << "x" << g.stride_w << " p" << g.pad_h << "x" << g.pad_w << " O" << c.out_channels;
  return s.str();
}

// The element of x: [H, W, C] that patch column j = (ky, kx, c) of output pixel p reads, or -1
// on the padding.
std::int64_t window_element(const Conv2dGeometry& g, std::int64_t p, std::int64_t j) {
  const std::int64_t ky = j / (g.kernel_w * g.channels), kx = j / g.channels % g.kernel_w, c = j % g.channels;
  const std::int64_t iy = (p / g.out_w()) * g.stride_h - g.pad_h + ky;
  const std::int64_t ix = (p % g.out_w()) * g.stride_w - g.pad_w + kx;
  const bool inside = iy >= 0 && iy < g.height && ix >= 0 && ix < g.width;
  return inside ? (iy * g.width + ix) * g.channels + c : -1;
}

class KernelPathGuard {
 public:
  KernelPathGuard() : saved_(kernel_path()) {}
  ~KernelPathGuard() { set_kernel_path(saved_); }
  KernelPathGuard(const KernelPathGuard&) = delete;
  KernelPathGuard& operator=(const KernelPathGuard&) = delete;

 private:
  KernelPath saved_;
};

// out rows [p0, p1) with leading dimension ldo (> O: the gap keeps its sentinel), on `path`.
std::vector<float> run(KernelPath path, const Case& c, const std::vector<std::uint8_t>& x,
                       const std::vector<std::int8_t>& w, const std::vector<std::int32_t>& offsets,
                       const ScaleEpilogue& e, std::int64_t p0, std::int64_t p1, std::int64_t ldo,
                       ConvKernel* kernel = nullptr) {
  const KernelPathGuard guard;
  set_kernel_path(path);
  const ConvForwardU8S8 product(c.g, c.out_channels, w.data(), offsets.data(), 0x80);
  if (kernel) *kernel = product.kernel();
  std::vector<std::uint8_t> workspace(static_cast<std::size_t>(product.workspace_bytes(p1 - p0)));
  std::vector<float> out(static_cast<std::size_t>((p1 - p0) * ldo), -7.0f);
  product.run(x.data(), p0, p1, e, out.data(), ldo, workspace.data());
  return out;
}

void expect_same_bits(const std::vector<float>& a, const std::vector<float>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  std::int64_t differing = 0, first = -1;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (std::bit_cast<std::uint32_t>(a[i]) != std::bit_cast<std::uint32_t>(b[i]) && differing++ == 0)
      first = static_cast<std::int64_t>(i);
  EXPECT_EQ(differing, 0) << what << ": first difference at " << first << " (" << a[first] << " vs " << b[first]
                          << ")";
}

TEST(ConvForwardU8S8, OptimizedPathEqualsReferenceBitForBit) {
  Generator gen(3);
  ConvKernel kernel{};
  for (const Case& c : cases()) {
    const Conv2dGeometry& g = c.g;
    const std::int64_t P = g.out_h() * g.out_w(), patch = g.patch(), O = c.out_channels;
    // Codes over the whole u8 and s8 ranges: the largest products the int32 sums must hold.
    const auto x = random_ints<std::uint8_t>(g.channels * g.height * g.width, 0, 255, gen);
    const auto w = random_ints<std::int8_t>(O * patch, -127, 127, gen);
    std::vector<std::int32_t> offsets(static_cast<std::size_t>(O));
    for (std::int64_t o = 0; o < O; ++o) {
      std::int32_t sum = 0;
      for (std::int64_t j = 0; j < patch; ++j) sum += w[o * patch + j];
      offsets[o] = -128 * sum;  // the u8 codes' compensation: v = code - 128
    }
    std::vector<float> rows(static_cast<std::size_t>(P)), cols(static_cast<std::size_t>(O)), bias(static_cast<std::size_t>(O));
    for (auto& v : rows) v = std::ldexp(0.5f + static_cast<float>(gen.randint(1000)) / 997.0f, -7);
    for (auto& v : cols) v = 0.25f + static_cast<float>(gen.randint(1000)) / 311.0f;
    for (auto& v : bias) v = static_cast<float>(static_cast<int>(gen.randint(2001)) - 1000) / 17.0f;
    const std::vector<ScaleEpilogue> epilogues{
        {rows.data(), 0, 0.0625f, cols.data(), 1, bias.data()},  // the convolution's: one row scale, per-channel
        {rows.data(), 1, 0.125f, cols.data(), 0, nullptr},       // per-row scales, one column scale, no bias
    };
    for (const auto& [p0, p1] : std::vector<std::pair<std::int64_t, std::int64_t>>{{0, P}, {P / 3, P - 1}}) {
      for (std::size_t k = 0; k < epilogues.size(); ++k) {
        const std::string what = describe(c) + " rows " + std::to_string(p0) + ".." + std::to_string(p1) +
                                 " epilogue " + std::to_string(k);
        const std::int64_t ldo = O + 3;
        const auto ref = run(KernelPath::reference, c, x, w, offsets, epilogues[k], p0, p1, ldo);
        const auto opt = run(KernelPath::optimized, c, x, w, offsets, epilogues[k], p0, p1, ldo, &kernel);
        expect_same_bits(opt, ref, what);
        for (std::int64_t r = 0; r < p1 - p0; ++r)
          for (std::int64_t j = O; j < ldo; ++j) ASSERT_EQ(opt[r * ldo + j], -7.0f) << what << ": wrote past O";
      }
    }
  }
  RecordProperty("kernel", conv_kernel_name(kernel));
}

// The reference path itself against the definition, one output element at a time.
TEST(ConvForwardU8S8, ReferenceEqualsTheDefinition) {
  Generator gen(5);
  const Case c{{3, 5, 6, 3, 3, 2, 1, 1, 1}, 7};
  const Conv2dGeometry& g = c.g;
  const std::int64_t P = g.out_h() * g.out_w(), patch = g.patch(), O = c.out_channels;
  const auto x = random_ints<std::uint8_t>(g.channels * g.height * g.width, 0, 255, gen);
  const auto w = random_ints<std::int8_t>(O * patch, -127, 127, gen);
  const std::vector<std::int32_t> offsets = random_ints<std::int32_t>(O, -5000, 5000, gen);
  const float row = 0.375f;
  std::vector<float> cols(static_cast<std::size_t>(O));
  for (auto& v : cols) v = 0.5f + static_cast<float>(gen.randint(100)) / 64.0f;
  const ScaleEpilogue e{&row, 0, 0.5f, cols.data(), 1, nullptr};
  const auto out = run(KernelPath::reference, c, x, w, offsets, e, 0, P, O);
  for (std::int64_t p = 0; p < P; ++p) {
    for (std::int64_t o = 0; o < O; ++o) {
      std::int64_t acc = offsets[o];
      for (std::int64_t j = 0; j < patch; ++j) {
        const std::int64_t in = window_element(g, p, j);
        acc += (in >= 0 ? x[in] : 0x80) * w[o * patch + j];
      }
      const float expected = static_cast<float>(acc) * ((row * 0.5f) * cols[o]);
      ASSERT_EQ(out[p * O + o], expected) << "p " << p << " o " << o;
    }
  }
}

// dW^T over `rows` rows starting at r0 of `images` images, on `path`.
std::vector<std::int32_t> weight_grad(KernelPath path, const Case& c, const std::vector<std::uint8_t>& x,
                                      std::int64_t image_stride, std::int64_t r0, std::int64_t r1,
                                      const std::vector<std::int8_t>& dy, ConvKernel* kernel = nullptr) {
  const KernelPathGuard guard;
  set_kernel_path(path);
  const ConvWeightGradU8S8 product(c.g, c.out_channels);
  if (kernel) *kernel = product.kernel();
  std::vector<std::uint8_t> workspace(static_cast<std::size_t>(product.workspace_bytes(r1 - r0)));
  std::vector<std::int32_t> dwt(static_cast<std::size_t>(c.g.patch() * c.out_channels), -7);
  product.run(x.data(), image_stride, r0, r1, dy.data(), dwt.data(), workspace.data());
  return dwt;
}

TEST(ConvWeightGradU8S8, OptimizedPathEqualsReferenceBitForBit) {
  Generator gen(7);
  ConvKernel kernel{};
  for (const Case& c : cases()) {
    const Conv2dGeometry& g = c.g;
    const std::int64_t P = g.out_h() * g.out_w(), O = c.out_channels, images = 3;
    const std::int64_t image = g.channels * g.height * g.width;
    const auto x = random_ints<std::uint8_t>(images * image, 0, 255, gen);
    // Blocks: one image, all images, one starting and ending mid-image, a few rows (not a multiple of 4).
    for (const auto& [r0, r1] : std::vector<std::pair<std::int64_t, std::int64_t>>{
             {0, P}, {0, images * P}, {P / 2 + 1, 2 * P + P / 3 + 1}, {P - 1, std::min(images * P, P + 2)}}) {
      const auto dy = random_ints<std::int8_t>((r1 - r0) * O, -127, 127, gen);
      const std::string what = describe(c) + " rows " + std::to_string(r0) + ".." + std::to_string(r1);
      const auto ref = weight_grad(KernelPath::reference, c, x, image, r0, r1, dy);
      const auto opt = weight_grad(KernelPath::optimized, c, x, image, r0, r1, dy, &kernel);
      ASSERT_EQ(opt, ref) << what;
    }
  }
  RecordProperty("kernel", conv_kernel_name(kernel));
}

// The reference path against the definition: (code - 128) * dY summed over the rows of two images.
TEST(ConvWeightGradU8S8, ReferenceEqualsTheDefinition) {
  Generator gen(9);
  const Case c{{3, 5, 6, 3, 3, 2, 1, 1, 1}, 7};
  const Conv2dGeometry& g = c.g;
  const std::int64_t P = g.out_h() * g.out_w(), patch = g.patch(), O = c.out_channels;
  const std::int64_t image = g.channels * g.height * g.width;
  const auto x = random_ints<std::uint8_t>(2 * image, 0, 255, gen);
  const std::int64_t r0 = 2, r1 = 2 * P - 1;
  const auto dy = random_ints<std::int8_t>((r1 - r0) * O, -127, 127, gen);
  const auto dwt = weight_grad(KernelPath::reference, c, x, image, r0, r1, dy);
  for (std::int64_t j = 0; j < patch; ++j) {
    for (std::int64_t o = 0; o < O; ++o) {
      std::int64_t expected = 0;
      for (std::int64_t r = r0; r < r1; ++r) {
        const std::int64_t in = window_element(g, r % P, j);
        const std::int64_t v = in >= 0 ? x[(r / P) * image + in] - 128 : 0;
        expected += v * dy[(r - r0) * O + o];
      }
      ASSERT_EQ(dwt[j * O + o], expected) << "j " << j << " o " << o;
    }
  }
}

TEST(ConvForwardU8S8, RejectsInvalidGeometry) {
  const std::vector<std::int8_t> w(9, 1);
  const std::int32_t offset = 0;
  EXPECT_THROW(ConvForwardU8S8({1, 2, 2, 3, 3, 1, 1, 0, 0}, 1, w.data(), &offset, 0x80), ShapeError);
  EXPECT_THROW(ConvForwardU8S8({1, 4, 4, 3, 3, 1, 1, 0, 0}, 0, w.data(), &offset, 0x80), ShapeError);
  EXPECT_THROW(ConvForwardU8S8({8000, 4, 4, 3, 3, 1, 1, 1, 1}, 1, w.data(), &offset, 0x80), ValueError);
  EXPECT_THROW(ConvWeightGradU8S8({1, 2, 2, 3, 3, 1, 1, 0, 0}, 1), ShapeError);
  EXPECT_THROW(ConvWeightGradU8S8({8000, 4, 4, 3, 3, 1, 1, 1, 1}, 1), ValueError);
  const ConvWeightGradU8S8 product({1, 4, 4, 3, 3, 1, 1, 1, 1}, 1);
  std::vector<std::uint8_t> workspace(static_cast<std::size_t>(product.workspace_bytes(16)));
  std::vector<std::int32_t> dwt(9);
  const std::vector<std::uint8_t> x(16, 128);
  EXPECT_THROW(product.run(x.data(), 16, 3, 3, w.data(), dwt.data(), workspace.data()), ValueError);  // no rows
}

}  // namespace
}  // namespace shiftq::kernels
