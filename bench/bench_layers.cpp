// Per-layer forward + backward: fp32 vs quantized (int8 GEMMs), and normalization L2 vs L1.
//   BM_Linear_<f32|int>/rows/in/out/threads       x: [rows, in] -> [rows, out]
//   BM_Conv2d_<f32|int>/N/C/HW/threads            3x3, padding 1, C -> C channels on HW x HW
//   BM_Conv2d_int_<actsq|actsq_mse>/N/C/HW/threads the same on a post-ReLU input with ShiftQuant
//                                                 activations (S = 3, unsigned), without and with
//                                                 MSE-chosen exponents for activations and weights
//   BM_Conv2d_<f32|int_actsq_mse>_forward/...       the training forward alone (no tape)
//   BM_BatchNorm2d_<L2_f32|L1_f32|L1_int>/N/C/HW/threads
//   BM_LayerNorm_<L2_f32|L1_f32|L1_int>/rows/D/threads
// L1_int: fully quantized L1 normalization (8-bit input and gradient codes, integer statistics)
// taking and returning fp32 tensors, so its cost includes quantizing them.
// The int cases re-pack the weight every iteration (as after every optimizer step) and use the
// default 4-bit config (W4A4G4: ShiftQuant weights and gradients, per-tensor activations).
#include <benchmark/benchmark.h>

#include <shiftq/shiftq.hpp>

#include "common/precision.hpp"

