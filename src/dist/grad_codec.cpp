#include "shiftq/dist/grad_codec.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>

#include "shiftq/core/generator.hpp"
#include "shiftq/kernels/quantize.hpp"

namespace shiftq::dist::codec {
namespace {

// The key of one (key, stream) pair's draws; draw i is then kernels::stochastic_uniform(key, i), the
// counter-based hash of the quantizers' stochastic rounding.
std::uint64_t stream_key(std::uint64_t key, std::uint64_t stream) {
  const auto block = philox4x32(key, stream, 0);
  return (static_cast<std::uint64_t>(block[0]) << 32) | block[1];
}

// 2^e as a float, e in [-126, 127] (a normal number: multiplying by it is exact).
float pow2(int e) { return std::bit_cast<float>(static_cast<std::uint32_t>(e + 127) << 23); }

std::int8_t exponent_of(float max_abs) {
  if (!std::isfinite(max_abs)) return kNonFinite;
  if (max_abs == 0.0f) return kZeroGroup;
  int e = 0;
  std::frexp(static_cast<double>(max_abs) / 127.0, &e);
  // 127 * 2^e is exact in double: settle the boundary cases the division may have rounded.
  while (std::ldexp(127.0, e - 1) >= max_abs) --e;
  while (std::ldexp(127.0, e) < max_abs) ++e;
  return static_cast<std::int8_t>(std::clamp(e, -126, 126));
}

}  // namespace

void group_exponents(const float* x, std::int64_t n, std::int64_t group, std::int8_t* exps) {
  for (std::int64_t g0 = 0; g0 < n; g0 += group) {
    const std::int64_t g1 = std::min(n, g0 + group);
    float max_abs = 0.0f;
    bool finite = true;
    for (std::int64_t i = g0; i < g1; ++i) {
      finite &= std::isfinite(x[i]);
      max_abs = std::max(max_abs, std::fabs(x[i]));
    }
    exps[g0 / group] = exponent_of(finite ? max_abs : std::numeric_limits<float>::infinity());
  }
}

void quantize(const float* x, std::int64_t n, std::int64_t group, const std::int8_t* exps, std::uint64_t key,
              std::uint64_t stream, std::int8_t* codes) {
  const std::uint64_t k = stream_key(key, stream);
  for (std::int64_t g0 = 0; g0 < n; g0 += group) {
    const std::int64_t g1 = std::min(n, g0 + group);
    const std::int8_t e = exps[g0 / group];
    const bool empty = e == kZeroGroup || e == kNonFinite;
    const float inverse_scale = empty ? 0.0f : pow2(-e);
    for (std::int64_t i = g0; i < g1; ++i) {
      const float v = x[i] * inverse_scale;  // exact (a power of two) unless v is subnormal; |v| <= 127
      const auto truncated = static_cast<int>(v);
      const int low = truncated - (v < static_cast<float>(truncated) ? 1 : 0);  // floor(v)
      const float frac = v - static_cast<float>(low);  // exact for |v| < 2^23
      const float u = kernels::stochastic_uniform(k, static_cast<std::uint64_t>(i));
      codes[i] = static_cast<std::int8_t>(low + (u < frac ? 1 : 0));
    }
  }
}

void mean_codes(const std::int8_t* codes, int world, std::int64_t n, std::uint64_t key, std::uint64_t stream,
                std::int8_t* out) {
  const std::uint64_t k = stream_key(key, stream);
  for (std::int64_t i = 0; i < n; ++i) {
    std::int32_t sum = 0;
    for (int r = 0; r < world; ++r) sum += codes[static_cast<std::int64_t>(r) * n + i];
    // floor division and its remainder in [0, world)
    std::int32_t q = sum / world, rem = sum % world;
    if (rem < 0) {
      rem += world;
      --q;
    }
    // Round up with probability rem / world (to within 2^-24): u * world < rem.
    const float u = kernels::stochastic_uniform(k, static_cast<std::uint64_t>(i));
    out[i] = static_cast<std::int8_t>(q + (u * static_cast<float>(world) < static_cast<float>(rem) ? 1 : 0));
  }
}

void dequantize(const std::int8_t* codes, std::int64_t n, std::int64_t group, const std::int8_t* exps, float* out) {
  for (std::int64_t g0 = 0; g0 < n; g0 += group) {
    const std::int64_t g1 = std::min(n, g0 + group);
    const std::int8_t e = exps[g0 / group];
    if (e == kNonFinite || e == kZeroGroup) {
      std::fill(out + g0, out + g1, e == kZeroGroup ? 0.0f : std::numeric_limits<float>::quiet_NaN());
      continue;
    }
    const float scale = pow2(e);
    for (std::int64_t i = g0; i < g1; ++i) out[i] = static_cast<float>(codes[i]) * scale;
  }
}

}  // namespace shiftq::dist::codec
