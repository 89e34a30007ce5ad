// Shapes: row-major, batch first. Every shiftq tensor is contiguous, so strides follow from the shape.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace shiftq {

using Shape = std::vector<std::int64_t>;

// Product of the extents (1 for a scalar shape {}). Throws ShapeError on a negative extent or overflow.
std::int64_t shape_numel(const Shape& shape);
// "[2, 3, 4]"
std::string shape_str(const Shape& shape);
// Row-major strides in elements: strides[d] = prod(shape[d+1:]).
Shape contiguous_strides(const Shape& shape);
// Maps a possibly negative dim (-1 = last) into [0, rank); throws ShapeError when out of range.
std::int64_t normalize_dim(std::int64_t dim, std::int64_t rank);
// NumPy broadcasting of two shapes; throws ShapeError naming both when they are incompatible.
Shape broadcast_shapes(const Shape& a, const Shape& b);

}  // namespace shiftq