namespace {
using namespace shiftq;

void set_threads(benchmark::State& state, int arg) { set_num_threads(static_cast<int>(state.range(arg))); }

// The trainers' --bits 4 --act-quant shiftquant [--act-clip mse --weight-clip mse].
quant::QConfig shiftquant_activations(bool mse) {
  return examples::make_qconfig(4, 0, "shiftquant", 8, 8, "auto", mse ? "mse" : "none", "shiftquant",
                                mse ? "mse" : "none");
}

// One training step of a layer: forward, backward with a fixed output gradient.
template <class Layer>
void run_layer(benchmark::State& state, Layer& layer, const Tensor& x, bool quantized,
               const quant::QConfig& config = quant::QConfig::bits(4), bool backward = true) {
  if (quantized) layer.set_quantization(config.for_layer(false), 1, 0);
  Generator gen(2);
  const Tensor grad = Tensor::randn(layer.forward(x).shape(), gen);
  if (!backward) {  // the training forward alone (observed input range, weight re-packed), no tape
    for (auto _ : state) {
      layer.weight.bump_version();
      const NoGradGuard no_grad;
      benchmark::DoNotOptimize(layer.forward(x).template data<float>());
    }
    return;
  }
  for (auto _ : state) {
    layer.weight.bump_version();  // an optimizer step happened: the int path re-packs W
    layer.zero_grad();
    Tensor(x).zero_grad();
    Tensor y = layer.forward(x);
    y.backward(grad);
    benchmark::DoNotOptimize(layer.weight.grad().template data<float>());
  }
}

void linear_case(benchmark::State& state, bool quantized) {
  set_threads(state, 3);
  const std::int64_t rows = state.range(0), in = state.range(1), out = state.range(2);
  Generator gen(1);
  nn::Linear fc(nn::LinearOptions{in, out}, gen);
  const Tensor x = Tensor::randn({rows, in}, gen).set_requires_grad(true);
  run_layer(state, fc, x, quantized);
  state.counters["GOPS"] = benchmark::Counter(6.0 * rows * in * out * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}
void BM_Linear_f32(benchmark::State& state) { linear_case(state, false); }
void BM_Linear_int(benchmark::State& state) { linear_case(state, true); }

void conv_case(benchmark::State& state, bool quantized, const quant::QConfig* config = nullptr,
               bool backward = true) {
  set_threads(state, 3);
  const std::int64_t N = state.range(0), C = state.range(1), HW = state.range(2);
  Generator gen(1);
  nn::Conv2d conv(nn::Conv2dOptions{C, C, 3}.padding(1).bias(false), gen);
  Tensor x = Tensor::randn({N, C, HW, HW}, gen);
  if (config) x = relu(x);  // the unsigned range of ShiftQuant activations needs x >= 0
  x.set_requires_grad(true);
  run_layer(state, conv, x, quantized, config ? *config : quant::QConfig::bits(4), backward);
  state.counters["GOPS"] =
      benchmark::Counter((backward ? 6.0 : 2.0) * N * HW * HW * C * C * 9 * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}
void BM_Conv2d_f32(benchmark::State& state) { conv_case(state, false); }
void BM_Conv2d_int(benchmark::State& state) { conv_case(state, true); }
void BM_Conv2d_int_actsq(benchmark::State& state) {
  const quant::QConfig c = shiftquant_activations(false);
  conv_case(state, true, &c);
}
void BM_Conv2d_int_actsq_mse(benchmark::State& state) {
  const quant::QConfig c = shiftquant_activations(true);
  conv_case(state, true, &c);
}
void BM_Conv2d_f32_forward(benchmark::State& state) { conv_case(state, false, nullptr, false); }
void BM_Conv2d_int_actsq_mse_forward(benchmark::State& state) {
  const quant::QConfig c = shiftquant_activations(true);
  conv_case(state, true, &c, false);
}

template <class Norm>
void run_norm(benchmark::State& state, Norm& norm, const Shape& shape) {
  Generator gen(3);
  const Tensor x = Tensor::randn(shape, gen).set_requires_grad(true);
  const Tensor grad = Tensor::randn(shape, gen);
  for (auto _ : state) {
    Tensor y = norm.forward(x);
    y.backward(grad);
    benchmark::DoNotOptimize(x.grad().data<float>());
    Tensor(x).zero_grad();
  }
  state.SetBytesProcessed(state.iterations() * shape_numel(shape) * 4);
}
void BM_BatchNorm2d_L2_f32(benchmark::State& state) {
  set_threads(state, 3);
  nn::BatchNorm2d bn(nn::BatchNormOptions{state.range(1)});
  run_norm(state, bn, {state.range(0), state.range(1), state.range(2), state.range(2)});
}
void BM_BatchNorm2d_L1_f32(benchmark::State& state) {
  set_threads(state, 3);
  nn::L1BatchNorm2d bn(nn::L1BatchNormOptions{state.range(1)});
  run_norm(state, bn, {state.range(0), state.range(1), state.range(2), state.range(2)});
}
void BM_BatchNorm2d_L1_int(benchmark::State& state) {
  set_threads(state, 3);
  nn::L1BatchNorm2d bn(nn::L1BatchNormOptions{state.range(1)});
  bn.set_quantization(quant::QConfig::bits(8), 1, 0);
  run_norm(state, bn, {state.range(0), state.range(1), state.range(2), state.range(2)});
}
void BM_LayerNorm_L1_int(benchmark::State& state) {
  set_threads(state, 2);
  nn::L1LayerNorm ln(nn::L1LayerNormOptions{state.range(1)});
  ln.set_quantization(quant::QConfig::bits(8), 1, 0);
  run_norm(state, ln, {state.range(0), state.range(1)});
}
void BM_LayerNorm_L2_f32(benchmark::State& state) {
  set_threads(state, 2);
  nn::LayerNorm ln(nn::LayerNormOptions{state.range(1)});
  run_norm(state, ln, {state.range(0), state.range(1)});
}
void BM_LayerNorm_L1_f32(benchmark::State& state) {
  set_threads(state, 2);
  nn::L1LayerNorm ln(nn::L1LayerNormOptions{state.range(1)});
  run_norm(state, ln, {state.range(0), state.range(1)});
}

void linear_shapes(benchmark::internal::Benchmark* b) {
  for (std::int64_t t : {1, 2}) {
    b->Args({256, 1024, 1024, t});
    b->Args({4096, 256, 1024, t});
  }
  b->ArgNames({"rows", "in", "out", "threads"})->Unit(benchmark::kMillisecond)->UseRealTime();
}
void conv_shapes(benchmark::internal::Benchmark* b) {  // ResNet-20 stages on 28x28 inputs, batch 128
  for (std::int64_t t : {1, 2}) {
    b->Args({128, 16, 28, t});
    b->Args({128, 32, 14, t});
    b->Args({128, 64, 7, t});
  }
  b->ArgNames({"N", "C", "HW", "threads"})->Unit(benchmark::kMillisecond)->UseRealTime();
}
void bn_shapes(benchmark::internal::Benchmark* b) {
  for (std::int64_t t : {1, 2}) {
    b->Args({128, 16, 28, t});
    b->Args({128, 64, 7, t});
  }
  b->ArgNames({"N", "C", "HW", "threads"})->Unit(benchmark::kMillisecond)->UseRealTime();
}
void ln_shapes(benchmark::internal::Benchmark* b) {
  for (std::int64_t t : {1, 2}) b->Args({4096, 256, t});
  b->ArgNames({"rows", "D", "threads"})->Unit(benchmark::kMillisecond)->UseRealTime();
}

BENCHMARK(BM_Linear_f32)->Apply(linear_shapes);
BENCHMARK(BM_Linear_int)->Apply(linear_shapes);
BENCHMARK(BM_Conv2d_f32)->Apply(conv_shapes);
BENCHMARK(BM_Conv2d_int)->Apply(conv_shapes);
BENCHMARK(BM_Conv2d_int_actsq)->Apply(conv_shapes);
BENCHMARK(BM_Conv2d_int_actsq_mse)->Apply(conv_shapes);
BENCHMARK(BM_Conv2d_f32_forward)->Apply(conv_shapes);
BENCHMARK(BM_Conv2d_int_actsq_mse_forward)->Apply(conv_shapes);
BENCHMARK(BM_BatchNorm2d_L2_f32)->Apply(bn_shapes);
BENCHMARK(BM_BatchNorm2d_L1_f32)->Apply(bn_shapes);
BENCHMARK(BM_BatchNorm2d_L1_int)->Apply(bn_shapes);
BENCHMARK(BM_LayerNorm_L2_f32)->Apply(ln_shapes);
BENCHMARK(BM_LayerNorm_L1_f32)->Apply(ln_shapes);
BENCHMARK(BM_LayerNorm_L1_int)->Apply(ln_shapes);
}  // namespace

BENCHMARK_MAIN();
