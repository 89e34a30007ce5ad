// Walsh-Hadamard transforms along rows (the fast butterfly, and the O(n^2) definition for tests).
#include "shiftq/kernels/hadamard.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <vector>

#include "core/parallel_for.hpp"
#include "isa.hpp"
#include "shiftq/core/error.hpp"

namespace shiftq::kernels {

#define SHIFTQ_DECLARE_ISA(ns) \
  namespace ns {               \
  void hadamard_rows_f32(float*, std::int64_t, std::int64_t, std::int64_t, std::int64_t, float); \
  }
SHIFTQ_DECLARE_ISA(avx512)
SHIFTQ_DECLARE_ISA(avx2)
SHIFTQ_DECLARE_ISA(base)
#undef SHIFTQ_DECLARE_ISA

namespace {
void check_block(std::int64_t rows, std::int64_t cols, std::int64_t block, const char* fn) {
  SHIFTQ_CHECK(rows >= 0 && cols >= 0, ShapeError, fn, ": negative size rows=", rows, " cols=", cols);
  SHIFTQ_CHECK(block >= 1 && std::has_single_bit(static_cast<std::uint64_t>(block)) && cols % block == 0, ShapeError,
               fn, ": block must be a power of two dividing cols=", cols, ", got ", block);
}

}  // namespace

std::int64_t hadamard_block(std::int64_t n) {
  SHIFTQ_CHECK(n >= 1, ShapeError, "hadamard_block: n must be >= 1, got ", n);
  return n & -n;
}

namespace {
// Rows [r0, r1): the butterflies of the ISA's build.
void transform_rows(float* x, std::int64_t r0, std::int64_t r1, std::int64_t cols, std::int64_t block, float scale) {
  SHIFTQ_ISA_DISPATCH(hadamard_rows_f32, x, r0, r1, cols, block, scale)
}
}  // namespace

void hadamard_rows(float* x, std::int64_t rows, std::int64_t cols, std::int64_t block) {
  check_block(rows, cols, block, "hadamard_rows");
  if (kernel_path() == KernelPath::reference) return hadamard_rows_ref(x, rows, cols, block);
  if (block == 1) return;
  const float scale = 1.0f / std::sqrt(static_cast<float>(block));
  // Rows per chunk: about 64 Ki values of work, at least one row.
  const std::int64_t grain = std::max<std::int64_t>(1, (std::int64_t{1} << 16) / std::max<std::int64_t>(cols, 1));
  detail::parallel_for(rows, grain, [&](std::int64_t r0, std::int64_t r1) { transform_rows(x, r0, r1, cols, block, scale); });
}

void hadamard_rows_ref(float* x, std::int64_t rows, std::int64_t cols, std::int64_t block) {
  check_block(rows, cols, block, "hadamard_rows_ref");
  const double scale = 1.0 / std::sqrt(static_cast<double>(block));
  std::vector<float> out(static_cast<std::size_t>(block));
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; c += block) {
      float* v = x + r * cols + c;
      for (std::int64_t i = 0; i < block; ++i) {
        double sum = 0;
        for (std::int64_t j = 0; j < block; ++j)
          sum += (std::popcount(static_cast<std::uint64_t>(i & j)) % 2 ? -1.0 : 1.0) * v[j];
        out[static_cast<std::size_t>(i)] = static_cast<float>(sum * scale);
      }
      std::copy(out.begin(), out.end(), v);
    }
}

}  // namespace shiftq::kernels
