// The command-line flags of the example programs: each flag names a variable, its help text and
// (from the variable's initial value) its default. `--name value` or `--name=value` for strings and
// numbers; `--name`, `--no-name` or `--name=true|false` for booleans; `--help`. The command line is
// parsed with CLI11 by common/cli.hpp, which only the programs' main() include: this header (part
// of the trainer cores, which tests and benchmarks use) stays free of CLI11. Unknown flags and bad
// values raise UsageError, which the programs turn into exit code 2 and the usage text.
#pragma once

#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace shiftq::examples {

class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Flags {
 public:
  using Target = std::variant<std::string*, std::int64_t*, double*, bool*>;

  struct Flag {
    std::string name;  // without the leading "--"
    Target target;
    std::string help;
    std::string default_text;  // the target's value when the flag was added
    bool is_bool() const { return std::holds_alternative<bool*>(target); }
  };

  Flags(std::string program, std::string summary) : program_(std::move(program)), summary_(std::move(summary)) {}

  Flags& add(const std::string& name, Target target, const std::string& help) {
    flags_.push_back({name, target, help, default_text(target)});
    return *this;
  }

  const std::string& program() const { return program_; }
  const std::string& summary() const { return summary_; }
  const std::vector<Flag>& flags() const { return flags_; }

  // The --help text: every flag with its help and default, in the order added.
  std::string usage() const {
    std::string text = "usage: " + program_ + " [flags]\n" + summary_ + "\n\nflags:\n";
    for (const Flag& f : flags_) {
      std::string head = "  --" + f.name + (f.is_bool() ? "" : " V");
      if (head.size() < 26) head.resize(26, ' ');
      text += head + " " + f.help + (f.default_text.empty() ? "" : " [" + f.default_text + "]") + "\n";
    }
    return text;
  }

  // Sets `flag`'s variable from one value of the command line: integers and numbers must be read in
  // full (std::stoll, std::stod), booleans are true/1/on or false/0/off. Throws UsageError
  // "bad value 'V' for --name" otherwise.
  static void assign(const Flag& flag, const std::string& value) {
    const std::string bad = "bad value '" + value + "' for --" + flag.name;
    try {
      std::size_t used = 0;
      if (auto* s = std::get_if<std::string*>(&flag.target)) {
        **s = value;
        return;
      }
      if (auto* i = std::get_if<std::int64_t*>(&flag.target)) {
        **i = std::stoll(value, &used);
      } else if (auto* d = std::get_if<double*>(&flag.target)) {
        **d = std::stod(value, &used);
      } else if (auto* b = std::get_if<bool*>(&flag.target)) {
        if (value == "true" || value == "1" || value == "on") **b = true;
        else if (value == "false" || value == "0" || value == "off") **b = false;
        else throw UsageError(bad);
        return;
      }
      if (used != value.size()) throw UsageError(bad);
    } catch (const std::logic_error&) {  // std::invalid_argument / std::out_of_range
      throw UsageError(bad);
    }
  }

 private:
  static std::string default_text(const Target& target) {
    if (auto* s = std::get_if<std::string*>(&target)) return **s;
    if (auto* i = std::get_if<std::int64_t*>(&target)) return std::to_string(**i);
    if (auto* b = std::get_if<bool*>(&target)) return **b ? "on" : "off";
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", *std::get<double*>(target));
    return buf;
  }

  std::string program_, summary_;
  std::vector<Flag> flags_;
};

// Throws UsageError(message) unless `ok`.
inline void require(bool ok, const std::string& message) {
  if (!ok) throw UsageError(message);
}

}  // namespace shiftq::examples
