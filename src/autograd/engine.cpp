// The backward engine: topological order over the recorded nodes, gradient accumulation.
#include <unordered_map>
#include <unordered_set>

#include "core/parallel_for.hpp"
#include "shiftq/autograd/node.hpp"

namespace shiftq {
namespace {
thread_local bool t_grad_mode = true;
thread_local GradReadyHook t_grad_ready_hook;

void accumulate_into(Tensor& acc, const Tensor& g) {
  float* a = acc.data<float>();
  const float* b = g.data<float>();
  detail::parallel_for(acc.numel(), 1 << 15, [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i) a[i] += b[i];
  });
  acc.bump_version();  // what was noted about the first gradient (its ranges) no longer holds
}

// Metas reachable from `root` through grad_fn edges, in reverse topological order (root first).
std::vector<AutogradMeta*> reverse_topological_order(AutogradMeta* root) {
  std::vector<AutogradMeta*> post_order;
  std::unordered_set<AutogradMeta*> visited;
  std::vector<std::pair<AutogradMeta*, std::size_t>> stack{{root, 0}};
  visited.insert(root);
  while (!stack.empty()) {
    auto& [meta, next_input] = stack.back();
    const Node* node = meta->grad_fn.get();
    if (node && next_input < node->inputs.size()) {
      AutogradMeta* child = node->inputs[next_input++].get();
      if (child && visited.insert(child).second) stack.push_back({child, 0});
      continue;
    }
    post_order.push_back(meta);
    stack.pop_back();
  }
  return {post_order.rbegin(), post_order.rend()};
}
}  // namespace

Node::~Node() {
  // Nodes that only this teardown still owns; their inputs are released here, in a loop, so that
  // each destructor invoked below finds no inputs left to recurse into.
  std::vector<std::shared_ptr<Node>> pending;
  auto release_inputs = [&pending](std::vector<std::shared_ptr<AutogradMeta>>& metas) {
    for (std::shared_ptr<AutogradMeta>& meta : metas) {
      if (meta && meta.use_count() == 1 && meta->grad_fn) pending.push_back(std::move(meta->grad_fn));
      meta.reset();
    }
  };
  release_inputs(inputs);
  while (!pending.empty()) {
    std::shared_ptr<Node> node = std::move(pending.back());
    pending.pop_back();
    if (node.use_count() == 1) release_inputs(node->inputs);
  }
}

bool grad_mode_enabled() { return t_grad_mode; }

NoGradGuard::NoGradGuard() : previous_(t_grad_mode) { t_grad_mode = false; }
NoGradGuard::~NoGradGuard() { t_grad_mode = previous_; }

GradReadyHookGuard::GradReadyHookGuard(GradReadyHook hook) : previous_(std::move(t_grad_ready_hook)) {
  t_grad_ready_hook = std::move(hook);
}
GradReadyHookGuard::~GradReadyHookGuard() { t_grad_ready_hook = std::move(previous_); }

bool any_requires_grad(std::initializer_list<const Tensor*> inputs) {
  if (!t_grad_mode) return false;
  for (const Tensor* t : inputs)
    if (t && t->defined() && t->requires_grad()) return true;
  return false;
}

Tensor record(const char* op_name, Tensor output, const std::vector<Tensor>& inputs,
              Node::BackwardFn backward) {
  if (!t_grad_mode) return output;
  bool needed = false;
  for (const Tensor& t : inputs) needed |= t.defined() && t.requires_grad();
  if (!needed) return output;
  auto node = std::make_shared<Node>();
  node->op_name = op_name;
  for (const Tensor& t : inputs) {
    node->inputs.push_back(t.defined() && t.requires_grad() ? t.meta() : nullptr);
    node->input_shapes.push_back(t.defined() ? t.shape() : Shape{});
  }
  node->backward = std::move(backward);
  AutogradMeta& meta = output.mutable_meta();
  meta.requires_grad = true;
  meta.grad_fn = std::move(node);
  return output;
}

Tensor record(const char* op_name, Tensor output, std::initializer_list<const Tensor*> inputs,
              Node::BackwardFn backward) {
  std::vector<Tensor> copies;
  copies.reserve(inputs.size());
  for (const Tensor* t : inputs) copies.push_back(t ? *t : Tensor());
  return record(op_name, std::move(output), copies, std::move(backward));
}

