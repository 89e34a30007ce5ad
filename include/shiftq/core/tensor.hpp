// Tensor: a value handle to shared, contiguous, row-major storage (batch first).
//
// Copying a Tensor copies the handle, not the data (like torch::Tensor). Every tensor is contiguous:
// reshape() shares storage, while transpose/permute/slice produce new tensors. A tensor holds an
// opaque handle to its autograd state; the state, the methods below that use it and the tape live
// in shiftq/autograd (src/autograd/engine.cpp).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "shiftq/core/dtype.hpp"
#include "shiftq/core/error.hpp"
#include "shiftq/core/shape.hpp"

namespace shiftq {

class Generator;
class Tensor;
struct Node;  // autograd graph node, defined in shiftq/autograd/node.hpp

// 64-byte aligned buffer shared by tensor handles, zero-initialized unless asked otherwise.
class Storage {
 public:
  explicit Storage(std::size_t nbytes, bool zero_fill = true);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() { return data_; }
  const void* data() const { return data_; }
  std::size_t nbytes() const { return nbytes_; }
  // Incremented by every in-place update made through shiftq (fill_, copy_, optimizer steps), so
  // caches derived from the data (packed quantized weights) know when they are stale.
  std::uint64_t version() const { return version_; }
  void bump_version() { ++version_; }

 private:
  void* data_ = nullptr;
  std::size_t nbytes_ = 0;
  std::size_t block_bytes_ = 0;  // the allocated block (>= nbytes_: a reused block may be larger)
  std::uint64_t version_ = 0;
};

// The autograd layer's state of a tensor (requires_grad, grad, grad_fn, name): defined and created
// by shiftq/autograd (node.hpp); core holds only this opaque handle.
struct AutogradMeta;

class Tensor {
 public:
  Tensor() = default;  // undefined tensor (defined() == false)

  // ---- factories (no autograd history) ----
  static Tensor empty(const Shape& shape, DType dtype = DType::f32);  // zero-filled
  // Contents unspecified: for outputs a kernel overwrites completely (saves a memory pass).
  static Tensor uninitialized(const Shape& shape, DType dtype = DType::f32);
  static Tensor zeros(const Shape& shape, DType dtype = DType::f32);
  static Tensor ones(const Shape& shape);
  static Tensor full(const Shape& shape, float value);
  static Tensor scalar(float value);
  static Tensor from_vector(const std::vector<float>& values, const Shape& shape);
  static Tensor from_vector(const std::vector<std::int32_t>& values, const Shape& shape);
  static Tensor arange(std::int64_t n);                             // f32 0..n-1
  static Tensor randn(const Shape& shape, Generator& gen, float std = 1.0f);
  static Tensor uniform(const Shape& shape, float lo, float hi, Generator& gen);

  // ---- properties ----
  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  Shape strides() const { return contiguous_strides(shape_); }
  std::int64_t dim() const { return static_cast<std::int64_t>(shape_.size()); }
  std::int64_t size(std::int64_t d) const;  // negative d counts from the end
  std::int64_t numel() const { return numel_; }
  DType dtype() const { return dtype_; }
  std::size_t nbytes() const { return static_cast<std::size_t>(numel_) * dtype_size(dtype_); }
  std::string str() const;  // "Tensor[f32, [2, 3]]"

  // Typed access to the elements; throws DTypeError when T does not match dtype().
  template <class T>
  T* data() {
    check_access(dtype_of<T>);
    return static_cast<T*>(storage_->data());
  }
  template <class T>
  const T* data() const {
    check_access(dtype_of<T>);
    return static_cast<const T*>(storage_->data());
  }
  template <class T>
  std::vector<T> to_vector() const {
    const T* p = data<T>();
    return std::vector<T>(p, p + numel_);
  }
  // The elements' bytes whatever the dtype (nbytes() of them), for serialization and transport;
  // null for an undefined tensor. Writers must call bump_version().
  unsigned char* raw_bytes() { return storage_ ? static_cast<unsigned char*>(storage_->data()) : nullptr; }
  const unsigned char* raw_bytes() const {
    return storage_ ? static_cast<const unsigned char*>(storage_->data()) : nullptr;
  }
  // The value of a one-element f32 tensor.
  float item() const;
  // Element at a multi-index of an f32 tensor (slow; for tests and debugging).
  float at(std::initializer_list<std::int64_t> index) const;

  // ---- copies and views ----
  Tensor clone() const;                     // deep copy, no autograd history
  Tensor detach() const;                    // same storage, no autograd history
  Tensor view(const Shape& shape) const;    // same storage, new shape (same numel), no history
  Tensor to(DType dtype) const;             // converted copy (float -> int rounds to nearest-even, saturating)
  bool shares_storage(const Tensor& other) const { return storage_ == other.storage_; }
  // Identity and version of the storage (see Storage::version). Code that writes through data()
  // directly must call bump_version() so that caches notice.
  const void* storage_id() const { return storage_.get(); }
  // A handle on the storage that does not keep it alive: it expires when the storage is freed, so
  // a cache keyed by it cannot take a new storage at a reused address for this one.
  std::weak_ptr<const void> storage_token() const { return storage_; }
  // True when this handle is the only one referring to its storage (nothing else can see writes).
  bool storage_is_unique() const { return storage_ && storage_.use_count() == 1; }
  std::uint64_t version() const { return storage_ ? storage_->version() : 0; }
  void bump_version() {
    if (storage_) storage_->bump_version();
  }
  void fill_(float value);
  void copy_(const Tensor& src);            // same shape and dtype
  // Throws NumericError naming `what` if any element is NaN or Inf (f32 only; integer tensors pass).
  void check_finite(const std::string& what) const;
  bool all_finite() const;

  // ---- autograd (defined by the autograd layer) ----
  bool requires_grad() const;
  Tensor& set_requires_grad(bool requires_grad = true);  // leaves only
  bool is_leaf() const;
  // Accumulated gradient of a leaf (undefined before the first backward()).
  Tensor grad() const;
  void set_grad(const Tensor& grad);
  void zero_grad();  // drops the accumulated gradient
  const std::shared_ptr<Node>& grad_fn() const;
  // Reverse-mode differentiation from this tensor. A scalar output needs no gradient argument.
  void backward() const;
  void backward(const Tensor& gradient, bool retain_graph = false) const;
  const std::string& name() const;
  Tensor& set_name(const std::string& name);

  // The autograd state (created on demand by the autograd layer; null before).
  const std::shared_ptr<AutogradMeta>& meta() const { return meta_; }
  AutogradMeta& mutable_meta();

 private:
  Tensor(std::shared_ptr<Storage> storage, Shape shape, DType dtype);
  void check_access(DType requested) const;

  std::shared_ptr<Storage> storage_;
  Shape shape_;
  std::int64_t numel_ = 0;
  DType dtype_ = DType::f32;
  std::shared_ptr<AutogradMeta> meta_;
};

// Throws ShapeError/DTypeError with `op` in the message unless t is defined and matches.
void check_defined(const Tensor& t, const char* op, const char* arg);
void check_dtype(const Tensor& t, DType dtype, const char* op, const char* arg);
void check_rank(const Tensor& t, std::int64_t rank, const char* op, const char* arg);
void check_same_shape(const Tensor& a, const Tensor& b, const char* op);

}  // namespace shiftq
