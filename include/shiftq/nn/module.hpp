// Module: the base of every layer. Named parameters and buffers, child modules, train()/eval(),
// state_dict() keyed by dotted names ("layer1.0.conv1.weight"), as in libtorch but without the
// Impl/Holder split: modules are plain classes held by std::shared_ptr.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "shiftq/core/arg.hpp"
#include "shiftq/core/tensor.hpp"

namespace shiftq::nn {

using shiftq::NamedTensors;

class Module {
 public:
  explicit Module(std::string type_name = "Module") : type_name_(std::move(type_name)) {}
  virtual ~Module() = default;
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // One-input modules override this; Sequential chains it. Throws for modules without one.
  virtual Tensor forward(const Tensor& x);
  Tensor operator()(const Tensor& x) { return forward(x); }

  const std::string& type_name() const { return type_name_; }

  // Parameters of this module and (recursively) its children, in registration order.
  NamedTensors named_parameters(bool recurse = true) const;
  std::vector<Tensor> parameters(bool recurse = true) const;
  NamedTensors named_buffers(bool recurse = true) const;
  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& named_children() const {
    return children_;
  }
  std::int64_t num_parameters() const;

  // Training mode (dropout active, batch statistics in BatchNorm), recursively.
  virtual void train(bool on = true);
  void eval() { train(false); }
  bool is_training() const { return training_; }

  void zero_grad();

  // Parameters and buffers by dotted name. The tensors share storage with the module.
  std::map<std::string, Tensor> state_dict() const;
  // Copies values into the module's tensors. With `strict`, every key must match exactly, except
  // optional buffers (register_buffer(..., optional = true)), which may be absent: they keep their
  // values and their names are returned (state that older checkpoints did not save). Shape or
  // dtype mismatches always throw (nothing is modified when a check fails).
  std::vector<std::string> load_state_dict(const std::map<std::string, Tensor>& state, bool strict = true);

  // Registers non-trainable state (running statistics, counters) under `name`; returns the handle.
  // Public, as in libtorch, so that code outside the module (nn::quantize_model) can attach state.
  // `optional`: a state dict without it still loads (see load_state_dict).
  Tensor register_buffer(const std::string& name, Tensor tensor, bool optional = false);
  bool has_buffer(const std::string& name) const;
  // Points the registered buffer `name` at `tensor` (state that was rebuilt); ValueError if absent.
  void replace_buffer(const std::string& name, Tensor tensor);

 protected:
  // Registers `tensor` as a trainable parameter (sets requires_grad and its name); returns the handle.
  Tensor register_parameter(const std::string& name, Tensor tensor, bool requires_grad = true);
  template <class M>
  std::shared_ptr<M> register_module(const std::string& name, std::shared_ptr<M> module) {
    add_child(name, module);
    return module;
  }

 private:
  void add_child(const std::string& name, std::shared_ptr<Module> module);
  void check_new_name(const std::string& name) const;
  void collect(const std::string& prefix, bool params, bool recurse, NamedTensors& out) const;
  void collect_optional(const std::string& prefix, std::vector<std::string>& out) const;

  std::string type_name_;
  bool training_ = true;
  NamedTensors parameters_;
  NamedTensors buffers_;
  std::vector<std::string> optional_buffers_;  // names in buffers_ that a state dict may lack
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
};

}  // namespace shiftq::nn
