// matmul and linear on the fp32 GEMM kernel.
#include "ops_util.hpp"
#include "shiftq/kernels/gemm.hpp"

namespace shiftq {
namespace {
using kernels::Trans;

// C_b = op(A_b) op(B_b) (+ beta C_b) for b in [0, batch). A stride of 0 shares that operand.
void batched_gemm(Trans ta, Trans tb, std::int64_t batch, std::int64_t M, std::int64_t N,
                  std::int64_t K, const float* A, std::int64_t stride_a, const float* B,
                  std::int64_t stride_b, float beta, float* C, std::int64_t stride_c) {
  const std::int64_t lda = ta == Trans::N ? K : M, ldb = tb == Trans::N ? N : K;
  for (std::int64_t i = 0; i < batch; ++i)
    kernels::gemm_f32(ta, tb, M, N, K, 1.0f, A + i * stride_a, lda, B + i * stride_b, ldb, beta,
                      C + i * stride_c, N);
}

// bias[o] added to every row of y: [rows, out].
void add_bias_rows(float* y, const float* bias, std::int64_t rows, std::int64_t out) {
  detail::parallel_for(rows, std::max<std::int64_t>(1, 16384 / std::max<std::int64_t>(out, 1)),
                       [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t r = b; r < e; ++r)
      for (std::int64_t o = 0; o < out; ++o) y[r * out + o] += bias[o];
  });
}
}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b) {
  detail::check_f32(a, "matmul", "a");
  detail::check_f32(b, "matmul", "b");
  SHIFTQ_CHECK(a.dim() >= 2 && b.dim() >= 2, ShapeError, "matmul: operands need rank >= 2, got ",
               a.str(), " and ", b.str());
  const std::int64_t M = a.size(-2), K = a.size(-1), N = b.size(-1);
  SHIFTQ_CHECK(b.size(-2) == K, ShapeError, "matmul: inner dims differ: ", a.str(), " x ", b.str());
  const bool shared_b = b.dim() == 2;
  if (!shared_b) {
    SHIFTQ_CHECK(a.dim() == b.dim() && std::equal(a.shape().begin(), a.shape().end() - 2, b.shape().begin()),
                 ShapeError, "matmul: batch dims differ: ", a.str(), " x ", b.str());
  }
  const std::int64_t batch = a.numel() / std::max<std::int64_t>(M * K, 1);
  Shape out_shape(a.shape().begin(), a.shape().end() - 1);
  out_shape.push_back(N);
  Tensor out = Tensor::uninitialized(out_shape);
  if (shared_b)  // one GEMM over all rows of a
    batched_gemm(Trans::N, Trans::N, 1, batch * M, N, K, a.data<float>(), 0, b.data<float>(), 0,
                 0.0f, out.data<float>(), 0);
  else
    batched_gemm(Trans::N, Trans::N, batch, M, N, K, a.data<float>(), M * K, b.data<float>(), K * N,
                 0.0f, out.data<float>(), M * N);
  const bool ga = a.requires_grad(), gb = b.requires_grad();
  return record("matmul", out, {&a, &b},
                [a = a.detach(), b = b.detach(), ga, gb, shared_b, batch, M, N, K](const Tensor& g) {
    Tensor da, db;
    if (ga) {  // da = g b^T
      da = Tensor::uninitialized(a.shape());
      if (shared_b)
        batched_gemm(Trans::N, Trans::T, 1, batch * M, K, N, g.data<float>(), 0, b.data<float>(), 0,
                     0.0f, da.data<float>(), 0);
      else
        batched_gemm(Trans::N, Trans::T, batch, M, K, N, g.data<float>(), M * N, b.data<float>(),
                     K * N, 0.0f, da.data<float>(), M * K);
    }
    if (gb) {  // db = a^T g (summed over batches when b is shared)
      db = Tensor::uninitialized(b.shape());
      if (shared_b)
        batched_gemm(Trans::T, Trans::N, 1, K, N, batch * M, a.data<float>(), 0, g.data<float>(), 0,
                     0.0f, db.data<float>(), 0);
      else
        batched_gemm(Trans::T, Trans::N, batch, K, N, M, a.data<float>(), M * K, g.data<float>(),
                     M * N, 0.0f, db.data<float>(), K * N);
    }
    return std::vector<Tensor>{da, db};
  });
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  detail::check_f32(x, "linear", "x");
  detail::check_f32(weight, "linear", "weight");
  check_rank(weight, 2, "linear", "weight");
  const std::int64_t out_features = weight.size(0), in_features = weight.size(1);
  SHIFTQ_CHECK(x.dim() >= 1 && x.size(-1) == in_features, ShapeError, "linear: input ", x.str(),
               " does not end in in_features=", in_features, " of weight ", weight.str());
  if (bias.defined()) {
    detail::check_f32(bias, "linear", "bias");
    SHIFTQ_CHECK(bias.shape() == Shape{out_features}, ShapeError, "linear: bias ", bias.str(),
                 " must be [", out_features, "]");
  }
  const std::int64_t rows = x.numel() / std::max<std::int64_t>(in_features, 1);
  Shape out_shape = x.shape();
  out_shape.back() = out_features;
  Tensor y = Tensor::uninitialized(out_shape);
  // y: [rows, out] = x: [rows, in] · W^T
  kernels::gemm_f32(Trans::N, Trans::T, rows, out_features, in_features, 1.0f, x.data<float>(),
                    in_features, weight.data<float>(), in_features, 0.0f, y.data<float>(), out_features);
  if (bias.defined()) add_bias_rows(y.data<float>(), bias.data<float>(), rows, out_features);
  const bool gx = x.requires_grad(), gw = weight.requires_grad(), gbias = bias.defined() && bias.requires_grad();
  return record("linear", y, {&x, &weight, &bias},
                [x = x.detach(), w = weight.detach(), gx, gw, gbias, rows, out_features, in_features](const Tensor& g) {
    Tensor dx, dw, db;
    if (gx) {  // dx: [rows, in] = g: [rows, out] · W: [out, in]
      dx = Tensor::uninitialized(x.shape());
      kernels::gemm_f32(Trans::N, Trans::N, rows, in_features, out_features, 1.0f, g.data<float>(),
                        out_features, w.data<float>(), in_features, 0.0f, dx.data<float>(), in_features);
    }
    if (gw) {  // dW: [out, in] = g^T · x
      dw = Tensor::uninitialized(w.shape());
      kernels::gemm_f32(Trans::T, Trans::N, out_features, in_features, rows, 1.0f, g.data<float>(),
                        out_features, x.data<float>(), in_features, 0.0f, dw.data<float>(), in_features);
    }
    if (gbias) db = sum(g.view({rows, out_features}), {0});
    return std::vector<Tensor>{dx, dw, db};
  });
}

}  // namespace shiftq
