// Reductions: sum, mean, sum_to (and its inverse, expansion, for the backward).
#include <algorithm>
#include <vector>

#include "ops_util.hpp"

namespace shiftq {
namespace {

// Rows per partial sum of reduce_rows_blocked: a fixed count, so the sums do not depend on the
// thread count.
constexpr std::int64_t kRowBlock = 256;
// Up to this many kept columns the slices of the column-parallel loop below (256 columns each) are
// too few to occupy the threads. A fixed bound: the choice, and so the sums, never depend on the
// thread count.
constexpr std::int64_t kNarrowColumns = 2048;

// out[i] = sum_j x[j, i] over x: [rows, cols] with few columns (a bias gradient over many rows,
// where one slice per thread would leave threads idle): each block of kRowBlock rows is summed on
// its own, then the block sums are added in block order.
void reduce_rows_blocked(const float* x, std::int64_t rows, std::int64_t cols, float* out) {
  const std::int64_t blocks = (rows + kRowBlock - 1) / kRowBlock;
  std::vector<float> partial(static_cast<std::size_t>(blocks * cols), 0.0f);
  detail::parallel_for(blocks, 1, [&](std::int64_t b0, std::int64_t b1) {
    for (std::int64_t b = b0; b < b1; ++b) {
      float* dst = partial.data() + b * cols;
      for (std::int64_t j = b * kRowBlock; j < std::min(rows, (b + 1) * kRowBlock); ++j)
        for (std::int64_t i = 0; i < cols; ++i) dst[i] += x[j * cols + i];
    }
  });
  for (std::int64_t b = 0; b < blocks; ++b)
    for (std::int64_t i = 0; i < cols; ++i) out[i] += partial[b * cols + i];
}

// out[o, 0, i] = sum_j x[o, j, i]; keeps the reduced axis with extent 1.
Tensor reduce_axis(const Tensor& x, std::int64_t axis) {
  const detail::AxisSplit s = detail::split_at(x.shape(), axis);
  Shape out_shape = x.shape();
  out_shape[axis] = 1;
  Tensor out = Tensor::empty(out_shape);
  const float* px = x.data<float>();
  float* po = out.data<float>();
  if (s.inner == 1) {
    detail::parallel_for(s.outer, std::max<std::int64_t>(1, 4096 / std::max<std::int64_t>(s.dim, 1)),
                         [&](std::int64_t b, std::int64_t e) {
      for (std::int64_t o = b; o < e; ++o) {
        double acc = 0.0;
        for (std::int64_t j = 0; j < s.dim; ++j) acc += px[o * s.dim + j];
        po[o] = static_cast<float>(acc);
      }
    });
    return out;
  }
  if (s.outer == 1 && s.dim >= 2 * kRowBlock && s.inner <= kNarrowColumns) {
    reduce_rows_blocked(px, s.dim, s.inner, po);
    return out;
  }
  // Parallel over the kept inner extent so each thread writes its own slice of the output.
  detail::parallel_for(s.inner, 256, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t o = 0; o < s.outer; ++o) {
      float* dst = po + o * s.inner;
      for (std::int64_t j = 0; j < s.dim; ++j) {
        const float* src = px + (o * s.dim + j) * s.inner;
        for (std::int64_t i = b; i < e; ++i) dst[i] += src[i];
      }
    }
  });
  return out;
}

// Broadcasts g (whose shape is x's shape with some extents 1) up to `shape`.
Tensor expand_to(const Tensor& g, const Shape& shape) {
  if (g.shape() == shape) return g;
  return detail::map_binary(g, Tensor::zeros(shape), [](float a, float) { return a; });
}

std::vector<std::int64_t> normalized_dims(const std::vector<std::int64_t>& dims, std::int64_t rank) {
  std::vector<std::int64_t> out;
  for (std::int64_t d : dims) out.push_back(normalize_dim(d, rank));
  std::sort(out.begin(), out.end());
  SHIFTQ_CHECK(std::adjacent_find(out.begin(), out.end()) == out.end(), ShapeError,
               "sum/mean: repeated dim in the reduction dims");
  return out;
}

Shape reduced_shape(const Shape& shape, const std::vector<std::int64_t>& dims, bool keepdim) {
  Shape out;
  for (std::int64_t d = 0; d < static_cast<std::int64_t>(shape.size()); ++d) {
    const bool reduced = std::binary_search(dims.begin(), dims.end(), d);
    if (!reduced) out.push_back(shape[d]);
    else if (keepdim) out.push_back(1);
  }
  return out;
}
}  // namespace

Tensor sum(const Tensor& x, const std::vector<std::int64_t>& dims, bool keepdim) {
  detail::check_f32(x, "sum", "x");
  const std::vector<std::int64_t> axes = normalized_dims(dims, x.dim());
  Tensor out = x;
  for (std::int64_t axis : axes) out = reduce_axis(out, axis);
  if (axes.empty()) out = x.clone();
  const Shape kept_shape = out.shape();
  out = out.view(reduced_shape(x.shape(), axes, keepdim));
  return record("sum", out, {&x}, [kept_shape, in_shape = x.shape()](const Tensor& g) {
    return std::vector<Tensor>{expand_to(g.view(kept_shape), in_shape)};
  });
}

Tensor sum(const Tensor& x) {
  detail::check_f32(x, "sum", "x");
  const float* px = x.data<float>();
  double acc = 0.0;
  for (std::int64_t i = 0; i < x.numel(); ++i) acc += px[i];
  Tensor out = Tensor::scalar(static_cast<float>(acc));
  return record("sum_all", out, {&x}, [in_shape = x.shape()](const Tensor& g) {
    return std::vector<Tensor>{Tensor::full(in_shape, g.item())};
  });
}

Tensor mean(const Tensor& x) {
  detail::check_f32(x, "mean", "x");
  SHIFTQ_CHECK(x.numel() > 0, ShapeError, "mean: empty tensor ", x.str());
  return mul(sum(x), 1.0f / static_cast<float>(x.numel()));
}

Tensor mean(const Tensor& x, const std::vector<std::int64_t>& dims, bool keepdim) {
  detail::check_f32(x, "mean", "x");
  std::int64_t count = 1;
  for (std::int64_t d : normalized_dims(dims, x.dim())) count *= x.shape()[d];
  SHIFTQ_CHECK(count > 0, ShapeError, "mean: reduction over an empty extent of ", x.str());
  return mul(sum(x, dims, keepdim), 1.0f / static_cast<float>(count));
}

Tensor sum_to(const Tensor& x, const Shape& shape) {
  if (x.shape() == shape) return x;
  SHIFTQ_CHECK(broadcast_shapes(shape, x.shape()) == x.shape(), ShapeError, "sum_to: ",
               shape_str(x.shape()), " is not a broadcast of ", shape_str(shape));
  const std::int64_t lead = x.dim() - static_cast<std::int64_t>(shape.size());
  std::vector<std::int64_t> dims;
  for (std::int64_t d = 0; d < x.dim(); ++d)
    if (d < lead || (shape[d - lead] == 1 && x.shape()[d] != 1)) dims.push_back(d);
  return reshape(sum(x, dims, true), shape);
}

}  // namespace shiftq
