// Standard (L2) BatchNorm2d and LayerNorm with hand-written backward.
#include "ops_util.hpp"

namespace shiftq {
namespace {
void check_affine(const Tensor& p, std::int64_t C, const char* op, const char* arg) {
  if (!p.defined()) return;
  detail::check_f32(p, op, arg);
  SHIFTQ_CHECK(p.shape() == Shape{C}, ShapeError, op, ": ", arg, " ", p.str(), " must be [", C, "]");
}

// Normalization set of one channel/row `c`: `count` elements at base(c) + i-th offset.
// BatchNorm: elements x[n, c, :, :]; LayerNorm: x[r, :]. Both are walked as [outer, c, inner].
struct NormLayout {
  std::int64_t outer, channels, inner;  // x viewed as [outer, channels, inner], normalized per channel
  std::int64_t count() const { return outer * inner; }
  template <class F>
  void for_each(std::int64_t c, F f) const {
    for (std::int64_t o = 0; o < outer; ++o) {
      const std::int64_t base = (o * channels + c) * inner;
      for (std::int64_t i = 0; i < inner; ++i) f(base + i);
    }
  }
};

// xhat = (x - mu) * inv per channel, with (mu, inv) = channel_stats(c) (which also records
// whatever per-channel statistics its caller keeps). Parallel over channels.
template <class ChannelStats>
Tensor normalize_channels(const Tensor& x, const NormLayout& l, ChannelStats channel_stats) {
  Tensor xhat = Tensor::uninitialized(x.shape());
  const float* px = x.data<float>();
  float* ph = xhat.data<float>();
  const std::int64_t grain = std::max<std::int64_t>(1, 4096 / std::max<std::int64_t>(l.count(), 1));
  detail::parallel_for(l.channels, grain, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t c = b; c < e; ++c) {
      // Not a structured binding: clang before 16 cannot capture one in the lambda below.
      const auto stats = channel_stats(px, c);
      const auto mu = stats.first;
      const auto inv = stats.second;
      l.for_each(c, [&](std::int64_t i) { ph[i] = static_cast<float>((px[i] - mu) * inv); });
    }
  });
  return xhat;
}

// L2: xhat = (x - mean) * invstd; fills mean/var (biased) and invstd.
Tensor normalize(const Tensor& x, const NormLayout& l, float eps, std::vector<float>& mean,
                 std::vector<float>& var, std::vector<float>& invstd) {
  mean.assign(l.channels, 0.0f);
  var.assign(l.channels, 0.0f);
  invstd.assign(l.channels, 0.0f);
  return normalize_channels(x, l, [&](const float* px, std::int64_t c) {
    double s = 0.0, ss = 0.0;
    l.for_each(c, [&](std::int64_t i) { s += px[i]; });
    const double mu = s / static_cast<double>(l.count());
    l.for_each(c, [&](std::int64_t i) { ss += (px[i] - mu) * (px[i] - mu); });
    const double v = ss / static_cast<double>(l.count());
    const float inv = static_cast<float>(1.0 / std::sqrt(v + eps));
    mean[c] = static_cast<float>(mu);
    var[c] = static_cast<float>(v);
    invstd[c] = inv;
    return std::pair<double, float>{mu, inv};
  });
}

// y = gamma * xhat + beta per channel.
Tensor affine(const Tensor& xhat, const NormLayout& l, const Tensor& gamma, const Tensor& beta) {
  Tensor y = Tensor::uninitialized(xhat.shape());
  const float* ph = xhat.data<float>();
  const float* pg = gamma.defined() ? gamma.data<float>() : nullptr;
  const float* pb = beta.defined() ? beta.data<float>() : nullptr;
  float* py = y.data<float>();
  detail::parallel_for(l.outer, 1, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t o = b; o < e; ++o)
      for (std::int64_t c = 0; c < l.channels; ++c) {
        const float gm = pg ? pg[c] : 1.0f, bt = pb ? pb[c] : 0.0f;
        const std::int64_t base = (o * l.channels + c) * l.inner;
        for (std::int64_t i = 0; i < l.inner; ++i) py[base + i] = gm * ph[base + i] + bt;
      }
  });
  return y;
}

