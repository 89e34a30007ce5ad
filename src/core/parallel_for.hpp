// Internal: OpenMP loops that honour shiftq::set_num_threads().
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <exception>
#include <mutex>

#include "shiftq/core/parallel.hpp"

namespace shiftq::detail {

// An exception escaping an OpenMP region terminates the process: parallel_for_dynamic, whose chunks
// call into oneDNN, runs fn through this, which keeps the first exception and rethrows it on the
// calling thread after the region. (Not used by parallel_for: wrapping its elementwise loops made
// fp32 BatchNorm 1.6x slower.)
class FirstError {
 public:
  template <class F>
  void run(F&& fn) noexcept {
    try {
      fn();
    } catch (...) {
      const std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
    }
  }
  void rethrow() const {
    if (error_) std::rethrow_exception(error_);
  }

 private:
  std::mutex mutex_;
  std::exception_ptr error_;
};

// The grain of elementwise loops (elements per chunk at least).
constexpr std::int64_t kElementwiseGrain = 1 << 15;

// Calls fn(begin, end) on chunks of [0, n), in parallel when n >= grain. Chunks are static, so the
// split depends only on n and the thread count. fn must not throw (an exception cannot leave an
// OpenMP region): the loops it runs report failures through flags checked after the region.
template <class F>
void parallel_for(std::int64_t n, std::int64_t grain, F&& fn) {
  if (n <= 0) return;
  const int threads = static_cast<int>(std::min<std::int64_t>(get_num_threads(), std::max<std::int64_t>(1, n / std::max<std::int64_t>(grain, 1))));
  if (threads <= 1 || omp_in_parallel()) {
    fn(std::int64_t{0}, n);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    const std::int64_t t = omp_get_thread_num();
    const std::int64_t nt = omp_get_num_threads();
    const std::int64_t chunk = (n + nt - 1) / nt;
    const std::int64_t begin = std::min(n, t * chunk);
    const std::int64_t end = std::min(n, begin + chunk);
    if (begin < end) fn(begin, end);
  }
}

// Like parallel_for, but [0, n) is cut into about 8 chunks per thread (each at least `grain`
// items) that the threads claim as they finish the previous one: a thread on a slower or busier
// core takes fewer chunks instead of holding up the others at the end of the region. Only for
// loops whose result does not depend on the split (independent items, or exact integer sums); fn
// may be called several times per thread. An exception from fn is rethrown after the region. Each
// chunk may run on a different core than the previous op's data: static chunks keep that data in
// the same core's cache, so this is for loops whose work per item outweighs it (the quantized
// convolution's samples).
template <class F>
void parallel_for_dynamic(std::int64_t n, std::int64_t grain, F&& fn) {
  constexpr std::int64_t kChunksPerThread = 8;
  if (n <= 0) return;
  grain = std::max<std::int64_t>(grain, 1);
  const int threads = static_cast<int>(std::min<std::int64_t>(get_num_threads(), std::max<std::int64_t>(1, n / grain)));
  if (threads <= 1 || omp_in_parallel()) {
    fn(std::int64_t{0}, n);
    return;
  }
  const std::int64_t chunk = std::max(grain, (n + kChunksPerThread * threads - 1) / (kChunksPerThread * threads));
  const std::int64_t chunks = (n + chunk - 1) / chunk;
  FirstError error;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
  for (std::int64_t c = 0; c < chunks; ++c) error.run([&] { fn(c * chunk, std::min(n, (c + 1) * chunk)); });
  error.rethrow();
}

}  // namespace shiftq::detail
