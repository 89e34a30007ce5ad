#include "shiftq/core/generator.hpp"

#include <cmath>
#include <numbers>

#include "shiftq/core/error.hpp"

namespace shiftq {

std::array<std::uint32_t, 4> philox4x32(std::uint64_t key, std::uint64_t counter_hi,
                                        std::uint64_t counter_lo) {
  constexpr std::uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr std::uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  std::uint32_t c0 = static_cast<std::uint32_t>(counter_lo), c1 = static_cast<std::uint32_t>(counter_lo >> 32);
  std::uint32_t c2 = static_cast<std::uint32_t>(counter_hi), c3 = static_cast<std::uint32_t>(counter_hi >> 32);
  std::uint32_t k0 = static_cast<std::uint32_t>(key), k1 = static_cast<std::uint32_t>(key >> 32);
  for (int round = 0; round < 10; ++round) {
    const std::uint64_t p0 = static_cast<std::uint64_t>(kMul0) * c0;
    const std::uint64_t p1 = static_cast<std::uint64_t>(kMul1) * c2;
    const std::uint32_t n0 = static_cast<std::uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const std::uint32_t n1 = static_cast<std::uint32_t>(p1);
    const std::uint32_t n2 = static_cast<std::uint32_t>(p0 >> 32) ^ c3 ^ k1;
    const std::uint32_t n3 = static_cast<std::uint32_t>(p0);
    c0 = n0, c1 = n1, c2 = n2, c3 = n3;
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  return {c0, c1, c2, c3};
}

Generator::Generator(std::uint64_t seed) { state_.seed = seed; }

void Generator::set_state(const GeneratorState& state) {
  SHIFTQ_CHECK(state.word <= 4, ValueError, "Generator::set_state: word index ", state.word,
               " out of range [0, 4]");
  state_ = state;
  if (state_.word < 4) block_ = philox4x32(state_.seed, 0, state_.counter - 1);
}

std::uint32_t Generator::next_u32() {
  if (state_.word == 4) {
    block_ = philox4x32(state_.seed, 0, state_.counter);
    ++state_.counter;
    state_.word = 0;
  }
  return block_[state_.word++];
}

std::uint64_t Generator::next_u64() {
  const std::uint64_t hi = next_u32();
  return (hi << 32) | next_u32();
}

float Generator::uniform() { return u32_to_unit_float(next_u32()); }

float Generator::uniform(float lo, float hi) { return lo + (hi - lo) * uniform(); }

float Generator::normal() {
  // Box-Muller with u1 in (0, 1] so log() is finite.
  const float u1 = 1.0f - uniform();
  const float u2 = uniform();
  return std::sqrt(-2.0f * std::log(u1)) * std::cos(2.0f * std::numbers::pi_v<float> * u2);
}

std::uint64_t Generator::randint(std::uint64_t n) {
  SHIFTQ_CHECK(n > 0, ValueError, "Generator::randint: n must be > 0");
  const std::uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  std::uint64_t x;
  do {
    x = next_u64();
  } while (x >= limit);
  return x % n;
}

Generator Generator::fork() {
  // SplitMix64 finalizer over the next draw decorrelates the child's key from this stream's.
  std::uint64_t z = next_u64() + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return Generator(z ^ (z >> 31));
}

}  // namespace shiftq
