// The example trainers, run in-process on small budgets: they must learn (fp32 and integer), resume
// bit for bit, and reject bad configurations and checkpoints.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include <shiftq/shiftq.hpp>

#include "testing/files.hpp"
#include "common/flags.hpp"
#include "common/nonfinite.hpp"
#include "common/precision.hpp"
#include "resnet/model.hpp"
#include "resnet/trainer.hpp"
#include "transformer/model.hpp"
#include "transformer/trainer.hpp"

namespace shiftq::examples {
namespace {

namespace fs = std::filesystem;

class TrainerTest : public testing::TempDirTest {};

bool have_fashion_mnist() { return fs::exists(std::string(data::kFashionMnistDir) + "/train-images-idx3-ubyte.gz"); }

ResNetTrainConfig small_resnet(int bits, const std::string& norm) {
  ResNetTrainConfig c;
  c.depth = 8;
  c.width = 8;
  c.norm = norm;
  c.bits = bits;
  // The paper's recipe (the thresholds below were measured with it); the trainer's default is the
  // best measured configuration (ResNetLearnsFashionMnistIn4BitWithTheDefaultRecipe).
  c.act_quant = "per-tensor";
  c.act_clip = "none";
  c.weight_clip = "none";
  c.train_subset = 6400;
  c.test_subset = 2000;
  c.epochs = 2;
  c.batch = 64;
  c.lr = 0.1;
  c.warmup_epochs = 0.25;
  c.augment = false;
  c.verbose = false;
  c.threads = 1;  // ctest runs two tests at once on 2-core CI machines
  return c;
}


void expect_same_tensors(const std::map<std::string, Tensor>& a, const std::map<std::string, Tensor>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) {
    const auto it = b.find(name);
    ASSERT_NE(it, b.end()) << name;
    ASSERT_EQ(t.nbytes(), it->second.nbytes()) << name;
    EXPECT_EQ(std::memcmp(t.raw_bytes(), it->second.raw_bytes(), t.nbytes()), 0)
        << name << " differs";
  }
}

// ---- ResNet on a Fashion-MNIST subset (Debian's dataset-fashion-mnist, installed by install-deps) ----

// 200 steps of batch 64 on 6400 images; a stated accuracy on 2000 test images for fp32 + BatchNorm and
// 4-bit ShiftQuant + fully quantized L1 BatchNorm (delayed activation scaling). Measured on AMD EPYC
// Zen 5 (AVX-512 VNNI), seeds 1-4: fp32 74.05 / 75.25 / 76.15 / 75.60%, 4-bit 73.20 / 74.40 / 74.00 /
// 75.15%. Another CPU's float summation order changes the run like another seed would, so the
// thresholds sit 1.5 points under the lowest of the four seeds (the seeds span 2 points).
TEST_F(TrainerTest, ResNetLearnsFashionMnistInFp32And4Bit) {
  if (!have_fashion_mnist()) GTEST_FAIL() << "dataset-fashion-mnist is not installed (scripts/install-deps.sh)";
  const auto fp32 = train_resnet(small_resnet(0, "l2"));
  const auto int4 = train_resnet(small_resnet(4, "l1"));
  ASSERT_EQ(fp32.size(), 2u);
  ASSERT_EQ(int4.size(), 2u);
  EXPECT_GT(fp32.back().test_accuracy, 0.725);
  EXPECT_GT(int4.back().test_accuracy, 0.715);
  EXPECT_LT(int4.back().train_loss, int4.front().train_loss);
}

// The same budget with the trainer's default 4-bit recipe, the best configuration of
// docs/results.md: ShiftQuant activations and weights whose group exponents are chosen by least
// squared error (--act-quant shiftquant --act-clip mse --weight-clip mse).
TEST_F(TrainerTest, ResNetLearnsFashionMnistIn4BitWithTheDefaultRecipe) {
  if (!have_fashion_mnist()) GTEST_FAIL() << "dataset-fashion-mnist is not installed (scripts/install-deps.sh)";
  const ResNetTrainConfig defaults;
  ResNetTrainConfig c = small_resnet(4, "l1");
  c.act_quant = defaults.act_quant;
  c.act_clip = defaults.act_clip;
  c.weight_clip = defaults.weight_clip;
  ASSERT_EQ(c.act_quant, "shiftquant");
  ASSERT_NE(c.fingerprint().find("weight_clip=mse"), std::string::npos);
  ASSERT_NE(c.qconfig().str().find("MSE-chosen exponents"), std::string::npos);
  const auto int4 = train_resnet(c);
  ASSERT_EQ(int4.size(), 2u);
  EXPECT_GT(int4.back().test_accuracy, 0.715);  // seed 1 on the same CPU: 73.0% (the method: 73.2%)
  EXPECT_LT(int4.back().train_loss, int4.front().train_loss);
}

// Channels-last (--layout nhwc) trains exactly like NCHW (the default): the same
// codes, integer sums and stochastic draws (keyed by the NCHW index), so the same losses and
// accuracies to the last bit, for the paper's recipe and the default one. The layout is not part
// of the checkpoint's configuration: an NCHW checkpoint resumes channels-last, with the results of
// the straight channels-last run.
TEST_F(TrainerTest, ResNetChannelsLastTrainsExactlyLikeChannelsFirst) {
  if (!have_fashion_mnist()) GTEST_FAIL() << "dataset-fashion-mnist is not installed (scripts/install-deps.sh)";
  // The default layout: channels-last for integer training, channels-first for fp32.
  ResNetTrainConfig defaults_of_layout;
  EXPECT_EQ(defaults_of_layout.layout, "auto");
  EXPECT_EQ(defaults_of_layout.image_layout(), ImageLayout::nchw);
  defaults_of_layout.bits = 4;
  EXPECT_EQ(defaults_of_layout.image_layout(), ImageLayout::nhwc);
  ResNetTrainConfig c = small_resnet(4, "l1");
  c.train_subset = 640;
  c.test_subset = 500;
  const ResNetTrainConfig defaults;
  for (const bool default_recipe : {false, true}) {
    SCOPED_TRACE(default_recipe ? "default recipe" : "paper's recipe");
    if (default_recipe) {
      c.act_quant = defaults.act_quant;
      c.act_clip = defaults.act_clip;
      c.weight_clip = defaults.weight_clip;
    }
    c.layout = "nchw";
    const std::string fingerprint = c.fingerprint();
    const auto first = train_resnet(c);
    c.layout = "nhwc";
    EXPECT_EQ(c.fingerprint(), fingerprint);
    const auto last = train_resnet(c);
    ASSERT_EQ(first.size(), 2u);
    ASSERT_EQ(last.size(), 2u);
    for (std::size_t e = 0; e < first.size(); ++e) {
      EXPECT_EQ(first[e].train_loss, last[e].train_loss) << "epoch " << e + 1;
      EXPECT_EQ(first[e].test_loss, last[e].test_loss) << "epoch " << e + 1;
      EXPECT_EQ(first[e].test_accuracy, last[e].test_accuracy) << "epoch " << e + 1;
    }
    if (!default_recipe) continue;
    c.layout = "nchw";
    c.checkpoint = path("nchw.ckpt");
    c.stop_after = 1;
    train_resnet(c);
    c.layout = "nhwc";
    c.checkpoint.clear();
    c.stop_after = 0;
    c.resume = path("nchw.ckpt");
    const auto resumed = train_resnet(c);
    ASSERT_EQ(resumed.size(), 1u);
    EXPECT_EQ(resumed.back().train_loss, last.back().train_loss);
    EXPECT_EQ(resumed.back().test_accuracy, last.back().test_accuracy);
  }
  c.layout = "nhcw";
  EXPECT_THROW(c.validate(), UsageError);
}

// Two epochs straight vs one epoch, "crash", resume: identical weights, optimizer state and BN
// statistics, bit for bit (4-bit: the stochastic-rounding counters are part of the checkpoint).
TEST_F(TrainerTest, ResNetResumeIsBitExact) {
  if (!have_fashion_mnist()) GTEST_FAIL() << "dataset-fashion-mnist is not installed";
  ResNetTrainConfig c = small_resnet(4, "l1");
  c.width = 4;
  c.train_subset = 512;
  c.test_subset = 500;
  c.augment = true;
  c.checkpoint = path("straight.safetensors");
  train_resnet(c);

  c.checkpoint = path("interrupted.safetensors");
  c.stop_after = 1;
  ASSERT_EQ(train_resnet(c).size(), 1u);
  c.stop_after = 0;
  c.resume = c.checkpoint;
  const auto resumed = train_resnet(c);
  ASSERT_EQ(resumed.size(), 1u);
  EXPECT_EQ(resumed.front().epoch, 2);

  const io::TrainingCheckpoint a = io::load_checkpoint(path("straight.safetensors"));
  const io::TrainingCheckpoint b = io::load_checkpoint(path("interrupted.safetensors"));
  expect_same_tensors(a.model, b.model);  // the layers' call counters ("*.quant_calls") included
  expect_same_tensors(a.optimizer, b.optimizer);
  std::int64_t counters = 0;
  for (const auto& [name, t] : a.model)
    if (name.ends_with("quant_calls")) {
      ++counters;
      EXPECT_GT(t.data<std::int32_t>()[0], 0) << name;  // 2 epochs of training calls
    }
  // ResNet-8: 7 convs, 2 projection shortcuts (1x1 convs), the linear layer and 9 L1 BatchNorms.
  EXPECT_EQ(counters, 19);
}

// --eval-only: the checkpoint's test accuracy again, with nothing trained or logged; with delayed
// activation scaling another eval batch size gives the same predictions.
TEST_F(TrainerTest, ResNetEvalOnlyScoresTheCheckpoint) {
  if (!have_fashion_mnist()) GTEST_FAIL() << "dataset-fashion-mnist is not installed";
  ResNetTrainConfig c = small_resnet(4, "l1");
  c.width = 4;
  c.train_subset = 512;
  c.test_subset = 500;
  c.epochs = 1;
  c.eval_batch = 250;
  c.checkpoint = path("e.safetensors");
  const auto trained = train_resnet(c);
  ASSERT_EQ(trained.size(), 1u);

  ResNetTrainConfig e = c;
  e.checkpoint.clear();
  e.resume = path("e.safetensors");
  e.eval_only = true;
  e.log = path("eval.jsonl");
  const auto scored = train_resnet(e);
  ASSERT_EQ(scored.size(), 1u);
  EXPECT_EQ(scored[0].epoch, 1);
  EXPECT_EQ(scored[0].test_accuracy, trained[0].test_accuracy);
  EXPECT_EQ(scored[0].test_loss, trained[0].test_loss);
  EXPECT_FALSE(fs::exists(path("eval.jsonl")));
  e.eval_batch = 7;  // uneven last batch
  const auto other = train_resnet(e);
  EXPECT_EQ(other[0].test_accuracy, trained[0].test_accuracy);
  EXPECT_NEAR(other[0].test_loss, trained[0].test_loss, 1e-5);  // per-sample losses summed in another order

  ResNetTrainConfig bad = c;
  bad.eval_only = true;  // no --resume
  EXPECT_THROW(bad.validate(), UsageError);
  bad = c;
  bad.eval_batch = 0;
  EXPECT_THROW(bad.validate(), UsageError);
  bad = e;
  bad.bn_recalibrate = 10;  // nothing trained to re-estimate after
  EXPECT_THROW(bad.validate(), UsageError);
}

// --bn-recalibrate N: after the last epoch the norms' statistics and the observed ranges are
// re-estimated on N training batches. Training itself is unchanged (the accuracy before it equals a
// run without it, bit for bit), the log keeps both accuracies, and the checkpoint holds the
// re-estimated model (scoring it gives the accuracy after). The gain itself is measured, not
// asserted: 20 steps of this model, seeds 1-4, went from 36.6 / 21.9 / 33.1 / 37.2% to 46.0 / 36.6 /
// 39.5 / 37.5% (docs/numerics.md).
TEST_F(TrainerTest, ResNetBatchNormRecalibrationAfterTheLastEpoch) {
  if (!have_fashion_mnist()) GTEST_FAIL() << "dataset-fashion-mnist is not installed";
  ResNetTrainConfig c = small_resnet(4, "l1");
  c.train_subset = 1280;
  c.test_subset = 1000;
  c.epochs = 1;
  const auto plain = train_resnet(c);
  ASSERT_EQ(plain.size(), 1u);
  EXPECT_FALSE(plain[0].test_accuracy_before_recalibration.has_value());

  c.bn_recalibrate = 20;
  c.checkpoint = path("recal.safetensors");
  c.log = path("recal.jsonl");
  const auto recal = train_resnet(c);
  ASSERT_EQ(recal.size(), 1u);
  ASSERT_TRUE(recal[0].test_accuracy_before_recalibration.has_value());
  EXPECT_EQ(*recal[0].test_accuracy_before_recalibration, plain[0].test_accuracy);
  EXPECT_EQ(recal[0].train_loss, plain[0].train_loss);
  EXPECT_NE(recal[0].test_accuracy, plain[0].test_accuracy);  // 46.0% vs 36.6% with seed 1
  std::ifstream log(path("recal.jsonl"));
  std::string line;
  ASSERT_TRUE(std::getline(log, line));
  const nlohmann::json row = nlohmann::json::parse(line);
  EXPECT_EQ(row["test_accuracy_before_recalibration"].get<double>(), plain[0].test_accuracy);
  EXPECT_EQ(row["test_accuracy"].get<double>(), recal[0].test_accuracy);

  ResNetTrainConfig e = c;
  e.checkpoint.clear();
  e.log.clear();
  e.resume = path("recal.safetensors");
  e.eval_only = true;
  e.bn_recalibrate = 0;  // scoring re-estimates nothing
  EXPECT_EQ(train_resnet(e)[0].test_accuracy, recal[0].test_accuracy);

  ResNetTrainConfig bad = small_resnet(4, "l1");
  bad.bn_recalibrate = -1;
  EXPECT_THROW(bad.validate(), UsageError);
}

TEST_F(TrainerTest, ResNetRejectsMismatchedCheckpointAndBadConfig) {
  if (!have_fashion_mnist()) GTEST_FAIL() << "dataset-fashion-mnist is not installed";
  ResNetTrainConfig c = small_resnet(0, "l2");
  c.width = 4;
  c.train_subset = 128;
  c.test_subset = 100;
  c.epochs = 1;
  c.checkpoint = path("a.safetensors");
  train_resnet(c);
  c.resume = c.checkpoint;
  c.norm = "l1";  // a different model
  EXPECT_THROW(train_resnet(c), ValueError);
  c.norm = "l2";
  c.resume = path("missing.safetensors");
  EXPECT_THROW(train_resnet(c), IOError);
  {
    std::ofstream(path("garbage.safetensors")) << "not a checkpoint";
  }
  c.resume = path("garbage.safetensors");
  EXPECT_THROW(train_resnet(c), IOError);

  ResNetTrainConfig bad = small_resnet(0, "l2");
  bad.depth = 21;
  EXPECT_THROW(bad.validate(), UsageError);
  bad = small_resnet(9, "l2");
  EXPECT_THROW(bad.validate(), UsageError);
  bad = small_resnet(4, "batch");
  EXPECT_THROW(bad.validate(), UsageError);
  bad = small_resnet(4, "l1");
  bad.weight_clip = "percentile";
  EXPECT_THROW(bad.validate(), UsageError);
  bad = small_resnet(4, "l1");
  bad.act_scaling.mode = "static";
  EXPECT_THROW(bad.validate(), UsageError);
  bad = small_resnet(4, "l1");
  bad.act_scaling.history = 0;
  EXPECT_THROW(bad.validate(), UsageError);
  bad = small_resnet(4, "l1");
  bad.quant_report.path = path("q.jsonl");
  bad.quant_report.every = 0;
  EXPECT_THROW(bad.validate(), UsageError);
  bad = small_resnet(0, "l2");
  bad.quant_report.path = path("q.jsonl");  // nothing quantized to report
  EXPECT_THROW(bad.validate(), UsageError);
  bad = small_resnet(0, "l2");
  bad.data_dir = path("nowhere");
  EXPECT_THROW(train_resnet(bad), IOError);
}

// --quant-report: every N steps one JSON line with each quantized layer's observed range and the
// numerics of its input and output-gradient quantization.
TEST_F(TrainerTest, ResNetWritesTheNumericsReport) {
  if (!have_fashion_mnist()) GTEST_FAIL() << "dataset-fashion-mnist is not installed";
  ResNetTrainConfig c = small_resnet(4, "l1");
  c.width = 4;
  c.train_subset = 512;
  c.test_subset = 100;
  c.epochs = 1;  // 8 steps of 64
  c.quant_report.path = path("q.jsonl");
  c.quant_report.every = 4;
  EXPECT_EQ(c.fingerprint().find("act_scaling"), std::string::npos);  // the default: as older checkpoints
  train_resnet(c);
  std::ifstream in(path("q.jsonl"));
  std::string line;
  std::vector<nlohmann::json> rows;
  while (std::getline(in, line)) rows.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0]["step"], 4);
  EXPECT_EQ(rows[1]["step"], 8);
  const nlohmann::json& layers = rows[1]["layers"];
  ASSERT_EQ(layers.size(), 10u);  // 9 convs and the linear layer of ResNet-8
  EXPECT_EQ(layers[0]["layer"], "stem");
  EXPECT_EQ(layers[0]["activation_bits"], 8);
  EXPECT_FALSE(layers[0].contains("grad_output"));  // the image needs no gradient
  for (const nlohmann::json& l : layers) {
    EXPECT_EQ(l["observed_calls"], 8) << l["layer"];
    EXPECT_GT(l["input_range"].get<double>(), 0.0) << l["layer"];
    for (const char* role : {"input", "grad_output"}) {
      if (!l.contains(role)) continue;
      const nlohmann::json& t = l[role];
      EXPECT_GE(t["saturation_rate"].get<double>(), 0.0);
      EXPECT_LE(t["saturation_rate"].get<double>(), 1.0);
      EXPECT_GT(t["relative_error"].get<double>(), 0.0) << l["layer"] << " " << role;
      EXPECT_LT(t["relative_error"].get<double>(), 1.0) << l["layer"] << " " << role;
      EXPECT_EQ(t["exponent_histogram"].size(), 9u);
    }
  }
  EXPECT_TRUE(layers[1].contains("grad_output"));
  EXPECT_EQ(layers[1]["grad_output"]["shift_budget"], 4);

  c.act_scaling.mode = "ema";
  EXPECT_NE(c.fingerprint().find("act_scaling=ema:16"), std::string::npos);
  EXPECT_NE(c.qconfig().str().find("EMA"), std::string::npos);
}

