#include "shiftq/core/tensor.hpp"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "core/block_cache.hpp"
#include "core/parallel_for.hpp"
#include "shiftq/core/generator.hpp"

namespace shiftq {

// ---- Storage ----------------------------------------------------------------------------------

Storage::Storage(std::size_t nbytes, bool zero_fill) : nbytes_(nbytes) {
  const std::size_t size = detail::block_size(nbytes);
  data_ = detail::allocate_block(size, &block_bytes_);
  if (zero_fill) std::memset(data_, 0, size);
}

Storage::~Storage() { detail::free_block(data_, block_bytes_); }

// ---- construction -----------------------------------------------------------------------------

Tensor::Tensor(std::shared_ptr<Storage> storage, Shape shape, DType dtype)
    : storage_(std::move(storage)), shape_(std::move(shape)), numel_(shape_numel(shape_)), dtype_(dtype) {}

Tensor Tensor::empty(const Shape& shape, DType dtype) {
  const std::int64_t n = shape_numel(shape);
  return Tensor(std::make_shared<Storage>(static_cast<std::size_t>(n) * dtype_size(dtype)), shape, dtype);
}

Tensor Tensor::uninitialized(const Shape& shape, DType dtype) {
  const std::int64_t n = shape_numel(shape);
  return Tensor(std::make_shared<Storage>(static_cast<std::size_t>(n) * dtype_size(dtype), false), shape, dtype);
}

Tensor Tensor::zeros(const Shape& shape, DType dtype) { return empty(shape, dtype); }

Tensor Tensor::ones(const Shape& shape) { return full(shape, 1.0f); }

Tensor Tensor::full(const Shape& shape, float value) {
  Tensor t = empty(shape);
  t.fill_(value);
  return t;
}

Tensor Tensor::scalar(float value) { return full({}, value); }

Tensor Tensor::from_vector(const std::vector<float>& values, const Shape& shape) {
  Tensor t = empty(shape);
  SHIFTQ_CHECK(static_cast<std::int64_t>(values.size()) == t.numel(), ShapeError, "from_vector: ",
               values.size(), " values do not fill shape ", shape_str(shape));
  std::memcpy(t.data<float>(), values.data(), values.size() * sizeof(float));
  return t;
}

Tensor Tensor::from_vector(const std::vector<std::int32_t>& values, const Shape& shape) {
  Tensor t = empty(shape, DType::s32);
  SHIFTQ_CHECK(static_cast<std::int64_t>(values.size()) == t.numel(), ShapeError, "from_vector: ",
               values.size(), " values do not fill shape ", shape_str(shape));
  std::memcpy(t.data<std::int32_t>(), values.data(), values.size() * sizeof(std::int32_t));
  return t;
}

Tensor Tensor::arange(std::int64_t n) {
  Tensor t = empty({n});
  float* p = t.data<float>();
  for (std::int64_t i = 0; i < n; ++i) p[i] = static_cast<float>(i);
  return t;
}

Tensor Tensor::randn(const Shape& shape, Generator& gen, float std) {
  Tensor t = empty(shape);
  float* p = t.data<float>();
  for (std::int64_t i = 0; i < t.numel(); ++i) p[i] = std * gen.normal();
  return t;
}

Tensor Tensor::uniform(const Shape& shape, float lo, float hi, Generator& gen) {
  SHIFTQ_CHECK(lo <= hi, ValueError, "Tensor::uniform: lo (", lo, ") > hi (", hi, ")");
  Tensor t = empty(shape);
  float* p = t.data<float>();
  for (std::int64_t i = 0; i < t.numel(); ++i) p[i] = gen.uniform(lo, hi);
  return t;
}

// ---- properties -------------------------------------------------------------------------------

std::int64_t Tensor::size(std::int64_t d) const { return shape_[normalize_dim(d, dim())]; }

std::string Tensor::str() const {
  if (!defined()) return "Tensor[undefined]";
  return detail::cat("Tensor[", dtype_name(dtype_), ", ", shape_str(shape_), "]");
}

void Tensor::check_access(DType requested) const {
  SHIFTQ_CHECK(defined(), Error, "access to the data of an undefined tensor");
  SHIFTQ_CHECK(requested == dtype_, DTypeError, "tensor ", name().empty() ? str() : name(),
               " holds ", dtype_name(dtype_), ", accessed as ", dtype_name(requested));
}

float Tensor::item() const {
  SHIFTQ_CHECK(numel_ == 1, ShapeError, "item() needs a one-element tensor, got ", str());
  return data<float>()[0];
}

float Tensor::at(std::initializer_list<std::int64_t> index) const {
  SHIFTQ_CHECK(static_cast<std::int64_t>(index.size()) == dim(), ShapeError, "at(): ", index.size(),
               " indices for ", str());
  std::int64_t offset = 0, d = 0;
  for (std::int64_t i : index) {
    SHIFTQ_CHECK(i >= 0 && i < shape_[d], ShapeError, "at(): index ", i, " out of range for dim ", d,
                 " of ", str());
    offset = offset * shape_[d] + i;
    ++d;
  }
  return data<float>()[offset];
}

// ---- copies -----------------------------------------------------------------------------------

Tensor Tensor::clone() const {
  check_defined(*this, "clone", "self");
  Tensor t = uninitialized(shape_, dtype_);
  std::memcpy(t.storage_->data(), storage_->data(), nbytes());
  return t;
}

Tensor Tensor::detach() const { return Tensor(storage_, shape_, dtype_); }

Tensor Tensor::view(const Shape& shape) const {
  check_defined(*this, "view", "self");
  SHIFTQ_CHECK(shape_numel(shape) == numel_, ShapeError, "view: cannot view ", str(), " as ",
               shape_str(shape));
  return Tensor(storage_, shape, dtype_);
}

namespace {
template <class To>
To saturate_round(float v) {
  if (std::isnan(v)) throw NumericError("Tensor::to: NaN cannot be converted to an integer type");
  const double r = std::nearbyint(static_cast<double>(v));
  const double lo = static_cast<double>(std::numeric_limits<To>::lowest());
  const double hi = static_cast<double>(std::numeric_limits<To>::max());
  return static_cast<To>(std::min(hi, std::max(lo, r)));
}

template <class From, class To>
void convert(const From* src, To* dst, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) {
    if constexpr (std::is_same_v<From, float> && !std::is_same_v<To, float>)
      dst[i] = saturate_round<To>(src[i]);
    else
      dst[i] = static_cast<To>(src[i]);
  }
}

template <class From>
void convert_to(const From* src, Tensor& dst) {
  switch (dst.dtype()) {
    case DType::f32: return convert(src, dst.data<float>(), dst.numel());
    case DType::s32: return convert(src, dst.data<std::int32_t>(), dst.numel());
    case DType::s8: return convert(src, dst.data<std::int8_t>(), dst.numel());
    case DType::u8: return convert(src, dst.data<std::uint8_t>(), dst.numel());
  }
}
}  // namespace

