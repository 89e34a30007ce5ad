// Modules: parameter/buffer naming, options, train/eval, state_dict round trips, initialization,
// and gradient checks of each layer w.r.t. its input and its parameters.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "testing/gradcheck.hpp"

namespace shiftq {
namespace {
using testing::make_input;
using Inputs = std::vector<Tensor>;

std::vector<std::string> names_of(const nn::NamedTensors& named) {
  std::vector<std::string> out;
  for (const auto& [name, t] : named) out.push_back(name);
  return out;
}

std::map<std::string, Shape> shapes_of(const nn::NamedTensors& named) {
  std::map<std::string, Shape> out;
  for (const auto& [name, t] : named) out[name] = t.shape();
  return out;
}

// A deep copy of every parameter and buffer, to check that a module was (not) modified.
std::map<std::string, std::vector<float>> snapshot(const nn::Module& m) {
  std::map<std::string, std::vector<float>> out;
  for (const auto& [name, t] : m.state_dict()) out[name] = t.to_vector<float>();
  return out;
}

// Conv -> BatchNorm -> ReLU -> Flatten -> Linear on [N, 2, 5, 5] inputs.
std::shared_ptr<nn::Sequential> make_cnn(std::uint64_t seed) {
  Generator gen(seed);
  auto m = std::make_shared<nn::Sequential>();
  m->push_back(std::make_shared<nn::Conv2d>(nn::Conv2dOptions(2, 4, 3).padding(1), gen));
  m->push_back(std::make_shared<nn::BatchNorm2d>(nn::BatchNormOptions(4)));
  m->push_back(std::make_shared<nn::ReLU>());
  m->push_back(std::make_shared<nn::Flatten>());
  m->push_back(std::make_shared<nn::Linear>(nn::LinearOptions(4 * 5 * 5, 3), gen));
  return m;
}

// ---- structure ----

TEST(Modules, LinearParameters) {
  Generator gen(1);
  nn::Linear lin(nn::LinearOptions(4, 3), gen);
  EXPECT_EQ(lin.type_name(), "Linear");
  EXPECT_EQ(names_of(lin.named_parameters()), (std::vector<std::string>{"weight", "bias"}));
  EXPECT_EQ(lin.weight.shape(), (Shape{3, 4}));
  EXPECT_EQ(lin.bias.shape(), (Shape{3}));
  EXPECT_TRUE(lin.weight.requires_grad());
  EXPECT_TRUE(lin.bias.requires_grad());
  EXPECT_EQ(lin.weight.name(), "weight");
  EXPECT_EQ(lin.num_parameters(), 15);
  EXPECT_TRUE(lin.named_buffers().empty());
  // The registered tensors are the public members (same storage).
  EXPECT_TRUE(lin.named_parameters()[0].second.shares_storage(lin.weight));

  nn::Linear no_bias(nn::LinearOptions(4, 3).bias(false), gen);
  EXPECT_FALSE(no_bias.bias.defined());
  EXPECT_EQ(names_of(no_bias.named_parameters()), (std::vector<std::string>{"weight"}));
  EXPECT_EQ(no_bias.num_parameters(), 12);
  Tensor y = no_bias(Tensor::ones({2, 4}));
  EXPECT_EQ(y.shape(), (Shape{2, 3}));
  // Without bias, a zero input gives a zero output.
  for (float v : no_bias(Tensor::zeros({1, 4})).to_vector<float>()) EXPECT_EQ(v, 0.0f);
}

TEST(Modules, Conv2dParameters) {
  Generator gen(2);
  nn::Conv2d conv(nn::Conv2dOptions(3, 8, 3).stride(2).padding(1), gen);
  EXPECT_EQ(shapes_of(conv.named_parameters()),
            (std::map<std::string, Shape>{{"weight", {8, 3, 3, 3}}, {"bias", {8}}}));
  EXPECT_EQ(conv.num_parameters(), 8 * 27 + 8);
  EXPECT_EQ(conv.options().stride(), 2);
  EXPECT_EQ(conv(Tensor::zeros({2, 3, 9, 9})).shape(), (Shape{2, 8, 5, 5}));
  nn::Conv2d no_bias(nn::Conv2dOptions(3, 8, 1).bias(false), gen);
  EXPECT_EQ(names_of(no_bias.named_parameters()), (std::vector<std::string>{"weight"}));
}

TEST(Modules, BatchNormParametersAndBuffers) {
  nn::BatchNorm2d bn(nn::BatchNormOptions(4));
  EXPECT_EQ(names_of(bn.named_parameters()), (std::vector<std::string>{"weight", "bias"}));
  EXPECT_EQ(names_of(bn.named_buffers()), (std::vector<std::string>{"running_mean", "running_var"}));
  EXPECT_EQ(bn.weight.to_vector<float>(), std::vector<float>(4, 1.0f));
  EXPECT_EQ(bn.bias.to_vector<float>(), std::vector<float>(4, 0.0f));
  EXPECT_EQ(bn.running_mean.to_vector<float>(), std::vector<float>(4, 0.0f));
  EXPECT_EQ(bn.running_var.to_vector<float>(), std::vector<float>(4, 1.0f));
  EXPECT_FALSE(bn.running_mean.requires_grad());
  nn::BatchNorm2d plain(nn::BatchNormOptions(4).affine(false));
  EXPECT_TRUE(plain.named_parameters().empty());
  EXPECT_EQ(plain.named_buffers().size(), 2u);
}

TEST(Modules, BatchNormModuleUpdatesRunningStatsOnlyInTraining) {
  Generator gen(3);
  nn::BatchNorm2d bn(nn::BatchNormOptions(2).momentum(0.5f));
  Tensor x = add(Tensor::randn({8, 2, 3, 3}, gen), 4.0f);
  bn(x);
  for (float m : bn.running_mean.to_vector<float>()) EXPECT_NEAR(m, 2.0f, 0.5f);  // 0.5 * ~4
  bn.eval();
  const auto before = snapshot(bn);
  Tensor y = bn(x);
  EXPECT_EQ(snapshot(bn), before);
  // Eval output uses the running statistics: y = (x - rm) / sqrt(rv + eps).
  const float rm = bn.running_mean.at({0}), rv = bn.running_var.at({0});
  EXPECT_NEAR(y.at({1, 0, 2, 1}), (x.at({1, 0, 2, 1}) - rm) / std::sqrt(rv + 1e-5f), 1e-5f);
}

TEST(Modules, LayerNormAndEmbeddingParameters) {
  nn::LayerNorm ln(nn::LayerNormOptions(6));
  EXPECT_EQ(shapes_of(ln.named_parameters()), (std::map<std::string, Shape>{{"weight", {6}}, {"bias", {6}}}));
  nn::LayerNorm plain(nn::LayerNormOptions(6).elementwise_affine(false));
  EXPECT_TRUE(plain.named_parameters().empty());
  EXPECT_EQ(plain(Tensor::ones({2, 6})).shape(), (Shape{2, 6}));

  Generator gen(4);
  nn::Embedding emb(nn::EmbeddingOptions(10, 4), gen);
  EXPECT_EQ(shapes_of(emb.named_parameters()), (std::map<std::string, Shape>{{"weight", {10, 4}}}));
  Tensor idx = Tensor::from_vector(std::vector<std::int32_t>{9, 0, 9}, {3});
  Tensor out = emb(idx);
  EXPECT_EQ(out.shape(), (Shape{3, 4}));
  for (std::int64_t d = 0; d < 4; ++d) {
    EXPECT_EQ(out.at({0, d}), emb.weight.at({9, d}));
    EXPECT_EQ(out.at({1, d}), emb.weight.at({0, d}));
  }
}

TEST(Modules, SequentialNamesParametersByIndex) {
  auto cnn = make_cnn(1);
  EXPECT_EQ(cnn->size(), 5u);
  EXPECT_EQ(names_of(cnn->named_parameters()),
            (std::vector<std::string>{"0.weight", "0.bias", "1.weight", "1.bias", "4.weight", "4.bias"}));
  EXPECT_EQ(names_of(cnn->named_buffers()), (std::vector<std::string>{"1.running_mean", "1.running_var"}));
  EXPECT_EQ(shapes_of(cnn->named_parameters())["4.weight"], (Shape{3, 100}));
  EXPECT_TRUE(cnn->named_parameters(/*recurse=*/false).empty());
  EXPECT_EQ(cnn->parameters().size(), 6u);
  EXPECT_EQ(cnn->num_parameters(), (4 * 2 * 9 + 4) + (4 + 4) + (3 * 100 + 3));
  ASSERT_EQ(cnn->named_children().size(), 5u);
  EXPECT_EQ(cnn->named_children()[1].first, "1");
  EXPECT_EQ(cnn->named_children()[1].second->type_name(), "BatchNorm2d");
  EXPECT_EQ(cnn->forward(Tensor::zeros({2, 2, 5, 5})).shape(), (Shape{2, 3}));

  // Nested sequentials get nested dotted names.
  Generator gen(5);
  auto inner = std::make_shared<nn::Sequential>();
  inner->push_back(std::make_shared<nn::Linear>(nn::LinearOptions(2, 2), gen));
  nn::Sequential outer{std::make_shared<nn::Linear>(nn::LinearOptions(3, 2), gen), inner};
  EXPECT_EQ(names_of(outer.named_parameters()),
            (std::vector<std::string>{"0.weight", "0.bias", "1.0.weight", "1.0.bias"}));
}

TEST(Modules, TrainEvalRecursesIntoChildren) {
  Generator gen(6);
  auto inner = std::make_shared<nn::Sequential>();
  auto drop = inner->push_back(std::make_shared<nn::Dropout>(0.5f, gen));
  auto bn = inner->push_back(std::make_shared<nn::BatchNorm2d>(nn::BatchNormOptions(2)));
  nn::Sequential outer;
  outer.push_back(inner);
  EXPECT_TRUE(outer.is_training() && inner->is_training() && drop->is_training() && bn->is_training());
  outer.eval();
  EXPECT_FALSE(outer.is_training());
  EXPECT_FALSE(inner->is_training());
  EXPECT_FALSE(drop->is_training());
  EXPECT_FALSE(bn->is_training());
  Tensor x = Tensor::ones({100});
  EXPECT_EQ(drop->forward(x).to_vector<float>(), x.to_vector<float>());  // identity in eval
  outer.train();
  EXPECT_TRUE(drop->is_training() && bn->is_training());
  EXPECT_NE(drop->forward(x).to_vector<float>(), x.to_vector<float>());
  outer.train(false);
  EXPECT_FALSE(bn->is_training());
}

TEST(Modules, ZeroGradDropsParameterGradients) {
  Generator gen(7);
  nn::Linear lin(nn::LinearOptions(3, 2), gen);
  sum(lin(Tensor::ones({4, 3}))).backward();
  ASSERT_TRUE(lin.weight.grad().defined());
  ASSERT_TRUE(lin.bias.grad().defined());
  EXPECT_EQ(lin.bias.grad().to_vector<float>(), (std::vector<float>{4, 4}));
  lin.zero_grad();
  EXPECT_FALSE(lin.weight.grad().defined());
  EXPECT_FALSE(lin.bias.grad().defined());
}

// ---- state_dict ----

TEST(StateDict, ContainsParametersAndBuffersSharingStorage) {
  auto cnn = make_cnn(1);
  const auto sd = cnn->state_dict();
  std::vector<std::string> keys;
  for (const auto& [k, v] : sd) keys.push_back(k);
  EXPECT_EQ(keys, (std::vector<std::string>{"0.bias", "0.weight", "1.bias", "1.running_mean", "1.running_var",
                                            "1.weight", "4.bias", "4.weight"}));
  auto bn = std::static_pointer_cast<nn::BatchNorm2d>(cnn->named_children()[1].second);
  EXPECT_TRUE(sd.at("1.running_var").shares_storage(bn->running_var));
}

TEST(StateDict, RoundTripIntoADifferentlySeededModel) {
  auto a = make_cnn(1), b = make_cnn(2);
  Generator gen(10);
  for (int i = 0; i < 3; ++i) a->forward(Tensor::randn({4, 2, 5, 5}, gen));  // moves BN running stats
  a->eval();
  b->eval();
  Tensor x = Tensor::randn({3, 2, 5, 5}, gen);
  EXPECT_NE(a->forward(x).to_vector<float>(), b->forward(x).to_vector<float>());
  b->load_state_dict(a->state_dict());
  EXPECT_EQ(snapshot(*b), snapshot(*a));
  EXPECT_EQ(a->forward(x).to_vector<float>(), b->forward(x).to_vector<float>());
  // Loading copies values: the models do not share storage afterwards.
  EXPECT_FALSE(b->state_dict().at("0.weight").shares_storage(a->state_dict().at("0.weight")));
  a->state_dict().at("0.weight").fill_(0.0f);
  EXPECT_NE(snapshot(*b), snapshot(*a));
}

TEST(StateDict, WrongShapeThrowsAndLeavesTheModelUnchanged) {
  auto a = make_cnn(1), b = make_cnn(2);
  auto sd = a->state_dict();
  sd["4.weight"] = Tensor::zeros({3, 10});  // sorted last: every other key would be copied first
  const auto before = snapshot(*b);
  EXPECT_THROW(b->load_state_dict(sd), ShapeError);
  EXPECT_EQ(snapshot(*b), before);
  EXPECT_THROW(b->load_state_dict(sd, /*strict=*/false), ShapeError);
  EXPECT_EQ(snapshot(*b), before);
  auto wrong_dtype = a->state_dict();
  wrong_dtype["4.bias"] = Tensor::zeros({3}, DType::s32);
  EXPECT_THROW(b->load_state_dict(wrong_dtype), ShapeError);
  EXPECT_EQ(snapshot(*b), before);
}

TEST(StateDict, MissingKey) {
  auto a = make_cnn(1), b = make_cnn(2);
  auto sd = a->state_dict();
  sd.erase("1.running_var");
  const auto before = snapshot(*b);
  EXPECT_THROW(b->load_state_dict(sd), ValueError);
  EXPECT_EQ(snapshot(*b), before);
  // Non-strict: everything present is loaded, the missing entry keeps its value.
  b->load_state_dict(sd, /*strict=*/false);
  const auto after = snapshot(*b), source = snapshot(*a);
  for (const auto& [name, values] : after) {
    if (name == "1.running_var")
      EXPECT_EQ(values, before.at(name));
    else
      EXPECT_EQ(values, source.at(name)) << name;
  }
}

TEST(StateDict, UnexpectedKey) {
  auto a = make_cnn(1), b = make_cnn(2);
  auto sd = a->state_dict();
  sd["5.weight"] = Tensor::zeros({2});
  const auto before = snapshot(*b);
  EXPECT_THROW(b->load_state_dict(sd), ValueError);
  EXPECT_EQ(snapshot(*b), before);
  b->load_state_dict(sd, /*strict=*/false);
  EXPECT_EQ(snapshot(*b), snapshot(*a));
}

// ---- initialization ----

TEST(Init, SameSeedIdenticalDifferentSeedDifferent) {
  Generator g1(11), g2(11), g3(12);
  nn::Linear a(nn::LinearOptions(8, 5), g1), b(nn::LinearOptions(8, 5), g2), c(nn::LinearOptions(8, 5), g3);
  EXPECT_EQ(a.weight.to_vector<float>(), b.weight.to_vector<float>());
  EXPECT_EQ(a.bias.to_vector<float>(), b.bias.to_vector<float>());
  EXPECT_NE(a.weight.to_vector<float>(), c.weight.to_vector<float>());
  EXPECT_EQ(snapshot(*make_cnn(3)), snapshot(*make_cnn(3)));
  EXPECT_NE(snapshot(*make_cnn(3)), snapshot(*make_cnn(4)));
}

TEST(Init, LinearAndConvDefaultBounds) {
  Generator gen(13);
  nn::Linear lin(nn::LinearOptions(100, 50), gen);
  const float bound = 1.0f / std::sqrt(100.0f);
  float max_w = 0.0f;
  for (float w : lin.weight.to_vector<float>()) {
    ASSERT_LE(std::abs(w), bound);
    max_w = std::max(max_w, std::abs(w));
  }
  EXPECT_GT(max_w, 0.95f * bound);  // the range is really used (5000 draws)
  for (float b : lin.bias.to_vector<float>()) ASSERT_LE(std::abs(b), bound);

  nn::Conv2d conv(nn::Conv2dOptions(4, 16, 3), gen);
  const float conv_bound = 1.0f / std::sqrt(4.0f * 9.0f);
  float max_c = 0.0f;
  for (float w : conv.weight.to_vector<float>()) {
    ASSERT_LE(std::abs(w), conv_bound);
    max_c = std::max(max_c, std::abs(w));
  }
  EXPECT_GT(max_c, 0.9f * conv_bound);
}

double sample_std(const Tensor& t, double* mean_out = nullptr) {
  double s = 0.0, ss = 0.0;
  for (float v : t.to_vector<float>()) s += v, ss += static_cast<double>(v) * v;
  const double n = static_cast<double>(t.numel()), mean = s / n;
  if (mean_out) *mean_out = mean;
  return std::sqrt(ss / n - mean * mean);
}

TEST(Init, KaimingNormalStd) {
  Generator gen(14);
  Tensor w = Tensor::empty({512, 256});
  nn::init::kaiming_normal_(w, gen);
  double mean = 0.0;
  const double std = sample_std(w, &mean);
  EXPECT_NEAR(std, std::sqrt(2.0 / 256), 0.015 * std::sqrt(2.0 / 256));
  EXPECT_NEAR(mean, 0.0, 5.0 * std::sqrt(2.0 / 256) / std::sqrt(512.0 * 256));
  nn::init::kaiming_normal_(w, gen, 0.0f, nn::init::FanMode::fan_out);
  EXPECT_NEAR(sample_std(w), std::sqrt(2.0 / 512), 0.015 * std::sqrt(2.0 / 512));
  nn::init::kaiming_normal_(w, gen, 1.0f);  // gain 1
  EXPECT_NEAR(sample_std(w), std::sqrt(1.0 / 256), 0.015 * std::sqrt(1.0 / 256));
  // Conv weights: fan_in = C * K * K.
  Tensor cw = Tensor::empty({64, 32, 3, 3});
  nn::init::kaiming_normal_(cw, gen);
  EXPECT_NEAR(sample_std(cw), std::sqrt(2.0 / (32 * 9)), 0.02 * std::sqrt(2.0 / (32 * 9)));
}

TEST(Init, FansXavierAndConstant) {
  EXPECT_EQ(nn::init::fans(Tensor::empty({8, 3, 3, 3})), (std::pair<std::int64_t, std::int64_t>{27, 72}));
  EXPECT_EQ(nn::init::fans(Tensor::empty({5, 7})), (std::pair<std::int64_t, std::int64_t>{7, 5}));
  EXPECT_THROW(nn::init::fans(Tensor::empty({5})), ShapeError);
  Generator gen(15);
  Tensor w = Tensor::empty({200, 300});
  nn::init::xavier_uniform_(w, gen);
  const float bound = std::sqrt(6.0f / 500.0f);
  float max_w = 0.0f;
  for (float v : w.to_vector<float>()) max_w = std::max(max_w, std::abs(v));
  EXPECT_LE(max_w, bound);
  EXPECT_GT(max_w, 0.99f * bound);
  nn::init::xavier_normal_(w, gen, 2.0f);
  EXPECT_NEAR(sample_std(w), 2.0 * std::sqrt(2.0 / 500), 0.02 * 2.0 * std::sqrt(2.0 / 500));
  nn::init::constant_(w, 0.25f);
  for (float v : w.to_vector<float>()) ASSERT_EQ(v, 0.25f);
  nn::init::normal_(w, 3.0f, 0.0f, gen);
  for (float v : w.to_vector<float>()) ASSERT_EQ(v, 3.0f);
  EXPECT_THROW(nn::init::normal_(w, 0.0f, -1.0f, gen), ValueError);
  EXPECT_THROW(nn::init::uniform_(w, 1.0f, 0.0f, gen), ValueError);
}

TEST(Init, EmbeddingStd) {
  Generator gen(16);
  nn::Embedding emb(nn::EmbeddingOptions(1000, 64).init_std(0.02f), gen);
  EXPECT_NEAR(sample_std(emb.weight), 0.02, 0.02 * 0.02);
}

// ---- options and errors ----

TEST(Modules, InvalidOptionsThrowValueError) {
  Generator gen(17);
  EXPECT_THROW(nn::Linear(nn::LinearOptions(0, 3), gen), ValueError);
  EXPECT_THROW(nn::Linear(nn::LinearOptions(3, 0), gen), ValueError);
  EXPECT_THROW(nn::Conv2d(nn::Conv2dOptions(3, 4, 0), gen), ValueError);
  EXPECT_THROW(nn::Conv2d(nn::Conv2dOptions(3, 4, 3).stride(0), gen), ValueError);
  EXPECT_THROW(nn::Conv2d(nn::Conv2dOptions(3, 4, 3).padding(-1), gen), ValueError);
  EXPECT_THROW(nn::BatchNorm2d(nn::BatchNormOptions(0)), ValueError);
  EXPECT_THROW(nn::BatchNorm2d(nn::BatchNormOptions(3).momentum(1.5f)), ValueError);
  EXPECT_THROW(nn::BatchNorm2d(nn::BatchNormOptions(3).eps(0.0f)), ValueError);
  EXPECT_THROW(nn::LayerNorm(nn::LayerNormOptions(0)), ValueError);
  EXPECT_THROW(nn::Embedding(nn::EmbeddingOptions(0, 4), gen), ValueError);
  EXPECT_THROW(nn::Dropout(1.5f, gen), ValueError);
  EXPECT_THROW(nn::Dropout(1.0f, gen), ValueError);
  EXPECT_THROW(nn::Dropout(-0.1f, gen), ValueError);
}

TEST(Modules, ForwardOfAModuleWithoutOneThrows) {
  nn::Module plain("Custom");
  try {
    plain(Tensor::ones({2}));
    ADD_FAILURE() << "Module::forward did not throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Custom"), std::string::npos) << e.what();
  }
}

