// Runtime ISA dispatch of the int32 -> f32 epilogue, and its scalar reference.
#include <cstring>

#include "isa.hpp"
#include "shiftq/kernels/epilogue.hpp"

namespace shiftq::kernels {

#define SHIFTQ_DECLARE_ISA(ns)                                                                               \
  namespace ns {                                                                                             \
  void scale_s32_f32(const std::int32_t*, std::int64_t, const ScaleEpilogue&, std::int64_t, std::int64_t, \
                     std::int64_t, float*, std::int64_t);                                                    \
  }
SHIFTQ_DECLARE_ISA(avx512)
SHIFTQ_DECLARE_ISA(avx2)
SHIFTQ_DECLARE_ISA(base)
#undef SHIFTQ_DECLARE_ISA

void scale_s32_f32(const std::int32_t* acc, std::int64_t lda, const ScaleEpilogue& e, std::int64_t r0,
                   std::int64_t r1, std::int64_t cols, float* out, std::int64_t ldo) {
  SHIFTQ_KERNEL_DISPATCH(scale_s32_f32, acc, lda, e, r0, r1, cols, out, ldo)
}

// The reference: element by element, each int32 read (memcpy) before its float is stored.
void scale_s32_f32_ref(const std::int32_t* acc, std::int64_t lda, const ScaleEpilogue& e, std::int64_t r0,
                       std::int64_t r1, std::int64_t cols, float* out, std::int64_t ldo) {
  for (std::int64_t r = r0; r < r1; ++r) {
    const float row = e.row_scale[r * e.row_step] * e.shift;
    const unsigned char* src = reinterpret_cast<const unsigned char*>(acc + r * lda);
    for (std::int64_t c = 0; c < cols; ++c) {
      std::int32_t v;
      std::memcpy(&v, src + c * static_cast<std::int64_t>(sizeof v), sizeof v);
      float y = static_cast<float>(v) * (row * e.col_scale[c * e.col_step]);
      if (e.bias) y += e.bias[c];
      out[r * ldo + c] = y;
    }
  }
}

}  // namespace shiftq::kernels
