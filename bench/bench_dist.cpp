// The int8 gradient exchange's codec (shiftq/kernels/grad_codec.hpp, and its scalar reference) per step, against the fp32
// exchange's own per-value work (scaling the gradient into the bucket), on the gradient sizes of the
// example models: ResNet-20 (272,186 values) and the char-GPT (3.2 M). Communication itself is not
// here: docs/distributed.md measures whole steps under mpirun.
#include <benchmark/benchmark.h>

#include <vector>

#include <shiftq/shiftq.hpp>

namespace {
using namespace shiftq;

std::vector<float> gradient(std::int64_t n) {
  Generator gen(1);
  std::vector<float> g(static_cast<std::size_t>(n));
  for (auto& v : g) v = 0.01f * (2 * gen.uniform() - 1);
  return g;
}

// fp32 exchange: weight * grad into the bucket (the allgathered sums are copied back the same way).
void BM_fp32_scale(benchmark::State& state) {
  const std::int64_t n = state.range(0);
  const std::vector<float> g = gradient(n);
  std::vector<float> flat(g.size());
  for (auto _ : state) {
    for (std::size_t i = 0; i < g.size(); ++i) flat[i] = 0.5f * g[i];
    benchmark::DoNotOptimize(flat.data());
  }
  state.SetItemsProcessed(state.iterations() * n);
}

// int8 exchange, everything a rank computes per step in a group of 2: exponents, codes, the mean
// of its half, and the dequantized result.
template <bool kReference>
void BM_int8_codec(benchmark::State& state) {
  const std::int64_t n = state.range(0), group = 64, world = 2;
  const std::vector<float> g = gradient(n);
  std::vector<std::int8_t> exps(static_cast<std::size_t>(n / group + 1)), codes(g.size()), mean(g.size() / 2 + 1);
  std::vector<float> back(g.size());
  std::uint64_t key = 1;
  for (auto _ : state) {
    if constexpr (kReference) {
      kernels::grad_group_exponents_f32_ref(g.data(), n, group, exps.data());
      kernels::grad_quantize_f32_ref(g.data(), n, group, exps.data(), key, codes.data());
      kernels::grad_mean_codes_s8_ref(codes.data(), static_cast<int>(world), n / world, key + 1, mean.data());
      kernels::grad_dequantize_s8_ref(codes.data(), n, group, exps.data(), back.data());
    } else {
      kernels::grad_group_exponents_f32(g.data(), n, group, exps.data());
      kernels::grad_quantize_f32(g.data(), n, group, exps.data(), key, codes.data());
      kernels::grad_mean_codes_s8(codes.data(), static_cast<int>(world), n / world, key + 1, mean.data());
      kernels::grad_dequantize_s8(codes.data(), n, group, exps.data(), back.data());
    }
    benchmark::DoNotOptimize(back.data());
    key += 2;
  }
  state.SetItemsProcessed(state.iterations() * n);
}

BENCHMARK(BM_fp32_scale)->Arg(272186)->Arg(3200000)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_int8_codec<false>)->Name("BM_int8_codec")->Arg(272186)->Arg(3200000)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_int8_codec<true>)->Name("BM_int8_codec_ref")->Arg(272186)->Arg(3200000)->Unit(benchmark::kMicrosecond);
}  // namespace

BENCHMARK_MAIN();
