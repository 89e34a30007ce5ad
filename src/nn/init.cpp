#include "shiftq/nn/init.hpp"

#include <cmath>

namespace shiftq::nn::init {

std::pair<std::int64_t, std::int64_t> fans(const Tensor& t) {
  SHIFTQ_CHECK(t.dim() >= 2, ShapeError, "init: fan in/out needs a tensor of rank >= 2, got ", t.str());
  const std::int64_t receptive = t.numel() / (t.size(0) * t.size(1));
  return {t.size(1) * receptive, t.size(0) * receptive};
}

void uniform_(Tensor& t, float lo, float hi, Generator& gen) {
  SHIFTQ_CHECK(lo <= hi, ValueError, "init::uniform_: lo > hi");
  float* p = t.data<float>();
  for (std::int64_t i = 0; i < t.numel(); ++i) p[i] = gen.uniform(lo, hi);
}

void normal_(Tensor& t, float mean, float std, Generator& gen) {
  SHIFTQ_CHECK(std >= 0.0f, ValueError, "init::normal_: std must be >= 0");
  float* p = t.data<float>();
  for (std::int64_t i = 0; i < t.numel(); ++i) p[i] = mean + std * gen.normal();
}

void constant_(Tensor& t, float value) { t.fill_(value); }

namespace {
float kaiming_std(const Tensor& t, float a, FanMode mode) {
  const auto [fan_in, fan_out] = fans(t);
  const float gain = std::sqrt(2.0f / (1.0f + a * a));
  return gain / std::sqrt(static_cast<float>(mode == FanMode::fan_in ? fan_in : fan_out));
}
float xavier_std(const Tensor& t, float gain) {
  const auto [fan_in, fan_out] = fans(t);
  return gain * std::sqrt(2.0f / static_cast<float>(fan_in + fan_out));
}
}  // namespace

void kaiming_uniform_(Tensor& t, Generator& gen, float a, FanMode mode) {
  const float bound = std::sqrt(3.0f) * kaiming_std(t, a, mode);
  uniform_(t, -bound, bound, gen);
}

void kaiming_normal_(Tensor& t, Generator& gen, float a, FanMode mode) {
  normal_(t, 0.0f, kaiming_std(t, a, mode), gen);
}

void xavier_uniform_(Tensor& t, Generator& gen, float gain) {
  const float bound = std::sqrt(3.0f) * xavier_std(t, gain);
  uniform_(t, -bound, bound, gen);
}

void xavier_normal_(Tensor& t, Generator& gen, float gain) { normal_(t, 0.0f, xavier_std(t, gain), gen); }

}  // namespace shiftq::nn::init
