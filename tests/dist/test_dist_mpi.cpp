// Data-parallel training across processes; run under `mpirun -np 2` (or more) by ctest. Every rank
// runs every test; a failure on any rank fails the job.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include <shiftq/shiftq.hpp>

namespace shiftq {
namespace {

int rank() { return dist::rank(); }
int world() { return dist::world_size(); }

// Every rank's copy of `values`, in rank order.
std::vector<std::vector<double>> gather(const std::vector<double>& values) {
  std::vector<double> all(values.size() * static_cast<std::size_t>(world()), 0.0);
  std::copy(values.begin(), values.end(), all.begin() + static_cast<std::ptrdiff_t>(values.size()) * rank());
  dist::allreduce_sum(all);  // each slot has one non-zero contributor: exact
  std::vector<std::vector<double>> out;
  for (int r = 0; r < world(); ++r)
    out.emplace_back(all.begin() + static_cast<std::ptrdiff_t>(values.size()) * r,
                     all.begin() + static_cast<std::ptrdiff_t>(values.size()) * (r + 1));
  return out;
}

// Every rank holds the same finite values, bit for bit.
void expect_same_on_every_rank(const std::vector<float>& values, const std::string& what) {
  std::vector<double> bits;
  for (float v : values) {
    EXPECT_TRUE(std::isfinite(v)) << what;
    std::uint32_t u = 0;
    std::memcpy(&u, &v, sizeof u);
    bits.push_back(u);  // exact in a double
  }
  const auto all = gather(bits);
  for (int r = 1; r < world(); ++r) EXPECT_EQ(all[static_cast<std::size_t>(r)], all[0]) << "rank " << r << ", " << what;
}

std::shared_ptr<nn::Sequential> small_model(std::uint64_t seed) {
  Generator gen(seed);
  return std::make_shared<nn::Sequential>(std::initializer_list<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Linear>(nn::LinearOptions(12, 40), gen), std::make_shared<nn::ReLU>(),
      std::make_shared<nn::Linear>(nn::LinearOptions(40, 40), gen), std::make_shared<nn::ReLU>(),
      std::make_shared<nn::Linear>(nn::LinearOptions(40, 3), gen)});
}

// Sets every parameter's gradient to f(rank, parameter index, element).
template <class F>
void set_grads(nn::Module& model, F f) {
  std::int64_t p = 0;
  for (auto& [name, value] : model.named_parameters()) {
    Tensor g = Tensor::empty(value.shape());
    for (std::int64_t i = 0; i < g.numel(); ++i) g.data<float>()[i] = f(rank(), p, i);
    value.set_grad(g);
    ++p;
  }
}

TEST(DistMpi, GroupHasSeveralRanks) {
  ASSERT_TRUE(dist::mpi_available());
  ASSERT_GE(world(), 2) << "run under mpirun -np 2";
}

TEST(DistMpi, ExchangesAreExactOnIntegers) {
  auto model = small_model(1);
  for (auto exchange : {dist::GradExchange::fp32, dist::GradExchange::int8}) {
    // bucket_bytes 1 KiB: several buckets, several groups per bucket and a padded tail.
    dist::DataParallel dp(*model, dist::DataParallelOptions().exchange(exchange).bucket_bytes(1024).group_size(16));
    // Codes that the int8 path carries exactly: multiples of 2^-4, |v| <= 127 * 2^-4, and a sum over
    // the ranks divisible by the world size (each rank's value is the same plus a term that cancels).
    const auto value = [](int r, std::int64_t p, std::int64_t i) {
      const int base = static_cast<int>((p * 31 + i * 7) % 101) - 50;
      const int cancel = (r % 2 == 0 ? 1 : -1) * static_cast<int>(i % 3) * (world() % 2 == 0 ? 1 : 0);
      return std::ldexp(static_cast<float>(base + cancel), -4);
    };
    set_grads(*model, value);
    dp.sync_gradients();
    std::int64_t p = 0;
    for (auto& [name, w] : model->named_parameters()) {
      const float* g = w.grad().data<float>();
      for (std::int64_t i = 0; i < w.numel(); ++i) {
        double expect = 0;
        for (int r = 0; r < world(); ++r) expect += value(r, p, i);
        // fp32 scales by the weight 1/world before summing: exact when world is a power of two.
        const bool exact = exchange == dist::GradExchange::int8 || (world() & (world() - 1)) == 0;
        const double tolerance = exact ? 0.0 : 1e-6 * std::max(1.0, std::fabs(expect));
        ASSERT_NEAR(g[i], expect / world(), tolerance) << dist::to_string(exchange) << " " << name << "[" << i << "]";
      }
      ++p;
    }
  }
}

TEST(DistMpi, UnevenWeightsGiveTheWeightedSum) {
  auto model = small_model(2);
  dist::DataParallel dp(*model, dist::DataParallelOptions().exchange(dist::GradExchange::fp32));
  // Rank r has n_r = r + 1 samples: weight n_r / N, gradient r + 1 everywhere (exact in fp32).
  const double total = world() * (world() + 1) / 2.0;
  set_grads(*model, [](int r, std::int64_t, std::int64_t) { return static_cast<float>(r + 1); });
  dp.sync_gradients((rank() + 1) / total);
  double expect = 0;
  for (int r = 0; r < world(); ++r) expect += (r + 1) * (r + 1) / total;
  for (auto& [name, w] : model->named_parameters())
    for (float g : w.grad().to_vector<float>()) ASSERT_NEAR(g, expect, 1e-5 * expect) << name;
}

TEST(DistMpi, Int8ExchangeIsUnbiased) {
  auto model = small_model(3);
  dist::DataParallel dp(*model, dist::DataParallelOptions().exchange(dist::GradExchange::int8).group_size(32).seed(5));
  Generator gen(100 + static_cast<std::uint64_t>(rank()));
  std::vector<std::vector<float>> mine;
  for (auto& [name, w] : model->named_parameters()) {
    Tensor g = Tensor::randn(w.shape(), gen, 0.01f);
    mine.push_back(g.to_vector<float>());
  }
  // The true mean over the ranks, and the sum of the exchanged gradients over many steps.
  std::vector<std::vector<double>> truth, sum;
  for (const auto& g : mine) {
    auto all = gather(std::vector<double>(g.begin(), g.end()));
    std::vector<double> t(g.size(), 0.0);
    for (const auto& r : all)
      for (std::size_t i = 0; i < g.size(); ++i) t[i] += r[i] / world();
    truth.push_back(t);
    sum.emplace_back(g.size(), 0.0);
  }
  const int steps = 300;
  std::vector<float> max_code_size(mine.size(), 0.0f);
  for (int s = 0; s < steps; ++s) {
    std::size_t p = 0;
    for (auto& [name, w] : model->named_parameters()) w.set_grad(Tensor::from_vector(mine[p++], w.shape()));
    dp.sync_gradients();
    p = 0;
    for (auto& [name, w] : model->named_parameters()) {
      const auto g = w.grad().to_vector<float>();
      for (std::size_t i = 0; i < g.size(); ++i) sum[p][i] += g[i];
      ++p;
    }
  }
  // Scale bound: group max <= ~0.05 (5 sigma of 0.01) -> code size <= 0.05 / 127 * 2; per-step
  // rounding sd <= code * sqrt(1/(4 world) + 1/4).
  const double code = 2 * 0.06 / 127;
  const double sigma = code * std::sqrt(0.25 / world() + 0.25) / std::sqrt(steps);
  double worst = 0;
  for (std::size_t p = 0; p < sum.size(); ++p)
    for (std::size_t i = 0; i < sum[p].size(); ++i) worst = std::max(worst, std::fabs(sum[p][i] / steps - truth[p][i]) / sigma);
  EXPECT_LT(worst, 5.5) << "largest deviation of the mean exchanged gradient, in standard errors";
}

TEST(DistMpi, ReplicasStayBitIdenticalAfterTraining) {
  for (auto exchange : {dist::GradExchange::fp32, dist::GradExchange::int8}) {
    // Each rank starts from its own initialization: broadcast_parameters makes them rank 0's.
    auto model = small_model(10 + static_cast<std::uint64_t>(rank()));
    nn::quantize_model(*model, quant::QConfig::bits(4), 7 + static_cast<std::uint64_t>(rank()));
    dist::broadcast_parameters(*model);
    dist::DataParallel dp(*model, dist::DataParallelOptions().exchange(exchange).bucket_bytes(2048));
    optim::SGD opt(model->named_parameters(), optim::SGDOptions(0.05).momentum(0.9));
    Generator gen(1000 + static_cast<std::uint64_t>(rank()));  // different data on every rank
    for (int step = 0; step < 6; ++step) {
      const Tensor x = Tensor::randn({8, 12}, gen);
      const Tensor y = Tensor::from_vector(std::vector<std::int32_t>{0, 1, 2, 0, 1, 2, 0, 1}, {8});
      opt.zero_grad();
      dp.backward(cross_entropy(model->forward(x), y));
      opt.step();
    }
    std::vector<float> weights;
    for (auto& [name, w] : model->named_parameters())
      for (float v : w.to_vector<float>()) weights.push_back(v);
    expect_same_on_every_rank(weights, std::string("weights, ") + dist::to_string(exchange));
    EXPECT_GT(dp.stats().bytes_sent, 0);
  }
}

TEST(DistMpi, ARankWithoutSamplesJoinsTheExchange) {
  // Rank 0 has the whole batch (weight 1); the others call sync_gradients(0), as a rank does when a
  // batch has fewer samples than ranks. The fp32 exchange then gives rank 0's gradient exactly.
  auto model = small_model(5);
  dist::DataParallel dp(*model, dist::DataParallelOptions().bucket_bytes(2048));
  Generator gen(77);
  const Tensor x = Tensor::randn({6, 12}, gen);
  const Tensor y = Tensor::from_vector(std::vector<std::int32_t>{0, 1, 2, 2, 1, 0}, {6});
  model->zero_grad();
  std::vector<double> local;
  if (rank() == 0) {
    cross_entropy(model->forward(x), y).backward();
    for (auto& [name, w] : model->named_parameters())
      for (float g : w.grad().to_vector<float>()) local.push_back(g);
    model->zero_grad();
    dp.backward(cross_entropy(model->forward(x), y), 1.0);
  } else {
    dp.sync_gradients(0.0);
  }
  std::vector<double> exchanged;
  for (auto& [name, w] : model->named_parameters())
    for (float g : w.grad().to_vector<float>()) exchanged.push_back(g);
  local.resize(exchanged.size(), 0.0);
  const auto all = gather(local);
  EXPECT_EQ(exchanged, all[0]);
}

TEST(DistMpi, ABackwardFailureOnOneRankDropsTheStepOnEveryRank) {
  auto model = small_model(6);
  dist::DataParallel dp(*model);
  Generator gen(8);
  const Tensor x = Tensor::randn({4, 12}, gen);
  Tensor out = model->forward(x);
  // Rank 1's backward throws in the middle of the graph (after the last layer's gradients).
  const bool fail_here = rank() == 1;
  Tensor hooked = record("fails_on_rank_1", out.detach(), {&out}, [fail_here](const Tensor& g) -> std::vector<Tensor> {
    if (fail_here) throw IOError("backward failed on purpose");
    return {g};
  });
  model->zero_grad();
  if (rank() == 1)
    EXPECT_THROW(dp.backward(sum(hooked)), IOError);
  else
    EXPECT_THROW(dp.backward(sum(hooked)), NumericError);
  // The ranks are still in step: the next exchange works and agrees.
  model->zero_grad();
  dp.backward(sum(model->forward(x)));
  std::vector<float> grads;
  for (auto& [name, w] : model->named_parameters())
    for (float g : w.grad().to_vector<float>()) grads.push_back(g);
  expect_same_on_every_rank(grads, "gradients of the step after the failure");
}

TEST(DistMpi, ANonFiniteGradientOnOneRankReachesEveryRank) {
  for (auto exchange : {dist::GradExchange::fp32, dist::GradExchange::int8}) {
    auto model = small_model(7);
    dist::DataParallel dp(*model, dist::DataParallelOptions().exchange(exchange));
    optim::SGD opt(model->named_parameters(), optim::SGDOptions(0.1));
    set_grads(*model, [](int r, std::int64_t p, std::int64_t i) {
      return r == world() - 1 && p == 2 && i == 5 ? std::numeric_limits<float>::infinity() : 0.01f;
    });
    dp.sync_gradients();
    EXPECT_THROW(opt.step(), NumericError) << dist::to_string(exchange);
  }
}

TEST(DistMpi, BuffersStayIdentical) {
  Generator gen(9);
  nn::Sequential model{std::make_shared<nn::Conv2d>(nn::Conv2dOptions(1, 4, 3), gen),
                       std::make_shared<nn::BatchNorm2d>(nn::BatchNormOptions(4)), std::make_shared<nn::ReLU>(),
                       std::make_shared<nn::Flatten>(), std::make_shared<nn::Linear>(nn::LinearOptions(4 * 6 * 6, 3), gen)};
  dist::broadcast_parameters(model);
  dist::DataParallel dp(model);
  optim::SGD opt(model.named_parameters(), optim::SGDOptions(0.1));
  Generator data(50 + static_cast<std::uint64_t>(rank()));  // each rank its own images
  for (int step = 0; step < 3; ++step) {
    opt.zero_grad();
    dp.backward(sum(model.forward(Tensor::randn({4, 1, 8, 8}, data))));
    opt.step();
  }
  std::vector<float> state;
  for (const auto& [name, t] : model.state_dict())
    for (float v : t.to_vector<float>()) state.push_back(v);
  expect_same_on_every_rank(state, "parameters and BatchNorm buffers");
}

TEST(DistMpi, RanksAtDifferentStepsAreRefused) {
  auto model = small_model(8);
  dist::DataParallel dp(*model);
  if (rank() == 1) dp.set_step(5);
  set_grads(*model, [](int, std::int64_t, std::int64_t) { return 1.0f; });
  try {
    dp.sync_gradients();
    FAIL() << "no error";
  } catch (const dist::DistError& e) {
    EXPECT_NE(std::string(e.what()).find("at step"), std::string::npos) << e.what();
  }
}

TEST(DistMpi, Int8ExchangeSendsAQuarterOfFp32sBytesPlusExponents) {
  auto model = small_model(4);
  std::int64_t bytes[2] = {0, 0};
  for (auto exchange : {dist::GradExchange::fp32, dist::GradExchange::int8}) {
    dist::DataParallel dp(*model, dist::DataParallelOptions().exchange(exchange).group_size(64));
    set_grads(*model, [](int r, std::int64_t p, std::int64_t i) { return 0.01f * static_cast<float>((r + p + i) % 17); });
    dp.sync_gradients();
    bytes[exchange == dist::GradExchange::int8] = dp.stats().bytes_sent;
  }
  const double ratio = static_cast<double>(bytes[1]) / static_cast<double>(bytes[0]);
  EXPECT_GT(ratio, 0.25);
  EXPECT_LT(ratio, 0.30);
}

TEST(DistMpi, SamplerCoversEverySampleOncePerEpoch) {
  const std::int64_t n = 53, batch = 8;  // an uneven tail of 5
  data::LabeledImages d{Tensor::empty({n, 2, 2}, DType::u8), Tensor::empty({n}, DType::s32), 0};
  for (std::int64_t i = 0; i < n; ++i) {
    d.labels.data<std::int32_t>()[i] = static_cast<std::int32_t>(i);  // the label names the sample
  }
  const data::ImageLoader loader(d, data::ImageLoaderOptions(batch).seed(9));
  for (std::int64_t epoch = 0; epoch < 2; ++epoch) {
    std::vector<double> mine(static_cast<std::size_t>(n), 0.0);
    for (std::int64_t b = 0; b < loader.num_batches(); ++b)
      for (std::int32_t label : loader.batch(epoch, b, {rank(), world()}).labels.to_vector<std::int32_t>()) mine[label] += 1;
    std::vector<double> total = mine;
    dist::allreduce_sum(total);
    for (std::int64_t i = 0; i < n; ++i) ASSERT_EQ(total[i], 1.0) << "sample " << i << " epoch " << epoch;
  }
}

TEST(DistMpi, DifferentConfigurationsAreRefusedOnEveryRank) {
  EXPECT_NO_THROW(dist::check_same_config("bits=4 norm=l1"));
  try {
    dist::check_same_config(rank() == 1 ? "bits=6 norm=l1" : "bits=4 norm=l1");
    FAIL() << "no error";
  } catch (const dist::DistError& e) {
    EXPECT_NE(std::string(e.what()).find("rank(s) 1 differ from rank 0"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("bits=6"), std::string::npos) << e.what();
  }
}

TEST(DistMpi, BroadcastParametersRefusesDifferentModels) {
  Generator gen(1);
  nn::Linear model(nn::LinearOptions(4, rank() == 0 ? 3 : 5), gen);
  EXPECT_THROW(dist::broadcast_parameters(model), dist::DistError);
}

}  // namespace
}  // namespace shiftq

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  shiftq::dist::init();
  shiftq::dist::set_timeout(60);
  if (shiftq::dist::rank() != 0) {  // one report: the other ranks print failures only
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  const int failed = RUN_ALL_TESTS();
  // Any rank's failure fails every rank's exit code.
  const bool all_passed = shiftq::dist::all_true(failed == 0);
  shiftq::dist::finalize();
  return all_passed ? 0 : 1;
}
