// The trainers' activation-scaling flags (--act-scaling, --act-history) and the numerics report
// (--quant-report FILE --quant-report-every N): JSON lines with, per quantized layer, its observed
// input range and what its quantizers did to its input and output gradient (nn::quantization_report).
#pragma once

#include <cmath>
#include <cstdint>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

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
  bool probe = false;        // also the cosine of each weight's integer gradient to its fp32 gradient

  void add_flags(Flags& flags) {
    flags.add("quant-report", &path, "append a numerics report of every quantized layer to this JSON-lines file")
        .add("quant-report-every", &every, "training steps between numerics reports")
        .add("quant-report-probe", &probe,
             "numerics reports also compare each weight's integer gradient with its fp32 gradient on the step's "
             "batch (cosine, norm ratio; two more forward and backward passes per report)");
  }
  void validate(bool distributed) const {
    require(every >= 1, "--quant-report-every must be positive");
    require(!probe || !distributed, "--quant-report-probe runs extra backward passes on one process: not with --distributed");
  }
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
  // `probe`: nn::probe_gradient_agreement on the step's batch, run when the configuration asks for it.
  using Probe = std::function<std::vector<nn::GradientAgreement>()>;
  void after_step(nn::Module& model, std::int64_t step, double loss, const Probe& probe = {}) {
    if (!due(step)) return;
    const std::vector<nn::QuantizationReport> reports = nn::quantization_report(model);
    nn::set_numerics_monitor(model, false);  // before the probe: its passes are not the step's
    std::map<std::string, nn::GradientAgreement> agreement;
    if (config_.probe && probe)
      for (const nn::GradientAgreement& a : probe()) agreement.emplace(a.name, a);
    nlohmann::ordered_json row = {{"step", step + 1}, {"loss", std::isfinite(loss) ? nlohmann::ordered_json(loss) : nullptr}};
    nlohmann::ordered_json layers = nlohmann::ordered_json::array();
    for (const nn::QuantizationReport& r : reports) {
      nlohmann::ordered_json j = layer_json(r);
      const auto a = agreement.find(r.name + ".weight");
      if (a != agreement.end()) {
        j["weight_grad_cosine"] = a->second.cosine;
        j["weight_grad_norm_ratio"] = a->second.norm_ratio;
      }
      layers.push_back(std::move(j));
    }
    row["layers"] = std::move(layers);
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