TEST(NonFiniteGuard, SkipsUpToTheLimitThenStops) {
  Generator gen(1);
  nn::Linear layer(nn::LinearOptions{2, 2}, gen);
  optim::SGD opt(layer.named_parameters(), optim::SGDOptions{0.1});
  NonFiniteGuard guard(2);
  const auto bad = [] () -> double { throw NumericError("loss is nan"); };
  EXPECT_FALSE(guard.run(bad, opt).has_value());
  EXPECT_FALSE(guard.run(bad, opt).has_value());
  EXPECT_EQ(guard.run([] { return 1.5; }, opt), 1.5);  // resets the run of skips
  EXPECT_FALSE(guard.run(bad, opt).has_value());
  EXPECT_FALSE(guard.run(bad, opt).has_value());
  EXPECT_THROW(guard.run(bad, opt), NumericError);
  EXPECT_EQ(guard.skipped(), 4);
  NonFiniteGuard off(0);
  EXPECT_THROW(off.run(bad, opt), NumericError);
}

// A learning rate of 1e30 blows the weights up: by default the run stops with a NumericError that
// says what went wrong; with --skip-nonfinite it skips a few steps, then stops.
TEST_F(TrainerTest, ResNetDivergenceIsReportedNotSilent) {
  if (!have_fashion_mnist()) GTEST_FAIL() << "dataset-fashion-mnist is not installed";
  ResNetTrainConfig c = small_resnet(0, "l2");
  c.width = 4;
  c.train_subset = 640;
  c.test_subset = 100;
  c.epochs = 1;
  c.lr = 1e30;
  c.warmup_epochs = 0;
  c.checkpoint = path("c.safetensors");
  EXPECT_THROW(train_resnet(c), NumericError);
  c.skip_nonfinite = 2;
  try {
    train_resnet(c);
    FAIL() << "expected NumericError";
  } catch (const NumericError& e) {
    EXPECT_NE(std::string(e.what()).find("3 consecutive training steps"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(c.checkpoint));  // nothing was saved from a diverged model
}

// ---- char-GPT on a small real text (the GPL-3 text of Debian's base-files, ~35 KB) ----

constexpr const char* kSmallText = "/usr/share/common-licenses/GPL-3";

GPTTrainConfig small_gpt(int bits, const std::string& norm) {
  GPTTrainConfig c;
  c.data = kSmallText;
  c.layers = 2;
  c.d_model = 64;
  c.heads = 4;
  c.context = 32;
  c.batch = 16;
  c.steps = 300;
  c.warmup = 20;
  c.lr = 3e-3;
  c.eval_every = 300;
  c.eval_batches = 8;
  c.norm = norm;
  c.bits = bits;
  c.verbose = false;
  c.threads = 1;
  return c;
}

// Validation loss after 300 steps (nats/char): a unigram model of this text scores 3.51 and a
// smoothed bigram model 2.74 on the validation split. Measured on AMD EPYC Zen 5, seeds 1-3: fp32
// 2.538 / 2.527 / 2.559, 6-bit 2.575 / 2.575 / 2.525; thresholds 0.04 above the highest.
TEST_F(TrainerTest, GptLearnsSmallTextInFp32And6Bit) {
  const auto fp32 = train_gpt(small_gpt(0, "l2"));
  const auto int6 = train_gpt(small_gpt(6, "l1"));
  ASSERT_EQ(fp32.size(), 1u);
  ASSERT_EQ(int6.size(), 1u);
  EXPECT_LT(fp32.back().val_loss, 2.60);
  EXPECT_LT(int6.back().val_loss, 2.615);
}

TEST_F(TrainerTest, GptResumeIsBitExactAndSamples) {
  GPTTrainConfig c = small_gpt(6, "l1");
  c.steps = 16;
  c.warmup = 4;
  c.eval_every = 8;
  c.eval_batches = 2;
  c.checkpoint = path("straight.safetensors");
  train_gpt(c);
  c.checkpoint = path("interrupted.safetensors");
  c.stop_after = 8;
  train_gpt(c);
  c.stop_after = 0;
  c.resume = c.checkpoint;
  const auto resumed = train_gpt(c);
  ASSERT_EQ(resumed.size(), 1u);
  EXPECT_EQ(resumed.front().step, 16);
  const io::TrainingCheckpoint a = io::load_checkpoint(path("straight.safetensors"));
  const io::TrainingCheckpoint b = io::load_checkpoint(path("interrupted.safetensors"));
  expect_same_tensors(a.model, b.model);
  expect_same_tensors(a.optimizer, b.optimizer);
  EXPECT_EQ(a.generators.at("data"), b.generators.at("data"));

  SampleOptions s;
  s.prompt = "the ";
  s.length = 40;
  const std::string text = sample_gpt(path("straight.safetensors"), s);
  const auto vocab = data::CharVocab::from_string(a.info.at("vocab"));
  EXPECT_EQ(vocab.encode(text).size(), 40u);  // every sampled character is in the vocabulary
  EXPECT_EQ(text, sample_gpt(path("straight.safetensors"), s));  // seeded
}

// The precision flags are read back from the checkpoint: a model with per-feature ShiftQuant
// activations ([16, in] observer histories), Hadamard-rotated Linear inputs, 8-bit attention and
// 6-bit gradients samples again.
TEST_F(TrainerTest, GptPrecisionFlagsRoundTripThroughTheCheckpoint) {
  GPTTrainConfig c = small_gpt(4, "l1");
  c.steps = 6;
  c.warmup = 2;
  c.eval_every = 6;
  c.eval_batches = 1;
  c.act_quant = "shiftquant";
  c.act_clip = "mse";
  c.act_rotation = "hadamard";
  c.weight_quant = "per-channel";
  c.attn_bits = 8;
  c.grad_bits = 6;
  c.act_scaling.history = 8;  // the observers' shape: [8, d_model]
  c.checkpoint = path("flags.safetensors");
  train_gpt(c);
  const io::TrainingCheckpoint ckpt = io::load_checkpoint(path("flags.safetensors"));
  EXPECT_EQ(ckpt.model.at(std::string("blocks.0.fc.") + nn::kInputHistoryBuffer).shape(), (Shape{8, c.d_model}));
  EXPECT_NE(ckpt.info.at("config").find("act_quant=shiftquant"), std::string::npos);
  EXPECT_NE(ckpt.info.at("config").find("act_rotation=hadamard"), std::string::npos);
  EXPECT_EQ(ckpt.info.at("act_rotation"), "hadamard");
  EXPECT_NE(ckpt.info.at("config").find("weight_quant=per-channel"), std::string::npos);
  EXPECT_EQ(ckpt.info.at("weight_quant"), "per-channel");
  // The sampler rebuilds the model with the same precision.
  const GPTTrainConfig read = gpt_model_config(path("flags.safetensors"));
  EXPECT_EQ(read.qconfig().str(), c.qconfig().str());
  EXPECT_EQ(read.precision(), c.precision());
  EXPECT_NE(read.precision().find("weights: per-channel 4-bit"), std::string::npos) << read.precision();
  EXPECT_EQ(read.attn_bits, c.attn_bits);
  SampleOptions s;
  s.prompt = "the ";
  s.length = 10;
  EXPECT_EQ(data::CharVocab::from_string(ckpt.info.at("vocab")).encode(sample_gpt(path("flags.safetensors"), s)).size(), 10u);
  c.attn_bits = 1;
  EXPECT_THROW(c.validate(), UsageError);
  c.attn_bits = 0;
  c.act_quant = "per-row";
  EXPECT_THROW(c.validate(), UsageError);
  c.act_quant = "per-token";
  EXPECT_NO_THROW(c.validate());
  EXPECT_NE(c.precision().find("(Linear inputs: a float scale per row, MSE-clipped, Hadamard-rotated)"), std::string::npos)
      << c.precision();
  EXPECT_NE(c.fingerprint().find("act_quant=per-token"), std::string::npos);
  c.act_quant = "per-token-blocks";
  EXPECT_NO_THROW(c.validate());
  EXPECT_EQ(c.qconfig().linear_input_groups, quant::LinearInputGroups::row_blocks);
  EXPECT_NE(c.precision().find("(Linear inputs: a float scale per row, multipliers per 16 features, MSE-chosen, Hadamard-rotated)"),
            std::string::npos)
      << c.precision();
  c.act_rotation = "givens";
  EXPECT_THROW(c.validate(), UsageError);
  c.act_rotation = "none";
  c.weight_quant = "per-tensor";
  EXPECT_THROW(c.validate(), UsageError);
}

TEST_F(TrainerTest, GptMissingCorpusNamesThePrepareScript) {
  GPTTrainConfig c = small_gpt(0, "l2");
  c.data = path("kjv.txt");
  try {
    train_gpt(c);
    FAIL() << "expected IOError";
  } catch (const IOError& e) {
    EXPECT_NE(std::string(e.what()).find("prepare-kjv.sh"), std::string::npos) << e.what();
  }
}

// A future token never influences an earlier output (fp32 model: exact).
TEST(GptModel, CausalMaskHidesTheFuture) {
  Generator gen(3);
  GPT model({11, 16, 2, 32, 4, "l1", false}, gen);
  model.eval();
  NoGradGuard no_grad;
  std::vector<std::int32_t> tokens = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0, 1};
  const Tensor a = model(Tensor::from_vector(tokens, {1, 12}));
  tokens[8] = 3;
  const Tensor b = model(Tensor::from_vector(tokens, {1, 12}));
  const std::int64_t v = 11;
  for (std::int64_t i = 0; i < 8 * v; ++i) ASSERT_EQ(a.data<float>()[i], b.data<float>()[i]) << i;
  bool later_changed = false;
  for (std::int64_t i = 8 * v; i < 12 * v; ++i) later_changed |= a.data<float>()[i] != b.data<float>()[i];
  EXPECT_TRUE(later_changed);
}


// ---- Delayed activation scaling on the example models ----

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.raw_bytes(), b.raw_bytes(), a.nbytes()) == 0;
}

