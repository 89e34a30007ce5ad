// Finite-difference gradient checker shared by every test executable.
//
// The function's output is reduced to L = sum(out * W) with fixed random weights W (so every output
// element matters); autograd's dL/dx is compared with central differences (L(x+h) - L(x-h)) / 2h,
// evaluated with double accumulation, on every element (or a seeded sample of large inputs).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <shiftq/shiftq.hpp>

namespace shiftq::testing {

struct GradcheckOptions {
  float step = 1e-3f;           // h
  double atol = 2e-3;
  double rtol = 2e-2;
  std::int64_t max_checks_per_input = 256;  // elements sampled per input
  std::uint64_t seed = 1234;
};

struct GradcheckResult {
  bool ok = true;
  std::int64_t checked = 0;
  std::string message;  // the first mismatches, when !ok
};

using TensorFn = std::function<Tensor(const std::vector<Tensor>&)>;

// Inputs that require grad are checked (one that gets no gradient must have zero finite
// differences); the others are held constant.
GradcheckResult gradcheck(const TensorFn& fn, const std::vector<Tensor>& inputs,
                          const GradcheckOptions& options = {});

// A leaf f32 tensor of `shape` with values in [lo, hi) that requires grad.
Tensor make_input(const Shape& shape, Generator& gen, float lo = -1.0f, float hi = 1.0f);

}  // namespace shiftq::testing

#define EXPECT_GRADCHECK(...)                                        \
  do {                                                               \
    auto gc_result_ = ::shiftq::testing::gradcheck(__VA_ARGS__);     \
    EXPECT_TRUE(gc_result_.ok) << gc_result_.message;                \
    EXPECT_GT(gc_result_.checked, 0);                                \
  } while (0)
