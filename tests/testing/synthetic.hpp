// Small synthetic data for tests: random integer buffers for the kernel tests, datasets for the
// end-to-end training tests.
#pragma once

#include <vector>

#include <shiftq/shiftq.hpp>

namespace shiftq::testing {

// n values uniform in [lo, hi] (integer codes, offsets) as T.
template <class T>
std::vector<T> random_ints(std::int64_t n, int lo, int hi, Generator& gen) {
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(lo + static_cast<int>(gen.randint(hi - lo + 1)));
  return v;
}

// x: [n, 1, 8, 8] noise images each holding one bright horizontal (class 0) or vertical (class 1)
// bar; y: s32 [n].
inline void make_bars(std::int64_t n, Generator& gen, Tensor& x, Tensor& y) {
  x = Tensor::randn({n, 1, 8, 8}, gen, 0.3f);
  y = Tensor::empty({n}, DType::s32);
  float* px = x.data<float>();
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int32_t label = static_cast<std::int32_t>(gen.randint(2));
    const std::int64_t pos = static_cast<std::int64_t>(gen.randint(8));
    for (std::int64_t k = 0; k < 8; ++k) px[i * 64 + (label == 0 ? pos * 8 + k : k * 8 + pos)] += 1.5f;
    y.data<std::int32_t>()[i] = label;
  }
}

}  // namespace shiftq::testing