// The L1 form's extra state: sigma = c * mean|d| + eps and mean(sgn(d)) per channel.
struct L1Terms {
  float c;
  const std::vector<float>* mean_sign;
};

// Backward of batch-statistics normalization followed by the affine map, with inv_scale = 1/std
// (L2) or 1/sigma (L1; `l1` given):
//   L2: dx = gamma * inv_scale * (dy - mean(dy) - xhat * mean(dy * xhat))
//   L1: dx = gamma * inv_scale * (dy - mean(dy) - c * mean(dy * xhat) * (sgn(xhat) - mean(sgn(d))))
std::vector<Tensor> normalize_backward(const Tensor& g, const Tensor& xhat, const NormLayout& l,
                                       const std::vector<float>& inv_scale, const Tensor& gamma,
                                       bool need_gamma, bool need_beta, const L1Terms* l1 = nullptr) {
  Tensor dx = Tensor::uninitialized(xhat.shape());
  Tensor dgamma = need_gamma ? Tensor::empty({l.channels}) : Tensor();
  Tensor dbeta = need_beta ? Tensor::empty({l.channels}) : Tensor();
  const float* pg = g.data<float>();
  const float* ph = xhat.data<float>();
  const float* gm = gamma.defined() ? gamma.data<float>() : nullptr;
  float* pdx = dx.data<float>();
  const double m = static_cast<double>(l.count());
  const std::int64_t grain = std::max<std::int64_t>(1, 4096 / std::max<std::int64_t>(l.count(), 1));
  detail::parallel_for(l.channels, grain, [&](std::int64_t b, std::int64_t e) {
    for (std::int64_t c = b; c < e; ++c) {
      double sum_g = 0.0, sum_gx = 0.0;
      l.for_each(c, [&](std::int64_t i) {
        sum_g += pg[i];
        sum_gx += static_cast<double>(pg[i]) * ph[i];
      });
      if (need_gamma) dgamma.data<float>()[c] = static_cast<float>(sum_gx);
      if (need_beta) dbeta.data<float>()[c] = static_cast<float>(sum_g);
      const float mean_g = static_cast<float>(sum_g / m), mean_gx = static_cast<float>(sum_gx / m);
      const float k = (gm ? gm[c] : 1.0f) * inv_scale[c];
      if (l1) {
        const float kc = l1->c * mean_gx, ms = (*l1->mean_sign)[c];
        l.for_each(c, [&](std::int64_t i) {
          const float sgn = static_cast<float>((ph[i] > 0.0f) - (ph[i] < 0.0f));
          pdx[i] = k * (pg[i] - mean_g - kc * (sgn - ms));
        });
      } else {
        l.for_each(c, [&](std::int64_t i) { pdx[i] = k * (pg[i] - mean_g - ph[i] * mean_gx); });
      }
    }
  });
  return {dx, dgamma, dbeta};
}

std::vector<float> inverses(const std::vector<float>& v) {
  std::vector<float> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = 1.0f / v[i];
  return out;
}

// L1 statistics: xhat = (x - mean) / sigma with sigma = c * mean|x - mean| + eps. Also returns
// mean(sgn(x - mean)) per channel for the backward.
Tensor l1_normalize(const Tensor& x, const NormLayout& l, float eps, float c, std::vector<float>& mean,
                    std::vector<float>& sigma, std::vector<float>& mean_sign) {
  mean.assign(l.channels, 0.0f);
  sigma.assign(l.channels, 0.0f);
  mean_sign.assign(l.channels, 0.0f);
  return normalize_channels(x, l, [&](const float* px, std::int64_t ch) {
    double s = 0.0;
    l.for_each(ch, [&](std::int64_t i) { s += px[i]; });
    const float mu = static_cast<float>(s / static_cast<double>(l.count()));
    double abs_sum = 0.0;
    std::int64_t sign_sum = 0;
    l.for_each(ch, [&](std::int64_t i) {
      const float d = px[i] - mu;
      abs_sum += std::fabs(d);
      sign_sum += (d > 0.0f) - (d < 0.0f);
    });
    const float sig = c * static_cast<float>(abs_sum / static_cast<double>(l.count())) + eps;
    mean[ch] = mu;
    sigma[ch] = sig;
    mean_sign[ch] = static_cast<float>(static_cast<double>(sign_sum) / static_cast<double>(l.count()));
    return std::pair<float, float>{mu, 1.0f / sig};
  });
}

}  // namespace

