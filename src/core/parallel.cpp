#include "shiftq/core/parallel.hpp"

#include <omp.h>

#include <atomic>

#include "shiftq/core/error.hpp"

namespace shiftq {
namespace {
std::atomic<int>& thread_count() {
  static std::atomic<int> n{omp_get_max_threads()};
  return n;
}
}  // namespace

void set_num_threads(int n) {
  SHIFTQ_CHECK(n >= 1, ValueError, "set_num_threads: thread count must be >= 1, got ", n);
  thread_count().store(n);
  // oneDNN's OpenMP runtime reads the calling thread's max-threads setting.
  omp_set_num_threads(n);
}

int get_num_threads() { return thread_count().load(); }

}  // namespace shiftq
