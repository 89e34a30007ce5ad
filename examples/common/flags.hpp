// A small command-line flag parser shared by the example trainers: `--name value` for strings and
// numbers, `--name` / `--no-name` for booleans, `--help`. Unknown flags and bad values raise
// UsageError, which the trainers turn into exit code 2 and the usage text.
#pragma once

#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>
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

  Flags(std::string program, std::string summary) : program_(std::move(program)), summary_(std::move(summary)) {}

  Flags& add(const std::string& name, Target target, const std::string& help) {
    flags_.push_back({name, target, help, default_text(target)});
    return *this;
  }

  // Returns false when --help was given (the caller prints usage() and exits 0).
  bool parse(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
      std::string arg = argv[i];
      if (arg == "--help" || arg == "-h") return false;
      if (arg.rfind("--", 0) != 0) throw UsageError("unexpected argument '" + arg + "'");
      std::string name = arg.substr(2), value;
      const auto eq = name.find('=');
      bool has_value = false;
      if (eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
        has_value = true;
      }
      Flag* flag = find(name);
      if (flag == nullptr && name.rfind("no-", 0) == 0) {  // --no-<bool>
        Flag* negated = find(name.substr(3));
        if (negated != nullptr && std::holds_alternative<bool*>(negated->target) && !has_value) {
          *std::get<bool*>(negated->target) = false;
          continue;
        }
      }
      if (flag == nullptr) throw UsageError("unknown flag --" + name + " (see --help)");
      if (std::holds_alternative<bool*>(flag->target) && !has_value) {
        *std::get<bool*>(flag->target) = true;
        continue;
      }
      if (!has_value) {
        if (i + 1 >= argc) throw UsageError("flag --" + name + " needs a value");
        value = argv[++i];
      }
      set(*flag, value);
    }
    return true;
  }

  std::string usage() const {
    std::string text = "usage: " + program_ + " [flags]\n" + summary_ + "\n\nflags:\n";
    for (const Flag& f : flags_) {
      std::string head = "  --" + f.name + (std::holds_alternative<bool*>(f.target) ? "" : " V");
      if (head.size() < 26) head.resize(26, ' ');
      text += head + " " + f.help + (f.default_text.empty() ? "" : " [" + f.default_text + "]") + "\n";
    }
    return text;
  }

 private:
  struct Flag {
    std::string name;
    Target target;
    std::string help;
    std::string default_text;
  };

  Flag* find(const std::string& name) {
    for (Flag& f : flags_)
      if (f.name == name) return &f;
    return nullptr;
  }

  static std::string default_text(const Target& target) {
    if (auto* s = std::get_if<std::string*>(&target)) return **s;
    if (auto* i = std::get_if<std::int64_t*>(&target)) return std::to_string(**i);
    if (auto* b = std::get_if<bool*>(&target)) return **b ? "on" : "off";
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", *std::get<double*>(target));
    return buf;
  }

  static void set(const Flag& flag, const std::string& value) {
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

  std::string program_, summary_;
  std::vector<Flag> flags_;
};

// Throws UsageError(message) unless `ok`.
inline void require(bool ok, const std::string& message) {
  if (!ok) throw UsageError(message);
}

}  // namespace shiftq::examples
