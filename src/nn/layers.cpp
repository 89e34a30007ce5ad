#include "shiftq/nn/layers.hpp"

#include <cmath>

#include "shiftq/nn/init.hpp"

namespace shiftq::nn {
namespace {
void check_positive(std::int64_t v, const char* module, const char* what) {
  SHIFTQ_CHECK(v > 0, ValueError, module, ": ", what, " must be > 0, got ", v);
}

// PyTorch's default for Linear/Conv: kaiming_uniform(a = sqrt(5)) weights, U(-1/sqrt(fan_in), ...) bias.
void default_init(Tensor& weight, Tensor* bias, Generator& gen) {
  init::kaiming_uniform_(weight, gen, std::sqrt(5.0f));
  if (bias && bias->defined()) {
    const float bound = 1.0f / std::sqrt(static_cast<float>(init::fans(weight).first));
    init::uniform_(*bias, -bound, bound, gen);
  }
}

void check_momentum(float momentum, const char* module) {
  SHIFTQ_CHECK(momentum >= 0.0f && momentum <= 1.0f, ValueError, module, ": momentum must be in [0, 1], got ", momentum);
}

}  // namespace

std::uint64_t QuantCallCounter::value() const {
  const std::int32_t* words = count_.data<std::int32_t>();
  return static_cast<std::uint32_t>(words[0]) | (static_cast<std::uint64_t>(static_cast<std::uint32_t>(words[1])) << 32);
}

void QuantCallCounter::set(std::uint64_t calls) {
  std::int32_t* words = count_.data<std::int32_t>();
  words[0] = static_cast<std::int32_t>(static_cast<std::uint32_t>(calls));
  words[1] = static_cast<std::int32_t>(static_cast<std::uint32_t>(calls >> 32));
}

std::uint64_t QuantCallCounter::next(bool training) {
  const std::uint64_t calls = value();
  if (training) set(calls + 1);
  return calls;
}

namespace {
bool same_options(const quant::ObserverOptions& a, const quant::ObserverOptions& b) {
  return a.history == b.history && a.reduction == b.reduction && a.momentum == b.momentum;
}
}  // namespace

void QuantizableLayer::set_quantization(std::optional<quant::QConfig> config, std::uint64_t seed,
                                        std::uint64_t layer_id) {
  std::optional<quant::QConfig> q;
  if (config) {
    q = config->for_layer(false);
    const std::int64_t channels = observed_input_groups(*q);
    // Ranges observed of an operand rotated another way do not describe this one.
    const bool rotation_changed = observed_rotation_ != q->linear_input_rotation;
    if (!same_options(q->observer, input_range_.options()) || input_range_.channels() != channels || rotation_changed) {
      input_range_ = quant::RangeObserver(channels, q->observer);
      observed_rotation_ = q->linear_input_rotation;
      // Buffers registered for the old observer (quantize_model) now name the new one's state.
      if (auto* module = dynamic_cast<Module*>(this); module && module->has_buffer(kInputHistoryBuffer)) {
        module->replace_buffer(kInputHistoryBuffer, input_range_.history());
        module->replace_buffer(kInputObserverBuffer, input_range_.state());
      }
    }
  }
  quant_ = std::move(q);
  seed_ = seed;
  layer_id_ = layer_id;
}

void QuantizableLayer::set_numerics_monitor(bool on) {
  if (!on)
    numerics_.reset();
  else if (!numerics_)
    numerics_ = std::make_shared<quant::LayerNumerics>();
}

void QuantizableLayer::reset_numerics() {
  if (numerics_) *numerics_ = quant::LayerNumerics{};
}

quant::QuantCall QuantizableLayer::next_call(bool training) {
  const bool delayed = quant_->activation_scaling == quant::ActivationScaling::delayed;
  return quant::QuantCall{calls_.next(training), training, delayed ? &input_range_ : nullptr, numerics_, seed_, layer_id_};
}

void QuantizableNorm::set_quantization(std::optional<quant::QConfig> config, std::uint64_t seed,
                                       std::uint64_t layer_id) {
  if (config) config->validate();
  if (config && config->norm_bits == 0) config.reset();
  if (config) {
    const std::int64_t channels = observed_channels();
    if (channels == 0 || config->activation_scaling != quant::ActivationScaling::delayed)
      input_range_.reset();
    else if (!input_range_ || !same_options(config->observer, input_range_->options()))
      input_range_.emplace(channels, config->observer);
  }
  quant_ = std::move(config);
  seed_ = seed;
  layer_id_ = layer_id;
}

quant::QuantCall QuantizableNorm::next_call(bool training) {
  return quant::QuantCall{calls_.next(training), training, input_range_ ? &*input_range_ : nullptr, nullptr, seed_,
                          layer_id_};
}

Linear::Linear(const LinearOptions& options, Generator& gen) : Module("Linear"), options_(options) {
  check_positive(options.in_features(), "Linear", "in_features");
  check_positive(options.out_features(), "Linear", "out_features");
  Tensor w = Tensor::empty({options.out_features(), options.in_features()});
  Tensor b = options.bias() ? Tensor::empty({options.out_features()}) : Tensor();
  default_init(w, &b, gen);
  weight = register_parameter("weight", w);
  if (b.defined()) bias = register_parameter("bias", b);
}

std::int64_t Linear::observed_input_groups(const quant::QConfig& config) const {
  return config.activations.kind == quant::QuantizerKind::shiftquant && config.activations.shift_budget > 0 &&
                 config.linear_input_groups == quant::LinearInputGroups::features
             ? options_.in_features()
             : 1;
}

Tensor Linear::forward(const Tensor& x) {
  if (!quant_) return linear(x, weight, bias);
  return quant::quantized_linear(x, weight, bias, packed_, *quant_, next_call(is_training()));
}

Tensor Linear::forward_gelu(const Tensor& x) {
  if (!quant_) return gelu(linear(x, weight, bias));
  return quant::quantized_linear_gelu(x, weight, bias, packed_, *quant_, next_call(is_training()));
}

Conv2d::Conv2d(const Conv2dOptions& options, Generator& gen) : Module("Conv2d"), options_(options) {
  check_positive(options.in_channels(), "Conv2d", "in_channels");
  check_positive(options.out_channels(), "Conv2d", "out_channels");
  check_positive(options.kernel_size(), "Conv2d", "kernel_size");
  check_positive(options.stride(), "Conv2d", "stride");
  SHIFTQ_CHECK(options.padding() >= 0, ValueError, "Conv2d: padding must be >= 0");
  const std::int64_t k = options.kernel_size();
  Tensor w = Tensor::empty({options.out_channels(), options.in_channels(), k, k});
  Tensor b = options.bias() ? Tensor::empty({options.out_channels()}) : Tensor();
  default_init(w, &b, gen);
  weight = register_parameter("weight", w);
  if (b.defined()) bias = register_parameter("bias", b);
}

Tensor Conv2d::forward(const Tensor& x) {
  const Conv2dParams params{options_.stride(), options_.padding(), options_.layout()};
  if (!quant_) return conv2d(x, weight, bias, params);
  return quant::quantized_conv2d(x, weight, bias, params, packed_, *quant_, next_call(is_training()));
}

bool Conv2d::takes_input_codes() const {
  return quant_ && quant_->activation_scaling == quant::ActivationScaling::delayed && !numerics_ &&
         quant::writes_conv_input_codes(*quant_, &input_range_);
}

Tensor Conv2d::forward(const quant::CodedActivation& x) {
  SHIFTQ_CHECK(takes_input_codes(), ValueError, "Conv2d: a coded input needs a layer quantized with ShiftQuant ",
               "activations under delayed scaling, an observed input range and the numerics monitor off");
  const Conv2dParams params{options_.stride(), options_.padding(), options_.layout()};
  return quant::quantized_conv2d(x, weight, bias, params, packed_, *quant_, next_call(is_training()));
}

BatchNorm2d::BatchNorm2d(const BatchNormOptions& options) : Module("BatchNorm2d"), options_(options) {
  check_positive(options.num_features(), "BatchNorm2d", "num_features");
  SHIFTQ_CHECK(options.eps() > 0.0f && options.momentum() >= 0.0f && options.momentum() <= 1.0f,
               ValueError, "BatchNorm2d: eps must be > 0 and momentum in [0, 1]");
  const std::int64_t C = options.num_features();
  if (options.affine()) {
    weight = register_parameter("weight", Tensor::ones({C}));
    bias = register_parameter("bias", Tensor::zeros({C}));
  }
  running_mean = register_buffer("running_mean", Tensor::zeros({C}));
  running_var = register_buffer("running_var", Tensor::ones({C}));
}

void BatchNorm2d::reset_running_stats() {
  running_mean.fill_(0.0f);
  running_var.fill_(1.0f);
}

void BatchNorm2d::set_momentum(float momentum) {
  check_momentum(momentum, "BatchNorm2d");
  options_.momentum(momentum);
}

Tensor BatchNorm2d::forward(const Tensor& x) {
  BatchNormState state{running_mean, running_var, options_.momentum(), options_.eps()};
  return batch_norm2d(x, weight, bias, state, is_training(), options_.layout());
}

L1BatchNorm2d::L1BatchNorm2d(const L1BatchNormOptions& options) : Module("L1BatchNorm2d"), options_(options) {
  check_positive(options.num_features(), "L1BatchNorm2d", "num_features");
  SHIFTQ_CHECK(options.eps() > 0.0f && options.c() > 0.0f && options.momentum() >= 0.0f && options.momentum() <= 1.0f,
               ValueError, "L1BatchNorm2d: eps and c must be > 0 and momentum in [0, 1]");
  const std::int64_t C = options.num_features();
  if (options.affine()) {
    weight = register_parameter("weight", Tensor::ones({C}));
    bias = register_parameter("bias", Tensor::zeros({C}));
  }
  running_mean = register_buffer("running_mean", Tensor::zeros({C}));
  running_sigma = register_buffer("running_sigma", Tensor::ones({C}));
}

void L1BatchNorm2d::reset_running_stats() {
  running_mean.fill_(0.0f);
  running_sigma.fill_(1.0f);
}

void L1BatchNorm2d::set_momentum(float momentum) {
  check_momentum(momentum, "L1BatchNorm2d");
  options_.momentum(momentum);
}

Tensor L1BatchNorm2d::forward(const Tensor& x) {
  L1BatchNormState state{running_mean, running_sigma, options_.momentum(), options_.eps(), options_.c()};
  if (!quant_) return l1_batch_norm2d(x, weight, bias, state, is_training(), options_.layout());
  return quant::quantized_l1_batch_norm2d(x, weight, bias, state, *quant_, next_call(is_training()), options_.layout());
}

bool L1BatchNorm2d::writes_codes_for(const Conv2d& consumer) const {
  // The consumer's observer is updated by the norm's call: both must be in the same mode.
  if (!quant_ || !consumer.takes_input_codes() || consumer.is_training() != is_training() ||
      consumer.options().layout() != options_.layout() || consumer.options().in_channels() != options_.num_features())
    return false;
  return is_training() || (!grad_mode_enabled() && input_range_ && input_range_->observed());
}

quant::CodedActivation L1BatchNorm2d::forward_relu_codes(const Tensor& x, Conv2d& consumer) {
  SHIFTQ_CHECK(writes_codes_for(consumer), ValueError, "L1BatchNorm2d: cannot write this Conv2d's input codes (",
               "both must be quantized with delayed scaling, the convolution with ShiftQuant activations and an ",
               "observed input range, in the same train/eval mode, with the same layout and channels; eval needs ",
               "observed norm input ranges and no grad mode)");
  L1BatchNormState state{running_mean, running_sigma, options_.momentum(), options_.eps(), options_.c()};
  return quant::quantized_l1_batch_norm2d_relu(x, weight, bias, state, *quant_, next_call(is_training()),
                                               options_.layout(), *consumer.quantization(), consumer.input_range());
}

Tensor L1BatchNorm2d::forward_add_relu(const Tensor& x, const Tensor& shortcut) {
  if (!quant_) return relu(add(forward(x), shortcut));
  L1BatchNormState state{running_mean, running_sigma, options_.momentum(), options_.eps(), options_.c()};
  return quant::quantized_l1_batch_norm2d_add_relu(x, weight, bias, state, *quant_, next_call(is_training()),
                                                   options_.layout(), shortcut);
}

Tensor norm_add_relu(Module& norm, const Tensor& x, const Tensor& shortcut) {
  if (auto* l1 = dynamic_cast<L1BatchNorm2d*>(&norm)) return l1->forward_add_relu(x, shortcut);
  return relu(add(norm(x), shortcut));
}

Tensor norm_relu_conv2d(Module& norm, Conv2d& conv, const Tensor& x) {
  if (auto* l1 = dynamic_cast<L1BatchNorm2d*>(&norm); l1 && l1->writes_codes_for(conv))
    return conv.forward(l1->forward_relu_codes(x, conv));
  return conv(relu(norm(x)));
}

L1LayerNorm::L1LayerNorm(const L1LayerNormOptions& options) : Module("L1LayerNorm"), options_(options) {
  check_positive(options.normalized_size(), "L1LayerNorm", "normalized_size");
  SHIFTQ_CHECK(options.eps() > 0.0f && options.c() > 0.0f, ValueError, "L1LayerNorm: eps and c must be > 0");
  if (options.elementwise_affine()) {
    weight = register_parameter("weight", Tensor::ones({options.normalized_size()}));
    bias = register_parameter("bias", Tensor::zeros({options.normalized_size()}));
  }
}

Tensor L1LayerNorm::forward(const Tensor& x) {
  if (!quant_) return l1_layer_norm(x, weight, bias, options_.eps(), options_.c());
  return quant::quantized_l1_layer_norm(x, weight, bias, options_.eps(), options_.c(), *quant_,
                                        next_call(is_training()));
}

LayerNorm::LayerNorm(const LayerNormOptions& options) : Module("LayerNorm"), options_(options) {
  check_positive(options.normalized_size(), "LayerNorm", "normalized_size");
  SHIFTQ_CHECK(options.eps() > 0.0f, ValueError, "LayerNorm: eps must be > 0");
  if (options.elementwise_affine()) {
    weight = register_parameter("weight", Tensor::ones({options.normalized_size()}));
    bias = register_parameter("bias", Tensor::zeros({options.normalized_size()}));
  }
}

Tensor LayerNorm::forward(const Tensor& x) { return layer_norm(x, weight, bias, options_.eps()); }

Embedding::Embedding(const EmbeddingOptions& options, Generator& gen) : Module("Embedding"), options_(options) {
  check_positive(options.num_embeddings(), "Embedding", "num_embeddings");
  check_positive(options.embedding_dim(), "Embedding", "embedding_dim");
  Tensor w = Tensor::empty({options.num_embeddings(), options.embedding_dim()});
  init::normal_(w, 0.0f, options.init_std(), gen);
  weight = register_parameter("weight", w);
}

Tensor Embedding::forward(const Tensor& indices) { return embedding(weight, indices); }

Dropout::Dropout(float p, Generator& gen) : Module("Dropout"), p_(p), gen_(gen.fork()) {
  SHIFTQ_CHECK(p >= 0.0f && p < 1.0f, ValueError, "Dropout: p must be in [0, 1), got ", p);
}

Tensor Dropout::forward(const Tensor& x) { return dropout(x, p_, is_training(), gen_); }

Sequential::Sequential(std::initializer_list<std::shared_ptr<Module>> modules) : Module("Sequential") {
  for (const auto& m : modules) push_back(m);
}

Tensor Sequential::forward(const Tensor& x) {
  Tensor h = x;
  for (const auto& [name, child] : named_children()) h = child->forward(h);
  return h;
}

namespace {
template <class T>
void collect(Module& m, std::vector<T*>& out) {
  if (auto* q = dynamic_cast<T*>(&m)) out.push_back(q);
  for (const auto& [name, child] : m.named_children()) collect(*child, out);
}

// Registers (or re-points) an optional buffer of a quantized layer's module.
void attach_buffer(Module* module, const char* name, const Tensor& tensor) {
  if (!module) return;
  if (module->has_buffer(name))
    module->replace_buffer(name, tensor);
  else
    module->register_buffer(name, tensor, /*optional=*/true);
}

// Exposes a quantized layer's call counter, and its observed input range when it has one, as its
// module's optional buffers.
template <class T>
void attach_state(T* layer, const quant::RangeObserver* observer) {
  auto* module = dynamic_cast<Module*>(layer);
  attach_buffer(module, kQuantCallsBuffer, layer->quant_call_counter().tensor());
  if (!observer) return;
  attach_buffer(module, kInputHistoryBuffer, observer->history());
  attach_buffer(module, kInputObserverBuffer, observer->state());
}
}  // namespace

int quantize_model(Module& model, const quant::QConfig& config, std::uint64_t seed) {
  std::vector<QuantizableLayer*> layers;
  collect(model, layers);
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const bool first_or_last = i == 0 || i + 1 == layers.size();
    layers[i]->set_quantization(config.for_layer(first_or_last), seed, i);
    const bool delayed = config.activation_scaling == quant::ActivationScaling::delayed;
    attach_state(layers[i], delayed ? &layers[i]->input_range() : nullptr);
  }
  std::vector<QuantizableNorm*> norms;
  collect(model, norms);
  for (std::size_t i = 0; i < norms.size(); ++i) {
    // Stream ids after the GEMM layers' (which use 2 * id and 2 * id + 1).
    norms[i]->set_quantization(config, seed, 2 * layers.size() + i);
    if (norms[i]->quantization()) attach_state(norms[i], norms[i]->input_range());
  }
  return static_cast<int>(layers.size());
}