class Registry : public nn::Module {
 public:
  Registry() : Module("Registry") {
    a = register_parameter("a", Tensor::ones({2}));
    frozen = register_parameter("frozen", Tensor::ones({3}), /*requires_grad=*/false);
    stat = register_buffer("stat", Tensor::zeros({2}, DType::s32));
  }
  void add_parameter(const std::string& name) { register_parameter(name, Tensor::ones({1})); }
  void add_buffer(const std::string& name) { register_buffer(name, Tensor::ones({1})); }
  Tensor a, frozen, stat;
};

TEST(Modules, RegistrationRules) {
  Registry r;
  EXPECT_TRUE(r.a.requires_grad());
  EXPECT_FALSE(r.frozen.requires_grad());
  EXPECT_EQ(r.num_parameters(), 5);
  EXPECT_THROW(r.add_parameter("a"), ValueError);
  EXPECT_THROW(r.add_parameter("stat"), ValueError);
  EXPECT_THROW(r.add_buffer("frozen"), ValueError);
  EXPECT_THROW(r.add_parameter("x.y"), ValueError);
  EXPECT_THROW(r.add_parameter(""), ValueError);
  EXPECT_NO_THROW(r.add_parameter("b"));
  EXPECT_EQ(r.num_parameters(), 6);
  // Integer buffers go into the state_dict and load back.
  auto sd = r.state_dict();
  EXPECT_EQ(sd.at("stat").dtype(), DType::s32);
  Registry other;
  other.add_parameter("b");
  sd.at("stat").data<std::int32_t>()[1] = 9;  // shares storage with r.stat
  other.load_state_dict(sd);
  EXPECT_EQ(other.stat.to_vector<std::int32_t>(), (std::vector<std::int32_t>{0, 9}));
}

