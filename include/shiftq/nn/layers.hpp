// Float layers. Options structs follow libtorch: `Linear(LinearOptions{784, 10}.bias(false), gen)`.
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "shiftq/autograd/ops.hpp"
#include "shiftq/core/generator.hpp"
#include "shiftq/nn/module.hpp"
#include "shiftq/quant/ql1norm.hpp"
#include "shiftq/quant/qlayers.hpp"

namespace shiftq::nn {

struct LinearOptions {
  LinearOptions(std::int64_t in_features, std::int64_t out_features)
      : in_features_(in_features), out_features_(out_features) {}
  SHIFTQ_ARG(std::int64_t, in_features);
  SHIFTQ_ARG(std::int64_t, out_features);
  SHIFTQ_ARG(bool, bias) = true;
};

// The buffer name of a quantized module's call counter ("<module>.quant_calls" in a state dict).
inline constexpr const char* kQuantCallsBuffer = "quant_calls";
// The buffer names of a quantized layer's observed input range (quant::RangeObserver's history and state).
inline constexpr const char* kInputHistoryBuffer = "input_amax_history";
inline constexpr const char* kInputObserverBuffer = "input_observer";

// The training forward calls of a quantized layer or norm: they key its stochastic rounding. Held
// in an s32 [2] tensor (low and high 32 bits) that nn::quantize_model registers as the module's
// optional buffer kQuantCallsBuffer, so a checkpoint of the module resumes the same roundings.
class QuantCallCounter {
 public:
  std::uint64_t value() const;
  void set(std::uint64_t calls);
  // The count, then (when `training`) one more.
  std::uint64_t next(bool training);
  const Tensor& tensor() const { return count_; }

 private:
  Tensor count_ = Tensor::zeros({2}, DType::s32);
};

// y = x W^T + b. x: [..., in] -> [..., out]. W: [out, in], kaiming-uniform as in PyTorch.
// Shared by the layers whose GEMMs can run on int8 (Linear, Conv2d): the layer's resolved
// quantization (none = fp32), its packed weight (re-quantized once per optimizer step) and the
// call counter that keys stochastic rounding.
// Delayed scaling: the observed range of the layer's input (quant::RangeObserver), registered by
// quantize_model as the optional buffers kInputHistoryBuffer and kInputObserverBuffer.
class QuantizableLayer {
 public:
  virtual ~QuantizableLayer() = default;
  // The layer's quantization (std::nullopt: fp32), stored as config.for_layer(false): a config
  // resolved for the layer's place in the model (quantize_model does that) is taken as it is.
  // (seed, layer_id) key the stochastic rounding of its gradients (quant::QuantCall). Keeps the
  // observed input range unless the observer options or its channels change (then it starts empty).
  // ValueError if the config does not validate.
  void set_quantization(std::optional<quant::QConfig> config, std::uint64_t seed = 0, std::uint64_t layer_id = 0);
  const std::optional<quant::QConfig>& quantization() const { return quant_; }
  std::uint64_t quant_seed() const { return seed_; }
  std::uint64_t quant_layer_id() const { return layer_id_; }
  const quant::RangeObserver& input_range() const { return input_range_; }
  quant::RangeObserver& input_range() { return input_range_; }
  // The numerics monitor: while on, each call measures its input and output-gradient quantization
  // (quant::LayerNumerics, summed until reset_numerics()).
  void set_numerics_monitor(bool on);
  const quant::LayerNumerics* numerics() const { return numerics_.get(); }
  void reset_numerics();
  const quant::PackedWeight& packed_weight() const { return packed_; }
  // Training forward calls so far: keys this layer's stochastic rounding (checkpointed for resume).
  std::uint64_t quant_calls() const { return calls_.value(); }
  void set_quant_calls(std::uint64_t calls) { calls_.set(calls); }
  const QuantCallCounter& quant_call_counter() const { return calls_; }

 protected:
  // The next call's context (advances the call counter when training).
  quant::QuantCall next_call(bool training);
  // Channels of the input observer: 1 (one range per tensor), or one per ShiftQuant group when the
  // groups run along a fixed axis of the input (Linear's input features) and are observed too.
  virtual std::int64_t observed_input_groups(const quant::QConfig&) const { return 1; }