void dequantize_model(Module& model) {
  std::vector<QuantizableLayer*> layers;
  collect(model, layers);
  for (QuantizableLayer* layer : layers) layer->set_quantization(std::nullopt);
  std::vector<QuantizableNorm*> norms;
  collect(model, norms);
  for (QuantizableNorm* norm : norms) norm->set_quantization(std::nullopt);
}

int recalibrate_batch_norm(Module& model, std::int64_t batches, const std::function<void(std::int64_t)>& forward) {
  SHIFTQ_CHECK(batches >= 1, ValueError, "recalibrate_batch_norm: batches must be >= 1, got ", batches);
  SHIFTQ_CHECK(static_cast<bool>(forward), ValueError, "recalibrate_batch_norm: no forward function");
  std::vector<BatchNorm2d*> l2_norms;
  std::vector<L1BatchNorm2d*> l1_norms;
  collect(model, l2_norms);
  collect(model, l1_norms);
  std::vector<float> l2_momenta, l1_momenta;
  for (BatchNorm2d* n : l2_norms) l2_momenta.push_back(n->options().momentum());
  for (L1BatchNorm2d* n : l1_norms) l1_momenta.push_back(n->options().momentum());
  const bool was_training = model.is_training();
  // The statistics before, to put back if a forward fails (a failed re-estimation leaves the model
  // as it was, except for the observed ranges and call counters that the finished calls advanced).
  std::vector<Tensor> saved_stats;
  for (BatchNorm2d* n : l2_norms) saved_stats.insert(saved_stats.end(), {n->running_mean.clone(), n->running_var.clone()});
  for (L1BatchNorm2d* n : l1_norms) saved_stats.insert(saved_stats.end(), {n->running_mean.clone(), n->running_sigma.clone()});
  const auto restore_stats = [&] {
    std::size_t k = 0;
    for (BatchNorm2d* n : l2_norms) {
      n->running_mean.copy_(saved_stats[k++]);
      n->running_var.copy_(saved_stats[k++]);
    }
    for (L1BatchNorm2d* n : l1_norms) {
      n->running_mean.copy_(saved_stats[k++]);
      n->running_sigma.copy_(saved_stats[k++]);
    }
  };
  const auto restore = [&] {
    for (std::size_t i = 0; i < l2_norms.size(); ++i) l2_norms[i]->set_momentum(l2_momenta[i]);
    for (std::size_t i = 0; i < l1_norms.size(); ++i) l1_norms[i]->set_momentum(l1_momenta[i]);
    model.train(was_training);
  };
  for (BatchNorm2d* n : l2_norms) n->reset_running_stats();
  for (L1BatchNorm2d* n : l1_norms) n->reset_running_stats();
  NoGradGuard no_grad;
  model.train();
  try {
    for (std::int64_t i = 0; i < batches; ++i) {
      // Momentum 1 / (i + 1): after batch i the running statistics are the mean of batches 0..i.
      const float momentum = 1.0f / static_cast<float>(i + 1);
      for (BatchNorm2d* n : l2_norms) n->set_momentum(momentum);
      for (L1BatchNorm2d* n : l1_norms) n->set_momentum(momentum);
      forward(i);
    }
  } catch (...) {
    restore_stats();
    restore();
    throw;
  }
  restore();
  return static_cast<int>(l2_norms.size() + l1_norms.size());
}

