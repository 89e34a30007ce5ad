// Losses, embedding, dropout, attention.
#include "ops_util.hpp"

namespace shiftq {

Tensor cross_entropy(const Tensor& logits, const Tensor& targets, const CrossEntropyOptions& options) {
  detail::check_f32(logits, "cross_entropy", "logits");
  check_rank(logits, 2, "cross_entropy", "logits");
  check_dtype(targets, DType::s32, "cross_entropy", "targets");
  const std::int64_t N = logits.size(0), C = logits.size(1);
  SHIFTQ_CHECK(targets.shape() == Shape{N}, ShapeError, "cross_entropy: targets ", targets.str(),
               " must be [", N, "] for logits ", logits.str());
  SHIFTQ_CHECK(options.label_smoothing >= 0.0f && options.label_smoothing < 1.0f, ValueError,
               "cross_entropy: label_smoothing must be in [0, 1), got ", options.label_smoothing);
  const std::int32_t* t = targets.data<std::int32_t>();
  std::int64_t count = 0;
  for (std::int64_t i = 0; i < N; ++i) {
    if (t[i] == options.ignore_index) continue;
    SHIFTQ_CHECK(t[i] >= 0 && t[i] < C, ValueError, "cross_entropy: target ", t[i], " at row ", i,
                 " is outside [0, ", C, ")");
    ++count;
  }
  SHIFTQ_CHECK(count > 0, ValueError, "cross_entropy: every target equals ignore_index");
  Tensor logp;
  {
    NoGradGuard no_grad;
    logp = log_softmax(logits, 1);
  }
  const float* lp = logp.data<float>();
  const float smooth = options.label_smoothing, on = 1.0f - smooth, uniform = smooth / static_cast<float>(C);
  double total = 0.0;
  for (std::int64_t i = 0; i < N; ++i) {
    if (t[i] == options.ignore_index) continue;
    double row_sum = 0.0;
    if (smooth > 0.0f)
      for (std::int64_t c = 0; c < C; ++c) row_sum += lp[i * C + c];
    total -= on * lp[i * C + t[i]] + uniform * row_sum;
  }
  Tensor loss = Tensor::scalar(static_cast<float>(total / static_cast<double>(count)));
  return record("cross_entropy", loss, {&logits},
                [logp, targets = targets.detach(), on, uniform, count, N, C, ignore = options.ignore_index](const Tensor& g) {
    // dlogits = (softmax - q) * g / count with q = on * onehot + uniform
    Tensor dx = Tensor::empty({N, C});
    const float* lp = logp.data<float>();
    const std::int32_t* t = targets.data<std::int32_t>();
    float* d = dx.data<float>();
    const float scale = g.item() / static_cast<float>(count);
    detail::parallel_for(N, 64, [&](std::int64_t b, std::int64_t e) {
      for (std::int64_t i = b; i < e; ++i) {
        if (t[i] == ignore) continue;
        for (std::int64_t c = 0; c < C; ++c)
          d[i * C + c] = (std::exp(lp[i * C + c]) - uniform - (c == t[i] ? on : 0.0f)) * scale;
      }
    });
    return std::vector<Tensor>{dx};
  });
}

Tensor mse_loss(const Tensor& input, const Tensor& target) {
  check_same_shape(input, target, "mse_loss");
  return mean(square(sub(input, target)));
}

Tensor embedding(const Tensor& weight, const Tensor& indices) {
  detail::check_f32(weight, "embedding", "weight");
  check_rank(weight, 2, "embedding", "weight");
  check_dtype(indices, DType::s32, "embedding", "indices");
  const std::int64_t V = weight.size(0), D = weight.size(1), n = indices.numel();
  const std::int32_t* idx = indices.data<std::int32_t>();
  for (std::int64_t i = 0; i < n; ++i)
    SHIFTQ_CHECK(idx[i] >= 0 && idx[i] < V, ValueError, "embedding: index ", idx[i], " at position ",
                 i, " is outside the vocabulary [0, ", V, ")");
  Shape out_shape = indices.shape();
  out_shape.push_back(D);
  Tensor out = Tensor::uninitialized(out_shape);
  const float* w = weight.data<float>();
  float* o = out.data<float>();
  detail::parallel_for(n, 64, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t i = b; i < e; ++i) std::copy(w + idx[i] * D, w + (idx[i] + 1) * D, o + i * D);
  });
  return record("embedding", out, {&weight}, [indices = indices.detach(), V, D](const Tensor& g) {
    Tensor dw = Tensor::zeros({V, D});
    const std::int32_t* idx = indices.data<std::int32_t>();
    const float* pg = g.data<float>();
    float* pw = dw.data<float>();
    // Parallel over feature columns: deterministic, no two threads touch the same element.
    detail::parallel_for(D, 16, [&](std::int64_t b, std::int64_t e) {
      for (std::int64_t i = 0; i < indices.numel(); ++i)
        for (std::int64_t j = b; j < e; ++j) pw[idx[i] * D + j] += pg[i * D + j];
    });
    return std::vector<Tensor>{dw};
  });
}

