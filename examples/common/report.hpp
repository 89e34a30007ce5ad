// Console progress and metrics logging for the example trainers. On a terminal, a progress bar
// redrawn in place; otherwise (CI logs, pipes) a plain line every 25% of an epoch. Metrics go to a
// JSON-lines file, one object per line, for scripts/plot_metrics.py.
#pragma once

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>
#include <utility>

#include <nlohmann/json.hpp>

#include <shiftq/core/error.hpp>

namespace shiftq::examples {

class Progress {
 public:
  Progress(std::string label, std::int64_t total, bool enabled = true)
      : label_(std::move(label)), total_(total), enabled_(enabled), tty_(isatty(fileno(stdout)) != 0),
        start_(std::chrono::steady_clock::now()) {}

  // `done` of `total` steps finished; `status` is appended (e.g. "loss 0.53").
  void update(std::int64_t done, const std::string& status) {
    if (!enabled_ || total_ <= 0) return;
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const double eta = done > 0 ? seconds * static_cast<double>(total_ - done) / static_cast<double>(done) : 0.0;
    if (tty_) {
      constexpr int kWidth = 30;
      const int filled = static_cast<int>(kWidth * done / total_);
      std::printf("\r%s [%s%s] %lld/%lld %s eta %.0fs   ", label_.c_str(), std::string(filled, '#').c_str(),
                  std::string(kWidth - filled, '.').c_str(), static_cast<long long>(done),
                  static_cast<long long>(total_), status.c_str(), eta);
      if (done == total_) std::printf("\n");
      std::fflush(stdout);
      return;
    }
    const std::int64_t quarter = (4 * done) / total_;
    if (quarter > last_quarter_ && done < total_) {
      last_quarter_ = quarter;
      std::printf("%s %lld/%lld %s (%.0fs)\n", label_.c_str(), static_cast<long long>(done),
                  static_cast<long long>(total_), status.c_str(), seconds);
      std::fflush(stdout);
    }
  }

 private:
  std::string label_;
  std::int64_t total_;
  bool enabled_, tty_;
  std::chrono::steady_clock::time_point start_;
  std::int64_t last_quarter_ = 0;
};

// One JSON object (nlohmann/json): keys in insertion order; numbers (non-finite ones as null), or
// strings.
class MetricsRow {
 public:
  MetricsRow& add(const std::string& key, double value) {
    if (std::isfinite(value)) row_[key] = value;
    else row_[key] = nullptr;
    return *this;
  }
  MetricsRow& add(const std::string& key, std::int64_t value) {
    row_[key] = value;
    return *this;
  }
  // add(key, value) when `on` (fields that only some runs have).
  template <class T>
  MetricsRow& add_if(bool on, const std::string& key, T value) {
    return on ? add(key, value) : *this;
  }
  MetricsRow& add(const std::string& key, const std::string& value) {
    row_[key] = value;
    return *this;
  }
  // One line of compact JSON; doubles in the shortest form that reads back to the same value.
  std::string json() const { return row_.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace); }

 private:
  nlohmann::ordered_json row_ = nlohmann::ordered_json::object();
};

// Appends rows to a JSON-lines file (a resumed run continues the same log). Empty path: no log.
class MetricsLog {
 public:
  explicit MetricsLog(const std::string& path, bool append) : path_(path) {
    if (path.empty()) return;
    file_.open(path, append ? std::ios::app : std::ios::trunc);
    if (!file_) throw IOError("cannot open metrics log '" + path + "' for writing (does the directory exist?)");
  }
  void write(const MetricsRow& row) {
    if (path_.empty()) return;
    file_ << row.json() << '\n';
    file_.flush();
    if (!file_) throw IOError("writing metrics log '" + path_ + "' failed");
  }

 private:
  std::string path_;
  std::ofstream file_;
};

// Fails early (before any training) when `path`'s directory does not exist or is not writable,
// instead of after the first epoch. Empty path: nothing to check.
inline void check_output_path(const std::string& path, const std::string& what) {
  if (path.empty()) return;
  const std::size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  if (access(dir.c_str(), W_OK) != 0)
    throw IOError("cannot write the " + what + " '" + path + "': directory '" + dir +
                  "' does not exist or is not writable");
}

}  // namespace shiftq::examples