std::vector<std::uint64_t> quantization_counters(Module& model) {
  std::vector<QuantizableLayer*> layers;
  collect(model, layers);
  std::vector<QuantizableNorm*> norms;
  collect(model, norms);
  std::vector<std::uint64_t> counters;
  for (const QuantizableLayer* layer : layers) counters.push_back(layer->quant_calls());
  for (const QuantizableNorm* norm : norms) counters.push_back(norm->quant_calls());
  return counters;
}

void set_quantization_counters(Module& model, const std::vector<std::uint64_t>& counters) {
  std::vector<QuantizableLayer*> layers;
  collect(model, layers);
  std::vector<QuantizableNorm*> norms;
  collect(model, norms);
  SHIFTQ_CHECK(counters.size() == layers.size() + norms.size(), ValueError, "set_quantization_counters: got ",
               counters.size(), " counters for a model with ", layers.size() + norms.size(),
               " quantizable layers and norms");
  std::size_t i = 0;
  for (QuantizableLayer* layer : layers) layer->set_quant_calls(counters[i++]);
  for (QuantizableNorm* norm : norms) norm->set_quant_calls(counters[i++]);
}

namespace {
// Calls fn(path, module, layer) for every quantizable GEMM layer under `m`.
template <class F>
void for_each_layer(Module& m, const std::string& path, F&& fn) {
  if (auto* layer = dynamic_cast<QuantizableLayer*>(&m)) fn(path, m, *layer);
  for (const auto& [name, child] : m.named_children()) for_each_layer(*child, path.empty() ? name : path + "." + name, fn);
}
}  // namespace

