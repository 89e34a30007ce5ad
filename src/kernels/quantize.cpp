// Runtime ISA dispatch of the quantization kernels, and the scalar references.
#include <algorithm>
#include <cmath>
#include <limits>

#include "isa.hpp"
#include "shiftq/core/error.hpp"
#include "shiftq/kernels/quantize.hpp"

namespace shiftq::kernels {

#define SHIFTQ_DECLARE_ISA(ns)                                                                         \
  namespace ns {                                                                                       \
  bool absmax_cols_f32(const float*, std::int64_t, std::int64_t, std::int64_t, const float*, float*, bool*); \
  bool absmax_rows_f32(const float*, std::int64_t, std::int64_t, std::int64_t, const float*, float*, bool*,    \
                       std::int64_t);                                                                  \
  void quantize_pack_f32_s8(const QuantizePackArgs&, std::int64_t, std::int64_t, std::int64_t);        \
  void code_sums_s8(const std::int8_t*, std::int64_t, std::int64_t, std::int64_t, std::int32_t*,          \
                    std::int32_t*);                                                                    \
  void shift_clip_errors_f32(const float*, std::int64_t, float, float, float, float*);                  \
  void shift_clip_errors_cols_f32(const float*, std::int64_t, std::int64_t, const float*, float, float, float*,  \
                                  float*, float*);                                                     \
  void clip_errors_f32(const float*, std::int64_t, const float*, const float*, int, float, float, float*);  \
  void quantize_row_blocks_f32(const float*, std::int64_t, std::int64_t, float, float, int, int, std::uint8_t, \
                               std::int8_t*, std::uint8_t*);                                           \
  }
SHIFTQ_DECLARE_ISA(avx512)
SHIFTQ_DECLARE_ISA(avx2)
SHIFTQ_DECLARE_ISA(base)
#undef SHIFTQ_DECLARE_ISA

bool absmax_cols_f32(const float* x, std::int64_t r0, std::int64_t r1, std::int64_t cols, const float* row_weight,
                     float* col_max, bool* negative) {
  SHIFTQ_ISA_DISPATCH(absmax_cols_f32, x, r0, r1, cols, row_weight, col_max, negative)
}

bool absmax_rows_f32(const float* x, std::int64_t r0, std::int64_t r1, std::int64_t cols, const float* col_weight,
                     float* row_max, bool* negative, std::int64_t row_step) {
  SHIFTQ_ISA_DISPATCH(absmax_rows_f32, x, r0, r1, cols, col_weight, row_max, negative, row_step)
}

void quantize_pack_f32_s8(const QuantizePackArgs& args, std::int64_t r0, std::int64_t r1, std::int64_t row_step) {
  SHIFTQ_KERNEL_DISPATCH(quantize_pack_f32_s8, args, r0, r1, row_step)
}

void code_sums_s8(const std::int8_t* v, std::int64_t r0, std::int64_t r1, std::int64_t cols, std::int32_t* row_sums,
                  std::int32_t* col_sums) {
  SHIFTQ_KERNEL_DISPATCH(code_sums_s8, v, r0, r1, cols, row_sums, col_sums)
}

namespace {
void check_row_blocks(std::int64_t n, std::int64_t block, float unit, float qmax, int top, int candidates) {
  SHIFTQ_CHECK(n >= 0 && block >= 1 && unit >= std::numeric_limits<float>::min() && std::isfinite(unit) && qmax >= 1.0f &&
                   top >= 1 && static_cast<float>(top) * qmax <= 127.0f && candidates >= 1 &&
                   candidates <= kMaxBlockCandidates,
               ValueError, "quantize_row_blocks_f32: needs n >= 0, block >= 1, a normal finite unit, top * qmax <= 127 "
               "and 1 <= candidates <= ", kMaxBlockCandidates, "; got n=", n, " block=", block, " unit=", unit,
               " qmax=", qmax, " top=", top, " candidates=", candidates);
}
}  // namespace

void quantize_row_blocks_f32(const float* x, std::int64_t n, std::int64_t block, float unit, float qmax, int top,
                             int candidates, std::uint8_t xor_mask, std::int8_t* out, std::uint8_t* m_out) {
  check_row_blocks(n, block, unit, qmax, top, candidates);
  SHIFTQ_KERNEL_DISPATCH(quantize_row_blocks_f32, x, n, block, unit, qmax, top, candidates, xor_mask, out, m_out)
}

void shift_clip_errors_f32(const float* x, std::int64_t n, float a, float lo, float qmax, float errors[2]) {
  SHIFTQ_KERNEL_DISPATCH(shift_clip_errors_f32, x, n, a, lo, qmax, errors)
}

void shift_clip_errors_cols_f32(const float* x, std::int64_t rows, std::int64_t cols, const float* a, float lo,
                                float qmax, float* lanes, float* keep, float* halve) {
  SHIFTQ_KERNEL_DISPATCH(shift_clip_errors_cols_f32, x, rows, cols, a, lo, qmax, lanes, keep, halve)
}

void clip_errors_f32(const float* x, std::int64_t n, const float* inv, const float* scale, int candidates, float lo,
                     float qmax, float* errors) {
  SHIFTQ_KERNEL_DISPATCH(clip_errors_f32, x, n, inv, scale, candidates, lo, qmax, errors)
}

const char* quantize_isa_name() {
  switch (dispatch::cpu_isa()) {
    case dispatch::Isa::avx512: return "avx512";
    case dispatch::Isa::avx2: return "avx2";
    default: return "x86-64";
  }
}

void quantize_pack_f32_s8_ref(const QuantizePackArgs& a, std::int64_t r0, std::int64_t r1, std::int64_t row_step) {
  for (std::int64_t r = r0; r < r1; r += row_step)
    for (std::int64_t c = 0; c < a.cols; ++c) {
      const float y = std::min(a.qmax, std::max(-a.qmax, (a.x[r * a.cols + c] * a.row_mul[r]) * a.col_mul[c]));
      const float q = a.stochastic
                          ? std::min(std::floor(y + stochastic_uniform(a.key, a.element_index(r, c))), a.qmax)
                          : std::nearbyint(y);
      a.out[r * a.cols + c] = static_cast<std::int8_t>(static_cast<std::int32_t>(std::lrint((q * a.row_pack[r]) * a.col_pack[c])) ^ a.xor_mask);
    }
}

void shift_clip_errors_f32_ref(const float* x, std::int64_t n, float a, float lo, float qmax, float errors[2]) {
  float keep[8] = {}, halve[8] = {};
  for (std::int64_t i = 0; i < n; ++i) {
    const float y = x[i] * a, y2 = y + y;
    const float d0 = std::nearbyint(std::min(qmax, std::max(lo, y))) - y;
    const float d1 = std::nearbyint(std::min(qmax, std::max(lo, y2))) - y2;
    keep[i % 8] += d0 * d0;
    halve[i % 8] += d1 * d1;
  }
  errors[0] = errors[1] = 0.0f;
  for (int l = 0; l < 8; ++l) {
    errors[0] += keep[l];
    errors[1] += halve[l];
  }
}

void shift_clip_errors_cols_f32_ref(const float* x, std::int64_t rows, std::int64_t cols, const float* a, float lo,
                                    float qmax, float* lanes, float* keep, float* halve) {
  float* column = lanes;  // [rows] of the scratch: one column gathered
  for (std::int64_t c = 0; c < cols; ++c) {
    for (std::int64_t i = 0; i < rows; ++i) column[i] = x[i * cols + c];
    float errors[2];
    shift_clip_errors_f32_ref(column, rows, a[c], lo, qmax, errors);
    keep[c] = errors[0];
    halve[c] = errors[1];
  }
}

void clip_errors_f32_ref(const float* x, std::int64_t n, const float* inv, const float* scale, int candidates,
                         float lo, float qmax, float* errors) {
  for (int k = 0; k < candidates; ++k) {
    float lanes[8] = {};
    for (std::int64_t i = 0; i < n; ++i) {
      const float e = std::nearbyint(std::min(qmax, std::max(lo, x[i] * inv[k]))) * scale[k] - x[i];
      lanes[i % 8] += e * e;
    }
    float error = 0.0f;
    for (float v : lanes) error += v;
    errors[k] = error;
  }
}

void quantize_row_blocks_f32_ref(const float* x, std::int64_t n, std::int64_t block, float unit, float qmax, int top,
                                 int candidates, std::uint8_t xor_mask, std::int8_t* out, std::uint8_t* m_out) {
  check_row_blocks(n, block, unit, qmax, top, candidates);
  auto code = [&](float v, float inv) { return std::nearbyint(std::min(qmax, std::max(-qmax, v * inv))); };
  for (std::int64_t c0 = 0, j = 0; c0 < n; c0 += block, ++j) {
    const std::int64_t len = std::min(block, n - c0);
    const float* b = x + c0;
    float b_max = 0.0f;
    for (std::int64_t i = 0; i < len; ++i) b_max = std::max(b_max, std::fabs(b[i]));
    int m = std::clamp(static_cast<int>(std::ceil(std::min(b_max / (unit * qmax), static_cast<float>(top)))), 1, top);
    float best_error = 0.0f;
    int best = m;
    for (int k = 0; candidates > 1 && k < std::min(candidates, m); ++k) {
      const float step = unit * static_cast<float>(m - k), inv = 1.0f / step;
      float lanes[8] = {};
      for (std::int64_t i = 0; i < len; ++i) {
        const float e = code(b[i], inv) * step - b[i];
        lanes[i % 8] += e * e;
      }
      float error = 0.0f;
      for (float v : lanes) error += v;
      if (k == 0 || error < best_error) {
        best_error = error;
        best = m - k;
      }
    }
    m = best;
    const float inv = 1.0f / (unit * static_cast<float>(m));
    for (std::int64_t i = 0; i < len; ++i)
      out[c0 + i] = static_cast<std::int8_t>(static_cast<std::int32_t>(code(b[i], inv) * static_cast<float>(m)) ^ xor_mask);
    m_out[j] = static_cast<std::uint8_t>(m);
  }
}

void code_sums_s8_ref(const std::int8_t* v, std::int64_t r0, std::int64_t r1, std::int64_t cols,
                      std::int32_t* row_sums, std::int32_t* col_sums) {
  for (std::int64_t r = r0; r < r1; ++r) {
    std::int32_t acc = 0;
    for (std::int64_t c = 0; c < cols; ++c) {
      acc += v[r * cols + c];
      col_sums[c] += v[r * cols + c];
    }
    row_sums[r] = acc;
  }
}

}  // namespace shiftq::kernels
