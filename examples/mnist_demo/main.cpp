// shiftq-demo-mnist: trains a small network on Fashion-MNIST (Debian's dataset-fashion-mnist) in
// fp32 and prints per-epoch loss, test accuracy and images/s. The ResNet and Transformer trainers
// (examples/resnet, examples/transformer) build on the same pieces.
#include <chrono>
#include <cstdio>
#include <numeric>
#include <string>
#include <vector>

#include <shiftq/shiftq.hpp>

#include "common/cli.hpp"

namespace {
using namespace shiftq;
using nn::Module;

struct Args {
  std::string data_dir = data::kFashionMnistDir;
  std::string model = "cnn";  // "mlp" or "cnn"
  std::int64_t epochs = 2;
  std::int64_t batch = 128;
  double lr = 0.05;
  std::int64_t threads = 0;  // 0: library default
  std::int64_t seed = 1;
  std::int64_t bits = 0;    // 0: fp32; 2..8: integer training (W/A/G bits, ShiftQuant gradients)
  std::string norm = "l2";  // BatchNorm flavour of the CNN: l2 or l1

  void add_flags(examples::Flags& flags) {
    flags.add("data", &data_dir, "Fashion-MNIST directory")
        .add("model", &model, "mlp or cnn")
        .add("epochs", &epochs, "training epochs")
        .add("batch", &batch, "batch size")
        .add("lr", &lr, "peak learning rate (SGD, warmup then cosine decay)")
        .add("threads", &threads, "threads (0 = library default)")
        .add("seed", &seed, "seed of initialization, shuffling and stochastic rounding")
        .add("bits", &bits, "train with B-bit integer GEMMs forward and backward (0 = fp32; first and last layer at 8 bits)")
        .add("norm", &norm, "BatchNorm of the CNN: l2 or l1");
  }
  void validate() const {
    using examples::require;
    require(model == "mlp" || model == "cnn", "--model must be mlp or cnn");
    require(bits == 0 || (bits >= 2 && bits <= 8), "--bits must be 0 (fp32) or in 2..8");
    require(norm == "l1" || norm == "l2", "--norm must be l1 or l2");
    require(epochs >= 1 && batch >= 1 && lr > 0 && threads >= 0, "epochs, batch, lr must be positive");
  }
};

std::shared_ptr<Module> batch_norm(const std::string& norm, std::int64_t channels) {
  if (norm == "l1") return std::make_shared<nn::L1BatchNorm2d>(nn::L1BatchNormOptions{channels});
  return std::make_shared<nn::BatchNorm2d>(nn::BatchNormOptions{channels});
}

std::shared_ptr<nn::Sequential> build_model(const std::string& kind, const std::string& norm, Generator& gen) {
  auto m = std::make_shared<nn::Sequential>();
  if (kind == "mlp") {  // [N, 1, 28, 28] -> [N, 784] -> 256 -> 128 -> 10
    m->push_back(std::make_shared<nn::Flatten>());
    m->push_back(std::make_shared<nn::Linear>(nn::LinearOptions{784, 256}, gen));
    m->push_back(std::make_shared<nn::ReLU>());
    m->push_back(std::make_shared<nn::Linear>(nn::LinearOptions{256, 128}, gen));
    m->push_back(std::make_shared<nn::ReLU>());
    m->push_back(std::make_shared<nn::Linear>(nn::LinearOptions{128, 10}, gen));
    return m;
  }
  // [N,1,28,28] -conv3-> 16x28x28 -pool-> 16x14x14 -conv3-> 32x14x14 -pool-> 32x7x7 -> 10
  m->push_back(std::make_shared<nn::Conv2d>(nn::Conv2dOptions{1, 16, 3}.padding(1).bias(false), gen));
  m->push_back(batch_norm(norm, 16));
  m->push_back(std::make_shared<nn::ReLU>());
  m->push_back(std::make_shared<nn::MaxPool2d>());
  m->push_back(std::make_shared<nn::Conv2d>(nn::Conv2dOptions{16, 32, 3}.padding(1).bias(false), gen));
  m->push_back(batch_norm(norm, 32));
  m->push_back(std::make_shared<nn::ReLU>());
  m->push_back(std::make_shared<nn::MaxPool2d>());
  m->push_back(std::make_shared<nn::Flatten>());
  m->push_back(std::make_shared<nn::Linear>(nn::LinearOptions{32 * 7 * 7, 10}, gen));
  return m;
}

// images u8 [N, 28, 28] rows `order[begin, end)` -> normalized f32 [B, 1, 28, 28]; labels -> s32 [B]
void make_batch(const data::LabeledImages& d, const std::vector<std::int64_t>& order, std::int64_t begin,
                std::int64_t end, Tensor& x, Tensor& y) {
  constexpr float kMean = 0.2860f, kStd = 0.3530f;  // Fashion-MNIST training-set statistics
  const std::int64_t b = end - begin, pixels = d.images.size(1) * d.images.size(2);
  x = Tensor::empty({b, 1, d.images.size(1), d.images.size(2)});
  y = Tensor::empty({b}, DType::s32);
  const std::uint8_t* src = d.images.data<std::uint8_t>();
  float* px = x.data<float>();
  for (std::int64_t i = 0; i < b; ++i) {
    const std::int64_t row = order[begin + i];
    for (std::int64_t p = 0; p < pixels; ++p)
      px[i * pixels + p] = (static_cast<float>(src[row * pixels + p]) / 255.0f - kMean) / kStd;
    y.data<std::int32_t>()[i] = d.labels.data<std::int32_t>()[row];
  }
}

double evaluate(nn::Module& model, const data::LabeledImages& test, int batch) {
  NoGradGuard no_grad;
  model.eval();
  std::vector<std::int64_t> order(test.labels.numel());
  std::iota(order.begin(), order.end(), 0);
  std::int64_t correct = 0;
  for (std::int64_t b = 0; b < static_cast<std::int64_t>(order.size()); b += batch) {
    Tensor x, y;
    make_batch(test, order, b, std::min<std::int64_t>(b + batch, order.size()), x, y);
    const Tensor logits = model(x);
    const float* p = logits.data<float>();
    for (std::int64_t i = 0; i < logits.size(0); ++i) {
      std::int64_t best = 0;
      for (std::int64_t c = 1; c < 10; ++c) if (p[i * 10 + c] > p[i * 10 + best]) best = c;
      correct += best == y.data<std::int32_t>()[i];
    }
  }
  model.train();
  return static_cast<double>(correct) / static_cast<double>(order.size());
}

// The training run of `args`; throws shiftq::Error for bad data and numerics.
void run_training(const Args& args) {
  const auto seed = static_cast<std::uint64_t>(args.seed);
  if (args.threads > 0) set_num_threads(static_cast<int>(args.threads));
  const data::LabeledImages train = data::load_fashion_mnist(args.data_dir, "train");
  const data::LabeledImages test = data::load_fashion_mnist(args.data_dir, "test");
  std::printf("Fashion-MNIST: %lld train / %lld test images from %s; model %s, %d threads, seed %llu\n",
              static_cast<long long>(train.labels.numel()), static_cast<long long>(test.labels.numel()),
              args.data_dir.c_str(), args.model.c_str(), get_num_threads(), static_cast<unsigned long long>(seed));
  Generator gen(seed);
  auto model = build_model(args.model, args.norm, gen);
  std::printf("parameters: %lld\n", static_cast<long long>(model->num_parameters()));
  if (args.bits > 0) {
    const quant::QConfig config = quant::QConfig::bits(static_cast<int>(args.bits));
    const int layers = nn::quantize_model(*model, config, seed);
    std::printf("integer training: %d layers, %s\n", layers, config.str().c_str());
  } else {
    std::printf("fp32 training\n");
  }
  optim::SGD opt(model->named_parameters(), optim::SGDOptions{args.lr}.momentum(0.9).weight_decay(5e-4));
  const std::int64_t n = train.labels.numel(), steps_per_epoch = (n + args.batch - 1) / args.batch;
  optim::WarmupCosine schedule(args.lr, steps_per_epoch / 4, steps_per_epoch * args.epochs);
  std::vector<std::int64_t> order(n);
  std::int64_t step = 0;
  for (std::int64_t epoch = 1; epoch <= args.epochs; ++epoch) {
    std::iota(order.begin(), order.end(), 0);
    for (std::int64_t i = n - 1; i > 0; --i) std::swap(order[i], order[gen.randint(i + 1)]);
    const auto start = std::chrono::steady_clock::now();
    double loss_sum = 0.0;
    for (std::int64_t b = 0; b < n; b += args.batch, ++step) {
      Tensor x, y;
      make_batch(train, order, b, std::min<std::int64_t>(b + args.batch, n), x, y);
      opt.set_lr(schedule.lr_at(step));
      Tensor loss = cross_entropy((*model)(x), y);
      opt.zero_grad();
      loss.backward();
      opt.step();
      loss_sum += loss.item();
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double acc = evaluate(*model, test, 500);
    std::printf("epoch %lld: train loss %.4f, test accuracy %.2f%%, %.0f images/s\n", static_cast<long long>(epoch),
                loss_sum / static_cast<double>(steps_per_epoch), 100.0 * acc, static_cast<double>(n) / seconds);
    std::fflush(stdout);
  }
}
}  // namespace

// Exit codes: 0 done, 1 runtime error (data, numerics), 2 bad command line.
int main(int argc, char** argv) {
  Args args;
  examples::Flags flags("shiftq-demo-mnist",
                        "Train a small MLP or CNN on Fashion-MNIST in fp32 or with b-bit integer GEMMs, printing "
                        "per-epoch loss, test accuracy and images/s.");
  args.add_flags(flags);
  return examples::run_cli(flags, argc, argv, [&] { args.validate(); }, [&] {
    run_training(args);
    return 0;
  });
}
