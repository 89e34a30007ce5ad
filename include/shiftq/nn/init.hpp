// Parameter initialization from an explicit Generator (in place, no autograd history).
#pragma once

#include "shiftq/core/generator.hpp"
#include "shiftq/core/tensor.hpp"

namespace shiftq::nn::init {

enum class FanMode { fan_in, fan_out };

// fan_in = size(1) * receptive field, fan_out = size(0) * receptive field (rank >= 2).
std::pair<std::int64_t, std::int64_t> fans(const Tensor& t);

void uniform_(Tensor& t, float lo, float hi, Generator& gen);
void normal_(Tensor& t, float mean, float std, Generator& gen);
void constant_(Tensor& t, float value);
// He init for ReLU networks: std = gain / sqrt(fan) with gain = sqrt(2 / (1 + a^2)).
void kaiming_uniform_(Tensor& t, Generator& gen, float a = 0.0f, FanMode mode = FanMode::fan_in);
void kaiming_normal_(Tensor& t, Generator& gen, float a = 0.0f, FanMode mode = FanMode::fan_in);
// Glorot init: std = gain * sqrt(2 / (fan_in + fan_out)).
void xavier_uniform_(Tensor& t, Generator& gen, float gain = 1.0f);
void xavier_normal_(Tensor& t, Generator& gen, float gain = 1.0f);

}  // namespace shiftq::nn::init
