#include "shiftq/nn/module.hpp"

#include <algorithm>

namespace shiftq::nn {

Tensor Module::forward(const Tensor&) {
  throw Error(detail::cat(type_name_, " has no one-input forward(); call its own forward overload"));
}

void Module::check_new_name(const std::string& name) const {
  SHIFTQ_CHECK(!name.empty() && name.find('.') == std::string::npos, ValueError, type_name_,
               ": invalid member name '", name, "' (must be non-empty and contain no '.')");
  auto taken = [&](const auto& list) {
    return std::any_of(list.begin(), list.end(), [&](const auto& kv) { return kv.first == name; });
  };
  SHIFTQ_CHECK(!taken(parameters_) && !taken(buffers_) && !taken(children_), ValueError, type_name_,
               ": name '", name, "' registered twice");
}

Tensor Module::register_parameter(const std::string& name, Tensor tensor, bool requires_grad) {
  check_new_name(name);
  check_dtype(tensor, DType::f32, "register_parameter", name.c_str());
  tensor.set_requires_grad(requires_grad);
  tensor.set_name(name);
  parameters_.emplace_back(name, tensor);
  return tensor;
}

Tensor Module::register_buffer(const std::string& name, Tensor tensor, bool optional) {
  check_new_name(name);
  check_defined(tensor, "register_buffer", name.c_str());
  tensor.set_name(name);
  buffers_.emplace_back(name, tensor);
  if (optional) optional_buffers_.push_back(name);
  return tensor;
}

void Module::replace_buffer(const std::string& name, Tensor tensor) {
  check_defined(tensor, "replace_buffer", name.c_str());
  auto it = std::find_if(buffers_.begin(), buffers_.end(), [&](const auto& kv) { return kv.first == name; });
  SHIFTQ_CHECK(it != buffers_.end(), ValueError, type_name_, ": no buffer '", name, "' to replace");
  tensor.set_name(name);
  it->second = std::move(tensor);
}

bool Module::has_buffer(const std::string& name) const {
  return std::any_of(buffers_.begin(), buffers_.end(), [&](const auto& kv) { return kv.first == name; });
}

void Module::collect_optional(const std::string& prefix, std::vector<std::string>& out) const {
  for (const std::string& name : optional_buffers_) out.push_back(prefix + name);
  for (const auto& [name, child] : children_) child->collect_optional(prefix + name + ".", out);
}

void Module::add_child(const std::string& name, std::shared_ptr<Module> module) {
  check_new_name(name);
  SHIFTQ_CHECK(module != nullptr, ValueError, type_name_, ": child module '", name, "' is null");
  children_.emplace_back(name, std::move(module));
}

void Module::collect(const std::string& prefix, bool params, bool recurse, NamedTensors& out) const {
  for (const auto& [name, t] : params ? parameters_ : buffers_) out.emplace_back(prefix + name, t);
  if (!recurse) return;
  for (const auto& [name, child] : children_) child->collect(prefix + name + ".", params, true, out);
}

NamedTensors Module::named_parameters(bool recurse) const {
  NamedTensors out;
  collect("", true, recurse, out);
  return out;
}

std::vector<Tensor> Module::parameters(bool recurse) const {
  std::vector<Tensor> out;
  for (auto& [name, t] : named_parameters(recurse)) out.push_back(t);
  return out;
}

NamedTensors Module::named_buffers(bool recurse) const {
  NamedTensors out;
  collect("", false, recurse, out);
  return out;
}

std::int64_t Module::num_parameters() const {
  std::int64_t n = 0;
  for (const auto& [name, t] : named_parameters()) n += t.numel();
  return n;
}

void Module::train(bool on) {
  training_ = on;
  for (auto& [name, child] : children_) child->train(on);
}

void Module::zero_grad() {
  for (auto& [name, t] : named_parameters()) t.zero_grad();
}

std::map<std::string, Tensor> Module::state_dict() const {
  std::map<std::string, Tensor> out;
  for (auto& [name, t] : named_parameters()) out.emplace(name, t);
  for (auto& [name, t] : named_buffers()) out.emplace(name, t);
  return out;
}

std::vector<std::string> Module::load_state_dict(const std::map<std::string, Tensor>& state, bool strict) {
  const std::map<std::string, Tensor> own = state_dict();
  std::vector<std::string> optional, absent;
  collect_optional("", optional);
  // Validate everything first so a failed load leaves the module untouched.
  for (const auto& [name, dst] : own) {
    auto it = state.find(name);
    if (it == state.end()) {
      const bool may_lack = std::find(optional.begin(), optional.end(), name) != optional.end();
      SHIFTQ_CHECK(!strict || may_lack, ValueError, "load_state_dict: missing key '", name, "'");
      if (may_lack) absent.push_back(name);
      continue;
    }
    SHIFTQ_CHECK(it->second.defined() && it->second.shape() == dst.shape() &&
                     it->second.dtype() == dst.dtype(),
                 ShapeError, "load_state_dict: '", name, "' is ", it->second.str(), ", the module expects ",
                 dst.str());
  }
  if (strict)
    for (const auto& [name, src] : state)
      SHIFTQ_CHECK(own.count(name), ValueError, "load_state_dict: unexpected key '", name, "'");
  for (const auto& [name, dst] : own) {
    auto it = state.find(name);
    if (it != state.end()) Tensor(dst).copy_(it->second);
  }
  return absent;
}

}  // namespace shiftq::nn
