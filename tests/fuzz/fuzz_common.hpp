// Shared plumbing of the libFuzzer targets (tests/fuzz/fuzz_*.cpp).
//
// Every target writes the input to a per-process temp file, /tmp/shiftq-fuzz-<pid>-<target> (the
// loaders take paths), and calls the loader on it. A shiftq exception of the type the loader
// documents is the expected outcome of a bad input; anything else is a bug and aborts, so that
// libFuzzer records the input as a crash:
//   - a crash, a sanitizer report (ASan, UBSan), a leak or an allocation over -malloc_limit_mb;
//   - a std::exception that is not a shiftq::Error (std::bad_alloc, std::length_error, ...);
//   - a shiftq::Error of another type than the documented ones (e.g. a ShapeError escaping a file
//     parser that promises IOError);
//   - a broken invariant of a successful load (FUZZ_CHECK below).
// SHIFTQ_FUZZ_VERBOSE=1 in the environment prints every expected exception (to check that the seed
// corpus loads cleanly: `SHIFTQ_FUZZ_VERBOSE=1 ./fuzz_idx tests/fuzz/corpus/idx/*`).
#pragma once

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <typeinfo>

#include <shiftq/shiftq.hpp>

namespace shiftq::fuzz {

// Aborts (a libFuzzer crash) when `cond` is false.
#define FUZZ_CHECK(cond)                                                                          \
  do {                                                                                            \
    if (!(cond)) {                                                                                \
      std::fprintf(stderr, "FUZZ_CHECK failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__);         \
      std::abort();                                                                               \
    }                                                                                             \
  } while (0)

inline bool verbose() {
  static const bool v = [] {
    const char* e = std::getenv("SHIFTQ_FUZZ_VERBOSE");
    return e != nullptr && e[0] != '\0' && e[0] != '0';
  }();
  return v;
}

// The per-process temp file of `target` (plus `suffix`); removed at exit.
class TempFile {
 public:
  explicit TempFile(const std::string& target, const std::string& suffix = "")
      : path_("/tmp/shiftq-fuzz-" + std::to_string(::getpid()) + "-" + target + suffix) {}
  ~TempFile() { std::remove(path_.c_str()); }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;

  const std::string& path() const { return path_; }

  // Replaces the file's content with data[0, size).
  void write(const std::uint8_t* data, std::size_t size) const {
    std::FILE* f = std::fopen(path_.c_str(), "wb");
    if (f == nullptr) {
      std::perror(path_.c_str());
      std::abort();  // the harness itself cannot work: not a finding about shiftq
    }
    if (size > 0 && std::fwrite(data, 1, size, f) != size) {
      std::perror(path_.c_str());
      std::abort();
    }
    if (std::fclose(f) != 0) {
      std::perror(path_.c_str());
      std::abort();
    }
  }

 private:
  std::string path_;
};

// One-time setup shared by the targets: one thread (no OpenMP pool to fuzz through), and no tensor
// memory cache, so that AddressSanitizer sees every free.
inline void init() {
  shiftq::set_num_threads(1);
  shiftq::set_memory_cache_limit(0);
}

// Runs f(). Returns true when it returned normally, false when it threw one of the Allowed shiftq
// exception types; aborts on any other exception.
template <class... Allowed, class F>
bool expect_only(const char* what, F&& f) {
  try {
    f();
    return true;
  } catch (const shiftq::Error& e) {
    if ((... || (dynamic_cast<const Allowed*>(&e) != nullptr))) {
      if (verbose()) std::fprintf(stderr, "[%s] %s: %s\n", what, typeid(e).name(), e.what());
      return false;
    }
    std::fprintf(stderr, "%s threw an undocumented shiftq exception type %s: %s\n", what, typeid(e).name(),
                 e.what());
    std::abort();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s threw a non-shiftq exception %s: %s\n", what, typeid(e).name(), e.what());
    std::abort();
  } catch (...) {
    std::fprintf(stderr, "%s threw something that is not a std::exception\n", what);
    std::abort();
  }
}


}  // namespace shiftq::fuzz