// Row i of x (as a batch of one).
Tensor row(const Tensor& x, std::int64_t i) { return slice(x, 0, i, i + 1); }

// A 4-bit ResNet-8 with L1 BatchNorm (the default recipe), after a few SGD steps on random images.
// shiftquant_activations: the best measured configuration's ShiftQuant activations with MSE-chosen
// exponents (--act-quant shiftquant --act-clip mse --weight-clip mse).
std::shared_ptr<ResNet> trained_resnet(quant::ActivationScaling scaling, std::uint64_t seed = 11,
                                       bool shiftquant_activations = false) {
  Generator gen(seed);
  auto model = std::make_shared<ResNet>(ResNetOptions{8, 1, 10, 4, "l1"}, gen);
  quant::QConfig config = shiftquant_activations ? make_qconfig(4, 0, "shiftquant", 8, 8, "auto", "mse", "shiftquant", "mse")
                                                 : quant::QConfig::bits(4);
  config.activation_scaling = scaling;
  nn::quantize_model(*model, config, seed);
  optim::SGD sgd(model->named_parameters(), optim::SGDOptions(0.05).momentum(0.9));
  model->train();
  for (int step = 0; step < 4; ++step) {
    const Tensor x = Tensor::randn({16, 1, 12, 12}, gen);
    std::vector<std::int32_t> y(16);
    for (std::size_t i = 0; i < y.size(); ++i) y[i] = static_cast<std::int32_t>((i * 7 + step) % 10);
    sgd.zero_grad();
    cross_entropy((*model)(x), Tensor::from_vector(y, {16})).backward();
    sgd.step();
  }
  model->eval();
  return model;
}