Tensor batch_norm2d(const Tensor& x, const Tensor& gamma, const Tensor& beta, BatchNormState& state,
                    bool training, ImageLayout image_layout) {
  detail::check_f32(x, "batch_norm2d", "x");
  check_rank(x, 4, "batch_norm2d", "x");
  const bool channels_last = image_layout == ImageLayout::nhwc;
  const std::int64_t C = x.size(channels_last ? 3 : 1);
  check_affine(gamma, C, "batch_norm2d", "gamma");
  check_affine(beta, C, "batch_norm2d", "beta");
  check_affine(state.running_mean, C, "batch_norm2d", "running_mean");
  check_affine(state.running_var, C, "batch_norm2d", "running_var");
  // NHWC: one channel's values are every C-th element ([N*H*W, C, 1])
  const NormLayout layout = channels_last ? NormLayout{x.size(0) * x.size(1) * x.size(2), C, 1}
                                          : NormLayout{x.size(0), C, x.size(2) * x.size(3)};
  const bool need_gamma = gamma.defined() && gamma.requires_grad();
  const bool need_beta = beta.defined() && beta.requires_grad();

  if (!training) {
    SHIFTQ_CHECK(state.running_mean.defined() && state.running_var.defined(), ValueError,
                 "batch_norm2d: eval mode needs running_mean and running_var");
    std::vector<float> invstd(C);
    const float* rm = state.running_mean.data<float>();
    const float* rv = state.running_var.data<float>();
    for (std::int64_t c = 0; c < C; ++c) invstd[c] = 1.0f / std::sqrt(rv[c] + state.eps);
    Tensor xhat = Tensor::uninitialized(x.shape());
    const float* px = x.data<float>();
    float* ph = xhat.data<float>();
    for (std::int64_t c = 0; c < C; ++c)
      layout.for_each(c, [&](std::int64_t i) { ph[i] = (px[i] - rm[c]) * invstd[c]; });
    Tensor y = affine(xhat, layout, gamma, beta);
    const std::vector<std::int64_t> non_channel_axes = channels_last ? std::vector<std::int64_t>{0, 1, 2}
                                                                     : std::vector<std::int64_t>{0, 2, 3};
    return record("batch_norm2d_eval", y, {&x, &gamma, &beta},
                  [xhat, layout, invstd, non_channel_axes, gamma = gamma.detach(), need_gamma, need_beta](const Tensor& g) {
      Tensor dx = Tensor::uninitialized(g.shape());
      const float* pg = g.data<float>();
      const float* gm = gamma.defined() ? gamma.data<float>() : nullptr;
      float* pdx = dx.data<float>();
      for (std::int64_t c = 0; c < layout.channels; ++c) {
        const float k = (gm ? gm[c] : 1.0f) * invstd[c];
        layout.for_each(c, [&](std::int64_t i) { pdx[i] = k * pg[i]; });
      }
      Tensor dgamma = need_gamma ? sum(mul(g, xhat), non_channel_axes) : Tensor();
      Tensor dbeta = need_beta ? sum(g, non_channel_axes) : Tensor();
      return std::vector<Tensor>{dx, dgamma, dbeta};
    });
  }

  SHIFTQ_CHECK(layout.count() > 1, ShapeError, "batch_norm2d: training needs more than one value per channel, got ", x.str());
  std::vector<float> mean, var, invstd;
  Tensor xhat = normalize(x, layout, state.eps, mean, var, invstd);
  if (state.running_mean.defined()) {
    float* rm = state.running_mean.data<float>();
    float* rv = state.running_var.data<float>();
    const float unbias = static_cast<float>(layout.count()) / static_cast<float>(layout.count() - 1);
    for (std::int64_t c = 0; c < C; ++c) {
      rm[c] = (1.0f - state.momentum) * rm[c] + state.momentum * mean[c];
      rv[c] = (1.0f - state.momentum) * rv[c] + state.momentum * var[c] * unbias;
    }
  }
  Tensor y = affine(xhat, layout, gamma, beta);
  return record("batch_norm2d", y, {&x, &gamma, &beta},
                [xhat, layout, invstd, gamma = gamma.detach(), need_gamma, need_beta](const Tensor& g) {
    return normalize_backward(g, xhat, layout, invstd, gamma, need_gamma, need_beta);
  });
}