// ---- gradient checks (input and parameters) ----

TEST(ModuleGradcheck, Linear) {
  Generator gen(20);
  nn::Linear lin(nn::LinearOptions(5, 3), gen);
  EXPECT_GRADCHECK([&](const Inputs& x) { return lin(x[0]); },
                   Inputs{make_input({4, 5}, gen), lin.weight, lin.bias});
}

TEST(ModuleGradcheck, Conv2dStride2Padding1) {
  Generator gen(21);
  nn::Conv2d conv(nn::Conv2dOptions(3, 4, 3).stride(2).padding(1), gen);
  EXPECT_GRADCHECK([&](const Inputs& x) { return conv(x[0]); },
                   Inputs{make_input({2, 3, 6, 5}, gen), conv.weight, conv.bias});
}

TEST(ModuleGradcheck, BatchNorm2dTraining) {
  Generator gen(22);
  nn::BatchNorm2d bn(nn::BatchNormOptions(3));
  bn.weight.copy_(Tensor::from_vector(std::vector<float>{0.5f, 1.2f, -0.8f}, {3}));
  bn.bias.copy_(Tensor::from_vector(std::vector<float>{0.1f, -0.3f, 0.2f}, {3}));
  ASSERT_TRUE(bn.is_training());
  EXPECT_GRADCHECK([&](const Inputs& x) { return bn(x[0]); },
                   Inputs{make_input({4, 3, 3, 2}, gen, -2.0f, 2.0f), bn.weight, bn.bias});
}