void backward(const Tensor& output, const Tensor& gradient, bool retain_graph) {
  check_defined(output, "backward", "output");
  SHIFTQ_CHECK(output.requires_grad(), AutogradError,
               "backward: the tensor does not require grad (no input of its graph requires grad)");
  // The caller's gradient is used as is (not copied): the engine clones a gradient only before it
  // would accumulate into it in place (see `owned` below).
  Tensor seed;
  bool seed_owned = false;
  if (gradient.defined()) {
    check_same_shape(output, gradient, "backward(gradient)");
    seed = gradient.detach();
  } else {
    SHIFTQ_CHECK(output.numel() == 1, AutogradError, "backward: output ", output.str(),
                 " is not a scalar; pass a gradient of the same shape");
    seed = Tensor::ones(output.shape());
    seed_owned = true;
  }

  NoGradGuard no_grad;  // backward functions compute plain tensors
  AutogradMeta* root = output.meta().get();
  std::unordered_map<AutogradMeta*, Tensor> grads{{root, seed}};
  // Gradients returned by backward functions may alias each other (add() hands the same tensor to
  // both inputs); a slot whose storage is shared is cloned before its first in-place accumulation,
  // and recorded here.
  std::unordered_set<AutogradMeta*> owned;
  if (seed_owned) owned.insert(root);
  for (AutogradMeta* meta : reverse_topological_order(root)) {
    auto it = grads.find(meta);
    if (it == grads.end()) continue;  // no path carried a gradient here
    Tensor grad = std::move(it->second);
    grads.erase(it);
    if (!meta->grad_fn) {  // leaf
      if (!meta->requires_grad) continue;
      if (meta->grad)
        accumulate_into(*meta->grad, grad);
      else
        // A gradient no other handle refers to (the usual fresh result of a backward function) is
        // kept as is; a shared one is copied so later accumulation cannot write through an alias.
        meta->grad = std::make_shared<Tensor>(owned.count(meta) || grad.storage_is_unique() ? grad : grad.clone());
      if (t_grad_ready_hook) t_grad_ready_hook(*meta);
      continue;
    }
    Node& node = *meta->grad_fn;
    SHIFTQ_CHECK(node.backward, AutogradError, "backward: the graph of '", node.op_name,
                 "' was already freed by an earlier backward(); pass retain_graph=true to the first");
    std::vector<Tensor> input_grads = node.backward(grad);
    SHIFTQ_CHECK(input_grads.size() == node.inputs.size(), AutogradError, "backward of '",
                 node.op_name, "' returned ", input_grads.size(), " gradients for ",
                 node.inputs.size(), " inputs");
    for (std::size_t i = 0; i < node.inputs.size(); ++i) {
      AutogradMeta* input = node.inputs[i].get();
      if (!input) continue;
      Tensor& g = input_grads[i];
      SHIFTQ_CHECK(g.defined() && g.shape() == node.input_shapes[i], AutogradError, "backward of '",
                   node.op_name, "': gradient ", g.str(), " for input ", i, " of shape ",
                   shape_str(node.input_shapes[i]));
      auto [slot, inserted] = grads.try_emplace(input, std::move(g));
      if (!inserted) {
        if (owned.insert(input).second && !slot->second.storage_is_unique()) slot->second = slot->second.clone();
        accumulate_into(slot->second, g);
      }
    }
    if (!retain_graph) node.backward = nullptr;  // frees the saved tensors
  }
}

// ---- the Tensor's autograd state (declared in core/tensor.hpp) ----------------------------------

bool Tensor::requires_grad() const { return meta_ && meta_->requires_grad; }

bool Tensor::is_leaf() const { return !meta_ || !meta_->grad_fn; }

AutogradMeta& Tensor::mutable_meta() {
  if (!meta_) meta_ = std::make_shared<AutogradMeta>();
  return *meta_;
}

Tensor& Tensor::set_requires_grad(bool requires_grad) {
  check_defined(*this, "set_requires_grad", "self");
  SHIFTQ_CHECK(is_leaf(), AutogradError, "set_requires_grad: only leaf tensors can change ",
               "requires_grad (use detach() for a non-leaf)");
  SHIFTQ_CHECK(!requires_grad || dtype_ == DType::f32, DTypeError,
               "set_requires_grad: only f32 tensors can require gradients, got ", dtype_name(dtype_));
  mutable_meta().requires_grad = requires_grad;
  return *this;
}

Tensor Tensor::grad() const { return meta_ && meta_->grad ? *meta_->grad : Tensor(); }

void Tensor::set_grad(const Tensor& grad) {
  if (grad.defined()) check_same_shape(*this, grad, "set_grad");
  mutable_meta().grad = grad.defined() ? std::make_shared<Tensor>(grad) : nullptr;
}

void Tensor::zero_grad() {
  if (meta_) meta_->grad.reset();
}

const std::shared_ptr<Node>& Tensor::grad_fn() const {
  static const std::shared_ptr<Node> none;
  return meta_ ? meta_->grad_fn : none;
}

const std::string& Tensor::name() const {
  static const std::string none;
  return meta_ ? meta_->name : none;
}

Tensor& Tensor::set_name(const std::string& name) {
  mutable_meta().name = name;
  return *this;
}

void Tensor::backward() const { shiftq::backward(*this); }

void Tensor::backward(const Tensor& gradient, bool retain_graph) const {
  shiftq::backward(*this, gradient, retain_graph);
}

}  // namespace shiftq
