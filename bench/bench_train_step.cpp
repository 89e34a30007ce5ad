// One whole training step (forward + loss + backward + optimizer update) of the two example models,
// fp32 (L2 norms) against integer training (L1 norms), as the example trainers do it:
//   BM_TrainStep_ResNet20/<fp32_l2|int4_l1|int4_l1_actsq_mse>[_nhwc]/threads:<1|2>   ResNet-20, batch 128 of 1x28x28, 10 classes;
//       SGD (lr 0.1, momentum 0.9, weight decay 5e-4). int4_l1: QConfig::bits(4) (first/last layer
//       8-bit), L1BatchNorm2d fully quantized at 8 bits: the paper's recipe. int4_l1_actsq_mse: the
//       same with the best 4-bit configuration of docs/results.md, the ResNet trainer's default
//       (--act-quant shiftquant --act-clip mse --weight-clip mse: ShiftQuant activations, S = 3
//       unsigned, and MSE-chosen group exponents). *_nhwc: the same models channels-last
//       (ResNetOptions::layout = ImageLayout::nhwc, the trainer's --layout nhwc).
//   BM_TrainStep_GPT/<fp32_l2|int6_l1|int4_l1|int4_l1_rot_pertoken_mse|int4_l1_rot_pertokenblocks_mse|
//                     int6_l1_pertoken_mse>/threads:<1|2>
//       char-GPT, vocab 65, 4 layers, d 256, 4 heads, context 128, batch 32; AdamW (lr 1e-3, weight decay
//       0.1) + clip_grad_norm 1.0. int6_l1: QConfig::bits(6) (head 8-bit), L1LayerNorm at 8 bits.
//       int4_l1: the same at 4 bits. int4_l1_rot_pertoken_mse: the best 4-bit configuration of
//       docs/results.md (--act-rotation hadamard --act-quant per-token --act-clip mse --weight-clip
//       mse: Hadamard-rotated Linear inputs with an MSE-clipped float scale per token, MSE-chosen
//       weight exponents). int4_l1_rot_pertokenblocks_mse: the same with block multipliers per 16
//       features under each token's scale (--act-quant per-token-blocks). int6_l1_pertoken_mse: 6
//       bits with an MSE-clipped float scale per token for the Linear inputs (--act-quant per-token
//       --act-clip mse).
// Inputs are a fixed random batch (normal images / uniform tokens): no data loading is timed.
//
// Each case builds its model once, runs kWarmupSteps untimed steps, then times one step per
// iteration (real time). The model is kept between the invocations Google Benchmark makes of the
// same case (iteration-count probing, --benchmark_repetitions) and freed when another case starts.
// items_per_second = images (ResNet) or tokens (GPT) per second.
//
// Memory counters: peak_rss_MiB is getrusage(RUSAGE_SELF).ru_maxrss, the high-water mark of the
// whole PROCESS since it started, so it covers every case run before in the same process: for a
// per-case figure run each case in its own process (--benchmark_filter='^NAME$', as
// scripts/bench-train-step.sh does). start_rss_MiB is the resident size when main() began (the
// libraries loaded, no model yet). peak_tensor_MiB is the most bytes live tensors held during the
// timed steps (shiftq::peak_allocated_memory_bytes: model, optimizer state, saved activations and
// temporaries; no idle cache, fragmentation or non-tensor memory). cache_MiB is the idle bytes of the
// allocator's cache after the last timed step, for information.
#include <benchmark/benchmark.h>
#include <sys/resource.h>

#include <oneapi/dnnl/dnnl.h>

#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <shiftq/core/memory.hpp>
#include <shiftq/kernels/gemm_int.hpp>
#include <shiftq/kernels/quantize.hpp>
#include <shiftq/shiftq.hpp>
#include <shiftq/version.hpp>

#include "common/precision.hpp"
#include "resnet/model.hpp"
#include "transformer/model.hpp"

namespace {
using namespace shiftq;

constexpr int kWarmupSteps = 3;
constexpr std::uint64_t kSeed = 1;

double peak_rss_mib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

double current_rss_mib() {
  long pages = 0, resident = 0;
  if (std::FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
    std::fclose(f);
  }
  return static_cast<double>(resident) * 4096.0 / (1024.0 * 1024.0);
}

double g_start_rss_mib = 0;

// One model with its optimizer and a fixed batch.
class TrainStep {
 public:
  virtual ~TrainStep() = default;
  virtual float step() = 0;  // one optimizer step; returns the loss
  virtual std::int64_t items_per_step() const = 0;
  virtual std::string label() const = 0;
};

Tensor random_labels(const Shape& shape, std::uint64_t classes, Generator& gen) {
  std::vector<std::int32_t> values(static_cast<std::size_t>(shape_numel(shape)));
  for (auto& v : values) v = static_cast<std::int32_t>(gen.randint(classes));
  return Tensor::from_vector(values, shape);
}

enum class ResNetPrecision { fp32, int4, int4_actsq_mse, int4_nhwc, int4_actsq_mse_nhwc };

class ResNetStep final : public TrainStep {
 public:
  static constexpr std::int64_t kBatch = 128;