Tensor layer_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps) {
  detail::check_f32(x, "layer_norm", "x");
  SHIFTQ_CHECK(x.dim() >= 1, ShapeError, "layer_norm: x must have rank >= 1");
  const std::int64_t D = x.size(-1), rows = x.numel() / std::max<std::int64_t>(D, 1);
  check_affine(gamma, D, "layer_norm", "gamma");
  check_affine(beta, D, "layer_norm", "beta");
  // Per-row statistics: view x as [1, rows, D] (channel = row), then the affine runs per feature.
  const NormLayout stats{1, rows, D};
  std::vector<float> mean, var, invstd;
  Tensor xhat = normalize(x, stats, eps, mean, var, invstd);
  const NormLayout features{rows, D, 1};
  Tensor y = affine(xhat, features, gamma, beta);
  const bool need_gamma = gamma.defined() && gamma.requires_grad();
  const bool need_beta = beta.defined() && beta.requires_grad();
  return record("layer_norm", y, {&x, &gamma, &beta},
                [xhat, rows, D, invstd, gamma = gamma.detach(), need_gamma, need_beta](const Tensor& g) {
    // g * gamma per feature, then the per-row normalization backward with gamma = 1.
    Tensor gg = gamma.defined() ? detail::map_binary(g, gamma, [](float a, float b) { return a * b; }) : g;
    std::vector<Tensor> grads = normalize_backward(gg, xhat, NormLayout{1, rows, D}, invstd, Tensor(), false, false);
    Tensor dgamma = need_gamma ? sum(mul(g, xhat).view({rows, D}), {0}) : Tensor();
    Tensor dbeta = need_beta ? sum(g.view({rows, D}), {0}) : Tensor();
    return std::vector<Tensor>{grads[0], dgamma, dbeta};
  });
}

}  // namespace shiftq

