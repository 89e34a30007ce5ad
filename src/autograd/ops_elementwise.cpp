// Elementwise arithmetic and activations.
#include <numbers>

#include "ops_util.hpp"
#include "shiftq/kernels/activation.hpp"
#include "shiftq/kernels/gemm.hpp"

namespace shiftq {
using detail::check_f32;
using detail::map_binary;
using detail::map_binary_same;
using detail::map_unary;

Tensor add(const Tensor& a, const Tensor& b) {
  check_f32(a, "add", "a");
  check_f32(b, "add", "b");
  Tensor out = map_binary(a, b, [](float x, float y) { return x + y; });
  return record("add", out, {&a, &b}, [sa = a.shape(), sb = b.shape()](const Tensor& g) {
    return std::vector<Tensor>{sum_to(g, sa), sum_to(g, sb)};
  });
}

Tensor sub(const Tensor& a, const Tensor& b) {
  check_f32(a, "sub", "a");
  check_f32(b, "sub", "b");
  Tensor out = map_binary(a, b, [](float x, float y) { return x - y; });
  return record("sub", out, {&a, &b}, [sa = a.shape(), sb = b.shape()](const Tensor& g) {
    return std::vector<Tensor>{sum_to(g, sa), neg(sum_to(g, sb))};
  });
}

Tensor mul(const Tensor& a, const Tensor& b) {
  check_f32(a, "mul", "a");
  check_f32(b, "mul", "b");
  Tensor out = map_binary(a, b, [](float x, float y) { return x * y; });
  const bool ga = a.requires_grad(), gb = b.requires_grad();
  // Each operand is kept only for the other's gradient (a constant factor costs no saved copy).
  return record("mul", out, {&a, &b},
                [a = gb ? a.detach() : Tensor(), b = ga ? b.detach() : Tensor(), a_shape = a.shape(),
                 b_shape = b.shape(), ga, gb](const Tensor& g) {
    return std::vector<Tensor>{ga ? sum_to(mul(g, b), a_shape) : Tensor(), gb ? sum_to(mul(g, a), b_shape) : Tensor()};
  });
}

Tensor div(const Tensor& a, const Tensor& b) {
  check_f32(a, "div", "a");
  check_f32(b, "div", "b");
  Tensor out = map_binary(a, b, [](float x, float y) { return x / y; });
  const bool ga = a.requires_grad(), gb = b.requires_grad();
  // a is kept only for b's gradient.
  return record("div", out, {&a, &b},
                [a = gb ? a.detach() : Tensor(), b = b.detach(), a_shape = a.shape(), ga, gb](const Tensor& g) {
    Tensor grad_b;
    if (gb) grad_b = sum_to(neg(div(mul(g, a), mul(b, b))), b.shape());
    return std::vector<Tensor>{ga ? sum_to(div(g, b), a_shape) : Tensor(), grad_b};
  });
}

Tensor add(const Tensor& a, float b) {
  check_f32(a, "add", "a");
  Tensor out = map_unary(a, [b](float x) { return x + b; });
  return record("add_scalar", out, {&a}, [](const Tensor& g) { return std::vector<Tensor>{g}; });
}

Tensor mul(const Tensor& a, float b) {
  check_f32(a, "mul", "a");
  Tensor out = map_unary(a, [b](float x) { return x * b; });
  return record("mul_scalar", out, {&a}, [b](const Tensor& g) {
    return std::vector<Tensor>{mul(g, b)};
  });
}

Tensor neg(const Tensor& a) { return mul(a, -1.0f); }

Tensor exp(const Tensor& a) {
  check_f32(a, "exp", "a");
  Tensor out = map_unary(a, [](float x) { return std::exp(x); });
  return record("exp", out, {&a}, [y = out.detach()](const Tensor& g) {
    return std::vector<Tensor>{mul(g, y)};
  });
}

Tensor log(const Tensor& a) {
  check_f32(a, "log", "a");
  Tensor out = map_unary(a, [](float x) { return std::log(x); });
  return record("log", out, {&a}, [a = a.detach()](const Tensor& g) {
    return std::vector<Tensor>{div(g, a)};
  });
}

Tensor sqrt(const Tensor& a) {
  check_f32(a, "sqrt", "a");
  Tensor out = map_unary(a, [](float x) { return std::sqrt(x); });
  return record("sqrt", out, {&a}, [y = out.detach()](const Tensor& g) {
    return std::vector<Tensor>{map_binary_same(g, y, [](float gi, float yi) { return 0.5f * gi / yi; })};
  });
}

Tensor square(const Tensor& a) {
  check_f32(a, "square", "a");
  Tensor out = map_unary(a, [](float x) { return x * x; });
  return record("square", out, {&a}, [a = a.detach()](const Tensor& g) {
    return std::vector<Tensor>{map_binary_same(g, a, [](float gi, float xi) { return 2.0f * gi * xi; })};
  });
}

// ---- activations ----

namespace {
using ForwardKernel = void (*)(const float*, float*, std::int64_t);
using BackwardKernel = void (*)(const float*, const float*, float*, std::int64_t);

// fn(i0, i1) over [0, n) in pieces that start at multiples of 64 elements, so that threads writing
// one-bit-per-element masks write whole bytes.
template <class F>
void for_mask_pieces(std::int64_t n, F fn) {
  detail::parallel_for((n + 63) / 64, detail::kElementwiseGrain / 64,
                       [&](std::int64_t b0, std::int64_t b1) { fn(b0 * 64, std::min(n, b1 * 64)); });
}

// out[i] = fn's map of x[i], in chunks over the threads.
Tensor run_forward_kernel(const Tensor& x, ForwardKernel fn) {
  Tensor out = Tensor::uninitialized(x.shape());
  const float* px = x.data<float>();
  float* po = out.data<float>();
  detail::parallel_for(x.numel(), detail::kElementwiseGrain, [&](std::int64_t b, std::int64_t e) { fn(px + b, po + b, e - b); });
  return out;
}

// dx[i] from the output gradient g[i] and the saved tensor s[i] (the op's input or output).
Tensor run_backward_kernel(const Tensor& g, const Tensor& s, BackwardKernel fn) {
  Tensor dx = Tensor::uninitialized(s.shape());
  const float* pg = g.data<float>();
  const float* ps = s.data<float>();
  float* pdx = dx.data<float>();
  detail::parallel_for(s.numel(), detail::kElementwiseGrain,
                       [&](std::int64_t b, std::int64_t e) { fn(pg + b, ps + b, pdx + b, e - b); });
  return dx;
}
}  // namespace

// ReLU and GELU run the per-ISA kernels (activation_*.cpp): this file builds for the x86-64
// baseline, where ReLU's loops ran 4 wide (forward and backward were 5.5% of the 4-bit ResNet-20
// training step).
// With autograd, ReLU keeps one bit per element (where x > 0) for its backward instead of its fp32
// output: the output usually feeds a quantized layer that keeps only int8 codes of it, so the bits
// let it be freed after that layer's forward.
Tensor relu(const Tensor& x) {
  check_f32(x, "relu", "x");
  if (!any_requires_grad({&x})) return run_forward_kernel(x, kernels::relu_f32);
  const std::int64_t n = x.numel();
  Tensor out = Tensor::uninitialized(x.shape());
  Tensor mask = Tensor::uninitialized({std::max<std::int64_t>(1, (n + 7) / 8)}, DType::u8);  // [ceil(n / 8)]
  const float* px = x.data<float>();
  float* po = out.data<float>();
  std::uint8_t* pm = mask.data<std::uint8_t>();
  for_mask_pieces(n, [&](std::int64_t i0, std::int64_t i1) { kernels::relu_mask_f32(px + i0, po + i0, pm + i0 / 8, i1 - i0); });
  return record("relu", out, {&x}, [mask, n](const Tensor& g) {
    Tensor dx = Tensor::uninitialized(g.shape());
    const float* pg = g.data<float>();
    const std::uint8_t* bits = mask.data<std::uint8_t>();
    float* pdx = dx.data<float>();
    for_mask_pieces(n, [&](std::int64_t i0, std::int64_t i1) {
      kernels::relu_backward_mask_f32(pg + i0, bits + i0 / 8, pdx + i0, i1 - i0);
    });
    return std::vector<Tensor>{dx};
  });
}

Tensor gelu(const Tensor& x) {
  check_f32(x, "gelu", "x");
  Tensor out = run_forward_kernel(x, kernels::gelu_f32);
  return record("gelu", out, {&x}, [x = x.detach()](const Tensor& g) {
    return std::vector<Tensor>{run_backward_kernel(g, x, kernels::gelu_backward_f32)};
  });
}

Tensor tanh(const Tensor& x) {
  check_f32(x, "tanh", "x");
  Tensor out = map_unary(x, [](float v) { return std::tanh(v); });
  return record("tanh", out, {&x}, [y = out.detach()](const Tensor& g) {
    return std::vector<Tensor>{map_binary_same(g, y, [](float gi, float yi) { return gi * (1.0f - yi * yi); })};
  });
}

Tensor sigmoid(const Tensor& x) {
  check_f32(x, "sigmoid", "x");
  Tensor out = map_unary(x, [](float v) { return 1.0f / (1.0f + std::exp(-v)); });
  return record("sigmoid", out, {&x}, [y = out.detach()](const Tensor& g) {
    return std::vector<Tensor>{map_binary_same(g, y, [](float gi, float yi) { return gi * yi * (1.0f - yi); })};
  });
}

namespace {
// Softmax or log-softmax along `axis`, numerically stable.
Tensor softmax_forward(const Tensor& x, std::int64_t axis, bool log_space) {
  const detail::AxisSplit s = detail::split_at(x.shape(), axis);
  Tensor out = Tensor::uninitialized(x.shape());
  const float* px = x.data<float>();
  float* po = out.data<float>();
  detail::parallel_for(s.outer * s.inner, 64, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t r = b; r < e; ++r) {
      const std::int64_t base = (r / s.inner) * s.dim * s.inner + r % s.inner;
      float max_v = -INFINITY;
      for (std::int64_t j = 0; j < s.dim; ++j) max_v = std::max(max_v, px[base + j * s.inner]);
      if (max_v == -INFINITY) max_v = 0.0f;  // all masked: avoid (-inf) - (-inf)
      double total = 0.0;
      for (std::int64_t j = 0; j < s.dim; ++j) total += std::exp(px[base + j * s.inner] - max_v);
      const float log_total = static_cast<float>(std::log(total));
      for (std::int64_t j = 0; j < s.dim; ++j) {
        const float z = px[base + j * s.inner] - max_v - log_total;
        po[base + j * s.inner] = log_space ? z : std::exp(z);
      }
    }
  });
  return out;
}
}  // namespace

