// Runtime ISA dispatch of the int8 gradient codec, and the scalar references.
#include "grad_codec_math.hpp"
#include "isa.hpp"
#include "shiftq/core/error.hpp"
#include "shiftq/kernels/grad_codec.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

namespace shiftq::kernels {

#define SHIFTQ_DECLARE_ISA(ns)                                                                                  \
  namespace ns {                                                                                                \
  void grad_group_exponents_f32(const float*, std::int64_t, std::int64_t, std::int8_t*);                       \
  void grad_quantize_f32(const float*, std::int64_t, std::int64_t, const std::int8_t*, std::uint64_t, std::int8_t*); \
  void grad_mean_codes_s8(const std::int8_t*, int, std::int64_t, std::uint64_t, std::int8_t*);                 \
  void grad_dequantize_s8(const std::int8_t*, std::int64_t, std::int64_t, const std::int8_t*, float*);         \
  }
SHIFTQ_DECLARE_ISA(avx512)
SHIFTQ_DECLARE_ISA(avx2)
SHIFTQ_DECLARE_ISA(base)
#undef SHIFTQ_DECLARE_ISA

namespace {
void check_sizes(const char* op, std::int64_t n, std::int64_t group) {
  SHIFTQ_CHECK(n >= 0 && n < (std::int64_t{1} << 32), ValueError, op, ": n must be in [0, 2^32), got ", n);
  SHIFTQ_CHECK(group > 0, ValueError, op, ": group must be > 0, got ", group);
}
}  // namespace

void grad_group_exponents_f32(const float* x, std::int64_t n, std::int64_t group, std::int8_t* exps) {
  check_sizes("grad_group_exponents_f32", n, group);
  SHIFTQ_KERNEL_DISPATCH(grad_group_exponents_f32, x, n, group, exps)
}

void grad_quantize_f32(const float* x, std::int64_t n, std::int64_t group, const std::int8_t* exps,
                       std::uint64_t key, std::int8_t* codes) {
  check_sizes("grad_quantize_f32", n, group);
  SHIFTQ_KERNEL_DISPATCH(grad_quantize_f32, x, n, group, exps, key, codes)
}

void grad_mean_codes_s8(const std::int8_t* codes, int world, std::int64_t n, std::uint64_t key, std::int8_t* out) {
  check_sizes("grad_mean_codes_s8", n, 1);
  SHIFTQ_CHECK(world >= 1 && world <= (1 << 16), ValueError, "grad_mean_codes_s8: world must be in [1, 2^16], got ", world);
  SHIFTQ_KERNEL_DISPATCH(grad_mean_codes_s8, codes, world, n, key, out)
}

void grad_dequantize_s8(const std::int8_t* codes, std::int64_t n, std::int64_t group, const std::int8_t* exps,
                        float* out) {
  check_sizes("grad_dequantize_s8", n, group);
  SHIFTQ_KERNEL_DISPATCH(grad_dequantize_s8, codes, n, group, exps, out)
}

// The references: the definitions, one value at a time.
void grad_group_exponents_f32_ref(const float* x, std::int64_t n, std::int64_t group, std::int8_t* exps) {
  for (std::int64_t g0 = 0; g0 < n; g0 += group) {
    float max_abs = 0.0f;
    bool finite = true;
    for (std::int64_t i = g0; i < std::min(n, g0 + group); ++i) {
      finite = finite && std::isfinite(x[i]);
      max_abs = std::max(max_abs, std::fabs(x[i]));
    }
    const float m = finite ? max_abs : std::numeric_limits<float>::infinity();
    exps[g0 / group] = grad_codec::exponent_of_abs_bits(std::bit_cast<std::uint32_t>(m));
  }
}

void grad_quantize_f32_ref(const float* x, std::int64_t n, std::int64_t group, const std::int8_t* exps,
                           std::uint64_t key, std::int8_t* codes) {
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int8_t e = exps[i / group];
    if (e == kGradZeroGroup || e == kGradNonFinite) {
      codes[i] = 0;
      continue;
    }
    const float v = std::ldexp(x[i], -e);
    const float low = std::floor(v);
    const bool up = stochastic_uniform(key, static_cast<std::uint64_t>(i)) < v - low;
    codes[i] = static_cast<std::int8_t>(static_cast<int>(low) + (up ? 1 : 0));
  }
}

void grad_mean_codes_s8_ref(const std::int8_t* codes, int world, std::int64_t n, std::uint64_t key,
                            std::int8_t* out) {
  for (std::int64_t i = 0; i < n; ++i) {
    std::int32_t s = 0;
    for (int r = 0; r < world; ++r) s += codes[static_cast<std::int64_t>(r) * n + i];
    std::int32_t q = s / world, rem = s % world;
    if (rem < 0) {
      rem += world;
      --q;
    }
    const float u = stochastic_uniform(key, static_cast<std::uint64_t>(i));
    out[i] = static_cast<std::int8_t>(q + (u * static_cast<float>(world) < static_cast<float>(rem) ? 1 : 0));
  }
}

void grad_dequantize_s8_ref(const std::int8_t* codes, std::int64_t n, std::int64_t group, const std::int8_t* exps,
                            float* out) {
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int8_t e = exps[i / group];
    out[i] = e == kGradNonFinite  ? std::numeric_limits<float>::quiet_NaN()
             : e == kGradZeroGroup ? 0.0f
                                   : std::ldexp(static_cast<float>(codes[i]), e);
  }
}

}  // namespace shiftq::kernels