// In eval a sample's logits do not depend on its batch: batch 1 and batch 500 agree bit for bit.
// With the batch's own ranges (ActivationScaling::current) they do not, which this test would see.
TEST(DelayedScalingModel, ResNetEvalIsIndependentOfTheBatch) {
  Generator gen(4);
  const Tensor x = Tensor::randn({500, 1, 12, 12}, gen);
  std::shared_ptr<ResNet> model = trained_resnet(quant::ActivationScaling::delayed);
  std::shared_ptr<ResNet> batch_ranges = trained_resnet(quant::ActivationScaling::current);
  std::shared_ptr<ResNet> shiftquant_acts = trained_resnet(quant::ActivationScaling::delayed, 11, true);
  NoGradGuard no_grad;
  const Tensor logits = (*model)(x);
  for (std::int64_t i : {0, 1, 137, 499})
    EXPECT_TRUE(same_bytes((*model)(row(x, i)), row(logits, i))) << "sample " << i;
  for (const nn::QuantizationReport& r : nn::quantization_report(*model)) {
    EXPECT_TRUE(r.observed) << r.name;
    EXPECT_EQ(r.observed_calls, 4u) << r.name;
  }
  // ShiftQuant activations: the convolutions' groups are per sample and channel, exponents taken
  // against the observed base; the 8-bit classifier has no groups (S = 0).
  const Tensor logits_sq = (*shiftquant_acts)(x);
  for (std::int64_t i : {0, 1, 137, 499})
    EXPECT_TRUE(same_bytes((*shiftquant_acts)(row(x, i)), row(logits_sq, i))) << "ShiftQuant activations, sample " << i;

  const Tensor logits_c = (*batch_ranges)(x);
  bool any_differs = false;
  for (std::int64_t i : {0, 1, 137, 499}) any_differs |= !same_bytes((*batch_ranges)(row(x, i)), row(logits_c, i));
  EXPECT_TRUE(any_differs);
}