std::vector<QuantizationReport> quantization_report(Module& model) {
  std::vector<QuantizationReport> out;
  for_each_layer(model, "", [&](const std::string& path, Module& m, QuantizableLayer& layer) {
    if (!layer.quantization()) return;
    const quant::QConfig& q = *layer.quantization();
    QuantizationReport r;
    r.name = path;
    r.type = m.type_name();
    r.activation_bits = q.activations.bits;
    r.gradient_bits = q.gradients.bits;
    r.delayed = q.activation_scaling == quant::ActivationScaling::delayed;
    const quant::RangeObserver& obs = layer.input_range();
    r.observed = r.delayed && obs.observed();
    if (r.observed) r.input_range = obs.max_range();
    r.observed_calls = obs.updates();
    r.saturated_calls = obs.saturated_calls();
    if (layer.numerics()) r.numerics = *layer.numerics();
    out.push_back(std::move(r));
  });
  return out;
}

void set_numerics_monitor(Module& model, bool on) {
  for_each_layer(model, "", [on](const std::string&, Module&, QuantizableLayer& layer) { layer.set_numerics_monitor(on); });
}

void reset_numerics(Module& model) {
  for_each_layer(model, "", [](const std::string&, Module&, QuantizableLayer& layer) { layer.reset_numerics(); });
}

