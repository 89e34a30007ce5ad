// The SIMD transposes against the plain loops, on shapes with and without partial blocks.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "shiftq/core/error.hpp"
#include "shiftq/core/generator.hpp"
#include "shiftq/kernels/transpose.hpp"

namespace shiftq::kernels {
namespace {
struct TransposeShape {
  std::int64_t rows, cols;
};
const TransposeShape kShapes[] = {{1, 1}, {3, 5}, {4, 4}, {16, 16}, {16, 784}, {64, 49}, {17, 33}, {49, 64}, {196, 32}, {5, 16}, {8, 8}, {24, 40}, {9, 100}, {784, 16}};

TEST(TransposeKernels, FloatEqualsReference) {
  Generator gen(3);
  for (const auto& s : kShapes) {
    std::vector<float> src(s.rows * s.cols), got(src.size(), -1.0f), want(src.size(), -2.0f);
    for (float& v : src) v = gen.normal();
    transpose_f32(src.data(), got.data(), s.rows, s.cols);
    transpose_f32_ref(src.data(), want.data(), s.rows, s.cols);
    EXPECT_EQ(got, want) << s.rows << "x" << s.cols;
    EXPECT_EQ(got[s.cols > 1 ? s.rows : 0], src[s.cols > 1 ? 1 : 0]);  // dst[1][0] = src[0][1]
  }
}

// With leading dimensions: a block of rows into a column range of a wider matrix, from a source
// with padded rows; everything outside the written range is left as it was.
TEST(TransposeKernels, FloatWithLeadingDimensions) {
  Generator gen(5);
  for (const auto& s : kShapes) {
    const std::int64_t src_ld = s.cols + 3, dst_ld = s.rows + 11, offset = 5;
    std::vector<float> src(s.rows * src_ld), got(s.cols * dst_ld, -1.0f), want(got);
    for (float& v : src) v = gen.normal();
    transpose_f32(src.data(), src_ld, got.data() + offset, dst_ld, s.rows, s.cols);
    for (std::int64_t r = 0; r < s.rows; ++r)
      for (std::int64_t c = 0; c < s.cols; ++c) want[c * dst_ld + offset + r] = src[r * src_ld + c];
    EXPECT_EQ(got, want) << s.rows << "x" << s.cols;
  }
}

TEST(TransposeKernels, FloatRejectsShortLeadingDimensions) {
  std::vector<float> src(64), dst(64);
  EXPECT_THROW(transpose_f32(src.data(), 3, dst.data(), 8, 4, 4), ShapeError);  // src_ld < cols
  EXPECT_THROW(transpose_f32(src.data(), 4, dst.data(), 3, 4, 4), ShapeError);  // dst_ld < rows
  EXPECT_THROW(transpose_f32(src.data(), 4, dst.data(), 4, -1, 4), ShapeError);
  EXPECT_NO_THROW(transpose_f32(src.data(), 4, dst.data(), 4, 4, 4));
}

TEST(TransposeKernels, BytesEqualReference) {
  Generator gen(4);
  for (const auto& s : kShapes) {
    std::vector<std::uint8_t> src(s.rows * s.cols), got(src.size(), 1), want(src.size(), 2);
    for (auto& v : src) v = static_cast<std::uint8_t>(gen.next_u64());
    transpose_u8(src.data(), got.data(), s.rows, s.cols);
    transpose_u8_ref(src.data(), want.data(), s.rows, s.cols);
    EXPECT_EQ(got, want) << s.rows << "x" << s.cols;
  }
}
}  // namespace
}  // namespace shiftq::kernels