// The observed ranges are checkpointed with the model: a restored model evaluates bit for bit the
// same. A checkpoint without them still loads and names them as absent.
TEST_F(TrainerTest, ObservedRangesRoundTripThroughACheckpoint) {
  std::shared_ptr<ResNet> model = trained_resnet(quant::ActivationScaling::delayed);
  io::save_checkpoint(path("ranges.safetensors"), *model, nullptr);
  std::shared_ptr<ResNet> fresh = trained_resnet(quant::ActivationScaling::delayed, 12);
  const io::TrainingCheckpoint ckpt = io::load_checkpoint(path("ranges.safetensors"));
  std::size_t range_tensors = 0;
  for (const auto& [name, t] : ckpt.model)
    range_tensors += name.ends_with(nn::kInputHistoryBuffer) || name.ends_with(nn::kInputObserverBuffer);
  EXPECT_EQ(range_tensors, 2u * (10 + 9));  // 10 GEMM layers (9 convs + fc) and 9 L1 BatchNorms
  EXPECT_TRUE(io::restore(ckpt, "ranges", *fresh, nullptr).empty());
  Generator gen(6);
  const Tensor x = Tensor::randn({7, 1, 12, 12}, gen);
  {
    NoGradGuard no_grad;
    EXPECT_TRUE(same_bytes((*model)(x), (*fresh)(x)));
  }

  io::TrainingCheckpoint old = ckpt;
  std::erase_if(old.model, [](const auto& kv) {
    return kv.first.ends_with(nn::kInputHistoryBuffer) || kv.first.ends_with(nn::kInputObserverBuffer);
  });
  std::shared_ptr<ResNet> from_old = trained_resnet(quant::ActivationScaling::delayed, 12);
  EXPECT_EQ(io::restore(old, "old", *from_old, nullptr).size(), range_tensors);
}