namespace {
std::map<std::string, Tensor> cloned_state(const Module& model) {
  std::map<std::string, Tensor> out;
  for (const auto& [name, t] : model.state_dict()) out.emplace(name, t.clone());
  return out;
}

// The parameters' gradients after one backward of `loss` (copies; undefined where none reached).
std::vector<Tensor> gradients_of(Module& model, const std::function<Tensor()>& loss) {
  model.zero_grad();
  loss().backward();
  std::vector<Tensor> grads;
  for (const auto& [name, p] : model.named_parameters()) grads.push_back(p.grad().defined() ? p.grad().clone() : Tensor());
  return grads;
}

GradientAgreement agreement(const std::string& name, const Tensor& g_int, const Tensor& g_fp32) {
  GradientAgreement a{name, 0.0, 0.0};
  if (!g_int.defined() || !g_fp32.defined()) return a;
  double dot = 0.0, nn_int = 0.0, nn_fp = 0.0;
  const float* x = g_int.data<float>();
  const float* y = g_fp32.data<float>();
  for (std::int64_t i = 0; i < g_int.numel(); ++i) {
    dot += static_cast<double>(x[i]) * y[i];
    nn_int += static_cast<double>(x[i]) * x[i];
    nn_fp += static_cast<double>(y[i]) * y[i];
  }
  if (nn_int > 0.0 && nn_fp > 0.0) a.cosine = dot / std::sqrt(nn_int * nn_fp);
  if (nn_fp > 0.0) a.norm_ratio = std::sqrt(nn_int / nn_fp);
  return a;
}
}  // namespace

