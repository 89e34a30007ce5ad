// The int8 gradient codec of data-parallel training (shiftq/dist's int8 exchange), on raw buffers.
// Compiled once per ISA (AVX-512 / AVX2 / x86-64, picked at run time) beside a scalar reference;
// every build gives the same bits.
//
// A gradient is cut into groups of `group` consecutive values. Each group has one power-of-two
// scale 2^e, e in [-126, 126], shared by every rank (the max over the ranks' exponents), and codes in
// [-127, 127]: code = stochastic rounding of x / 2^e, so E[code * 2^e] = x. The owner of a slice sums
// the world's codes exactly and rounds their mean stochastically back to one code, so
// E[mean code * 2^e] = the mean over the ranks of x.
#pragma once

#include <cstdint>

namespace shiftq::kernels {

// Exponent byte of a group whose values are all zero (loses every max against a real exponent).
inline constexpr std::int8_t kGradZeroGroup = -128;
// Exponent byte of a group holding NaN or Inf (wins every max: the exchanged group becomes NaN).
inline constexpr std::int8_t kGradNonFinite = 127;

// exps[g] = the smallest e with max |x| <= 127 * 2^e over group g (clamped to [-126, 126]),
// kGradZeroGroup or kGradNonFinite. exps: [ceil(n / group)].
void grad_group_exponents_f32(const float* x, std::int64_t n, std::int64_t group, std::int8_t* exps);
void grad_group_exponents_f32_ref(const float* x, std::int64_t n, std::int64_t group, std::int8_t* exps);

// codes[i] = floor(x[i] / 2^e + u_i) with u_i = stochastic_uniform(key, i) (kernels/quantize.hpp);
// 0 in zero and non-finite groups. Needs max |x| <= 127 * 2^e per group and n < 2^32.
void grad_quantize_f32(const float* x, std::int64_t n, std::int64_t group, const std::int8_t* exps,
                       std::uint64_t key, std::int8_t* codes);
void grad_quantize_f32_ref(const float* x, std::int64_t n, std::int64_t group, const std::int8_t* exps,
                           std::uint64_t key, std::int8_t* codes);

// out[i] = s / world rounded stochastically, s = sum over r of codes[r * n + i] (exact): floor(s /
// world) + 1 when u_i * world < s mod world, u_i = stochastic_uniform(key, i). world in [1, 2^16].
void grad_mean_codes_s8(const std::int8_t* codes, int world, std::int64_t n, std::uint64_t key, std::int8_t* out);
void grad_mean_codes_s8_ref(const std::int8_t* codes, int world, std::int64_t n, std::uint64_t key,
                            std::int8_t* out);

// out[i] = codes[i] * 2^e of i's group (0 for zero groups, NaN for non-finite ones).
void grad_dequantize_s8(const std::int8_t* codes, std::int64_t n, std::int64_t group, const std::int8_t* exps,
                        float* out);
void grad_dequantize_s8_ref(const std::int8_t* codes, std::int64_t n, std::int64_t group,
                            const std::int8_t* exps, float* out);

}  // namespace shiftq::kernels