TEST(ModuleGradcheck, BatchNorm2dEval) {
  Generator gen(23);
  nn::BatchNorm2d bn(nn::BatchNormOptions(3));
  bn(Tensor::randn({4, 3, 3, 2}, gen));  // non-trivial running statistics
  bn.eval();
  EXPECT_GRADCHECK([&](const Inputs& x) { return bn(x[0]); },
                   Inputs{make_input({4, 3, 3, 2}, gen, -2.0f, 2.0f), bn.weight, bn.bias});
}

TEST(ModuleGradcheck, LayerNorm) {
  Generator gen(24);
  nn::LayerNorm ln(nn::LayerNormOptions(8));
  ln.weight.copy_(Tensor::uniform({8}, 0.5f, 1.5f, gen));
  ln.bias.copy_(Tensor::uniform({8}, -0.5f, 0.5f, gen));
  EXPECT_GRADCHECK([&](const Inputs& x) { return ln(x[0]); },
                   Inputs{make_input({2, 3, 8}, gen, -2.0f, 2.0f), ln.weight, ln.bias});
}

TEST(ModuleGradcheck, EmbeddingWithConstantIndices) {
  Generator gen(25);
  nn::Embedding emb(nn::EmbeddingOptions(6, 3), gen);
  Tensor idx = Tensor::from_vector(std::vector<std::int32_t>{1, 5, 1, 0, 2, 5}, {2, 3});
  EXPECT_GRADCHECK([&](const Inputs&) { return emb(idx); }, Inputs{emb.weight});
}