// GPT::quantize re-quantizes block 0's qkv after quantize_model registered its buffers: the
// checkpointed history must be the observer the layer uses (one range per input feature here).
TEST(DelayedScalingModel, GptCheckpointsTheObserverItQuantizesWith) {
  Generator gen(3);
  GPT model({11, 16, 2, 32, 4, "l1", false}, gen);
  model.quantize(make_qconfig(4, 0, "shiftquant", 8, 8, "symmetric", "none", "shiftquant"), 5);
  const std::map<std::string, Tensor> state = model.state_dict();
  const Tensor& history = state.at(std::string("blocks.0.attn.qkv.") + nn::kInputHistoryBuffer);
  EXPECT_EQ(history.shape(), (Shape{16, 32}));  // d_model = 32
  model.train();
  std::vector<std::int32_t> tokens = {1, 2, 3, 4};
  (void)model(Tensor::from_vector(tokens, {1, 4}));
  float recorded = 0.0f;
  for (std::int64_t k = 0; k < 32; ++k) recorded = std::max(recorded, history.data<float>()[k]);
  EXPECT_GT(recorded, 0.0f);  // the training call's feature ranges landed in the saved tensor
}

// The quantized GPT never lets a later token change an earlier output, in a training forward (from
// the same state) and in eval.
// With the batch's own ranges (ActivationScaling::current) a shared per-tensor scale leaks the future.
// ShiftQuant activations (groups over the Linear input features) observe each feature's range; with
// the batch's own ranges their column maxima leak the future too.
TEST(DelayedScalingModel, QuantizedGptIsCausal) {
  struct Case {
    int bits;
    quant::ActivationScaling scaling;
    bool shiftquant_acts;
    quant::LinearInputRotation rotation = quant::LinearInputRotation::none;
    quant::LinearInputGroups groups = quant::LinearInputGroups::features;
  };
  const auto hadamard = quant::LinearInputRotation::hadamard;
  for (const auto& [bits, scaling, shiftquant_acts, rotation, groups] :
       {Case{4, quant::ActivationScaling::delayed, false}, Case{6, quant::ActivationScaling::delayed, false},
        Case{4, quant::ActivationScaling::delayed, true}, Case{4, quant::ActivationScaling::current, false},
        Case{4, quant::ActivationScaling::current, true}, Case{4, quant::ActivationScaling::delayed, false, hadamard},
        Case{4, quant::ActivationScaling::current, false, hadamard},
        Case{4, quant::ActivationScaling::delayed, false, hadamard, quant::LinearInputGroups::row_scales}}) {
    const bool delayed = scaling == quant::ActivationScaling::delayed;
    Generator gen(3);
    GPT model({11, 16, 2, 32, 4, "l1", false}, gen);
    quant::QConfig config = make_qconfig(bits, 0, "shiftquant", 8, 8, shiftquant_acts ? "symmetric" : "auto", "none",
                                         shiftquant_acts ? "shiftquant" : "per-tensor");
    config.activation_scaling = scaling;
    config.linear_input_rotation = rotation;  // mixes the features of one token only
    config.linear_input_groups = groups;      // row_scales: a token's scale from that token alone
    model.quantize(config, 5);
    optim::SGD sgd(model.named_parameters(), optim::SGDOptions(0.05));
    std::vector<std::int32_t> tokens = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0, 1};
    std::vector<std::int32_t> targets(tokens.begin() + 1, tokens.end());
    targets.push_back(2);
    model.train();
    for (int step = 0; step < 2; ++step) {  // observes ranges
      sgd.zero_grad();
      cross_entropy(reshape(model(Tensor::from_vector(tokens, {1, 12})), {12, 11}), Tensor::from_vector(targets, {12}))
          .backward();
      sgd.step();
    }
    std::vector<std::int32_t> changed = tokens;
    changed[8] = 3;
    changed[11] = 9;
    for (bool training : {true, false}) {
      model.train(training);
      const std::map<std::string, Tensor> state = model.state_dict();
      std::map<std::string, Tensor> saved;
      for (const auto& [name, t] : state) saved[name] = t.clone();
      const Tensor a = model(Tensor::from_vector(tokens, {1, 12}));
      model.load_state_dict(saved);  // a training forward updates the observed ranges
      const Tensor b = model(Tensor::from_vector(changed, {1, 12}));
      bool earlier_changed = false;
      for (std::int64_t i = 0; i < 8 * 11; ++i) earlier_changed |= a.data<float>()[i] != b.data<float>()[i];
      EXPECT_EQ(earlier_changed, !delayed) << bits << "-bit, ShiftQuant activations " << shiftquant_acts
                                           << ", rotated " << (rotation == hadamard) << ", row scales "
                                           << (groups == quant::LinearInputGroups::row_scales) << ", training " << training;
      bool later_changed = false;
      for (std::int64_t i = 8 * 11; i < 12 * 11; ++i) later_changed |= a.data<float>()[i] != b.data<float>()[i];
      EXPECT_TRUE(later_changed);
    }
  }
}

}  // namespace
}  // namespace shiftq::examples
