// Small vocabulary shared by every layer: chainable options and named tensors (as libtorch keeps
// arg.h at the bottom of its stack).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "shiftq/core/tensor.hpp"

// Declares a chainable option: `Options{...}.name(value)` sets it, `name()` reads it.
#define SHIFTQ_ARG(T, name)                  \
 public:                                     \
  auto& name(const T& new_value) {           \
    name##_ = new_value;                     \
    return *this;                            \
  }                                          \
  const T& name() const { return name##_; } \
                                             \
 private:                                    \
  T name##_

namespace shiftq {

// Tensors by name, in a defined order: a module's parameters or buffers, an optimizer's inputs.
using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

}  // namespace shiftq