  std::optional<quant::QConfig> quant_;
  std::uint64_t seed_ = 0, layer_id_ = 0;
  quant::PackedWeight packed_;
  QuantCallCounter calls_;
  quant::RangeObserver input_range_;
  quant::LinearInputRotation observed_rotation_ = quant::LinearInputRotation::none;  // of the input input_range_ observes
  std::shared_ptr<quant::LayerNumerics> numerics_;
};

class Linear : public Module, public QuantizableLayer {
 public:
  Linear(const LinearOptions& options, Generator& gen);
  // fp32, or int8 GEMMs forward and backward once set_quantization() / quantize_model() gave it a config.
  Tensor forward(const Tensor& x) override;
  // gelu(forward(x)), the same bits. Quantized, backward recomputes the pre-activation from the
  // saved int8 codes instead of keeping it (quant::quantized_linear_gelu): a Transformer MLP's fc
  // layer saves out_features * 4 bytes less per row, for one more int8 GEMM in backward.
  Tensor forward_gelu(const Tensor& x);
  const LinearOptions& options() const { return options_; }
  Tensor weight;  // [out, in]
  Tensor bias;    // [out] or undefined

 protected:
  // ShiftQuant activations: one observed range per input feature (the groups of X in X W^T).
  std::int64_t observed_input_groups(const quant::QConfig& config) const override;

 private:
  LinearOptions options_;
};

struct Conv2dOptions {
  Conv2dOptions(std::int64_t in_channels, std::int64_t out_channels, std::int64_t kernel_size)
      : in_channels_(in_channels), out_channels_(out_channels), kernel_size_(kernel_size) {}
  SHIFTQ_ARG(std::int64_t, in_channels);
  SHIFTQ_ARG(std::int64_t, out_channels);
  SHIFTQ_ARG(std::int64_t, kernel_size);
  SHIFTQ_ARG(std::int64_t, stride) = 1;
  SHIFTQ_ARG(std::int64_t, padding) = 0;
  SHIFTQ_ARG(bool, bias) = true;
  SHIFTQ_ARG(ImageLayout, layout) = ImageLayout::nchw;  // of the input and output
};

// x: [N, C_in, H, W] -> [N, C_out, OH, OW] (ImageLayout::nhwc: [N, H, W, C_in] -> [N, OH, OW, C_out]).
// W: [C_out, C_in, K, K] in both layouts, so checkpoints do not depend on the layout.
class Conv2d : public Module, public QuantizableLayer {
 public:
  Conv2d(const Conv2dOptions& options, Generator& gen);
  Tensor forward(const Tensor& x) override;
  // Whether a producer may hand this layer its input as codes now (quant::writes_conv_input_codes:
  // quantized with ShiftQuant activations under delayed scaling, its input range observed) and
  // the numerics monitor, which measures the f32 input, is off.
  bool takes_input_codes() const;
  // The forward on an input that arrives as codes made for this layer
  // (L1BatchNorm2d::forward_relu_codes(x, *this); quant::quantized_conv2d on a CodedActivation):
  // the same output as forward() on the f32 input those codes quantize. ValueError unless
  // takes_input_codes().
  Tensor forward(const quant::CodedActivation& x);
  const Conv2dOptions& options() const { return options_; }
  Tensor weight;
  Tensor bias;

 private:
  Conv2dOptions options_;
};

struct BatchNormOptions {
  explicit BatchNormOptions(std::int64_t num_features) : num_features_(num_features) {}
  SHIFTQ_ARG(std::int64_t, num_features);
  SHIFTQ_ARG(float, eps) = 1e-5f;
  SHIFTQ_ARG(float, momentum) = 0.1f;
  SHIFTQ_ARG(bool, affine) = true;
  SHIFTQ_ARG(ImageLayout, layout) = ImageLayout::nchw;
};

// x: [N, C, H, W] (ImageLayout::nhwc: [N, H, W, C]). Batch statistics in training (updating running_mean/var), running ones in eval.
class BatchNorm2d : public Module {
 public:
  explicit BatchNorm2d(const BatchNormOptions& options);
  Tensor forward(const Tensor& x) override;
  const BatchNormOptions& options() const { return options_; }
  // Running statistics back to their initial values (mean 0, variance 1).
  void reset_running_stats();
  // The weight of each training batch in the running statistics, in [0, 1] (ValueError otherwise).
  void set_momentum(float momentum);
  Tensor weight, bias;                // gamma, beta: [C]
  Tensor running_mean, running_var;   // buffers: [C]

