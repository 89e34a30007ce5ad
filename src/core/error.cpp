// Shape helpers (the error types themselves are header-only).
#include <limits>

#include "shiftq/core/error.hpp"
#include "shiftq/core/shape.hpp"

namespace shiftq {

std::int64_t shape_numel(const Shape& shape) {
  std::int64_t n = 1;
  for (std::int64_t d : shape) {
    SHIFTQ_CHECK(d >= 0, ShapeError, "negative extent in shape ", shape_str(shape));
    SHIFTQ_CHECK(d == 0 || n <= std::numeric_limits<std::int64_t>::max() / d, ShapeError,
                 "shape ", shape_str(shape), " has too many elements");
    n *= d;
  }
  return n;
}

std::string shape_str(const Shape& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size(), 1);
  for (std::int64_t d = static_cast<std::int64_t>(shape.size()) - 2; d >= 0; --d)
    strides[d] = strides[d + 1] * shape[d + 1];
  return strides;
}

std::int64_t normalize_dim(std::int64_t dim, std::int64_t rank) {
  const std::int64_t d = dim < 0 ? dim + rank : dim;
  SHIFTQ_CHECK(d >= 0 && d < rank, ShapeError, "dim ", dim, " out of range for a tensor of rank ",
               rank);
  return d;
}

Shape broadcast_shapes(const Shape& a, const Shape& b) {
  const std::size_t rank = std::max(a.size(), b.size());
  Shape out(rank);
  for (std::size_t i = 0; i < rank; ++i) {
    const std::int64_t da = i < rank - a.size() ? 1 : a[i - (rank - a.size())];
    const std::int64_t db = i < rank - b.size() ? 1 : b[i - (rank - b.size())];
    SHIFTQ_CHECK(da == db || da == 1 || db == 1, ShapeError, "shapes ", shape_str(a), " and ",
                 shape_str(b), " cannot be broadcast together");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

}  // namespace shiftq
