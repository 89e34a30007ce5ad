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

// Like parallel_for, but [0, n) is cut into about 8 chunks per thread (each at least `grain`
// items) that the threads claim as they finish the previous one: a thread on a slower or busier
// core takes fewer chunks instead of holding up the others at the end of the region. Only for
// loops whose result does not depend on the split (independent items, or exact integer sums); fn
// may be called several times per thread.
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
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
  for (std::int64_t c = 0; c < chunks; ++c) fn(c * chunk, std::min(n, (c + 1) * chunk));
}

}  // namespace shiftq::detail
