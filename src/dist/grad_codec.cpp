#include "shiftq/dist/grad_codec.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "shiftq/core/generator.hpp"

namespace shiftq::dist::codec {
namespace {

// Uniform draw number i of the stream, from one Philox block per four values.
std::uint32_t draw(std::uint64_t key, std::uint64_t stream, std::int64_t i) {
  const auto block = philox4x32(key, stream, static_cast<std::uint64_t>(i) >> 2);
  return block[static_cast<std::size_t>(i & 3)];
}

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
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int8_t e = exps[i / group];
    if (e == kZeroGroup || e == kNonFinite) {
      codes[i] = 0;
      continue;
    }
    const float v = std::ldexp(x[i], -e);  // exact: a power-of-two scaling into [-127, 127]
    const float low = std::floor(v);
    const float frac = v - low;            // exact for |v| < 2^23
    const float u = u32_to_unit_float(draw(key, stream, i));
    codes[i] = static_cast<std::int8_t>(static_cast<int>(low) + (u < frac ? 1 : 0));
  }
}

void mean_codes(const std::int8_t* codes, int world, std::int64_t n, std::uint64_t key, std::uint64_t stream,
                std::int8_t* out) {
  for (std::int64_t i = 0; i < n; ++i) {
    std::int32_t sum = 0;
    for (int r = 0; r < world; ++r) sum += codes[static_cast<std::int64_t>(r) * n + i];
    // floor division and its remainder in [0, world)
    std::int32_t q = sum / world, rem = sum % world;
    if (rem < 0) {
      rem += world;
      --q;
    }
    // Round up with probability rem / world (to within 2^-32): a 32-bit draw scaled to [0, world).
    const auto scaled = static_cast<std::uint32_t>((static_cast<std::uint64_t>(draw(key, stream, i)) *
                                                    static_cast<std::uint64_t>(world)) >> 32);
    out[i] = static_cast<std::int8_t>(q + (scaled < static_cast<std::uint32_t>(rem) ? 1 : 0));
  }
}

void dequantize(const std::int8_t* codes, std::int64_t n, std::int64_t group, const std::int8_t* exps, float* out) {
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int8_t e = exps[i / group];
    if (e == kNonFinite)
      out[i] = std::numeric_limits<float>::quiet_NaN();
    else if (e == kZeroGroup)
      out[i] = 0.0f;
    else
      out[i] = std::ldexp(static_cast<float>(codes[i]), e);
  }
}

}  // namespace shiftq::dist::codec