Tensor dropout(const Tensor& x, float p, bool training, Generator& gen) {
  detail::check_f32(x, "dropout", "x");
  SHIFTQ_CHECK(p >= 0.0f && p < 1.0f, ValueError, "dropout: p must be in [0, 1), got ", p);
  if (!training || p == 0.0f) return x;
  Tensor mask = Tensor::uninitialized(x.shape());
  float* m = mask.data<float>();
  const float keep_scale = 1.0f / (1.0f - p);
  for (std::int64_t i = 0; i < x.numel(); ++i) m[i] = gen.uniform() < p ? 0.0f : keep_scale;
  Tensor out = detail::map_binary_same(x, mask, [](float a, float b) { return a * b; });
  return record("dropout", out, {&x}, [mask](const Tensor& g) {
    return std::vector<Tensor>{detail::map_binary_same(g, mask, [](float a, float b) { return a * b; })};
  });
}

namespace {
// Applies f(row_data, i) to every [Tq, Tk] score row i of x: [..., Tq, Tk] in place.
template <class F>
void for_each_causal_row(Tensor& x, F f) {
  const std::int64_t Tq = x.size(-2), Tk = x.size(-1), mats = x.numel() / std::max<std::int64_t>(Tq * Tk, 1);
  float* p = x.data<float>();
  detail::parallel_for(mats * Tq, 64, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t r = b; r < e; ++r) {
      const std::int64_t i = r % Tq, first_masked = std::max<std::int64_t>(0, i + (Tk - Tq) + 1);
      f(p + r * Tk, first_masked, Tk);
    }
  });
}
}  // namespace

Tensor causal_mask(const Tensor& scores) {
  detail::check_f32(scores, "causal_mask", "scores");
  SHIFTQ_CHECK(scores.dim() >= 2 && scores.size(-1) >= scores.size(-2), ShapeError,
               "causal_mask: scores must be [..., Tq, Tk] with Tk >= Tq, got ", scores.str());
  Tensor out = scores.clone();
  auto mask_row = [](float* row, std::int64_t first, std::int64_t end, float value) {
    for (std::int64_t j = first; j < end; ++j) row[j] = value;
  };
  for_each_causal_row(out, [&](float* row, std::int64_t first, std::int64_t end) { mask_row(row, first, end, -INFINITY); });
  return record("causal_mask", out, {&scores}, [mask_row](const Tensor& g) {
    Tensor dx = g.clone();
    for_each_causal_row(dx, [&](float* row, std::int64_t first, std::int64_t end) { mask_row(row, first, end, 0.0f); });
    return std::vector<Tensor>{dx};
  });
}

Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal) {
  for (const Tensor* t : {&q, &k, &v}) {
    detail::check_f32(*t, "scaled_dot_product_attention", "q/k/v");
    check_rank(*t, 4, "scaled_dot_product_attention", "q/k/v");
  }
  SHIFTQ_CHECK(k.shape() == v.shape() && q.size(0) == k.size(0) && q.size(1) == k.size(1) &&
                   q.size(3) == k.size(3),
               ShapeError, "scaled_dot_product_attention: q ", q.str(), ", k ", k.str(), ", v ",
               v.str(), " must be [B, H, Tq, Dh], [B, H, Tk, Dh], [B, H, Tk, Dh]");
  const float scale = 1.0f / std::sqrt(static_cast<float>(q.size(3)));
  const Tensor scores = matmul(q, transpose(k, -2, -1));  // [B, H, Tq, Tk]
  return matmul(scaled_softmax(scores, scale, causal), v);
}

}  // namespace shiftq
