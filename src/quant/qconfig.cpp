#include "shiftq/quant/qconfig.hpp"

#include "quant/qlayers_internal.hpp"

namespace shiftq::quant {
namespace {
const char* kind_name(QuantizerKind k) {
  switch (k) {
    case QuantizerKind::per_tensor: return "per-tensor";
    case QuantizerKind::per_row: return "per-row";
    case QuantizerKind::shiftquant: return "shiftquant";
  }
  return "?";
}
}  // namespace

void TensorQConfig::validate(const char* role) const {
  SHIFTQ_CHECK(bits >= 2 && bits <= 8, ValueError, "QConfig: ", role, " bits must be in [2, 8], got ", bits);
  const int s = kind == QuantizerKind::shiftquant ? shift_budget : 0;
  SHIFTQ_CHECK(s >= 0 && s <= max_shift_budget(bits, false), ValueError, "QConfig: ", role, " shift budget S=", shift_budget,
               " with ", bits, " bits needs b + S <= 8");
  SHIFTQ_CHECK(kind == QuantizerKind::shiftquant || shift_budget == 0, ValueError, "QConfig: ", role,
               " shift budget is only meaningful for shiftquant");
}

QConfig QConfig::bits(int b) {
  SHIFTQ_CHECK(b >= 2 && b <= 8, ValueError, "QConfig::bits: b must be in [2, 8], got ", b);
  QConfig c;
  c.weights = {QuantizerKind::shiftquant, b, max_shift_budget(b, false), Rounding::nearest_even};
  c.activations = {QuantizerKind::per_tensor, b, 0, Rounding::nearest_even, true};
  c.gradients = {QuantizerKind::shiftquant, b, max_shift_budget(b, false), Rounding::stochastic};
  return c;
}

void QConfig::validate() const {
  weights.validate("weights");
  activations.validate("activations");
  gradients.validate("gradients");
  SHIFTQ_CHECK(!gradients.mse_clip, ValueError,
               "QConfig: gradients cannot be MSE-clipped (clipping would bias their stochastic rounding)");
  SHIFTQ_CHECK(first_last_bits == 0 || (first_last_bits >= 2 && first_last_bits <= 8), ValueError,
               "QConfig: first_last_bits must be 0 or in [2, 8], got ", first_last_bits);
  SHIFTQ_CHECK(norm_bits == 0 || (norm_bits >= 2 && norm_bits <= 8), ValueError,
               "QConfig: norm_bits must be 0 or in [2, 8], got ", norm_bits);
  SHIFTQ_CHECK(activations.kind != QuantizerKind::per_row, ValueError,
               "QConfig: per-row activations would put float scales on a contraction axis of a backward GEMM; "
               "use per_tensor or shiftquant (or LinearInputGroups::row_scales for Linear inputs)");
  SHIFTQ_CHECK(linear_input_groups != LinearInputGroups::row_blocks || activations.rounding == Rounding::nearest_even,
               ValueError, "QConfig: Linear input block multipliers (LinearInputGroups::row_blocks) need nearest rounding");
  observer.validate();
}

namespace internal {
bool linear_input_blocks(const QConfig& c) {
  return c.linear_input_groups == LinearInputGroups::row_blocks && max_shift_budget(c.activations.bits, false) > 0;
}
}  // namespace internal

QConfig QConfig::for_layer(bool first_or_last) const {
  validate();
  QConfig layer = *this;
  if (first_or_last && first_last_bits != 0) {
    for (TensorQConfig* t : {&layer.weights, &layer.activations, &layer.gradients}) {
      t->bits = first_last_bits;
      if (t->kind == QuantizerKind::shiftquant) t->shift_budget = max_shift_budget(first_last_bits, false);
    }
  }
  layer.first_last_bits = 0;
  layer.validate();
  return layer;
}

std::string QConfig::str() const {
  auto role = [](const TensorQConfig& t, bool weights = false) {
    const char* kind = weights && t.kind == QuantizerKind::per_row ? "per-channel" : kind_name(t.kind);
    return detail::cat(kind, " ", t.bits, "-bit",
                       t.kind == QuantizerKind::shiftquant ? detail::cat(" S=", t.shift_budget) : std::string(),
                       t.rounding == Rounding::stochastic ? " stochastic" : " nearest",
                       t.nonnegative_range && (t.kind == QuantizerKind::per_tensor ||
                                               (t.kind == QuantizerKind::shiftquant && t.shift_budget <= max_shift_budget(t.bits, true)))
                           ? " (unsigned when >= 0)"
                           : "",
                       t.mse_clip ? (t.kind == QuantizerKind::shiftquant ? " (MSE-chosen exponents)" : " (MSE-clipped range)") : "");
  };
  const bool row_groups = activations.kind == QuantizerKind::shiftquant && activations.shift_budget > 0 &&
                          linear_input_groups == LinearInputGroups::rows;
  const bool row_blocks = internal::linear_input_blocks(*this);
  const bool row_scales = linear_input_groups == LinearInputGroups::row_scales ||
                          (linear_input_groups == LinearInputGroups::row_blocks && !row_blocks);
  const bool rotated = linear_input_rotation == LinearInputRotation::hadamard;
  const char* rows = row_groups ? "groups per row"
                     : row_scales ? (activations.mse_clip ? "a float scale per row, MSE-clipped" : "a float scale per row")
                     : row_blocks ? (activations.mse_clip ? "a float scale per row, multipliers per 16 features, MSE-chosen"
                                                          : "a float scale per row, multipliers per 16 features")
                                  : "";
  const std::string linear_inputs =
      *rows || rotated ? detail::cat(" (Linear inputs: ", rows, *rows && rotated ? ", " : "", rotated ? "Hadamard-rotated" : "", ")")
                       : std::string();
  return detail::cat("weights: ", role(weights, true), "; activations: ", role(activations), linear_inputs, "; gradients: ",
                     role(gradients), "; first/last layer: ",
                     first_last_bits ? detail::cat(first_last_bits, "-bit") : std::string("same"),
                     "; L1 norms: ", norm_bits ? detail::cat(norm_bits, "-bit integer") : std::string("float"),
                     "; activation scales: ",
                     activation_scaling == ActivationScaling::delayed ? detail::cat("delayed (", observer.str(), ")")
                                                                      : std::string("current batch"));
}

}  // namespace shiftq::quant