TEST(ModuleGradcheck, SequentialLinearGeluLinear) {
  Generator gen(26);
  nn::Sequential mlp{std::make_shared<nn::Linear>(nn::LinearOptions(4, 6), gen), std::make_shared<nn::GELU>(),
                     std::make_shared<nn::Linear>(nn::LinearOptions(6, 3), gen)};
  Inputs in{make_input({5, 4}, gen)};
  for (const Tensor& p : mlp.parameters()) in.push_back(p);
  ASSERT_EQ(in.size(), 5u);
  EXPECT_GRADCHECK([&](const Inputs& x) { return mlp(x[0]); }, in);
}

// ---- numerics monitor and gradient probe on a quantized MLP ----

struct QuantizedMlp {
  std::shared_ptr<nn::Sequential> model = std::make_shared<nn::Sequential>();
  Tensor x, y;
  explicit QuantizedMlp(int bits) {
    Generator gen(21);
    model->push_back(std::make_shared<nn::Linear>(nn::LinearOptions{12, 32}, gen));
    model->push_back(std::make_shared<nn::ReLU>());
    model->push_back(std::make_shared<nn::Linear>(nn::LinearOptions{32, 32}, gen));
    model->push_back(std::make_shared<nn::ReLU>());
    model->push_back(std::make_shared<nn::Linear>(nn::LinearOptions{32, 4}, gen));
    quant::QConfig config = quant::QConfig::bits(bits);
    config.first_last_bits = 0;
    nn::quantize_model(*model, config, 3);
    x = Tensor::randn({64, 12}, gen);
    std::vector<std::int32_t> labels(64);
    for (std::size_t i = 0; i < labels.size(); ++i) labels[i] = static_cast<std::int32_t>(i % 4);
    y = Tensor::from_vector(labels, {64});
  }
  Tensor loss() { return cross_entropy((*model)(x), y); }
};

