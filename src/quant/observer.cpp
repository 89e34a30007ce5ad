#include "shiftq/quant/observer.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace shiftq::quant {
namespace {
enum StateWord { kUpdatesLow = 0, kUpdatesHigh = 1, kNegative = 2, kSaturated = 3 };
}  // namespace

void ObserverOptions::validate() const {
  if (reduction == RangeReduction::max)
    SHIFTQ_CHECK(history >= 1 && history <= 4096, ValueError, "ObserverOptions: history must be in [1, 4096], got ",
                 history);
  else
    SHIFTQ_CHECK(momentum > 0.0f && momentum <= 1.0f, ValueError,
                 "ObserverOptions: EMA momentum must be in (0, 1], got ", momentum);
}

std::string ObserverOptions::str() const {
  return reduction == RangeReduction::max ? detail::cat("max of ", history) : detail::cat("EMA ", momentum);
}

RangeObserver::RangeObserver(std::int64_t channels, const ObserverOptions& options) : options_(options) {
  options.validate();
  SHIFTQ_CHECK(channels >= 1, ValueError, "RangeObserver: channels must be >= 1, got ", channels);
  const std::int64_t rows = options.reduction == RangeReduction::max ? options.history : 1;
  history_ = Tensor::zeros({rows, channels});
}

std::uint64_t RangeObserver::updates() const {
  const std::int32_t* w = state_.data<std::int32_t>();
  return static_cast<std::uint32_t>(w[kUpdatesLow]) |
         (static_cast<std::uint64_t>(static_cast<std::uint32_t>(w[kUpdatesHigh])) << 32);
}

float RangeObserver::range(std::int64_t channel) const {
  SHIFTQ_CHECK(observed(), Error, "RangeObserver::range: nothing observed yet");
  SHIFTQ_CHECK(channel >= 0 && channel < channels(), ValueError, "RangeObserver::range: channel ", channel,
               " out of [0, ", channels(), ")");
  const std::int64_t filled = static_cast<std::int64_t>(std::min<std::uint64_t>(updates(), history_.size(0)));
  const float* h = history_.data<float>();
  float r = 0.0f;
  for (std::int64_t i = 0; i < filled; ++i) r = std::max(r, h[i * channels() + channel]);
  return r;
}

float RangeObserver::max_range() const {
  float r = 0.0f;
  for (std::int64_t c = 0; c < channels(); ++c) r = std::max(r, range(c));
  return r;
}

bool RangeObserver::nonnegative() const { return state_.data<std::int32_t>()[kNegative] == 0; }

std::uint64_t RangeObserver::saturated_calls() const {
  return static_cast<std::uint32_t>(state_.data<std::int32_t>()[kSaturated]);
}

void RangeObserver::update(std::span<const float> amax, bool negative, bool saturated) {
  SHIFTQ_CHECK(static_cast<std::int64_t>(amax.size()) == channels(), ShapeError, "RangeObserver::update: ",
               amax.size(), " ranges for ", channels(), " channels");
  for (float a : amax)
    SHIFTQ_CHECK(std::isfinite(a) && a >= 0.0f, NumericError, "RangeObserver::update: range ", a,
                 " is not finite and >= 0");
  const std::uint64_t n = updates();
  float* h = history_.data<float>();
  const std::int64_t C = channels();
  if (options_.reduction == RangeReduction::max) {
    float* row = h + static_cast<std::int64_t>(n % static_cast<std::uint64_t>(history_.size(0))) * C;
    std::copy(amax.begin(), amax.end(), row);
  } else {
    const float m = n == 0 ? 1.0f : options_.momentum;
    for (std::int64_t c = 0; c < C; ++c) h[c] = (1.0f - m) * h[c] + m * amax[static_cast<std::size_t>(c)];
  }
  std::int32_t* w = state_.data<std::int32_t>();
  const std::uint64_t next = n + 1;
  w[kUpdatesLow] = static_cast<std::int32_t>(static_cast<std::uint32_t>(next));
  w[kUpdatesHigh] = static_cast<std::int32_t>(static_cast<std::uint32_t>(next >> 32));
  if (negative) w[kNegative] = 1;
  if (saturated && w[kSaturated] < INT32_MAX) ++w[kSaturated];
  history_.bump_version();
  state_.bump_version();
}

void RangeObserver::reset() {
  std::fill_n(history_.data<float>(), history_.numel(), 0.0f);
  std::fill_n(state_.data<std::int32_t>(), state_.numel(), 0);
  history_.bump_version();
  state_.bump_version();
}

}  // namespace shiftq::quant
