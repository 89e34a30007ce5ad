// GEMM and quantizer microbenchmarks (protocol and results: docs/benchmarks.md). Every GEMM case
// computes Y[M,N] = X[M,K] · W[N,K]^T as a Linear forward does; names are
// BM_Gemm_<impl>/M/N/K/threads so a report can pair int cases with fp32 baselines.
//   f32_onednn, f32_eigen  fp32 baselines (oneDNN sgemm, Eigen)
//   s8s8s32, u8s8s32       raw int8 GEMMs on ready int8 operands (codes in [0, 127])
//   u8s8s32_codes4, s8s8s32_codes6  the same on 4-bit / 6-bit training's value ranges
//   shiftquant             end to end as training uses it: fp32 X -> ShiftQuant (4-bit, S = 4,
//                          per-row, stochastic) -> int8 GEMM against W quantized once -> fp32 Y
// BM_PackWeights_shiftquant: the once-per-optimizer-step cost of quantizing W.
// BM_Quantize_<kind>: the quantizers alone (bytes = fp32 input read).
#include <benchmark/benchmark.h>

#include <oneapi/dnnl/dnnl.h>

#include <type_traits>

#include "kernels/gemm_impl.hpp"  // the implementations behind the integer GEMMs
#include <shiftq/kernels/quantize.hpp>
#include <shiftq/quant/shiftmm.hpp>
#include <shiftq/shiftq.hpp>

