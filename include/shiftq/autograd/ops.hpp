// Differentiable ops on f32 tensors, as free functions. Each records itself on the autograd tape
// when an input requires grad. Shapes follow PyTorch's conventions (NCHW, batch first).
#pragma once

#include <cstdint>
#include <vector>

#include "shiftq/autograd/node.hpp"
#include "shiftq/core/generator.hpp"
#include "shiftq/core/tensor.hpp"

namespace shiftq {

// ---- elementwise (NumPy broadcasting) ----
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor add(const Tensor& a, float b);
Tensor mul(const Tensor& a, float b);
Tensor neg(const Tensor& a);
Tensor exp(const Tensor& a);
Tensor log(const Tensor& a);  // natural log; a > 0
Tensor sqrt(const Tensor& a);
Tensor square(const Tensor& a);

inline Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
inline Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
inline Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
inline Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
inline Tensor operator+(const Tensor& a, float b) { return add(a, b); }
inline Tensor operator-(const Tensor& a, float b) { return add(a, -b); }
inline Tensor operator*(const Tensor& a, float b) { return mul(a, b); }
inline Tensor operator*(float a, const Tensor& b) { return mul(b, a); }
inline Tensor operator/(const Tensor& a, float b) { return mul(a, 1.0f / b); }
inline Tensor operator-(const Tensor& a) { return neg(a); }

// ---- activations ----
Tensor relu(const Tensor& x);
Tensor gelu(const Tensor& x);  // tanh approximation (GPT-2)
Tensor tanh(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor softmax(const Tensor& x, std::int64_t dim = -1);
Tensor log_softmax(const Tensor& x, std::int64_t dim = -1);
// softmax(causal_mask(scores * scale), -1) (without the mask when causal is false) in one pass per
// row, forward and backward, with the same bits as the three ops for finite gradients (a masked
// entry's incoming gradient is never read). scores: [..., Tq, Tk], Tk >= Tq when causal
// (ShapeError otherwise); ValueError unless scale is finite and > 0.
Tensor scaled_softmax(const Tensor& scores, float scale, bool causal);

// ---- reductions ----
Tensor sum(const Tensor& x);  // scalar
Tensor sum(const Tensor& x, const std::vector<std::int64_t>& dims, bool keepdim = false);
Tensor mean(const Tensor& x);
Tensor mean(const Tensor& x, const std::vector<std::int64_t>& dims, bool keepdim = false);
// Sums `x` down to `shape` (the inverse of broadcasting `shape` up to x.shape()).
Tensor sum_to(const Tensor& x, const Shape& shape);

// ---- shape ----
Tensor reshape(const Tensor& x, const Shape& shape);  // one extent may be -1
Tensor flatten(const Tensor& x, std::int64_t start_dim = 1);
Tensor transpose(const Tensor& x, std::int64_t dim0, std::int64_t dim1);
Tensor permute(const Tensor& x, const std::vector<std::int64_t>& dims);
Tensor slice(const Tensor& x, std::int64_t dim, std::int64_t start, std::int64_t end);  // [start, end)
Tensor concat(const std::vector<Tensor>& xs, std::int64_t dim);

// ---- linear algebra ----
// a: [..., M, K], b: [..., K, N] with equal leading (batch) dims, or b: [K, N] shared by all batches.
Tensor matmul(const Tensor& a, const Tensor& b);
// x: [..., in], weight: [out, in], bias: [out] or undefined -> [..., out]
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor());

// ---- losses ----
struct CrossEntropyOptions {
  float label_smoothing = 0.0f;  // in [0, 1)
  std::int32_t ignore_index = -100;
};
// logits: [N, C], targets: s32 [N] with classes in [0, C) (or ignore_index) -> mean loss (scalar)
Tensor cross_entropy(const Tensor& logits, const Tensor& targets,
                     const CrossEntropyOptions& options = {});
// Mean squared error over all elements -> scalar.
Tensor mse_loss(const Tensor& input, const Tensor& target);

// ---- embedding, dropout ----
// weight: [V, D], indices: s32 [...] -> [..., D]
Tensor embedding(const Tensor& weight, const Tensor& indices);
// Inverted dropout: zeroes with probability p and scales by 1/(1-p) in training; identity otherwise.
Tensor dropout(const Tensor& x, float p, bool training, Generator& gen);

// ---- convolution and pooling ----
// The memory order of a 4-D image tensor: NCHW [N, C, H, W] (PyTorch's default), or channels-last
// NHWC [N, H, W, C], where a pixel's channels are contiguous. The quantized convolution and L1
// BatchNorm run NHWC without any layout moves (docs/architecture.md); the fp32 convolution runs it
// through two permutes around its NCHW path.
enum class ImageLayout { nchw, nhwc };
struct Conv2dParams {
  std::int64_t stride = 1;
  std::int64_t padding = 0;
  ImageLayout layout = ImageLayout::nchw;  // of x and the output
};
// x: [N, C, H, W], weight: [O, C, KH, KW], bias: [O] or undefined -> [N, O, OH, OW]
// (ImageLayout::nhwc: x [N, H, W, C] -> [N, OH, OW, O]; the weight keeps its layout)
Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor(),
              const Conv2dParams& params = {});
