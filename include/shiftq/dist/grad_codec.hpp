// The int8 gradient codec of the data-parallel exchange (DataParallelOptions::exchange = int8), as
// plain functions on buffers so its arithmetic is tested without MPI.
//
// A gradient is cut into groups of `group` consecutive values. Each group has one power-of-two
// scale 2^e, e in [-126, 126], shared by every rank (the max over the ranks' exponents), and codes in
// [-127, 127]: code = stochastic rounding of x / 2^e, so E[code * 2^e] = x. The owner of a slice sums
// the world's codes exactly (int32) and rounds their mean stochastically back to one code, so
// E[mean code * 2^e] = the mean over the ranks of x.
#pragma once

#include <cstdint>

namespace shiftq::dist::codec {

// Exponent byte of a group whose values are all zero (loses every max against a real exponent).
inline constexpr std::int8_t kZeroGroup = -128;
// Exponent byte of a group holding NaN or Inf (wins every max: the exchanged group becomes NaN).
inline constexpr std::int8_t kNonFinite = 127;

// The smallest e with max |x| <= 127 * 2^e for the group (clamped to [-126, 126]), kZeroGroup or
// kNonFinite. exps: [ceil(n / group)].
void group_exponents(const float* x, std::int64_t n, std::int64_t group, std::int8_t* exps);

// codes[i] = floor(x[i] / 2^e + u_i), u_i uniform in [0, 1) (24 bits) from the quantizers' counter
// hash under a Philox-derived key of (key, stream) and index i; 0 in
// zero and non-finite groups. Needs max |x| <= 127 * 2^e per group (the exponents above or larger).
void quantize(const float* x, std::int64_t n, std::int64_t group, const std::int8_t* exps, std::uint64_t key,
              std::uint64_t stream, std::int8_t* codes);

// out[i] = the world codes codes[r * n + i] summed exactly, divided by world and rounded
// stochastically (draws as in quantize): floor(s / world) + 1 with probability (s mod world) / world.
void mean_codes(const std::int8_t* codes, int world, std::int64_t n, std::uint64_t key, std::uint64_t stream,
                std::int8_t* out);

// out[i] = codes[i] * 2^e of i's group (0 for zero groups, NaN for non-finite ones).
void dequantize(const std::int8_t* codes, std::int64_t n, std::int64_t group, const std::int8_t* exps, float* out);

}  // namespace shiftq::dist::codec
