// Internal: OpenMP loops that honour shiftq::set_num_threads().
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>

#include "shiftq/core/parallel.hpp"

namespace shiftq::detail {

// Calls fn(begin, end) on chunks of [0, n), in parallel when n >= grain. Chunks are static, so the
// split depends only on n and the thread count.
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

}  // namespace shiftq::detail
