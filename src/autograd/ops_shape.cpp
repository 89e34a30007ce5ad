// Shape ops: reshape, flatten, permute/transpose, slice, concat. All outputs are contiguous.
#include <cstring>
#include <numeric>

#include "ops_util.hpp"
#include "shiftq/kernels/transpose.hpp"

namespace shiftq {

Tensor reshape(const Tensor& x, const Shape& shape) {
  check_defined(x, "reshape", "x");
  Shape target = shape;
  std::int64_t known = 1, infer = -1;
  for (std::size_t d = 0; d < target.size(); ++d) {
    if (target[d] == -1) {
      SHIFTQ_CHECK(infer < 0, ShapeError, "reshape: more than one -1 in ", shape_str(shape));
      infer = static_cast<std::int64_t>(d);
    } else {
      SHIFTQ_CHECK(target[d] >= 0, ShapeError, "reshape: negative extent in ", shape_str(shape));
      known *= target[d];
    }
  }
  if (infer >= 0) {
    SHIFTQ_CHECK(known > 0 && x.numel() % known == 0, ShapeError, "reshape: cannot reshape ",
                 x.str(), " to ", shape_str(shape));
    target[infer] = x.numel() / known;
  }
  SHIFTQ_CHECK(shape_numel(target) == x.numel(), ShapeError, "reshape: cannot reshape ", x.str(),
               " to ", shape_str(shape));
  Tensor out = x.view(target);
  return record("reshape", out, {&x}, [in_shape = x.shape()](const Tensor& g) {
    return std::vector<Tensor>{g.view(in_shape)};
  });
}

Tensor flatten(const Tensor& x, std::int64_t start_dim) {
  check_defined(x, "flatten", "x");
  const std::int64_t start = normalize_dim(start_dim, x.dim());
  Shape shape(x.shape().begin(), x.shape().begin() + start);
  shape.push_back(-1);
  return reshape(x, shape);
}

namespace {
// Whether perm keeps every axis but swaps the last two (a batch of matrix transposes).
bool swaps_last_two(const std::vector<std::int64_t>& perm) {
  const std::int64_t rank = static_cast<std::int64_t>(perm.size());
  if (rank < 2 || perm[rank - 1] != rank - 2 || perm[rank - 2] != rank - 1) return false;
  for (std::int64_t d = 0; d + 2 < rank; ++d)
    if (perm[d] != d) return false;
  return true;
}

Tensor permute_copy(const Tensor& x, const std::vector<std::int64_t>& perm) {
  const std::int64_t rank = x.dim();
  Shape out_shape(rank);
  for (std::int64_t d = 0; d < rank; ++d) out_shape[d] = x.shape()[perm[d]];
  Tensor out = Tensor::uninitialized(out_shape);
  if (out.numel() == 0) return out;
  if (swaps_last_two(perm)) {  // blocked SIMD transposes of row blocks of each matrix
    const std::int64_t rows = x.size(-2), cols = x.size(-1), batch = x.numel() / (rows * cols);
    constexpr std::int64_t kRowBlock = 64;
    const std::int64_t blocks = (rows + kRowBlock - 1) / kRowBlock;
    const float* px = x.data<float>();
    float* po = out.data<float>();
    detail::parallel_for(batch * blocks, std::max<std::int64_t>(1, 8192 / (kRowBlock * cols)),
                         [&](std::int64_t t0, std::int64_t t1) {
      for (std::int64_t t = t0; t < t1; ++t) {
        const std::int64_t i = t / blocks, r0 = (t % blocks) * kRowBlock, r1 = std::min(rows, r0 + kRowBlock);
        // rows [r0, r1) of matrix i -> columns [r0, r1) of its transpose
        kernels::transpose_f32(px + (i * rows + r0) * cols, cols, po + i * rows * cols + r0, rows, r1 - r0, cols);
      }
    });
    return out;
  }
  const Shape in_strides = x.strides();
  Shape src_strides(rank);  // stride in x of each output dim
  for (std::int64_t d = 0; d < rank; ++d) src_strides[d] = in_strides[perm[d]];
  const float* px = x.data<float>();
  float* po = out.data<float>();
  const std::int64_t inner = out_shape.back(), rows = out.numel() / inner, step = src_strides.back();
  detail::parallel_for(rows, std::max<std::int64_t>(1, 8192 / inner), [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t r = b; r < e; ++r) {
      std::int64_t rest = r, offset = 0;
      for (std::int64_t d = rank - 2; d >= 0; --d) {
        offset += (rest % out_shape[d]) * src_strides[d];
        rest /= out_shape[d];
      }
      float* dst = po + r * inner;
      for (std::int64_t j = 0; j < inner; ++j) dst[j] = px[offset + j * step];
    }
  });
  return out;
}
}  // namespace