  explicit ResNetStep(ResNetPrecision precision) : quantized_(precision != ResNetPrecision::fp32) {
    Generator gen(kSeed);
    const bool nhwc = precision == ResNetPrecision::int4_nhwc || precision == ResNetPrecision::int4_actsq_mse_nhwc;
    model_ = std::make_unique<examples::ResNet>(
        examples::ResNetOptions{20, 1, 10, 16, quantized_ ? "l1" : "l2", nhwc ? ImageLayout::nhwc : ImageLayout::nchw}, gen);
    if (quantized_) {
      // The trainer's --bits 4 --norm l1 with --act-quant per-tensor --act-clip none --weight-clip none
      // (int4_l1), or its defaults (int4_l1_actsq_mse).
      const bool mse = precision == ResNetPrecision::int4_actsq_mse || precision == ResNetPrecision::int4_actsq_mse_nhwc;
      config_ = examples::make_qconfig(4, 0, "shiftquant", /*first_last_bits=*/8, /*norm_bits=*/8, "auto",
                                       mse ? "mse" : "none", mse ? "shiftquant" : "per-tensor", mse ? "mse" : "none");
      nn::quantize_model(*model_, config_, kSeed);
    }
    optimizer_ = std::make_unique<optim::SGD>(model_->named_parameters(),
                                              optim::SGDOptions{0.1}.momentum(0.9).weight_decay(5e-4));
    images_ = Tensor::randn({kBatch, 1, 28, 28}, gen);
    labels_ = random_labels({kBatch}, 10, gen);
    model_->train();
  }

  float step() override {
    const Tensor logits = (*model_)(images_);
    Tensor loss = cross_entropy(logits, labels_);
    const float value = loss.item();
    optimizer_->zero_grad();
    loss.backward();
    optimizer_->step();
    return value;
  }
  std::int64_t items_per_step() const override { return kBatch; }
  std::string label() const override {
    return "ResNet-20 batch 128, " + (quantized_ ? config_.str() + ", L1BatchNorm2d" : std::string("fp32, BatchNorm2d"));
  }

 private:
  bool quantized_;
  quant::QConfig config_;
  std::unique_ptr<examples::ResNet> model_;
  std::unique_ptr<optim::SGD> optimizer_;
  Tensor images_, labels_;
};

enum class GPTPrecision { fp32, int6, int4, int4_rot_pertoken_mse, int6_pertoken_mse, int4_rot_pertokenblocks_mse };

class GPTStep final : public TrainStep {
 public:
  static constexpr std::int64_t kVocab = 65, kBatch = 32, kContext = 128;

  explicit GPTStep(GPTPrecision precision) : quantized_(precision != GPTPrecision::fp32) {
    Generator gen(kSeed);
    examples::GPTOptions options;
    options.vocab_size = kVocab;
    options.context = kContext;
    options.layers = 4;
    options.d_model = 256;
    options.heads = 4;
    options.norm = quantized_ ? "l1" : "l2";
    options.tie_embeddings = false;
    model_ = std::make_unique<examples::GPT>(options, gen);
    if (quantized_) {
      const bool six = precision == GPTPrecision::int6 || precision == GPTPrecision::int6_pertoken_mse;
      config_ = quant::QConfig::bits(six ? 6 : 4);
      if (precision == GPTPrecision::int6_pertoken_mse) {
        config_.activations.mse_clip = true;
        config_.linear_input_groups = quant::LinearInputGroups::row_scales;
      }
      if (precision == GPTPrecision::int4_rot_pertoken_mse || precision == GPTPrecision::int4_rot_pertokenblocks_mse) {
        config_.activations.mse_clip = config_.weights.mse_clip = true;
        config_.linear_input_groups = precision == GPTPrecision::int4_rot_pertoken_mse ? quant::LinearInputGroups::row_scales
                                                                                      : quant::LinearInputGroups::row_blocks;
        config_.linear_input_rotation = quant::LinearInputRotation::hadamard;
      }
      config_.first_last_bits = 8;
      config_.norm_bits = 8;
      config_.validate();
      model_->quantize(config_, kSeed);
    }
    optimizer_ = std::make_unique<optim::AdamW>(model_->named_parameters(), optim::AdamWOptions{1e-3}.weight_decay(0.1));
    params_ = model_->parameters();
    inputs_ = random_labels({kBatch, kContext}, kVocab, gen);
    targets_ = random_labels({kBatch * kContext}, kVocab, gen);
    model_->train();
  }

