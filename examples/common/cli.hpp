// The command line of the example programs, parsed with CLI11, and the main() skeleton they share:
//
//   int main(int argc, char** argv) {
//     Config c;
//     Flags flags("shiftq-train-x", "What it does.");
//     flags.add("epochs", &c.epochs, "training epochs") ...;
//     return run_cli(flags, argc, argv, c.dist, [&] { c.validate(); }, [&] { train(c); return 0; });
//   }
//
// --help prints the usage (exit 0); an unknown flag, a stray argument, a missing or bad value, or a
// UsageError from the validation print "error: <message>" and the usage on stderr (exit 2); runtime
// errors of the body end in exit code 1 (run_trainer_main). Only the programs' main.cpp include this
// header, and with it CLI11.
#pragma once

#include <cstddef>
#include <cstdio>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>

#include "common/distributed.hpp"
#include "common/flags.hpp"

namespace shiftq::examples {

// Parses the command line into the variables of `flags` (each value in command-line order, the last
// one of a repeated flag wins). Returns false when --help or -h was given. Throws UsageError for an
// unknown flag ("unknown flag --x (see --help)"), an argument that is no flag, a missing value and a
// bad value ("bad value 'v' for --x").
inline bool parse_flags(const Flags& flags, int argc, char** argv) {
  CLI::App app(flags.summary(), flags.program());
  app.set_help_flag("-h,--help", "print this help and exit");
  app.allow_extras();  // reported below, in the words of the message above
  std::map<const CLI::Option*, const Flags::Flag*> flag_of;
  for (const Flags::Flag& f : flags.flags()) {
    CLI::Option* option = f.is_bool() ? app.add_flag("--" + f.name + ",!--no-" + f.name)
                                      : app.add_option("--" + f.name)->type_name("V");
    option->description(f.help)->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
    flag_of[option] = &f;
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    return false;
  } catch (const CLI::ArgumentMismatch& e) {
    // The command line ends with a flag that needs a value (CLI11 reads `--name=` as `--name`).
    const std::string last = argc > 1 ? argv[argc - 1] : "";
    for (const Flags::Flag& f : flags.flags()) {
      if (f.is_bool()) continue;
      if (last == "--" + f.name) throw UsageError("flag --" + f.name + " needs a value");
      if (last == "--" + f.name + "=") Flags::assign(f, "");  // numbers: "bad value '' for --name"
    }
    throw UsageError(e.what());
  } catch (const CLI::ParseError& e) {
    throw UsageError(e.what());
  }

  const std::vector<std::string> extras = app.remaining();
  if (!extras.empty()) {
    const std::string& arg = extras.front();
    if (arg.rfind("--", 0) == 0) throw UsageError("unknown flag " + arg.substr(0, arg.find('=')) + " (see --help)");
    throw UsageError("unexpected argument '" + arg + "'");
  }

  // CLI11 keeps every value as given (booleans: "true" for --name, "false" for --no-name, or the
  // value of --name=value); Flags::assign converts them with the programs' rules.
  std::map<const CLI::Option*, std::size_t> taken;
  for (const CLI::Option* option : app.parse_order()) {
    const std::size_t i = taken[option]++;
    Flags::assign(*flag_of.at(option), option->results().at(i));
  }
  return true;
}

// Parses the command line and runs `validate()` (which throws UsageError for bad combinations).
// Returns an exit code when the program should stop: 0 after printing the usage for --help, 2 after
// printing a usage error; nothing when it should go on.
template <class Validate>
std::optional<int> parse_command_line(const Flags& flags, int argc, char** argv, Validate&& validate) {
  try {
    if (!parse_flags(flags, argc, argv)) {
      std::printf("%s", flags.usage().c_str());
      return 0;
    }
    validate();
  } catch (const UsageError& e) {
    std::fprintf(stderr, "error: %s\n\n%s", e.what(), flags.usage().c_str());
    return 2;
  }
  return std::nullopt;
}

// main() of a trainer: the command line, then `body()` (returning the exit code) under
// run_trainer_main, with --distributed as given on the command line.
template <class Validate, class Body>
int run_cli(const Flags& flags, int argc, char** argv, const DistConfig& dist, Validate&& validate, Body&& body) {
  if (const std::optional<int> code = parse_command_line(flags, argc, argv, std::forward<Validate>(validate)))
    return *code;
  return run_trainer_main(dist.distributed, std::forward<Body>(body));
}

// main() of a single-process program (no --distributed).
template <class Validate, class Body>
int run_cli(const Flags& flags, int argc, char** argv, Validate&& validate, Body&& body) {
  if (const std::optional<int> code = parse_command_line(flags, argc, argv, std::forward<Validate>(validate)))
    return *code;
  return run_trainer_main(false, std::forward<Body>(body));
}

}  // namespace shiftq::examples