TEST(NumericsMonitor, ReportsEveryQuantizedLayerOnlyWhileOn) {
  QuantizedMlp mlp(4);
  mlp.loss().backward();
  std::vector<nn::QuantizationReport> r = nn::quantization_report(*mlp.model);
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r[0].name, "0");
  EXPECT_EQ(r[2].type, "Linear");
  EXPECT_TRUE(r[1].delayed && r[1].observed);
  EXPECT_EQ(r[1].observed_calls, 1u);
  EXPECT_FALSE(r[1].numerics.has_value());  // the monitor is off

  nn::set_numerics_monitor(*mlp.model, true);
  mlp.loss().backward();
  mlp.loss().backward();
  r = nn::quantization_report(*mlp.model);
  ASSERT_TRUE(r[1].numerics.has_value());
  EXPECT_EQ(r[1].numerics->calls, 2);
  EXPECT_EQ(r[1].numerics->backward_calls, 2);
  EXPECT_EQ(r[1].numerics->input.elements, 2 * 64 * 32);
  EXPECT_EQ(r[1].numerics->input.bits, 4);
  EXPECT_GT(r[1].numerics->input.relative_error(), 0.0);
  EXPECT_EQ(r[0].numerics->backward_calls, 0);  // x needs no gradient: no dX product
  nn::reset_numerics(*mlp.model);
  EXPECT_EQ(nn::quantization_report(*mlp.model)[1].numerics->calls, 0);
  nn::set_numerics_monitor(*mlp.model, false);
  EXPECT_FALSE(nn::quantization_report(*mlp.model)[1].numerics.has_value());
}

