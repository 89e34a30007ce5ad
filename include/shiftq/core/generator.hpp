// Counter-based random numbers (Philox4x32-10). Every random draw in shiftq (init, dropout, shuffling,
// stochastic rounding) goes through a Generator or through philox4x32() keyed by explicit counters,
// so a run is reproducible from its seed and independent of the thread count.
#pragma once

#include <array>
#include <cstdint>

namespace shiftq {

// One Philox4x32-10 block: 4 independent 32-bit words for (key, counter).
std::array<std::uint32_t, 4> philox4x32(std::uint64_t key, std::uint64_t counter_hi,
                                        std::uint64_t counter_lo);

// Maps a 32-bit word to a float uniform in [0, 1) with 24 bits of resolution.
constexpr float u32_to_unit_float(std::uint32_t x) {
  return static_cast<float>(x >> 8) * (1.0f / 16777216.0f);
}

// The full state of a Generator: enough to continue the exact stream after a checkpoint.
struct GeneratorState {
  std::uint64_t seed = 0;
  std::uint64_t counter = 0;  // index of the next Philox block
  std::uint32_t word = 4;     // next unread word of the current block (4 = block exhausted)
  bool operator==(const GeneratorState&) const = default;
};

class Generator {
 public:
  explicit Generator(std::uint64_t seed = 0);

  std::uint64_t seed() const { return state_.seed; }
  GeneratorState state() const { return state_; }
  void set_state(const GeneratorState& state);

  std::uint32_t next_u32();
  std::uint64_t next_u64();
  // Uniform in [0, 1).
  float uniform();
  // Uniform in [lo, hi).
  float uniform(float lo, float hi);
  // Standard normal (Box-Muller).
  float normal();
  // Uniform integer in [0, n); n > 0. Unbiased (rejection sampling).
  std::uint64_t randint(std::uint64_t n);

  // A new generator whose stream is independent of this one (seeded from this stream's next draw).
  Generator fork();

 private:
  GeneratorState state_;
  std::array<std::uint32_t, 4> block_{};
};

}  // namespace shiftq
