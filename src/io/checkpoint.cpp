#include "shiftq/io/checkpoint.hpp"

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <string_view>
#include <system_error>
#include <utility>

#include "shiftq/io/safetensors.hpp"
#include "shiftq/nn/layers.hpp"

namespace shiftq::io {
namespace {

constexpr std::string_view kModelPrefix = "model/";
constexpr std::string_view kOptimPrefix = "optim/";
constexpr std::string_view kRngPrefix = "rng/";
constexpr std::string_view kInfoPrefix = "info/";
constexpr std::string_view kFormatKey = "format";

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw IOError("checkpoint '" + path + "': " + what);
}

bool starts_with(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }

// "<seed>:<counter>:<word>" in decimal.
std::string format_state(const GeneratorState& s) {
  return std::to_string(s.seed) + ":" + std::to_string(s.counter) + ":" + std::to_string(s.word);
}

// Parses one unsigned decimal field (digits only, no sign, no overflow).
template <class T>
bool parse_field(std::string_view text, T& out) {
  if (text.empty()) return false;
  for (char c : text)
    if (c < '0' || c > '9') return false;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc() && end == text.data() + text.size();
}

bool parse_state(std::string_view text, GeneratorState& out) {
  const std::size_t a = text.find(':');
  if (a == std::string_view::npos) return false;
  const std::size_t b = text.find(':', a + 1);
  if (b == std::string_view::npos) return false;
  return parse_field(text.substr(0, a), out.seed) && parse_field(text.substr(a + 1, b - a - 1), out.counter) &&
         parse_field(text.substr(b + 1), out.word) && out.word <= 4;
}

// Runs f(); a shiftq exception is rethrown as the same type with `prefix` before its message.
template <class F>
void rethrow_prefixed(const std::string& prefix, F&& f) {
  try {
    f();
  } catch (const ShapeError& e) {
    throw ShapeError(prefix + e.what());
  } catch (const DTypeError& e) {
    throw DTypeError(prefix + e.what());
  } catch (const ValueError& e) {
    throw ValueError(prefix + e.what());
  } catch (const NumericError& e) {
    throw NumericError(prefix + e.what());
  } catch (const IOError& e) {
    throw IOError(prefix + e.what());
  } catch (const AutogradError& e) {
    throw AutogradError(prefix + e.what());
  } catch (const Error& e) {
    throw Error(prefix + e.what());
  }
}

}  // namespace

void save_checkpoint(const std::string& path, const TrainingCheckpoint& ckpt) {
  TensorFile file;
  for (const auto& [name, t] : ckpt.model) file.tensors.emplace(std::string(kModelPrefix) + name, t);
  for (const auto& [name, t] : ckpt.optimizer) file.tensors.emplace(std::string(kOptimPrefix) + name, t);
  file.metadata.emplace(kFormatKey, kCheckpointFormat);
  for (const auto& [name, state] : ckpt.generators)
    file.metadata.emplace(std::string(kRngPrefix) + name, format_state(state));
  for (const auto& [key, value] : ckpt.info) file.metadata.emplace(std::string(kInfoPrefix) + key, value);
  save_safetensors(path, file);
}

TrainingCheckpoint load_checkpoint(const std::string& path) {
  TensorFile file = load_safetensors(path);
  const auto format = file.metadata.find(std::string(kFormatKey));
  if (format == file.metadata.end())
    fail(path, "not a shiftq checkpoint (no \"format\" metadata; expected \"" + std::string(kCheckpointFormat) + "\")");
  if (format->second != kCheckpointFormat)
    fail(path, "not a shiftq checkpoint: format is \"" + format->second + "\", expected \"" +
                   std::string(kCheckpointFormat) + "\"");

  TrainingCheckpoint ckpt;
  for (auto& [key, t] : file.tensors) {
    if (starts_with(key, kModelPrefix)) ckpt.model.emplace(key.substr(kModelPrefix.size()), std::move(t));
    else if (starts_with(key, kOptimPrefix)) ckpt.optimizer.emplace(key.substr(kOptimPrefix.size()), std::move(t));
    else fail(path, "tensor '" + key + "' has neither a \"model/\" nor an \"optim/\" prefix");
  }
  for (const auto& [key, value] : file.metadata) {
    if (key == kFormatKey) continue;
    if (starts_with(key, kInfoPrefix)) {
      ckpt.info.emplace(key.substr(kInfoPrefix.size()), value);
    } else if (starts_with(key, kRngPrefix)) {
      GeneratorState state;
      if (!parse_state(value, state))
        fail(path, "malformed generator state '" + key + "' = \"" + value +
                       "\" (expected \"<seed>:<counter>:<word>\", decimal, word <= 4)");
      ckpt.generators.emplace(key.substr(kRngPrefix.size()), state);
    } else {
      fail(path, "unknown metadata key '" + key + "' (expected \"format\", \"rng/...\" or \"info/...\")");
    }
  }
  return ckpt;
}

void save_checkpoint(const std::string& path, const nn::Module& model, const optim::Optimizer* optimizer,
                     const std::map<std::string, std::string>& info,
                     const std::map<std::string, GeneratorState>& generators) {
  TrainingCheckpoint ckpt;
  ckpt.model = model.state_dict();
  if (optimizer) ckpt.optimizer = optimizer->state_dict();
  ckpt.info = info;
  ckpt.generators = generators;
  save_checkpoint(path, ckpt);
}

namespace {
// The legacy info entry: comma-separated decimal call counters, in nn::quantization_counters order.
std::vector<std::uint64_t> parse_counters(const std::string& text, const std::string& path) {
  std::vector<std::uint64_t> counters;
  std::size_t start = 0;
  while (start <= text.size()) {
    const std::size_t end = std::min(text.find(',', start), text.size());
    const std::string item = text.substr(start, end - start);
    std::uint64_t value = 0;
    if (!parse_field(item, value))
      throw IOError("checkpoint " + path + ": malformed quant_counters entry '" + item + "'");
    counters.push_back(value);
    start = end + 1;
  }
  return counters;
}

bool is_counter(const std::string& name) { return name.ends_with(nn::kQuantCallsBuffer); }
}  // namespace

std::vector<std::string> restore(const TrainingCheckpoint& ckpt, const std::string& path_for_messages,
                                 nn::Module& model, optim::Optimizer* optimizer) {
  const std::string prefix = "checkpoint " + path_for_messages + " does not match the ";
  // A copy of the current values, put back if a later step fails (all or nothing).
  std::map<std::string, Tensor> previous;
  for (const auto& [name, t] : model.state_dict()) previous.emplace(name, t.clone());
  std::vector<std::string> absent;
  rethrow_prefixed(prefix + "model: ", [&] { absent = model.load_state_dict(ckpt.model); });
  try {
    if (optimizer) rethrow_prefixed(prefix + "optimizer: ", [&] { optimizer->load_state_dict(ckpt.optimizer); });
    const auto legacy = ckpt.info.find("quant_counters");
    if (legacy != ckpt.info.end() && std::any_of(absent.begin(), absent.end(), is_counter)) {
      const std::vector<std::uint64_t> counters = parse_counters(legacy->second, path_for_messages);
      rethrow_prefixed(prefix + "model: ", [&] { nn::set_quantization_counters(model, counters); });
      absent.erase(std::remove_if(absent.begin(), absent.end(), is_counter), absent.end());
    }
  } catch (...) {
    model.load_state_dict(previous);
    throw;
  }
  return absent;
}

}  // namespace shiftq::io
