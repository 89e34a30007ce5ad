// The stochastic-rounding call counters of a quantized model (nn::quantization_counters), as the
// comma-separated checkpoint entry "quant_counters" that makes a resumed run bit-identical.
#pragma once

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include <shiftq/core/error.hpp>

namespace shiftq::examples {

inline std::string join_counters(const std::vector<std::uint64_t>& counters) {
  std::string out;
  for (std::size_t i = 0; i < counters.size(); ++i) {
    if (i > 0) out += ',';
    out += std::to_string(counters[i]);
  }
  return out;
}

inline std::vector<std::uint64_t> split_counters(const std::string& text, const std::string& checkpoint_path) {
  std::vector<std::uint64_t> counters;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) {
    try {
      std::size_t used = 0;
      counters.push_back(std::stoull(item, &used));
      if (used == item.size() && item.find('-') == std::string::npos) continue;
    } catch (const std::logic_error&) {
    }
    throw IOError("checkpoint " + checkpoint_path + ": malformed quant_counters entry '" + item + "'");
  }
  return counters;
}

}  // namespace shiftq::examples