struct Pool2dParams {
  std::int64_t kernel = 2;
  std::int64_t stride = 2;
  std::int64_t padding = 0;
};
Tensor max_pool2d(const Tensor& x, const Pool2dParams& params = {});
Tensor avg_pool2d(const Tensor& x, const Pool2dParams& params = {});  // padding counts as zeros
// x: [N, C, H, W] (or [N, H, W, C] with ImageLayout::nhwc) -> [N, C]
Tensor global_avg_pool2d(const Tensor& x, ImageLayout layout = ImageLayout::nchw);

// ---- normalization (standard L2 forms) ----
struct BatchNormState {
  Tensor running_mean;  // [C], updated in training mode when defined
  Tensor running_var;   // [C] (unbiased variance, as PyTorch)
  float momentum = 0.1f;
  float eps = 1e-5f;
};
// x: [N, C, H, W] (or [N, H, W, C] with ImageLayout::nhwc); gamma, beta: [C] or undefined.
// Training: batch statistics (and running-stat update); eval: running statistics.
Tensor batch_norm2d(const Tensor& x, const Tensor& gamma, const Tensor& beta, BatchNormState& state,
                    bool training, ImageLayout layout = ImageLayout::nchw);
// Normalizes over the last dim. x: [..., D]; gamma, beta: [D] or undefined.
Tensor layer_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps = 1e-5f);

// ---- L1 normalization (mean absolute deviation; docs/l1norm.md) ----
inline constexpr float kL1NormC = 1.2533141373155003f;  // sqrt(pi / 2)
struct L1BatchNormState {
  Tensor running_mean;   // [C], updated in training mode when defined
  Tensor running_sigma;  // [C]: running C * mean|x - mu| + eps
  float momentum = 0.1f;
  float eps = 1e-5f;
  float c = kL1NormC;    // sigma = c * mean|d| + eps
};
// x: [N, C, H, W] (or [N, H, W, C] with ImageLayout::nhwc): per channel over N, H, W,
// sigma = c * mean|x - mu| + eps. Eval: running stats.
Tensor l1_batch_norm2d(const Tensor& x, const Tensor& gamma, const Tensor& beta, L1BatchNormState& state,
                       bool training, ImageLayout layout = ImageLayout::nchw);
// Over the last dim of x: [..., D].
Tensor l1_layer_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps = 1e-5f,
                     float c = kL1NormC);

// ---- attention ----
// q: [B, H, Tq, Dh], k, v: [B, H, Tk, Dh] -> [B, H, Tq, Dh]. softmax(q k^T / sqrt(Dh)) v; with
// `causal`, query i attends to keys j <= i (+ Tk - Tq).
Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                    bool causal = false);
// Sets scores[..., i, j] = -inf where j > i + (Tk - Tq) (gradient zero there). x: [..., Tq, Tk]
Tensor causal_mask(const Tensor& scores);

}  // namespace shiftq
