// The trainers' precision flags (--bits, --act-bits, --grad-bits, --act-range, --act-clip, --act-quant, --weight-clip, --grad-quant,
// first/last or head bits, --norm-bits) as a QConfig: the paper's b-bit defaults (QConfig::bits) with the overrides applied.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>

#include <shiftq/shiftq.hpp>

namespace shiftq::examples {

inline quant::QConfig make_qconfig(std::int64_t bits, std::int64_t act_bits, const std::string& grad_quant,
                                   std::int64_t first_last_bits, std::int64_t norm_bits,
                                   const std::string& act_range = "auto", const std::string& act_clip = "none",
                                   const std::string& act_quant = "per-tensor",
                                   const std::string& weight_clip = "none", std::int64_t grad_bits = 0) {
  quant::QConfig q = quant::QConfig::bits(static_cast<int>(bits));
  if (act_bits > 0) q.activations.bits = static_cast<int>(act_bits);
  if (grad_bits > 0) {
    q.gradients.bits = static_cast<int>(grad_bits);
    q.gradients.shift_budget = quant::max_shift_budget(q.gradients.bits, false);
  }
  if (act_quant == "shiftquant") {
    // Power-of-two groups (per sample and channel for convolutions) on a per-tensor base, with the
    // largest S that keeps the codes one int8 operand: 7 - b unsigned, 8 - b symmetric.
    q.activations.kind = quant::QuantizerKind::shiftquant;
    q.activations.shift_budget =
        std::max(0, quant::max_shift_budget(q.activations.bits, act_range != "symmetric"));
  }
  q.activations.nonnegative_range = act_range != "symmetric";
  q.activations.mse_clip = act_clip == "mse";
  q.weights.mse_clip = weight_clip == "mse";
  if (grad_quant == "per-tensor") q.gradients.kind = quant::QuantizerKind::per_tensor;
  if (grad_quant == "per-row") q.gradients.kind = quant::QuantizerKind::per_row;
  if (grad_quant != "shiftquant") q.gradients.shift_budget = 0;
  q.first_last_bits = static_cast<int>(first_last_bits);
  q.norm_bits = static_cast<int>(norm_bits);
  q.validate();
  return q;
}

}  // namespace shiftq::examples