  float step() override {
    const Tensor logits = (*model_)(inputs_);  // [B, T, V]
    Tensor loss = cross_entropy(reshape(logits, {-1, kVocab}), targets_);
    const float value = loss.item();
    optimizer_->zero_grad();
    loss.backward();
    optim::clip_grad_norm(params_, 1.0);
    optimizer_->step();
    return value;
  }
  std::int64_t items_per_step() const override { return kBatch * kContext; }
  std::string label() const override {
    return "char-GPT 4x256 ctx 128 batch 32, " +
           (quantized_ ? config_.str() + ", L1LayerNorm" : std::string("fp32, LayerNorm"));
  }

 private:
  bool quantized_;
  quant::QConfig config_;
  std::unique_ptr<examples::GPT> model_;
  std::unique_ptr<optim::AdamW> optimizer_;
  std::vector<Tensor> params_;
  Tensor inputs_, targets_;
};

// The case being measured, kept across Google Benchmark's invocations of the same case.
std::unique_ptr<TrainStep> g_case;
std::string g_key;

TrainStep& prepare(const std::string& key, const std::function<std::unique_ptr<TrainStep>()>& make) {
  if (g_key != key) {
    g_case.reset();  // free the previous case's model before building this one
    g_key.clear();
    g_case = make();
    for (int i = 0; i < kWarmupSteps; ++i) benchmark::DoNotOptimize(g_case->step());
    g_key = key;
  }
  return *g_case;
}

void run_case(benchmark::State& state, const std::string& name, const std::function<std::unique_ptr<TrainStep>()>& make) {
  const int threads = static_cast<int>(state.range(0));
  set_num_threads(threads);
  TrainStep& c = prepare(name + "/" + std::to_string(threads), make);
  float loss = 0;
  reset_peak_allocated_memory();
  for (auto _ : state) {
    loss = c.step();
    benchmark::DoNotOptimize(loss);
  }
  state.SetItemsProcessed(state.iterations() * c.items_per_step());
  state.SetLabel(c.label());
  state.counters["loss"] = static_cast<double>(loss);
  state.counters["peak_rss_MiB"] = peak_rss_mib();
  state.counters["rss_MiB"] = current_rss_mib();
  state.counters["start_rss_MiB"] = g_start_rss_mib;
  state.counters["peak_tensor_MiB"] = static_cast<double>(peak_allocated_memory_bytes()) / (1024.0 * 1024.0);
  state.counters["cache_MiB"] = static_cast<double>(cached_memory_bytes()) / (1024.0 * 1024.0);
}

void BM_TrainStep_ResNet20(benchmark::State& state, ResNetPrecision precision) {
  static const char* const kKeys[] = {"resnet_fp32_l2", "resnet_int4_l1", "resnet_int4_l1_actsq_mse",
                                      "resnet_int4_l1_nhwc", "resnet_int4_l1_actsq_mse_nhwc"};
  run_case(state, kKeys[static_cast<int>(precision)], [precision] { return std::make_unique<ResNetStep>(precision); });
}
void BM_TrainStep_GPT(benchmark::State& state, GPTPrecision precision) {
  static const char* const kKeys[] = {"gpt_fp32_l2", "gpt_int6_l1", "gpt_int4_l1", "gpt_int4_l1_rot_pertoken_mse",
                                      "gpt_int6_l1_pertoken_mse", "gpt_int4_l1_rot_pertokenblocks_mse"};
  run_case(state, kKeys[static_cast<int>(precision)], [precision] { return std::make_unique<GPTStep>(precision); });
}

void threads_1_2(benchmark::internal::Benchmark* b) {
  b->ArgName("threads")->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
}

BENCHMARK_CAPTURE(BM_TrainStep_ResNet20, fp32_l2, ResNetPrecision::fp32)->Apply(threads_1_2);
BENCHMARK_CAPTURE(BM_TrainStep_ResNet20, int4_l1, ResNetPrecision::int4)->Apply(threads_1_2);
BENCHMARK_CAPTURE(BM_TrainStep_ResNet20, int4_l1_actsq_mse, ResNetPrecision::int4_actsq_mse)->Apply(threads_1_2);
BENCHMARK_CAPTURE(BM_TrainStep_ResNet20, int4_l1_nhwc, ResNetPrecision::int4_nhwc)->Apply(threads_1_2);
BENCHMARK_CAPTURE(BM_TrainStep_ResNet20, int4_l1_actsq_mse_nhwc, ResNetPrecision::int4_actsq_mse_nhwc)->Apply(threads_1_2);
BENCHMARK_CAPTURE(BM_TrainStep_GPT, fp32_l2, GPTPrecision::fp32)->Apply(threads_1_2);
BENCHMARK_CAPTURE(BM_TrainStep_GPT, int6_l1, GPTPrecision::int6)->Apply(threads_1_2);
BENCHMARK_CAPTURE(BM_TrainStep_GPT, int4_l1, GPTPrecision::int4)->Apply(threads_1_2);
BENCHMARK_CAPTURE(BM_TrainStep_GPT, int4_l1_rot_pertoken_mse, GPTPrecision::int4_rot_pertoken_mse)->Apply(threads_1_2);
BENCHMARK_CAPTURE(BM_TrainStep_GPT, int6_l1_pertoken_mse, GPTPrecision::int6_pertoken_mse)->Apply(threads_1_2);
BENCHMARK_CAPTURE(BM_TrainStep_GPT, int4_l1_rot_pertokenblocks_mse, GPTPrecision::int4_rot_pertokenblocks_mse)
    ->Apply(threads_1_2);

const char* onednn_isa_name(dnnl_cpu_isa_t isa) {
  switch (static_cast<int>(isa)) {
    case 0x1: return "sse41";
    case 0x3: return "avx";
    case 0x7: return "avx2";
    case 0x407: return "avx2_vnni";
    case 0xf: return "avx512_mic";
    case 0x1f: return "avx512_mic_4ops";
    case 0x27: return "avx512_core";
    case 0x67: return "avx512_core_vnni";
    case 0xe7: return "avx512_core_bf16";
    case 0x3e7: return "avx512_core_amx";
    default: return "unknown";
  }
}

std::string cpu_flags() {
  std::string s;
  const auto add = [&s](const char* name, bool on) {
    if (on) s += s.empty() ? name : std::string(" ") + name;
  };
  __builtin_cpu_init();
  add("avx2", __builtin_cpu_supports("avx2"));
  add("fma", __builtin_cpu_supports("fma"));
  add("avx512f", __builtin_cpu_supports("avx512f"));
  add("avx512bw", __builtin_cpu_supports("avx512bw"));
  add("avx512vl", __builtin_cpu_supports("avx512vl"));
  add("avx512vnni", __builtin_cpu_supports("avx512vnni"));
  add("avx512bf16", __builtin_cpu_supports("avx512bf16"));
  return s;
}
}  // namespace

