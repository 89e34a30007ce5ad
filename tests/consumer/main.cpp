// The quickstart of docs/quickstart.md: a complete training loop against an installed shiftq.
#include <shiftq/shiftq.hpp>

#include <cstdio>

int main() {
  using namespace shiftq;
  Generator gen(42);
  // Learn y = sum(x) on random inputs with a two-layer MLP.
  nn::Sequential model{std::make_shared<nn::Linear>(nn::LinearOptions{8, 32}, gen),
                       std::make_shared<nn::ReLU>(),
                       std::make_shared<nn::Linear>(nn::LinearOptions{32, 1}, gen)};
  optim::AdamW opt(model.named_parameters(), optim::AdamWOptions{1e-2}.weight_decay(0.0));
  float loss_value = 0.0f;
  for (int step = 0; step < 300; ++step) {
    Tensor x = Tensor::randn({64, 8}, gen);       // x: [64, 8]
    Tensor y = sum(x, {1}, /*keepdim=*/true);     // y: [64, 1]
    Tensor loss = mse_loss(model(x), y);
    opt.zero_grad();
    loss.backward();
    opt.step();
    loss_value = loss.item();
  }
  std::printf("final loss %.4f\n", loss_value);
  return loss_value < 0.05f ? 0 : 1;  // the test fails if training did not converge
}