namespace {
// softmax(causal_mask(x * scale)) along the last axis (no mask when causal_rows is 0): one kernel
// pass per row, forward and backward; rows in parallel (they are independent).
Tensor softmax_last_axis(const Tensor& x, float scale, std::int64_t causal_rows) {
  const std::int64_t cols = x.size(-1), rows = x.numel() / cols;
  const std::int64_t grain = std::max<std::int64_t>(1, 4096 / cols);
  Tensor out = Tensor::uninitialized(x.shape());
  const float* px = x.data<float>();
  float* po = out.data<float>();
  detail::parallel_for(rows, grain, [&](std::int64_t r0, std::int64_t r1) {
    kernels::softmax_rows_f32(px, po, r0, r1, cols, scale, causal_rows);
  });
  return record("softmax", out, {&x}, [y = out.detach(), rows, cols, grain, scale, causal_rows](const Tensor& g) {
    Tensor dx = Tensor::uninitialized(y.shape());
    const float *py = y.data<float>(), *pg = g.data<float>();
    float* pdx = dx.data<float>();
    detail::parallel_for(rows, grain, [&](std::int64_t r0, std::int64_t r1) {
      kernels::softmax_backward_rows_f32(py, pg, pdx, r0, r1, cols, scale, causal_rows);
    });
    return std::vector<Tensor>{dx};
  });
}
}  // namespace

