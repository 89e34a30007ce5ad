// The quickstart of docs/quickstart.md: a training loop in fp32, the same loop with 4-bit integer
// GEMMs forward and backward, a checkpoint saved and restored, and evaluation, against an installed
// shiftq. Exits non-zero when a model does not learn or the restored model scores differently.
#include <shiftq/shiftq.hpp>

#include <cstdio>
#include <memory>

using namespace shiftq;

// A 4-class problem: the label of x is the largest of 4 fixed random projections of x.
struct Task {
  Tensor teacher;  // [16, 4]
  explicit Task(Generator& gen) : teacher(Tensor::randn({16, 4}, gen)) {}
  void batch(std::int64_t n, Generator& gen, Tensor& x, Tensor& y) const {
    x = Tensor::randn({n, 16}, gen);                          // x: [n, 16]
    const Tensor scores = matmul(x, teacher);                 // [n, 4]
    y = Tensor::empty({n}, DType::s32);                       // y: [n]
    for (std::int64_t i = 0; i < n; ++i) {
      std::int32_t best = 0;
      for (std::int32_t k = 1; k < 4; ++k)
        if (scores.at({i, k}) > scores.at({i, best})) best = k;
      y.data<std::int32_t>()[i] = best;
    }
  }
};

std::shared_ptr<nn::Sequential> make_model(Generator& gen) {
  return std::make_shared<nn::Sequential>(std::initializer_list<std::shared_ptr<nn::Module>>{
      std::make_shared<nn::Linear>(nn::LinearOptions(16, 64), gen), std::make_shared<nn::ReLU>(),
      std::make_shared<nn::Linear>(nn::LinearOptions(64, 4), gen)});
}

void train(nn::Module& model, optim::Optimizer& opt, const Task& task, Generator& gen, int steps) {
  model.train();
  for (int step = 0; step < steps; ++step) {
    Tensor x, y;
    task.batch(64, gen, x, y);
    Tensor loss = cross_entropy(model(x), y);
    opt.zero_grad();
    loss.backward();
    opt.step();
  }
}

// Accuracy on a fixed test set, and its logits (to compare models bit for bit).
double evaluate(nn::Module& model, const Tensor& x, const Tensor& y, Tensor* logits_out = nullptr) {
  NoGradGuard no_grad;
  model.eval();
  const Tensor logits = model(x);  // [n, 4]
  std::int64_t correct = 0;
  for (std::int64_t i = 0; i < x.size(0); ++i) {
    std::int32_t best = 0;
    for (std::int32_t k = 1; k < 4; ++k)
      if (logits.at({i, k}) > logits.at({i, best})) best = k;
    correct += best == y.data<std::int32_t>()[i];
  }
  if (logits_out) *logits_out = logits;
  return static_cast<double>(correct) / static_cast<double>(x.size(0));
}

int main() {
  Generator gen(42);
  const Task task(gen);
  Tensor test_x, test_y;
  task.batch(2000, gen, test_x, test_y);

  // 1. fp32 training.
  auto fp32 = make_model(gen);
  optim::SGD fp32_opt(fp32->named_parameters(), optim::SGDOptions(0.1).momentum(0.9));
  train(*fp32, fp32_opt, task, gen, 400);
  const double fp32_accuracy = evaluate(*fp32, test_x, test_y);

  // 2. The same loop in integer training: one call gives every Linear int8 GEMMs forward and
  //    backward (4-bit weights, activations and ShiftQuant gradients; first and last layer 8-bit).
  auto int4 = make_model(gen);
  nn::quantize_model(*int4, quant::QConfig::bits(4), /*seed=*/1);
  optim::SGD int4_opt(int4->named_parameters(), optim::SGDOptions(0.1).momentum(0.9));
  train(*int4, int4_opt, task, gen, 400);
  Tensor logits;
  const double int4_accuracy = evaluate(*int4, test_x, test_y, &logits);

  // 3. Checkpoint: save model + optimizer atomically, restore into a fresh quantized model.
  io::save_checkpoint("quickstart.safetensors", *int4, &int4_opt);
  auto restored = make_model(gen);
  nn::quantize_model(*restored, quant::QConfig::bits(4), /*seed=*/1);
  optim::SGD restored_opt(restored->named_parameters(), optim::SGDOptions(0.1).momentum(0.9));
  io::restore(io::load_checkpoint("quickstart.safetensors"), "quickstart.safetensors", *restored, &restored_opt);
  Tensor restored_logits;
  const double restored_accuracy = evaluate(*restored, test_x, test_y, &restored_logits);
  const bool same = restored_logits.to_vector<float>() == logits.to_vector<float>();

  std::printf("test accuracy: fp32 %.1f%%, 4-bit integer %.1f%%, restored %.1f%% (%s logits)\n",
              100 * fp32_accuracy, 100 * int4_accuracy, 100 * restored_accuracy, same ? "identical" : "DIFFERENT");
  // Measured (2026-12-04, 2 threads): fp32 94.6%, 4-bit 95.9%; the bounds leave 4-8 points of margin.
  return fp32_accuracy > 0.90 && int4_accuracy > 0.88 && same ? 0 : 1;
}
