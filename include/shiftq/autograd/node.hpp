// Reverse-mode autograd: graph nodes, grad mode, and the helper that records an op on the tape.
//
// The tape is dynamic: each differentiable op that sees an input requiring grad (and grad mode on)
// attaches a Node to its output. backward() walks the nodes in reverse topological order.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "shiftq/core/tensor.hpp"

namespace shiftq {

// Autograd state of one tensor (the handle in Tensor). A leaf has no grad_fn; its gradient
// accumulates into `grad`.
struct AutogradMeta {
  bool requires_grad = false;
  std::shared_ptr<Node> grad_fn;  // null for leaves
  std::shared_ptr<Tensor> grad;   // accumulated gradient of a leaf
  std::string name;               // optional, used in error messages (e.g. "fc1.weight")
};

// One recorded op: maps the gradient of its output to the gradients of its inputs.
struct Node {
  using BackwardFn = std::function<std::vector<Tensor>(const Tensor& grad_output)>;

  const char* op_name = "op";
  std::vector<std::shared_ptr<AutogradMeta>> inputs;  // null where an input needs no gradient
  std::vector<Shape> input_shapes;
  BackwardFn backward;  // returns one gradient per input (undefined where not needed); freed after use

  // Releases the graph behind this node iteratively: a plain member-wise destructor would recurse
  // once per graph level (Node -> input meta -> its grad_fn -> ...) and overflow the stack.
  ~Node();
};

// Whether ops record the tape on this thread (default true).
bool grad_mode_enabled();

// Disables tape recording on this thread for its lifetime (evaluation, optimizer updates).
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

// Called by backward() once per leaf that received a gradient, as soon as the leaf's grad() holds
// its whole gradient of that backward() (every path into the leaf has been summed). Data-parallel
// training uses it to start exchanging a bucket of gradients while the rest of backward runs.
using GradReadyHook = std::function<void(const AutogradMeta& leaf)>;

// Installs `hook` for backward() calls on this thread during its lifetime (restores the previous one).
class GradReadyHookGuard {
 public:
  explicit GradReadyHookGuard(GradReadyHook hook);
  ~GradReadyHookGuard();
  GradReadyHookGuard(const GradReadyHookGuard&) = delete;
  GradReadyHookGuard& operator=(const GradReadyHookGuard&) = delete;

 private:
  GradReadyHook previous_;
};

// True when grad mode is on and any of the inputs requires grad.
bool any_requires_grad(std::initializer_list<const Tensor*> inputs);

// Attaches a node to `output` if any input requires grad (and grad mode is on); returns output.
// `backward` must not capture `output` itself (capture output.detach() instead).
Tensor record(const char* op_name, Tensor output, std::initializer_list<const Tensor*> inputs,
              Node::BackwardFn backward);
Tensor record(const char* op_name, Tensor output, const std::vector<Tensor>& inputs,
              Node::BackwardFn backward);

// Computes the gradients of `output` with respect to its graph's leaves (accumulated into their
// grad()). `gradient` may be undefined for a one-element output. Same as output.backward(...).
void backward(const Tensor& output, const Tensor& gradient = Tensor(), bool retain_graph = false);

}  // namespace shiftq