// 8-bit gradients agree with fp32 closely, 4-bit less; the probe leaves the model as it found it.
TEST(GradientProbe, MeasuresAgreementAndRestoresTheModel) {
  for (int bits : {8, 4}) {
    QuantizedMlp mlp(bits);
    mlp.loss().backward();  // observes ranges
    mlp.model->zero_grad();
    const std::map<std::string, Tensor> before = mlp.model->state_dict();
    std::map<std::string, std::vector<std::uint8_t>> bytes;
    for (const auto& [name, t] : before) {
      const auto* p = static_cast<const std::uint8_t*>(t.raw_bytes());
      bytes[name].assign(p, p + t.nbytes());
    }
    const std::vector<nn::GradientAgreement> a = nn::probe_gradient_agreement(*mlp.model, [&] { return mlp.loss(); });
    ASSERT_EQ(a.size(), 6u);  // three weights and three biases
    for (const nn::GradientAgreement& g : a) {
      EXPECT_GT(g.cosine, bits == 8 ? 0.99 : 0.8) << bits << "-bit " << g.name;
      EXPECT_LE(g.cosine, 1.0 + 1e-9);
      EXPECT_GT(g.norm_ratio, 0.5);
      EXPECT_LT(g.norm_ratio, 2.0);
    }
    for (const auto& [name, t] : mlp.model->state_dict())
      EXPECT_EQ(std::memcmp(t.raw_bytes(), bytes[name].data(), t.nbytes()), 0) << name << " changed";
    for (const auto& [name, p] : mlp.model->named_parameters()) EXPECT_FALSE(p.grad().defined()) << name;
    for (const nn::QuantizationReport& r : nn::quantization_report(*mlp.model)) EXPECT_EQ(r.activation_bits, bits) << r.name;
  }
}

// ---- BatchNorm re-estimation ----

// Norm -> ReLU -> Flatten -> Linear on [N, 3, 4, 4] inputs: the norm sees the raw batch, so the
// statistics of one batch do not depend on what the model saw before.
template <class Norm, class Options>
std::shared_ptr<nn::Sequential> make_norm_first_model() {
  Generator gen(8);
  auto m = std::make_shared<nn::Sequential>();
  m->push_back(std::make_shared<Norm>(Options(3)));
  m->push_back(std::make_shared<nn::ReLU>());
  m->push_back(std::make_shared<nn::Flatten>());
  m->push_back(std::make_shared<nn::Linear>(nn::LinearOptions(3 * 4 * 4, 5), gen));
  return m;
}

// The norm's running mean followed by its running variance (or sigma).
std::vector<float> running_stats(const nn::Module& norm) {
  std::vector<float> out;
  for (const auto& [name, buffer] : norm.named_buffers()) {
    if (!name.starts_with("running_")) continue;
    const std::vector<float> v = buffer.to_vector<float>();
    out.insert(out.end(), v.begin(), v.end());
  }
  return out;
}

std::vector<Tensor> recalibration_batches() {
  Generator gen(9);
  std::vector<Tensor> batches;
  for (float shift : {1.0f, -2.0f, 5.0f}) batches.push_back(add(mul(Tensor::randn({6, 3, 4, 4}, gen), 1.5f), shift));
  return batches;
}

template <class Norm, class Options>
void check_recalibration_averages_the_batches(bool quantized) {
  const auto make = [&] {
    auto m = make_norm_first_model<Norm, Options>();
    if (quantized) nn::quantize_model(*m, quant::QConfig::bits(4), 5);
    return m;
  };
  const std::vector<Tensor> batches = recalibration_batches();
  // The running statistics of one batch alone: a fresh model whose norm takes it with momentum 1.
  std::vector<float> expected(6, 0.0f);
  for (const Tensor& batch : batches) {
    auto single = make();
    auto& norm = dynamic_cast<Norm&>(*single->named_children()[0].second);
    norm.set_momentum(1.0f);
    NoGradGuard no_grad;
    (*single)(batch);
    const std::vector<float> stats = running_stats(norm);
    for (std::size_t i = 0; i < stats.size(); ++i) expected[i] += stats[i] / static_cast<float>(batches.size());
  }

  auto model = make();
  auto& norm = dynamic_cast<Norm&>(*model->named_children()[0].second);
  {
    NoGradGuard no_grad;  // running statistics that re-estimation must discard
    for (int i = 0; i < 3; ++i) (*model)(mul(batches[0], 3.0f));
  }
  const std::uint64_t linear_calls = quantized ? nn::quantization_report(*model)[0].observed_calls : 0;
  model->eval();
  EXPECT_EQ(nn::recalibrate_batch_norm(*model, 3, [&](std::int64_t i) { (*model)(batches[static_cast<std::size_t>(i)]); }), 1);
  const std::vector<float> got = running_stats(norm);
  ASSERT_EQ(got.size(), expected.size());
  for (std::size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], expected[i], 1e-5f * (1.0f + std::abs(expected[i]))) << i;
  EXPECT_FALSE(model->is_training());
  EXPECT_EQ(norm.options().momentum(), 0.1f);
  // The quantized Linear recorded the three calls in its observed input range.
  if (quantized) {
    EXPECT_EQ(nn::quantization_report(*model)[0].observed_calls, linear_calls + 3);
  }
}