Tensor Tensor::to(DType dtype) const {
  check_defined(*this, "to", "self");
  if (dtype == dtype_) return clone();
  SHIFTQ_CHECK(dtype == DType::f32 || dtype_ == DType::f32 || dtype_size(dtype) >= dtype_size(dtype_),
               DTypeError, "to: narrowing integer conversion ", dtype_name(dtype_), " -> ",
               dtype_name(dtype), " is not supported");
  Tensor out = empty(shape_, dtype);
  switch (dtype_) {
    case DType::f32: convert_to(data<float>(), out); break;
    case DType::s32: convert_to(data<std::int32_t>(), out); break;
    case DType::s8: convert_to(data<std::int8_t>(), out); break;
    case DType::u8: convert_to(data<std::uint8_t>(), out); break;
  }
  return out;
}

void Tensor::fill_(float value) {
  check_dtype(*this, DType::f32, "fill_", "self");
  float* p = data<float>();
  detail::parallel_for(numel_, 1 << 16, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t i = b; i < e; ++i) p[i] = value;
  });
  bump_version();
}

void Tensor::copy_(const Tensor& src) {
  check_defined(src, "copy_", "src");
  SHIFTQ_CHECK(src.shape_ == shape_ && src.dtype_ == dtype_, ShapeError, "copy_: source ", src.str(),
               " does not match destination ", str());
  if (src.storage_ != storage_) std::memcpy(storage_->data(), src.storage_->data(), nbytes());
  bump_version();
}

bool Tensor::all_finite() const {
  if (dtype_ != DType::f32) return true;
  const float* p = data<float>();
  bool finite = true;
  for (std::int64_t i = 0; i < numel_; ++i) finite &= std::isfinite(p[i]);
  return finite;
}

void Tensor::check_finite(const std::string& what) const {
  if (all_finite()) return;
  const float* p = data<float>();
  std::int64_t bad = 0;
  while (std::isfinite(p[bad])) ++bad;
  throw NumericError(detail::cat(what, ": non-finite value ", p[bad], " at flat index ", bad, " of ",
                                 str()));
}

// ---- checks -----------------------------------------------------------------------------------

void check_defined(const Tensor& t, const char* op, const char* arg) {
  SHIFTQ_CHECK(t.defined(), ValueError, op, ": argument '", arg, "' is an undefined tensor");
}

void check_dtype(const Tensor& t, DType dtype, const char* op, const char* arg) {
  check_defined(t, op, arg);
  SHIFTQ_CHECK(t.dtype() == dtype, DTypeError, op, ": argument '", arg, "' must be ",
               dtype_name(dtype), ", got ", t.str());
}

void check_rank(const Tensor& t, std::int64_t rank, const char* op, const char* arg) {
  check_defined(t, op, arg);
  SHIFTQ_CHECK(t.dim() == rank, ShapeError, op, ": argument '", arg, "' must have rank ", rank,
               ", got ", t.str());
}

void check_same_shape(const Tensor& a, const Tensor& b, const char* op) {
  check_defined(a, op, "a");
  check_defined(b, op, "b");
  SHIFTQ_CHECK(a.shape() == b.shape(), ShapeError, op, ": shape mismatch ", shape_str(a.shape()),
               " vs ", shape_str(b.shape()));
}

}  // namespace shiftq
