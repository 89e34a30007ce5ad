// Internal: the per-value arithmetic of the int8 gradient codec, shared by its reference and its
// per-ISA builds so that they agree bit for bit.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>

#include "shiftq/kernels/grad_codec.hpp"
#include "shiftq/kernels/quantize.hpp"

namespace shiftq::kernels::grad_codec {

// 2^e as a float, e in [-126, 127]: a normal number, so multiplying by it is exact unless the
// product is subnormal.
inline float pow2(int e) { return std::bit_cast<float>(static_cast<std::uint32_t>(e + 127) << 23); }

// The exponent byte for a group whose largest |x| has the bit pattern `bits` (sign cleared).
inline std::int8_t exponent_of_abs_bits(std::uint32_t bits) {
  if (bits >= 0x7f800000u) return kGradNonFinite;
  if (bits == 0) return kGradZeroGroup;
  const double max_abs = static_cast<double>(std::bit_cast<float>(bits));
  int e = 0;
  std::frexp(max_abs / 127.0, &e);
  // 127 * 2^e is exact in double: settle the boundary cases the division may have rounded.
  while (std::ldexp(127.0, e - 1) >= max_abs) --e;
  while (std::ldexp(127.0, e) < max_abs) ++e;
  return static_cast<std::int8_t>(e < -126 ? -126 : (e > 126 ? 126 : e));
}

// 1 / 2^e for quantizing; 0 for zero and non-finite groups (their codes are 0).
inline float inverse_scale(std::int8_t e) {
  return e == kGradZeroGroup || e == kGradNonFinite ? 0.0f : pow2(-e);
}

// Uniform in [0, 1) with 24 bits for value i: stochastic_uniform(key, i) of the quantizers for i < 2^32.
inline float uniform(std::uint32_t i, std::uint32_t key_lo, std::uint32_t key_hi) {
  const std::uint32_t h = hash32(hash32(i ^ key_lo) ^ key_hi);
  return static_cast<float>(static_cast<std::int32_t>(h >> 8)) * (1.0f / 16777216.0f);
}

// floor(v + u): v in [-127, 127], so the result is a code. NaN (x * 0 in a non-finite group) gives 0.
inline std::int8_t round_code(float v, std::uint32_t i, std::uint32_t key_lo, std::uint32_t key_hi) {
  v = v == v ? v : 0.0f;
  const auto truncated = static_cast<std::int32_t>(v);
  const std::int32_t low = truncated - (v < static_cast<float>(truncated) ? 1 : 0);
  const float frac = v - static_cast<float>(low);  // exact for |v| < 2^23
  return static_cast<std::int8_t>(low + (uniform(i, key_lo, key_hi) < frac ? 1 : 0));
}

// s / world rounded stochastically. s / world in float cannot round across an integer: |s| <=
// 127 * 2^16 and a non-integer quotient is at least 1 / world away from one.
inline std::int8_t round_mean(std::int32_t s, int world, std::uint32_t i, std::uint32_t key_lo, std::uint32_t key_hi) {
  const float w = static_cast<float>(world);
  const auto q = static_cast<std::int32_t>(std::floor(static_cast<float>(s) / w));
  const std::int32_t rem = s - q * world;  // in [0, world)
  return static_cast<std::int8_t>(q + (uniform(i, key_lo, key_hi) * w < static_cast<float>(rem) ? 1 : 0));
}

}  // namespace shiftq::kernels::grad_codec
