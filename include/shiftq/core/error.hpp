// Typed exceptions thrown by shiftq. The library never prints; every failure is one of these.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace shiftq {

// Base of every shiftq exception.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
// Tensor shapes that do not fit the operation (mismatch, bad rank, out-of-range dim).
class ShapeError : public Error {
 public:
  using Error::Error;
};
// A tensor of the wrong element type for the operation.
class DTypeError : public Error {
 public:
  using Error::Error;
};
// An argument outside its valid range (bit width, probability, negative size, ...).
class ValueError : public Error {
 public:
  using Error::Error;
};
// NaN/Inf or integer overflow detected in a tensor or a computation.
class NumericError : public Error {
 public:
  using Error::Error;
};
// File and data-format problems: missing, unreadable, truncated or corrupt files.
class IOError : public Error {
 public:
  using Error::Error;
};
// Autograd misuse: backward through a freed graph, backward of a non-scalar without a gradient.
class AutogradError : public Error {
 public:
  using Error::Error;
};

namespace detail {
template <class... Args>
std::string cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace shiftq

// SHIFTQ_CHECK(cond, ShapeError, "message ", value, ...): throws ExcType with the concatenated message.
#define SHIFTQ_CHECK(cond, ExcType, ...)                             \
  do {                                                               \
    if (!(cond)) throw ::shiftq::ExcType(::shiftq::detail::cat(__VA_ARGS__)); \
  } while (0)