namespace shiftq {

Tensor l1_batch_norm2d(const Tensor& x, const Tensor& gamma, const Tensor& beta, L1BatchNormState& state,
                       bool training, ImageLayout image_layout) {
  detail::check_f32(x, "l1_batch_norm2d", "x");
  check_rank(x, 4, "l1_batch_norm2d", "x");
  const bool channels_last = image_layout == ImageLayout::nhwc;
  const std::int64_t C = x.size(channels_last ? 3 : 1);
  check_affine(gamma, C, "l1_batch_norm2d", "gamma");
  check_affine(beta, C, "l1_batch_norm2d", "beta");
  check_affine(state.running_mean, C, "l1_batch_norm2d", "running_mean");
  check_affine(state.running_sigma, C, "l1_batch_norm2d", "running_sigma");
  SHIFTQ_CHECK(state.c > 0.0f && state.eps > 0.0f, ValueError, "l1_batch_norm2d: c and eps must be > 0");
  // NHWC: one channel's values are every C-th element ([N*H*W, C, 1])
  const NormLayout layout = channels_last ? NormLayout{x.size(0) * x.size(1) * x.size(2), C, 1}
                                          : NormLayout{x.size(0), C, x.size(2) * x.size(3)};
  const Shape channel_shape = channels_last ? Shape{1, 1, 1, C} : Shape{1, C, 1, 1};
  const bool need_gamma = gamma.defined() && gamma.requires_grad();
  const bool need_beta = beta.defined() && beta.requires_grad();
  if (!training) {  // (x - running_mean) / running_sigma: an affine map per channel
    SHIFTQ_CHECK(state.running_mean.defined() && state.running_sigma.defined(), ValueError,
                 "l1_batch_norm2d: eval mode needs running_mean and running_sigma");
    const Tensor scale = reshape(div(Tensor::ones({C}), state.running_sigma.detach()), channel_shape);
    const Tensor shift = reshape(state.running_mean.detach(), channel_shape);
    Tensor xhat = mul(sub(x, shift), scale);
    if (gamma.defined()) xhat = mul(xhat, reshape(gamma, channel_shape));
    return beta.defined() ? add(xhat, reshape(beta, channel_shape)) : xhat;
  }
  SHIFTQ_CHECK(layout.count() > 1, ShapeError, "l1_batch_norm2d: training needs more than one value per channel, got ",
               x.str());
  std::vector<float> mean, sigma, mean_sign;
  Tensor xhat = l1_normalize(x, layout, state.eps, state.c, mean, sigma, mean_sign);
  if (state.running_mean.defined()) {
    float* rm = state.running_mean.data<float>();
    float* rs = state.running_sigma.data<float>();
    for (std::int64_t ch = 0; ch < C; ++ch) {
      rm[ch] = (1.0f - state.momentum) * rm[ch] + state.momentum * mean[ch];
      rs[ch] = (1.0f - state.momentum) * rs[ch] + state.momentum * sigma[ch];
    }
    state.running_mean.bump_version();
    state.running_sigma.bump_version();
  }
  Tensor y = affine(xhat, layout, gamma, beta);
  return record("l1_batch_norm2d", y, {&x, &gamma, &beta},
                [xhat, layout, sigma, mean_sign, c = state.c, gamma = gamma.detach(), need_gamma, need_beta](const Tensor& g) {
    const L1Terms l1{c, &mean_sign};
    return normalize_backward(g, xhat, layout, inverses(sigma), gamma, need_gamma, need_beta, &l1);
  });
}

Tensor l1_layer_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps, float c) {
  detail::check_f32(x, "l1_layer_norm", "x");
  SHIFTQ_CHECK(x.dim() >= 1, ShapeError, "l1_layer_norm: x must have rank >= 1");
  SHIFTQ_CHECK(c > 0.0f && eps > 0.0f, ValueError, "l1_layer_norm: c and eps must be > 0");
  const std::int64_t D = x.size(-1), rows = x.numel() / std::max<std::int64_t>(D, 1);
  check_affine(gamma, D, "l1_layer_norm", "gamma");
  check_affine(beta, D, "l1_layer_norm", "beta");
  std::vector<float> mean, sigma, mean_sign;
  Tensor xhat = l1_normalize(x, NormLayout{1, rows, D}, eps, c, mean, sigma, mean_sign);
  Tensor y = affine(xhat, NormLayout{rows, D, 1}, gamma, beta);
  const bool need_gamma = gamma.defined() && gamma.requires_grad();
  const bool need_beta = beta.defined() && beta.requires_grad();
  return record("l1_layer_norm", y, {&x, &gamma, &beta},
                [xhat, rows, D, sigma, mean_sign, c, gamma = gamma.detach(), need_gamma, need_beta](const Tensor& g) {
    // gamma is per feature (not per row): fold it into the incoming gradient first.
    Tensor gg = gamma.defined() ? detail::map_binary(g, gamma, [](float a, float b) { return a * b; }) : g;
    const L1Terms l1{c, &mean_sign};
    std::vector<Tensor> grads =
        normalize_backward(gg, xhat, NormLayout{1, rows, D}, inverses(sigma), Tensor(), false, false, &l1);
    Tensor dgamma = need_gamma ? sum(mul(g, xhat).view({rows, D}), {0}) : Tensor();
    Tensor dbeta = need_beta ? sum(g.view({rows, D}), {0}) : Tensor();
    return std::vector<Tensor>{grads[0], dgamma, dbeta};
  });
}

}  // namespace shiftq