namespace {
using namespace shiftq;
using kernels::Trans;

struct Shape3 {
  std::int64_t M, N, K;
};
Shape3 shape_of(const benchmark::State& state) { return {state.range(0), state.range(1), state.range(2)}; }

void set_threads(benchmark::State& state) { set_num_threads(static_cast<int>(state.range(3))); }

void report_gemm(benchmark::State& state, const Shape3& s) {
  const double ops = 2.0 * static_cast<double>(s.M) * static_cast<double>(s.N) * static_cast<double>(s.K);
  state.counters["GOPS"] = benchmark::Counter(ops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.SetItemsProcessed(state.iterations() * s.M * s.N * s.K);
}

using GemmF32 = void (*)(Trans, Trans, std::int64_t, std::int64_t, std::int64_t, float, const float*, std::int64_t,
                         const float*, std::int64_t, float, float*, std::int64_t);

void run_f32(benchmark::State& state, GemmF32 gemm) {
  set_threads(state);
  const Shape3 s = shape_of(state);
  Generator gen(1);
  const Tensor x = Tensor::randn({s.M, s.K}, gen), w = Tensor::randn({s.N, s.K}, gen);
  Tensor y = Tensor::empty({s.M, s.N});
  for (auto _ : state) {
    gemm(Trans::N, Trans::T, s.M, s.N, s.K, 1.0f, x.data<float>(), s.K, w.data<float>(), s.K, 0.0f, y.data<float>(), s.N);
    benchmark::DoNotOptimize(y.data<float>());
  }
  report_gemm(state, s);
}

void BM_Gemm_f32_onednn(benchmark::State& state) { run_f32(state, kernels::gemm_f32_onednn); }
void BM_Gemm_f32_eigen(benchmark::State& state) { run_f32(state, kernels::gemm_f32_ref); }

// Codes in [lo, hi] (uniform).
template <class T>
Tensor codes_in(std::int64_t rows, std::int64_t cols, int lo, int hi, Generator& gen) {
  Tensor t = Tensor::empty({rows, cols}, dtype_of<T>);
  T* p = t.data<T>();
  const auto span = static_cast<std::uint32_t>(hi - lo + 1);
  for (std::int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<T>(lo + static_cast<int>(gen.next_u32() % span));
  return t;
}

// C = A · B^T on int8 codes, A's in [a_lo, a_hi] and B's in [b_lo, b_hi] (u8 A: gemm_u8s8s32).
template <class TA>
void run_int_gemm(benchmark::State& state, std::uint64_t seed, int a_lo, int a_hi, int b_lo, int b_hi) {
  set_threads(state);
  const Shape3 s = shape_of(state);
  Generator gen(seed);
  const Tensor a = codes_in<TA>(s.M, s.K, a_lo, a_hi, gen), b = codes_in<std::int8_t>(s.N, s.K, b_lo, b_hi, gen);
  Tensor c = Tensor::empty({s.M, s.N}, DType::s32);
  for (auto _ : state) {
    if constexpr (std::is_same_v<TA, std::uint8_t>)
      kernels::gemm_u8s8s32(Trans::N, Trans::T, s.M, s.N, s.K, a.data<TA>(), s.K, b.data<std::int8_t>(), s.K,
                            c.data<std::int32_t>(), s.N);
    else
      kernels::gemm_s8s8s32(Trans::N, Trans::T, s.M, s.N, s.K, a.data<TA>(), s.K, b.data<std::int8_t>(), s.K,
                            c.data<std::int32_t>(), s.N);
    benchmark::DoNotOptimize(c.data<std::int32_t>());
  }
  report_gemm(state, s);
}

void BM_Gemm_s8s8s32(benchmark::State& state) { run_int_gemm<std::int8_t>(state, 2, 0, 127, 0, 127); }
void BM_Gemm_u8s8s32(benchmark::State& state) { run_int_gemm<std::uint8_t>(state, 3, 0, 127, 0, 127); }

// The integer GEMMs on the value ranges of 4-bit and 6-bit training, which on AVX2 CPUs without
// VNNI take the int8 path (vpmaddubsw with int16 partial sums) instead of the int16 one:
//   codes4: u8 activation codes v + 128, v in [0, 15], against ShiftQuant 4-bit S=4 weights (|w| <= 112);
//   codes6: signed 6-bit activations (|a| <= 31) against ShiftQuant 6-bit S=2 weights (|w| <= 124).
void BM_Gemm_u8s8s32_codes4(benchmark::State& state) { run_int_gemm<std::uint8_t>(state, 5, 128, 143, -112, 112); }
void BM_Gemm_s8s8s32_codes6(benchmark::State& state) { run_int_gemm<std::int8_t>(state, 6, -31, 31, -124, 124); }

// W: [N, K] quantized for op(B) = W^T: groups along K (inner_axis 1), one scale per output channel,
// with the sums that give the u8 GEMM's compensation.
quant::QTensor quantize_weights(const Tensor& w) {
  return quant::quantize(w, quant::QuantizeParams::shiftquant(4, 4, 1)).compute_sums();
}

void BM_Gemm_shiftquant(benchmark::State& state) {
  set_threads(state);
  const Shape3 s = shape_of(state);
  Generator gen(4);
  const Tensor x = Tensor::randn({s.M, s.K}, gen), w = Tensor::randn({s.N, s.K}, gen);
  const quant::QTensor wq = quantize_weights(w);  // once per optimizer step: see BM_PackWeights
  std::uint64_t step = 0;
  for (auto _ : state) {
    const quant::QTensor xq = quant::quantize(
        x, quant::QuantizeParams::shiftquant(4, 4, 1)
               .with_rounding(quant::Rounding::stochastic, {1, step++, 0})
               .with_unsigned_codes());
    const Tensor y = quant::shiftmm(xq, Trans::N, wq, Trans::T);
    benchmark::DoNotOptimize(y.data<float>());
  }
  report_gemm(state, s);
}

void BM_PackWeights_shiftquant(benchmark::State& state) {
  set_threads(state);
  const Shape3 s = shape_of(state);
  Generator gen(5);
  const Tensor w = Tensor::randn({s.N, s.K}, gen);
  for (auto _ : state) {
    const quant::QTensor wq = quantize_weights(w);
    benchmark::DoNotOptimize(wq.codes.data<std::int8_t>());
  }
  state.SetBytesProcessed(state.iterations() * s.N * s.K * 4);
}

void gemm_shapes(benchmark::internal::Benchmark* b) {
  const std::vector<Shape3> shapes = {
      {256, 1024, 1024}, {1024, 1024, 1024}, {256, 4096, 1024},  // Transformer Linear shapes
      {4096, 1024, 256}, {4096, 256, 1024},                       // char-GPT fc1, fc2 (32 x 128 tokens)
      {100352, 16, 144}, {25088, 32, 288}, {6272, 64, 576},     // ResNet-20 convs as GEMM (batch 128)
  };
  for (const Shape3& s : shapes)
    for (std::int64_t threads : {1, 2}) b->Args({s.M, s.N, s.K, threads});
  b->ArgNames({"M", "N", "K", "threads"})->Unit(benchmark::kMillisecond)->UseRealTime();
}

BENCHMARK(BM_Gemm_f32_onednn)->Apply(gemm_shapes);
BENCHMARK(BM_Gemm_f32_eigen)->Apply(gemm_shapes);
BENCHMARK(BM_Gemm_s8s8s32)->Apply(gemm_shapes);
BENCHMARK(BM_Gemm_u8s8s32)->Apply(gemm_shapes);
BENCHMARK(BM_Gemm_u8s8s32_codes4)->Apply(gemm_shapes);
BENCHMARK(BM_Gemm_s8s8s32_codes6)->Apply(gemm_shapes);
BENCHMARK(BM_Gemm_shiftquant)->Apply(gemm_shapes);
BENCHMARK(BM_PackWeights_shiftquant)->Apply(gemm_shapes);

// Quantizers alone on a [R, C] gradient-like tensor.
void run_quantize(benchmark::State& state, const quant::QuantizeParams& params) {
  set_num_threads(static_cast<int>(state.range(2)));
  Generator gen(6);
  const Tensor x = Tensor::randn({state.range(0), state.range(1)}, gen);
  for (auto _ : state) {
    const quant::QTensor q = quant::quantize(x, params);
    if (q.unsigned_codes())
      benchmark::DoNotOptimize(q.codes.data<std::uint8_t>());
    else
      benchmark::DoNotOptimize(q.codes.data<std::int8_t>());
  }
  state.SetBytesProcessed(state.iterations() * x.numel() * 4);
}
void BM_Quantize_per_tensor(benchmark::State& s) { run_quantize(s, quant::QuantizeParams::per_tensor(4)); }
void BM_Quantize_shiftquant_nearest(benchmark::State& s) { run_quantize(s, quant::QuantizeParams::shiftquant(4, 4)); }
void BM_Quantize_shiftquant_stochastic(benchmark::State& s) {
  run_quantize(s, quant::QuantizeParams::shiftquant(4, 4).with_rounding(quant::Rounding::stochastic, {1, 2, 3}));
}
void quantize_shapes(benchmark::internal::Benchmark* b) {
  for (std::int64_t threads : {1, 2}) {
    b->Args({256, 1024, threads});
    b->Args({4096, 1024, threads});
  }
  b->ArgNames({"R", "C", "threads"})->Unit(benchmark::kMicrosecond)->UseRealTime();
}
// A convolution's output gradient dY: [N*OH*OW, C_out] in its two gradient forms (stochastic
// ShiftQuant 4-bit, S = 4, u8 codes): dX's (groups over the channels, a scale per pixel) and dW's
// (groups over the pixels, a scale per channel: a column pass before the pack). ResNet-20's three
// stages at batch 128 on 28x28 inputs: narrow rows, where per-row overheads dominate.
void run_conv_gradient_quantize(benchmark::State& state, int inner_axis) {
  const quant::QuantizeParams params = quant::QuantizeParams::shiftquant(4, 4, inner_axis)
                                           .with_rounding(quant::Rounding::stochastic, {1, 2, 3})
                                           .with_unsigned_codes();
  run_quantize(state, params);
}
void BM_Quantize_conv_grad_dx(benchmark::State& s) { run_conv_gradient_quantize(s, 1); }
void BM_Quantize_conv_grad_dw(benchmark::State& s) { run_conv_gradient_quantize(s, 0); }
void conv_gradient_shapes(benchmark::internal::Benchmark* b) {
  for (std::int64_t threads : {1, 2}) {
    b->Args({128 * 28 * 28, 16, threads});
    b->Args({128 * 14 * 14, 32, threads});
    b->Args({128 * 7 * 7, 64, threads});
  }
  b->ArgNames({"R", "C", "threads"})->Unit(benchmark::kMicrosecond)->UseRealTime();
}
BENCHMARK(BM_Quantize_per_tensor)->Apply(quantize_shapes);
BENCHMARK(BM_Quantize_shiftquant_nearest)->Apply(quantize_shapes);
BENCHMARK(BM_Quantize_shiftquant_stochastic)->Apply(quantize_shapes);
BENCHMARK(BM_Quantize_conv_grad_dx)->Apply(conv_gradient_shapes);
BENCHMARK(BM_Quantize_conv_grad_dw)->Apply(conv_gradient_shapes);
}  // namespace

int main(int argc, char** argv) {
  const dnnl_version_t* v = dnnl_version();
  benchmark::AddCustomContext("onednn", std::to_string(v->major) + "." + std::to_string(v->minor) + "." +
                                            std::to_string(v->patch) + " cpu_runtime=" + std::to_string(v->cpu_runtime));
  benchmark::AddCustomContext("onednn_isa", std::to_string(static_cast<int>(dnnl_get_effective_cpu_isa())));
  benchmark::AddCustomContext("int8_dot_product", shiftq::kernels::cpu_has_int8_dot_product() ? "yes" : "no");
  benchmark::AddCustomContext("int_gemm_kernel",
                              shiftq::kernels::int_gemm_kernel_name(shiftq::kernels::int_gemm_kernel()));
  benchmark::AddCustomContext("quantize_isa", shiftq::kernels::quantize_isa_name());
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