std::vector<GradientAgreement> probe_gradient_agreement(Module& model, const std::function<Tensor()>& loss,
                                                        const std::function<void(bool)>& set_quantized) {
  const std::map<std::string, Tensor> state = cloned_state(model);
  std::vector<QuantizableLayer*> layers;
  std::vector<QuantizableNorm*> norms;
  collect(model, layers);
  collect(model, norms);
  struct Saved {
    std::optional<quant::QConfig> config;
    std::uint64_t seed, layer_id;
  };
  std::vector<Saved> layer_configs, norm_configs;
  for (QuantizableLayer* l : layers) layer_configs.push_back({l->quantization(), l->quant_seed(), l->quant_layer_id()});
  for (QuantizableNorm* n : norms) norm_configs.push_back({n->quantization(), n->quant_seed(), n->quant_layer_id()});
  auto restore_quantization = [&] {
    for (std::size_t i = 0; i < layers.size(); ++i)
      layers[i]->set_quantization(layer_configs[i].config, layer_configs[i].seed, layer_configs[i].layer_id);
    for (std::size_t i = 0; i < norms.size(); ++i)
      norms[i]->set_quantization(norm_configs[i].config, norm_configs[i].seed, norm_configs[i].layer_id);
    if (set_quantized) set_quantized(true);
  };
  std::vector<Tensor> g_int, g_fp32;
  try {
    g_int = gradients_of(model, loss);
    model.load_state_dict(state);
    for (QuantizableLayer* l : layers) l->set_quantization(std::nullopt);
    for (QuantizableNorm* n : norms) n->set_quantization(std::nullopt);
    if (set_quantized) set_quantized(false);
    g_fp32 = gradients_of(model, loss);
  } catch (...) {
    restore_quantization();
    model.load_state_dict(state);
    model.zero_grad();
    throw;
  }
  restore_quantization();
  model.load_state_dict(state);
  model.zero_grad();
  std::vector<GradientAgreement> out;
  std::size_t i = 0;
  for (const auto& [name, p] : model.named_parameters()) {
    out.push_back(agreement(name, g_int[i], g_fp32[i]));
    ++i;
  }
  return out;
}

}  // namespace shiftq::nn
