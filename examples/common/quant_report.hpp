// The trainers' activation-scaling flags (--act-scaling, --act-history) and the numerics report
// (--quant-report FILE --quant-report-every N): JSON lines with, per quantized layer, its observed
// input range and what its quantizers did to its input and output gradient (nn::quantization_report).
#pragma once

#include <cmath>
#include <cstdint>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include <shiftq/shiftq.hpp>

#include "common/flags.hpp"

namespace shiftq::examples {

struct ActScalingConfig {
  std::string mode = "delayed";  // delayed: max over the last `history` training steps | ema | current
  std::int64_t history = 16;     // ema: momentum 2 / (history + 1), the EMA of the same mean age

  void add_flags(Flags& flags) {
    flags.add("act-scaling", &mode,
              "activation ranges: delayed (max over the last --act-history training steps; frozen in eval), ema "
              "(moving average over about --act-history steps) or current (each batch's own range)")
        .add("act-history", &history, "training steps the delayed activation ranges look back");
  }
  void validate() const {
    require(mode == "delayed" || mode == "ema" || mode == "current", "--act-scaling must be delayed, ema or current");
    require(history >= 1 && history <= 4096, "--act-history must be in 1..4096");
  }
  void apply(quant::QConfig& q) const {
    q.activation_scaling = mode == "current" ? quant::ActivationScaling::current : quant::ActivationScaling::delayed;
    q.observer.history = static_cast<int>(history);
    q.observer.reduction = mode == "ema" ? quant::RangeReduction::ema : quant::RangeReduction::max;
    q.observer.momentum = static_cast<float>(2.0 / (static_cast<double>(history) + 1.0));
  }
  // For a checkpoint's configuration string: empty for the default, so older checkpoints still match.
  std::string fingerprint() const {
    return mode == "delayed" && history == 16 ? std::string() : " act_scaling=" + mode + ":" + std::to_string(history);
  }
};

struct QuantReportConfig {
  std::string path;         // JSON lines; empty: no report
  std::int64_t every = 100;  // training steps between reports

  void add_flags(Flags& flags) {
    flags.add("quant-report", &path, "append a numerics report of every quantized layer to this JSON-lines file")
        .add("quant-report-every", &every, "training steps between numerics reports");
  }
  void validate() const { require(every >= 1, "--quant-report-every must be positive"); }
};

// Writes the report of the training step `step` when (step + 1) is a multiple of `every`. The monitor
// is on only for those steps (before_step turns it on), so the other steps pay nothing for it.
class QuantReportLog {
 public:
  QuantReportLog(const QuantReportConfig& config, bool append) : config_(config) {
    if (config.path.empty()) return;
    file_.open(config.path, append ? std::ios::app : std::ios::trunc);
    if (!file_) throw IOError("cannot open the numerics report '" + config.path + "' for writing");
  }
  bool due(std::int64_t step) const { return !config_.path.empty() && (step + 1) % config_.every == 0; }
  void before_step(nn::Module& model, std::int64_t step) {
    if (due(step)) nn::set_numerics_monitor(model, true);
  }
  void after_step(nn::Module& model, std::int64_t step, double loss) {
    if (!due(step)) return;
    nlohmann::ordered_json row = {{"step", step + 1}, {"loss", std::isfinite(loss) ? nlohmann::ordered_json(loss) : nullptr}};
    nlohmann::ordered_json layers = nlohmann::ordered_json::array();
    for (const nn::QuantizationReport& r : nn::quantization_report(model)) layers.push_back(layer_json(r));
    row["layers"] = std::move(layers);
    nn::set_numerics_monitor(model, false);
    file_ << row.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) << '\n';
    file_.flush();
    if (!file_) throw IOError("writing the numerics report '" + config_.path + "' failed");
  }

 private:
  static nlohmann::ordered_json tensor_json(const quant::TensorNumerics& n) {
    nlohmann::ordered_json histogram = nlohmann::ordered_json::array();
    for (std::int64_t count : n.exponent_histogram) histogram.push_back(count);
    return {{"bits", n.bits},
            {"elements", n.elements},
            {"saturation_rate", n.saturation_rate()},
            {"zero_rate", n.zero_rate()},
            {"relative_error", n.relative_error()},
            {"range", n.range},
            {"absmax", n.input_absmax},
            {"shift_budget", n.shift_budget},
            {"exponent_histogram", std::move(histogram)}};
  }
  static nlohmann::ordered_json layer_json(const nn::QuantizationReport& r) {
    nlohmann::ordered_json j = {{"layer", r.name},
                                {"type", r.type},
                                {"activation_bits", r.activation_bits},
                                {"gradient_bits", r.gradient_bits},
                                {"delayed", r.delayed},
                                {"observed_calls", r.observed_calls},
                                {"saturated_calls", r.saturated_calls}};
    if (r.observed) j["input_range"] = r.input_range;
    if (r.numerics) {
      if (r.numerics->calls > 0) j["input"] = tensor_json(r.numerics->input);
      if (r.numerics->backward_calls > 0) j["grad_output"] = tensor_json(r.numerics->grad_output);
    }
    return j;
  }

  QuantReportConfig config_;
  std::ofstream file_;
};

}  // namespace shiftq::examples