 private:
  BatchNormOptions options_;
};

struct L1BatchNormOptions {
  explicit L1BatchNormOptions(std::int64_t num_features) : num_features_(num_features) {}
  SHIFTQ_ARG(std::int64_t, num_features);
  SHIFTQ_ARG(float, eps) = 1e-5f;
  SHIFTQ_ARG(float, momentum) = 0.1f;
  SHIFTQ_ARG(bool, affine) = true;
  SHIFTQ_ARG(float, c) = kL1NormC;  // sigma = c * mean|x - mu| + eps (sqrt(pi/2) matches L2 for Gaussians)
  SHIFTQ_ARG(ImageLayout, layout) = ImageLayout::nchw;
};

// L1 norm layers run fully quantized (int8 codes, integer statistics) once given a config.
class QuantizableNorm {
 public:
  virtual ~QuantizableNorm() = default;
  // Quantized with config.norm_bits (0 or std::nullopt: float), config.activation_scaling and
  // config.observer; (seed, layer_id) key the stochastic rounding of its output gradient.
  // ValueError if the config does not validate.
  void set_quantization(std::optional<quant::QConfig> config, std::uint64_t seed = 0, std::uint64_t layer_id = 0);
  // Channels whose input ranges the norm observes (BatchNorm: C; LayerNorm quantizes each row with
  // its own range and observes none: 0).
  virtual std::int64_t observed_channels() const { return 0; }
  const quant::RangeObserver* input_range() const { return input_range_ ? &*input_range_ : nullptr; }
  const std::optional<quant::QConfig>& quantization() const { return quant_; }
  std::uint64_t quant_seed() const { return seed_; }
  std::uint64_t quant_layer_id() const { return layer_id_; }
  std::uint64_t quant_calls() const { return calls_.value(); }
  void set_quant_calls(std::uint64_t calls) { calls_.set(calls); }
  const QuantCallCounter& quant_call_counter() const { return calls_; }

 protected:
  // The next call's context (advances the call counter when training).
  quant::QuantCall next_call(bool training);

  std::optional<quant::QConfig> quant_;
  std::uint64_t seed_ = 0, layer_id_ = 0;
  QuantCallCounter calls_;
  std::optional<quant::RangeObserver> input_range_;  // when quantized with delayed input scaling
};

// BatchNorm with the mean absolute deviation instead of the standard deviation. x: [N, C, H, W]
// (ImageLayout::nhwc: [N, H, W, C]).
class L1BatchNorm2d : public Module, public QuantizableNorm {
 public:
  explicit L1BatchNorm2d(const L1BatchNormOptions& options);
  Tensor forward(const Tensor& x) override;
  // relu(forward(x)) written as `consumer`'s input codes in the norm's own pass
  // (quant::quantized_l1_batch_norm2d_relu), when writes_codes_for(consumer); ValueError otherwise.
  quant::CodedActivation forward_relu_codes(const Tensor& x, Conv2d& consumer);
  // relu(forward(x) + shortcut) in one pass over the norm's codes when quantized
  // (quant::quantized_l1_batch_norm2d_add_relu), else the three ops; the same bits either way.
  Tensor forward_add_relu(const Tensor& x, const Tensor& shortcut);
  // Whether forward_relu_codes can feed `consumer`: both quantized and in the same train/eval mode,
  // consumer.takes_input_codes(), the same layout and channels, and either training or an eval on
  // codes (observed input ranges) outside grad mode.
  bool writes_codes_for(const Conv2d& consumer) const;
  std::int64_t observed_channels() const override { return options_.num_features(); }
  const L1BatchNormOptions& options() const { return options_; }
  // Running statistics back to their initial values (mean 0, sigma 1).
  void reset_running_stats();
  // The weight of each training batch in the running statistics, in [0, 1] (ValueError otherwise).
  void set_momentum(float momentum);
  Tensor weight, bias;                 // [C]
  Tensor running_mean, running_sigma;  // buffers: [C]