Tensor softmax(const Tensor& x, std::int64_t dim) {
  check_f32(x, "softmax", "x");
  const std::int64_t axis = normalize_dim(dim, x.dim());
  if (axis + 1 == x.dim() && x.numel() > 0) return softmax_last_axis(x, 1.0f, 0);
  Tensor out = softmax_forward(x, axis, false);
  return record("softmax", out, {&x}, [y = out.detach(), axis](const Tensor& g) {
    // dx = y * (g - sum(g * y, axis))
    Tensor gy = mul(g, y);
    return std::vector<Tensor>{mul(y, sub(g, sum(gy, {axis}, true)))};
  });
}

Tensor scaled_softmax(const Tensor& scores, float scale, bool causal) {
  check_f32(scores, "scaled_softmax", "scores");
  SHIFTQ_CHECK(scores.dim() >= 1, ShapeError, "scaled_softmax: scores need rank >= 1, got ", scores.str());
  SHIFTQ_CHECK(!causal || (scores.dim() >= 2 && scores.size(-1) >= scores.size(-2)), ShapeError,
               "scaled_softmax: causal scores must be [..., Tq, Tk] with Tk >= Tq, got ", scores.str());
  SHIFTQ_CHECK(std::isfinite(scale) && scale > 0.0f, ValueError, "scaled_softmax: scale must be finite and > 0, got ",
               scale);
  if (scores.numel() == 0) return softmax(mul(scores, scale), -1);
  return softmax_last_axis(scores, scale, causal ? scores.size(-2) : 0);
}

Tensor log_softmax(const Tensor& x, std::int64_t dim) {
  check_f32(x, "log_softmax", "x");
  const std::int64_t axis = normalize_dim(dim, x.dim());
  Tensor out = softmax_forward(x, axis, true);
  return record("log_softmax", out, {&x}, [y = out.detach(), axis](const Tensor& g) {
    // dx = g - softmax * sum(g, axis)
    return std::vector<Tensor>{sub(g, mul(exp(y), sum(g, {axis}, true)))};
  });
}

}  // namespace shiftq