Tensor permute(const Tensor& x, const std::vector<std::int64_t>& dims) {
  detail::check_f32(x, "permute", "x");
  SHIFTQ_CHECK(static_cast<std::int64_t>(dims.size()) == x.dim(), ShapeError, "permute: ",
               dims.size(), " dims given for ", x.str());
  std::vector<std::int64_t> perm(dims.size()), inverse(dims.size());
  std::vector<bool> seen(dims.size(), false);
  for (std::size_t d = 0; d < dims.size(); ++d) {
    perm[d] = normalize_dim(dims[d], x.dim());
    SHIFTQ_CHECK(!seen[perm[d]], ShapeError, "permute: dim ", perm[d], " repeated");
    seen[perm[d]] = true;
    inverse[perm[d]] = static_cast<std::int64_t>(d);
  }
  Tensor out = permute_copy(x, perm);
  return record("permute", out, {&x}, [inverse](const Tensor& g) {
    return std::vector<Tensor>{permute_copy(g, inverse)};
  });
}

Tensor transpose(const Tensor& x, std::int64_t dim0, std::int64_t dim1) {
  check_defined(x, "transpose", "x");
  std::vector<std::int64_t> perm(x.dim());
  std::iota(perm.begin(), perm.end(), 0);
  std::swap(perm[normalize_dim(dim0, x.dim())], perm[normalize_dim(dim1, x.dim())]);
  return permute(x, perm);
}

namespace {
// Copies a [outer, count, inner] block between tensors that differ only along one axis.
void copy_axis_block(const float* src, std::int64_t src_dim, std::int64_t src_start, float* dst,
                     std::int64_t dst_dim, std::int64_t dst_start, std::int64_t count,
                     std::int64_t outer, std::int64_t inner) {
  for (std::int64_t o = 0; o < outer; ++o)
    std::memcpy(dst + (o * dst_dim + dst_start) * inner, src + (o * src_dim + src_start) * inner,
                static_cast<std::size_t>(count * inner) * sizeof(float));
}
}  // namespace

Tensor slice(const Tensor& x, std::int64_t dim, std::int64_t start, std::int64_t end) {
  detail::check_f32(x, "slice", "x");
  const std::int64_t axis = normalize_dim(dim, x.dim());
  const std::int64_t extent = x.shape()[axis];
  SHIFTQ_CHECK(0 <= start && start <= end && end <= extent, ShapeError, "slice: range [", start, ", ",
               end, ") out of bounds for dim ", axis, " of ", x.str());
  Shape out_shape = x.shape();
  out_shape[axis] = end - start;
  Tensor out = Tensor::uninitialized(out_shape);
  const detail::AxisSplit s = detail::split_at(x.shape(), axis);
  copy_axis_block(x.data<float>(), extent, start, out.data<float>(), end - start, 0, end - start,
                  s.outer, s.inner);
  return record("slice", out, {&x}, [in_shape = x.shape(), axis, start, end, s](const Tensor& g) {
    Tensor dx = Tensor::zeros(in_shape);
    copy_axis_block(g.data<float>(), end - start, 0, dx.data<float>(), in_shape[axis], start,
                    end - start, s.outer, s.inner);
    return std::vector<Tensor>{dx};
  });
}

Tensor concat(const std::vector<Tensor>& xs, std::int64_t dim) {
  SHIFTQ_CHECK(!xs.empty(), ShapeError, "concat: no tensors given");
  for (const Tensor& x : xs) detail::check_f32(x, "concat", "xs[i]");
  const std::int64_t axis = normalize_dim(dim, xs[0].dim());
  Shape out_shape = xs[0].shape();
  out_shape[axis] = 0;
  for (const Tensor& x : xs) {
    Shape a = x.shape(), b = xs[0].shape();
    SHIFTQ_CHECK(a.size() == b.size(), ShapeError, "concat: rank mismatch ", x.str(), " vs ", xs[0].str());
    a[axis] = b[axis] = 0;
    SHIFTQ_CHECK(a == b, ShapeError, "concat: shapes ", x.str(), " and ", xs[0].str(),
                 " differ outside dim ", axis);
    out_shape[axis] += x.shape()[axis];
  }
  Tensor out = Tensor::uninitialized(out_shape);
  const detail::AxisSplit s = detail::split_at(out_shape, axis);
  std::vector<std::int64_t> starts;
  std::int64_t offset = 0;
  for (const Tensor& x : xs) {
    starts.push_back(offset);
    copy_axis_block(x.data<float>(), x.shape()[axis], 0, out.data<float>(), out_shape[axis], offset,
                    x.shape()[axis], s.outer, s.inner);
    offset += x.shape()[axis];
  }
  std::vector<Shape> shapes;
  for (const Tensor& x : xs) shapes.push_back(x.shape());
  return record("concat", out, xs, [shapes, starts, axis, s, total = out_shape[axis]](const Tensor& g) {
    std::vector<Tensor> grads;
    for (std::size_t i = 0; i < shapes.size(); ++i) {
      Tensor dx = Tensor::uninitialized(shapes[i]);
      copy_axis_block(g.data<float>(), total, starts[i], dx.data<float>(), shapes[i][axis], 0,
                      shapes[i][axis], s.outer, s.inner);
      grads.push_back(dx);
    }
    return grads;
  });
}

}  // namespace shiftq