 private:
  L1BatchNormOptions options_;
};

// conv(relu(norm(x))): a norm feeding a convolution through a ReLU (a ResNet block's inner chain).
// With an L1BatchNorm2d that writes_codes_for(conv), the norm writes the convolution's int8 input
// codes in its own pass (integer data flow: no f32 norm output, no ReLU pass, no quantizer pass over
// the convolution's input); otherwise the three modules run one after the other. Both give the same
// bits, forward and backward.
Tensor norm_relu_conv2d(Module& norm, Conv2d& conv, const Tensor& x);

// relu(norm(x) + shortcut): a ResNet block's output. An L1BatchNorm2d computes it in one pass over
// its codes (L1BatchNorm2d::forward_add_relu); any other norm runs the three ops.
Tensor norm_add_relu(Module& norm, const Tensor& x, const Tensor& shortcut);

struct LayerNormOptions {
  explicit LayerNormOptions(std::int64_t normalized_size) : normalized_size_(normalized_size) {}
  SHIFTQ_ARG(std::int64_t, normalized_size);
  SHIFTQ_ARG(float, eps) = 1e-5f;
  SHIFTQ_ARG(bool, elementwise_affine) = true;
};

// Normalizes the last dim: x: [..., D].
class LayerNorm : public Module {
 public:
  explicit LayerNorm(const LayerNormOptions& options);
  Tensor forward(const Tensor& x) override;
  Tensor weight, bias;  // [D]

 private:
  LayerNormOptions options_;
};

struct L1LayerNormOptions {
  explicit L1LayerNormOptions(std::int64_t normalized_size) : normalized_size_(normalized_size) {}
  SHIFTQ_ARG(std::int64_t, normalized_size);
  SHIFTQ_ARG(float, eps) = 1e-5f;
  SHIFTQ_ARG(bool, elementwise_affine) = true;
  SHIFTQ_ARG(float, c) = kL1NormC;
};

// LayerNorm with the mean absolute deviation over the last dim of x: [..., D].
class L1LayerNorm : public Module, public QuantizableNorm {
 public:
  explicit L1LayerNorm(const L1LayerNormOptions& options);
  Tensor forward(const Tensor& x) override;
  Tensor weight, bias;  // [D]

 private:
  L1LayerNormOptions options_;
};

struct EmbeddingOptions {
  EmbeddingOptions(std::int64_t num_embeddings, std::int64_t embedding_dim)
      : num_embeddings_(num_embeddings), embedding_dim_(embedding_dim) {}
  SHIFTQ_ARG(std::int64_t, num_embeddings);
  SHIFTQ_ARG(std::int64_t, embedding_dim);
  SHIFTQ_ARG(float, init_std) = 1.0f;
};

// indices: s32 [...] -> [..., D]. weight: [V, D] ~ N(0, init_std^2).
class Embedding : public Module {
 public:
  Embedding(const EmbeddingOptions& options, Generator& gen);
  Tensor forward(const Tensor& indices) override;
  Tensor weight;

 private:
  EmbeddingOptions options_;
};

// Inverted dropout with its own generator stream (forked from `gen` at construction).
class Dropout : public Module {
 public:
  Dropout(float p, Generator& gen);
  Tensor forward(const Tensor& x) override;
  Generator& generator() { return gen_; }

 private:
  float p_;
  Generator gen_;
};

class ReLU : public Module {
 public:
  ReLU() : Module("ReLU") {}
  Tensor forward(const Tensor& x) override { return relu(x); }
};
class GELU : public Module {
 public:
  GELU() : Module("GELU") {}
  Tensor forward(const Tensor& x) override { return gelu(x); }
};
class Tanh : public Module {
 public:
  Tanh() : Module("Tanh") {}
  Tensor forward(const Tensor& x) override { return tanh(x); }
};
class Flatten : public Module {
 public:
  explicit Flatten(std::int64_t start_dim = 1) : Module("Flatten"), start_dim_(start_dim) {}
  Tensor forward(const Tensor& x) override { return flatten(x, start_dim_); }

 private:
  std::int64_t start_dim_;
};
class MaxPool2d : public Module {
 public:
  explicit MaxPool2d(const Pool2dParams& params = {}) : Module("MaxPool2d"), params_(params) {}
  Tensor forward(const Tensor& x) override { return max_pool2d(x, params_); }

 private:
  Pool2dParams params_;
};
class AvgPool2d : public Module {
 public:
  explicit AvgPool2d(const Pool2dParams& params = {}) : Module("AvgPool2d"), params_(params) {}
  Tensor forward(const Tensor& x) override { return avg_pool2d(x, params_); }

 private:
  Pool2dParams params_;
};
// [N, C, H, W] -> [N, C]
class GlobalAvgPool2d : public Module {
 public:
  explicit GlobalAvgPool2d(ImageLayout layout = ImageLayout::nchw) : Module("GlobalAvgPool2d"), layout_(layout) {}
  Tensor forward(const Tensor& x) override { return global_avg_pool2d(x, layout_); }