TEST(Recalibration, BatchNormRunningStatisticsAreTheMeanOfTheBatches) {
  check_recalibration_averages_the_batches<nn::BatchNorm2d, nn::BatchNormOptions>(false);
}

TEST(Recalibration, L1BatchNormRunningStatisticsAreTheMeanOfTheBatches) {
  check_recalibration_averages_the_batches<nn::L1BatchNorm2d, nn::L1BatchNormOptions>(false);
}

TEST(Recalibration, QuantizedL1BatchNormAndObservedRangesFollowTheBatches) {
  check_recalibration_averages_the_batches<nn::L1BatchNorm2d, nn::L1BatchNormOptions>(true);
}

TEST(Recalibration, BadArgumentsAndAFailingForwardLeaveTheSettingsAsTheyWere) {
  auto model = make_norm_first_model<nn::BatchNorm2d, nn::BatchNormOptions>();
  auto& norm = dynamic_cast<nn::BatchNorm2d&>(*model->named_children()[0].second);
  EXPECT_THROW(nn::recalibrate_batch_norm(*model, 0, [](std::int64_t) {}), ValueError);
  EXPECT_THROW(nn::recalibrate_batch_norm(*model, 2, {}), ValueError);
  EXPECT_THROW(norm.set_momentum(1.5f), ValueError);
  const Tensor bad = Tensor::ones({2, 5, 4, 4});  // 5 channels for a 3-channel norm
  const Tensor good = mul(Tensor::ones({2, 3, 4, 4}), 3.0f);
  norm.running_mean.fill_(0.5f);
  norm.running_var.fill_(2.0f);
  // The first batch runs (and moves the statistics), the second fails: all is put back.
  EXPECT_THROW(nn::recalibrate_batch_norm(*model, 2, [&](std::int64_t i) { (*model)(i == 0 ? good : bad); }), ShapeError);
  EXPECT_TRUE(model->is_training());
  EXPECT_EQ(norm.options().momentum(), 0.1f);
  for (std::int64_t c = 0; c < 3; ++c) {
    EXPECT_EQ(norm.running_mean.data<float>()[c], 0.5f);
    EXPECT_EQ(norm.running_var.data<float>()[c], 2.0f);
  }
}

// quantize_model keys each layer's stochastic rounding: GEMM layer i by (seed, i), norm j by
// (seed, 2 * GEMM layers + j); the norm's output-gradient codes are those of a direct call with
// that key, and the gradient probe gives every layer its key back.
TEST(QuantizeModel, KeysEachLayerAndTheProbeKeepsTheKeys) {
  auto model = make_norm_first_model<nn::L1BatchNorm2d, nn::L1BatchNormOptions>();
  ASSERT_EQ(nn::quantize_model(*model, quant::QConfig::bits(4), 77), 1);
  auto& norm = dynamic_cast<nn::L1BatchNorm2d&>(*model->named_children()[0].second);
  auto& fc = dynamic_cast<nn::Linear&>(*model->named_children()[3].second);
  EXPECT_EQ(fc.quant_seed(), 77u);
  EXPECT_EQ(fc.quant_layer_id(), 0u);
  EXPECT_EQ(norm.quant_seed(), 77u);
  EXPECT_EQ(norm.quant_layer_id(), 2u);

  Generator gen(9);
  const Tensor x = Tensor::randn({6, 3, 4, 4}, gen), r = Tensor::randn({6, 3, 4, 4}, gen);
  const Tensor x_layer = x.clone().set_requires_grad(true), x_direct = x.clone().set_requires_grad(true);
  sum(mul(norm(x_layer), r)).backward();  // the norm's first training call: step 0
  L1BatchNormState state{Tensor::zeros({3}), Tensor::ones({3}), 0.1f, 1e-5f, kL1NormC};
  sum(mul(quant::quantized_l1_batch_norm2d(x_direct, norm.weight.detach(), norm.bias.detach(), state,
                                           quant::QConfig::bits(4), {.step = 0, .seed = 77, .layer_id = 2}),
          r))
      .backward();
  EXPECT_EQ(x_layer.grad().to_vector<float>(), x_direct.grad().to_vector<float>());

  const Tensor batch = Tensor::randn({4, 3, 4, 4}, gen);
  nn::probe_gradient_agreement(*model, [&] { return sum((*model)(batch)); });
  EXPECT_EQ(fc.quant_layer_id(), 0u);
  EXPECT_EQ(norm.quant_seed(), 77u);
  EXPECT_EQ(norm.quant_layer_id(), 2u);
  ASSERT_TRUE(norm.quantization().has_value());
}

}  // namespace
}  // namespace shiftq