int main(int argc, char** argv) {
  g_start_rss_mib = current_rss_mib();
  std::string command;
  for (int i = 0; i < argc; ++i) command += (i ? " " : "") + std::string(argv[i]);
  const dnnl_version_t* v = dnnl_version();
  benchmark::AddCustomContext("command", command);
  benchmark::AddCustomContext("shiftq", shiftq::kVersion);
  // Google Benchmark's "library_build_type" (and its DEBUG warning) describes Debian's libbenchmark, not shiftq.
#if defined(NDEBUG) && defined(__OPTIMIZE__)
  benchmark::AddCustomContext("shiftq_build", "optimized, NDEBUG");
#else
  benchmark::AddCustomContext("shiftq_build", "NOT a Release build (assertions or no optimization)");
#endif
  benchmark::AddCustomContext("onednn", std::to_string(v->major) + "." + std::to_string(v->minor) + "." +
                                            std::to_string(v->patch) + " cpu_runtime=" + std::to_string(v->cpu_runtime));
  benchmark::AddCustomContext("onednn_isa", onednn_isa_name(dnnl_get_effective_cpu_isa()));
  benchmark::AddCustomContext("cpu_flags", cpu_flags());
  benchmark::AddCustomContext("int8_dot_product", shiftq::kernels::cpu_has_int8_dot_product() ? "yes" : "no");
  benchmark::AddCustomContext("int_gemm_kernel",
                              shiftq::kernels::int_gemm_kernel_name(shiftq::kernels::int_gemm_kernel()));
  benchmark::AddCustomContext("quantize_isa", shiftq::kernels::quantize_isa_name());
  benchmark::AddCustomContext("warmup_steps", std::to_string(kWarmupSteps));
  benchmark::AddCustomContext("memory_note",
                              "peak_rss_MiB = getrusage ru_maxrss, process high-water mark; peak_tensor_MiB = "
                              "most bytes held by live tensors during the timed steps");
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  g_case.reset();
  return 0;
}