 private:
  ImageLayout layout_;
};

// Chains one-input modules; children are named "0", "1", ...
class Sequential : public Module {
 public:
  Sequential() : Module("Sequential") {}
  Sequential(std::initializer_list<std::shared_ptr<Module>> modules);
  template <class M>
  std::shared_ptr<M> push_back(std::shared_ptr<M> module) {
    return register_module(std::to_string(size_++), std::move(module));
  }
  Tensor forward(const Tensor& x) override;
  std::size_t size() const { return size_; }

 private:
  std::size_t size_ = 0;
};

// Gives every Linear and Conv2d under `model` (in registration order) the quantization of
// `config`; the first and the last of them use config.first_last_bits. L1BatchNorm2d / L1LayerNorm
// layers become fully quantized with config.norm_bits (when non-zero). Stochastic rounding is keyed
// by (seed, call, layer index); each quantized module gets the optional buffer "quant_calls" with its
// call counter, so io::save_checkpoint of the model resumes bit for bit. Returns the number of GEMM
// layers quantized.
int quantize_model(Module& model, const quant::QConfig& config, std::uint64_t seed = 0);
// Back to fp32 GEMMs.
void dequantize_model(Module& model);
// Re-estimates the running statistics of every BatchNorm2d and L1BatchNorm2d under `model` for its
// current weights: resets them, calls `forward(i)` for i = 0 .. batches - 1 (each runs the model on
// one batch) in training mode without gradients, each batch weighing 1/batches (the running
// statistics end as the plain mean of the batches' statistics), then restores the norms' momenta
// and the model's mode. Quantized layers with delayed scaling record these calls in their observed
// ranges as in any training call: with max-of-history ranges and batches >= the history length, eval
// then quantizes with ranges of the final weights only.
// After quantization-aware training the statistics that the momentum collected lag the weights;
// this removes that lag. Returns the number of norms re-estimated; ValueError if batches < 1.
int recalibrate_batch_norm(Module& model, std::int64_t batches, const std::function<void(std::int64_t)>& forward);
// The training-call counters of every quantizable layer and norm under `model` (registration
// order). They key stochastic rounding, so a checkpoint stores them for a bit-exact resume.
std::vector<std::uint64_t> quantization_counters(Module& model);
// Restores quantization_counters(); ValueError if the count of layers differs.
void set_quantization_counters(Module& model, const std::vector<std::uint64_t>& counters);

// The numerics of one quantized Linear or Conv2d: its observed input range and, while the monitor
// is on, what its quantizers did to its input and output gradient (quant::LayerNumerics).
struct QuantizationReport {
  std::string name;  // dotted module path ("layer1.0.conv1")
  std::string type;  // "Linear", "Conv2d"
  int activation_bits = 0, gradient_bits = 0;
  bool delayed = false;        // delayed activation scaling
  bool observed = false;       // ... with at least one observed training call
  float input_range = 0.0f;    // the range the next call quantizes its input with (when observed)
  std::uint64_t observed_calls = 0, saturated_calls = 0;  // training calls; those beyond the range
  std::optional<quant::LayerNumerics> numerics;  // when the monitor is on
};
// Every quantized GEMM layer under `model`, in registration order.
std::vector<QuantizationReport> quantization_report(Module& model);
// Turns the numerics monitor of every quantized GEMM layer on or off (off frees its records).
void set_numerics_monitor(Module& model, bool on);
void reset_numerics(Module& model);

// How well a parameter's integer-training gradient agrees with its fp32 gradient on one batch.
struct GradientAgreement {
  std::string name;         // the parameter ("layer1.0.conv1.weight")
  double cosine = 0.0;      // cos(g_int, g_fp32); 0 when either is zero
  double norm_ratio = 0.0;  // |g_int| / |g_fp32| (0 when g_fp32 is zero)
};
// Runs `loss` (forward, returning a scalar) and its backward twice: with the model as it is, then
// with every quantizable layer and norm in fp32 (`set_quantized(false)` switches anything else that
// quantizes, such as a model's own int8 ops; it is called with true afterwards). The model's state
// (parameters and buffers: running statistics, observed ranges, call counters) is restored after
// each pass, the quantization configurations after the second, and the gradients are zeroed.
std::vector<GradientAgreement> probe_gradient_agreement(Module& model, const std::function<Tensor()>& loss,
                                                        const std::function<void(bool)>& set_quantized = {});

}  // namespace shiftq::nn
