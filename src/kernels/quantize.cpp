// Runtime ISA dispatch of the quantization kernels, and the scalar references.
#include <algorithm>
#include <cmath>

#include "isa.hpp"
#include "shiftq/kernels/quantize.hpp"

namespace shiftq::kernels {

#define SHIFTQ_DECLARE_ISA(ns)                                                                         \
  namespace ns {                                                                                       \
  bool absmax_cols_f32(const float*, std::int64_t, std::int64_t, std::int64_t, const float*, float*); \
  bool absmax_rows_f32(const float*, std::int64_t, std::int64_t, std::int64_t, const float*, float*, bool*,    \
                       std::int64_t);                                                                  \
  void quantize_pack_f32_s8(const QuantizePackArgs&, std::int64_t, std::int64_t, std::int64_t);        \
  void code_sums_s8(const std::int8_t*, std::int64_t, std::int64_t, std::int64_t, std::int32_t*,          \
                    std::int32_t*);                                                                    \
  }
SHIFTQ_DECLARE_ISA(avx512)
SHIFTQ_DECLARE_ISA(avx2)
SHIFTQ_DECLARE_ISA(base)
#undef SHIFTQ_DECLARE_ISA

bool absmax_cols_f32(const float* x, std::int64_t r0, std::int64_t r1, std::int64_t cols, const float* row_weight,
                     float* col_max) {
  SHIFTQ_ISA_DISPATCH(absmax_cols_f32, x, r0, r1, cols, row_weight, col_max)
}

bool absmax_rows_f32(const float* x, std::int64_t r0, std::int64_t r1, std::int64_t cols, const float* col_weight,
                     float* row_max, bool* negative, std::int64_t row_step) {
  SHIFTQ_ISA_DISPATCH(absmax_rows_f32, x, r0, r1, cols, col_weight, row_max, negative, row_step)
}

void quantize_pack_f32_s8(const QuantizePackArgs& args, std::int64_t r0, std::int64_t r1, std::int64_t row_step) {
  SHIFTQ_ISA_DISPATCH(quantize_pack_f32_s8, args, r0, r1, row_step)
}

void code_sums_s8(const std::int8_t* v, std::int64_t r0, std::int64_t r1, std::int64_t cols, std::int32_t* row_sums,
                  std::int32_t* col_sums) {
  SHIFTQ_ISA_DISPATCH(code_sums_s8, v, r0, r1, cols, row_sums, col_sums)
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
                          ? std::floor(y + stochastic_uniform(a.key, a.index_base + static_cast<std::uint64_t>(r * a.cols + c)))
                          : std::nearbyint(y);
      a.out[r * a.cols + c] = static_cast<std::int8_t>(static_cast<std::int32_t>(std::lrint((q * a.row_pack[r]) * a.col_pack[c])) ^ a.xor_mask);
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
