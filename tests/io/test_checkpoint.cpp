// Training checkpoints: bit-exact round trip of a model + SGD-with-momentum state + RNG states, the
// file's safetensors layout, restore() errors (prefixed, all or nothing) and non-checkpoint files.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "testing/files.hpp"
#include "testing/gradcheck.hpp"

namespace shiftq {
namespace {
namespace fs = std::filesystem;
using io::TrainingCheckpoint;

class CheckpointTest : public testing::TempDirTest {};

// Same keys, dtypes, shapes and bytes.
void expect_bit_equal(const std::map<std::string, Tensor>& a, const std::map<std::string, Tensor>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) {
    auto it = b.find(name);
    ASSERT_NE(it, b.end()) << name;
    ASSERT_EQ(t.dtype(), it->second.dtype()) << name;
    ASSERT_EQ(t.shape(), it->second.shape()) << name;
    if (t.dtype() == DType::f32) {
      EXPECT_EQ(std::memcmp(t.data<float>(), it->second.data<float>(), t.nbytes()), 0) << name;
    } else {
      ASSERT_EQ(t.dtype(), DType::s32) << name;
      EXPECT_EQ(t.to_vector<std::int32_t>(), it->second.to_vector<std::int32_t>()) << name;
    }
  }
}

std::map<std::string, Tensor> cloned(const std::map<std::string, Tensor>& state) {
  std::map<std::string, Tensor> out;
  for (const auto& [name, t] : state) out.emplace(name, t.clone());
  return out;
}

// One SGD step on a fixed regression batch.
void train_step(nn::Linear& model, optim::Optimizer& opt) {
  Generator data(99);
  const Tensor x = Tensor::randn({5, 4}, data);
  const Tensor y = Tensor::randn({5, 3}, data);
  opt.zero_grad();
  mse_loss(model(x), y).backward();
  opt.step();
}

std::unique_ptr<optim::SGD> make_sgd(nn::Module& model) {
  return std::make_unique<optim::SGD>(model.named_parameters(), optim::SGDOptions(0.1).momentum(0.9));
}

// A checkpoint after one step of Linear(4, 3) + SGD(momentum 0.9).
TrainingCheckpoint trained_checkpoint(nn::Linear& model, optim::Optimizer& opt) {
  train_step(model, opt);
  Generator data(5);
  for (int i = 0; i < 3; ++i) data.next_u32();  // mid-block: word != 4
  TrainingCheckpoint ckpt;
  ckpt.model = model.state_dict();
  ckpt.optimizer = opt.state_dict();
  ckpt.generators = {{"init", Generator(7).state()}, {"data", data.state()}};
  ckpt.info = {{"epoch", "1"}, {"config", "{\"lr\": 0.1, \"momentum\": 0.9}"}};
  return ckpt;
}

TEST_F(CheckpointTest, RoundTripAndRestoreLinearSgdMomentum) {
  Generator init(7);
  nn::Linear model(nn::LinearOptions(4, 3), init);
  auto opt = make_sgd(model);
  const TrainingCheckpoint ckpt = trained_checkpoint(model, *opt);
  ASSERT_EQ(ckpt.optimizer.count("weight.momentum_buffer"), 1u);
  io::save_checkpoint(path("ckpt.safetensors"), ckpt);

  const TrainingCheckpoint loaded = io::load_checkpoint(path("ckpt.safetensors"));
  expect_bit_equal(loaded.model, ckpt.model);
  expect_bit_equal(loaded.optimizer, ckpt.optimizer);
  EXPECT_EQ(loaded.generators, ckpt.generators);
  EXPECT_EQ(loaded.info, ckpt.info);

  // Restore into a differently initialized model and a fresh optimizer.
  Generator other(123);
  nn::Linear fresh(nn::LinearOptions(4, 3), other);
  auto fresh_opt = make_sgd(fresh);
  io::restore(loaded, path("ckpt.safetensors"), fresh, fresh_opt.get());
  expect_bit_equal(fresh.state_dict(), model.state_dict());
  expect_bit_equal(fresh_opt->state_dict(), opt->state_dict());
  EXPECT_EQ(fresh_opt->step_count(), 1);

  // Training continues identically (the momentum buffers were restored, not re-initialized).
  train_step(model, *opt);
  train_step(fresh, *fresh_opt);
  expect_bit_equal(fresh.state_dict(), model.state_dict());
  expect_bit_equal(fresh_opt->state_dict(), opt->state_dict());

  // Generators continue their streams exactly.
  Generator a(0), b(0);
  a.set_state(ckpt.generators.at("data"));
  b.set_state(loaded.generators.at("data"));
  for (int i = 0; i < 10; ++i) EXPECT_EQ(a.next_u32(), b.next_u32());
}

TEST_F(CheckpointTest, FileLayout) {
  Generator init(7);
  nn::Linear model(nn::LinearOptions(4, 3), init);
  auto opt = make_sgd(model);
  TrainingCheckpoint ckpt = trained_checkpoint(model, *opt);
  ckpt.generators["odd"] = GeneratorState{12, 34, 2};
  io::save_checkpoint(path("ckpt.safetensors"), ckpt);

  const io::TensorFile file = io::load_safetensors(path("ckpt.safetensors"));
  std::vector<std::string> keys;
  for (const auto& [name, t] : file.tensors) keys.push_back(name);
  EXPECT_EQ(keys, (std::vector<std::string>{"model/bias", "model/weight", "optim/bias.momentum_buffer", "optim/step",
                                            "optim/weight.momentum_buffer"}));
  EXPECT_EQ(file.metadata.at("format"), "shiftq-checkpoint-v1");
  EXPECT_EQ(file.metadata.at("rng/odd"), "12:34:2");
  EXPECT_EQ(file.metadata.at("info/epoch"), "1");
  EXPECT_EQ(file.metadata.size(), 1u + 3u + 2u);
}

TEST_F(CheckpointTest, GeneratorStateExtremes) {
  constexpr std::uint64_t kMax = std::numeric_limits<std::uint64_t>::max();
  TrainingCheckpoint ckpt;
  for (std::uint32_t word = 0; word <= 4; ++word)
    ckpt.generators["g" + std::to_string(word)] = GeneratorState{kMax - word, kMax, word};
  ckpt.generators["zero"] = GeneratorState{0, 0, 0};
  io::save_checkpoint(path("rng.safetensors"), ckpt);
  const TrainingCheckpoint loaded = io::load_checkpoint(path("rng.safetensors"));
  EXPECT_EQ(loaded.generators, ckpt.generators);
  EXPECT_TRUE(loaded.model.empty());
  EXPECT_TRUE(loaded.optimizer.empty());
  EXPECT_TRUE(loaded.info.empty());
}

// Expects f() to throw E whose message starts with `prefix`.
template <class E, class F>
void expect_prefixed(F&& f, const std::string& prefix) {
  try {
    f();
    ADD_FAILURE() << "no exception";
  } catch (const E& e) {
    EXPECT_EQ(std::string(e.what()).rfind(prefix, 0), 0u) << e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

TEST_F(CheckpointTest, RestoreIntoDifferentModelIsPrefixedError) {
  Generator init(7);
  nn::Linear model(nn::LinearOptions(4, 3), init);
  auto opt = make_sgd(model);
  io::save_checkpoint(path("ckpt.safetensors"), trained_checkpoint(model, *opt));
  const TrainingCheckpoint loaded = io::load_checkpoint(path("ckpt.safetensors"));
  const std::string model_prefix = "checkpoint " + path("ckpt.safetensors") + " does not match the model: ";

  nn::Linear wider(nn::LinearOptions(4, 5), init);
  const auto before = cloned(wider.state_dict());
  auto wider_opt = make_sgd(wider);
  expect_prefixed<ShapeError>([&] { io::restore(loaded, path("ckpt.safetensors"), wider, wider_opt.get()); },
                              model_prefix);
  expect_bit_equal(wider.state_dict(), before);

  nn::Linear no_bias(nn::LinearOptions(4, 3).bias(false), init);
  expect_prefixed<ValueError>([&] { io::restore(loaded, path("ckpt.safetensors"), no_bias, nullptr); }, model_prefix);
}

TEST_F(CheckpointTest, RestoreOptimizerMismatchIsAllOrNothing) {
  Generator init(7);
  nn::Linear model(nn::LinearOptions(4, 3), init);
  auto opt = make_sgd(model);
  const TrainingCheckpoint ckpt = trained_checkpoint(model, *opt);

  // The model matches, the optimizer kind does not (SGD momentum buffers into AdamW).
  Generator other(8);
  nn::Linear fresh(nn::LinearOptions(4, 3), other);
  const auto before = cloned(fresh.state_dict());
  optim::AdamW adamw(fresh.named_parameters(), optim::AdamWOptions(1e-3));
  expect_prefixed<ValueError>([&] { io::restore(ckpt, "run/ckpt.safetensors", fresh, &adamw); },
                              "checkpoint run/ckpt.safetensors does not match the optimizer: ");
  expect_bit_equal(fresh.state_dict(), before);
  EXPECT_EQ(adamw.step_count(), 0);

  // Without an optimizer the optimizer state is ignored.
  io::restore(ckpt, "run/ckpt.safetensors", fresh, nullptr);
  expect_bit_equal(fresh.state_dict(), model.state_dict());
}

// Expects load_checkpoint(path) to throw IOError naming the file and containing `what`.
void expect_not_checkpoint(const std::string& path, const std::string& what) {
  try {
    io::load_checkpoint(path);
    ADD_FAILURE() << "load_checkpoint(" << path << ") did not throw";
  } catch (const IOError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find(what), std::string::npos) << "expected '" << what << "' in: " << msg;
  }
}

TEST_F(CheckpointTest, NotACheckpoint) {
  const std::string p = path("x.safetensors");
  io::TensorFile file;
  file.tensors["model/w"] = Tensor::zeros({2});
  io::save_safetensors(p, file);
  expect_not_checkpoint(p, "not a shiftq checkpoint");
  file.metadata["format"] = "pt";
  io::save_safetensors(p, file);
  expect_not_checkpoint(p, "format is \"pt\"");

  file.metadata["format"] = "shiftq-checkpoint-v1";
  io::save_safetensors(p, file);
  EXPECT_EQ(io::load_checkpoint(p).model.count("w"), 1u);

  file.tensors["weights/w"] = Tensor::zeros({2});
  io::save_safetensors(p, file);
  expect_not_checkpoint(p, "tensor 'weights/w'");
  file.tensors.erase("weights/w");

  file.metadata["epoch"] = "3";
  io::save_safetensors(p, file);
  expect_not_checkpoint(p, "unknown metadata key 'epoch'");
  file.metadata.erase("epoch");

  for (const std::string bad : {"", "1:2", "1:2:3:4", "a:b:c", "1:2:5", "-1:2:3", "+1:2:3", "1: 2:3", "1:2:",
                                "18446744073709551616:0:0", "0:18446744073709551616:0", "0:0:4294967300"}) {
    SCOPED_TRACE("rng entry '" + bad + "'");
    file.metadata["rng/data"] = bad;
    io::save_safetensors(p, file);
    expect_not_checkpoint(p, "malformed generator state 'rng/data'");
  }
  file.metadata["rng/data"] = "18446744073709551615:1:4";
  io::save_safetensors(p, file);
  EXPECT_EQ(io::load_checkpoint(p).generators.at("data"), (GeneratorState{18446744073709551615u, 1, 4}));

  expect_not_checkpoint(path("missing.safetensors"), "cannot open");
}

// A quantized model's stochastic rounding is keyed by its layers' call counters: saving the model
// alone (io::save_checkpoint(path, model, &opt)) must carry them, so a restored run continues with
// the same roundings as an uninterrupted one.
std::shared_ptr<nn::Sequential> quantized_mlp() {
  Generator gen(3);
  auto model = std::make_shared<nn::Sequential>(std::initializer_list<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Linear>(nn::LinearOptions(6, 16), gen), std::make_shared<nn::ReLU>(),
      std::make_shared<nn::Linear>(nn::LinearOptions(16, 16), gen), std::make_shared<nn::ReLU>(),
      std::make_shared<nn::Linear>(nn::LinearOptions(16, 2), gen)});
  nn::quantize_model(*model, quant::QConfig::bits(4), 11);
  return model;
}

void train_steps(nn::Module& model, optim::Optimizer& opt, int steps, std::uint64_t data_seed) {
  Generator data(data_seed);
  for (int i = 0; i < steps; ++i) {
    const Tensor x = Tensor::randn({8, 6}, data);
    const Tensor y = Tensor::randn({8, 2}, data);
    opt.zero_grad();
    mse_loss(model(x), y).backward();
    opt.step();
  }
}

TEST_F(CheckpointTest, SavedQuantizedModelResumesBitForBit) {
  auto straight = quantized_mlp();
  auto opt = make_sgd(*straight);
  train_steps(*straight, *opt, 3, 1);
  io::save_checkpoint(path("q.safetensors"), *straight, opt.get(), {{"step", "3"}});
  train_steps(*straight, *opt, 2, 2);

  auto resumed = quantized_mlp();
  auto resumed_opt = make_sgd(*resumed);
  const TrainingCheckpoint ckpt = io::load_checkpoint(path("q.safetensors"));
  EXPECT_EQ(ckpt.model.at("0.quant_calls").to_vector<std::int32_t>(), (std::vector<std::int32_t>{3, 0}));
  EXPECT_EQ(ckpt.info.at("step"), "3");
  EXPECT_TRUE(io::restore(ckpt, "q.safetensors", *resumed, resumed_opt.get()).empty());
  train_steps(*resumed, *resumed_opt, 2, 2);
  expect_bit_equal(straight->state_dict(), resumed->state_dict());

  // Without the counters (a fresh restore point that skips them) the roundings differ: the test
  // above would notice a checkpoint that lost them.
  auto fresh = quantized_mlp();
  auto fresh_opt = make_sgd(*fresh);
  TrainingCheckpoint without = ckpt;
  for (const char* name : {"0.quant_calls", "2.quant_calls", "4.quant_calls"}) without.model.erase(name);
  const auto absent = io::restore(without, "q.safetensors", *fresh, fresh_opt.get());
  EXPECT_EQ(absent, (std::vector<std::string>{"0.quant_calls", "2.quant_calls", "4.quant_calls"}));
  train_steps(*fresh, *fresh_opt, 2, 2);
  EXPECT_NE(std::memcmp(fresh->state_dict().at("2.weight").data<float>(),
                        straight->state_dict().at("2.weight").data<float>(), 16 * 16 * sizeof(float)),
            0);
}

// Checkpoints from before the counters were buffers hold them in info "quant_counters".
TEST_F(CheckpointTest, LegacyQuantCountersInfoIsApplied) {
  auto model = quantized_mlp();
  TrainingCheckpoint ckpt;
  ckpt.model = model->state_dict();
  for (const char* name : {"0.quant_calls", "2.quant_calls", "4.quant_calls"}) ckpt.model.erase(name);
  ckpt.info = {{"quant_counters", "7,8,4294967301"}};
  auto restored = quantized_mlp();
  EXPECT_TRUE(io::restore(ckpt, "old.safetensors", *restored, nullptr).empty());
  EXPECT_EQ(nn::quantization_counters(*restored), (std::vector<std::uint64_t>{7, 8, 4294967301ull}));
  ckpt.info["quant_counters"] = "7,x,9";
  expect_prefixed<IOError>([&] { io::restore(ckpt, "old.safetensors", *restored, nullptr); },
                  "checkpoint old.safetensors: malformed quant_counters entry 'x'");
  ckpt.info["quant_counters"] = "7,8";
  EXPECT_THROW(io::restore(ckpt, "old.safetensors", *restored, nullptr), ValueError);
  EXPECT_EQ(nn::quantization_counters(*restored), (std::vector<std::uint64_t>{7, 8, 4294967301ull}));  // untouched
}

TEST_F(CheckpointTest, SaveIntoMissingDirectoryLeavesNothing) {
  TrainingCheckpoint ckpt;
  ckpt.info["epoch"] = "0";
  EXPECT_THROW(io::save_checkpoint(path("nope/ckpt.safetensors"), ckpt), IOError);
  EXPECT_FALSE(fs::exists(path("nope")));
  EXPECT_TRUE(fs::is_empty(dir_));
}

}  // namespace
}  // namespace shiftq
