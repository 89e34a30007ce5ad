// Data-parallel training: every rank holds a replica of the model, computes the gradient of its
// share of the global batch, and DataParallel makes every replica's gradient the global one, so the
// optimizer steps keep the replicas bit-identical.
//
//   dist::init();
//   dist::broadcast_parameters(model);
//   dist::DataParallel dp(model, dist::DataParallelOptions().exchange(dist::GradExchange::int8));
//   ...  local loss over this rank's samples (data::shard_range)
//   optimizer.zero_grad();
//   dp.backward(loss, local_samples / global_samples);  // grads = gradient of the global batch
//   optimizer.step();
//
// Gradients are exchanged in buckets of parameters (reverse registration order, about the order in
// which backward finishes them). A bucket starts its exchange as soon as its last gradient is ready
// (a gradient-ready hook of the autograd engine), while backward goes on with the layers below.
// Each bucket is reduce-scattered (every rank owns 1/world of it) and all-gathered, so every rank
// receives the owner's bits and the replicas stay identical.
//
// GradExchange::int8 moves int8 codes instead of floats. Per group of `group_size` values, the ranks
// first agree on a power-of-two scale (a max-allreduce of one exponent byte per group), quantize
// their gradient with stochastic rounding keyed by (seed, step, rank), send each owner its slice as
// codes, the owner sums the world's codes exactly in int32 and rounds their mean stochastically back
// to an int8 code, and the codes are all-gathered: 1/4 of fp32's bytes plus one byte per group, an
// unbiased estimate of the mean gradient (kernels/grad_codec.hpp; tests/dist).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "shiftq/core/tensor.hpp"
#include "shiftq/nn/module.hpp"

namespace shiftq::dist {

enum class GradExchange { fp32, int8 };
const char* to_string(GradExchange exchange);
// "fp32" or "int8"; ValueError otherwise.
GradExchange parse_grad_exchange(const std::string& name);

struct DataParallelOptions {
  // Gradient bytes (fp32) per bucket; a parameter larger than this gets a bucket of its own.
  SHIFTQ_ARG(std::int64_t, bucket_bytes) = 1 << 20;
  SHIFTQ_ARG(GradExchange, exchange) = GradExchange::fp32;
  // Values per power-of-two scale in the int8 exchange (> 0).
  SHIFTQ_ARG(std::int64_t, group_size) = 64;
  // Keys the int8 exchange's stochastic rounding (with the step and the rank).
  SHIFTQ_ARG(std::uint64_t, seed) = 0;
  // After each exchange, copy rank 0's buffers (BatchNorm running statistics) to every rank, so the
  // replicas stay identical in evaluation too (as PyTorch DDP's broadcast_buffers).
  SHIFTQ_ARG(bool, broadcast_buffers) = true;
};

// What the exchanges moved so far. Bytes are those this rank sends under the bandwidth-optimal
// algorithms (reduce-scatter and all-gather each send (world - 1)/world of a bucket), the same
// accounting for both exchanges; an fp32 ring allreduce sends as many.
struct ExchangeStats {
  std::int64_t steps = 0;
  std::int64_t bytes_sent = 0;
  std::int64_t values = 0;       // gradient values exchanged (sum over steps)
  double wait_seconds = 0;       // time spent blocked after backward, waiting for the last buckets
};

class DataParallel {
 public:
  // The model's trainable parameters at construction are the ones exchanged; every rank must build
  // the same model. Collective: call on every rank.
  DataParallel(nn::Module& model, DataParallelOptions options = {});
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  // loss.backward(), then every parameter's grad() = sum over ranks of weight_r * grad_r, with
  // weight = this rank's share of the global batch (n_r / N; the default 1/world). Parameters that
  // got no gradient count as zero and get a zero grad(). Collective. A non-finite gradient on any
  // rank makes every rank's exchanged gradient non-finite, so the optimizer's check (NumericError)
  // fires on all ranks alike. An exception inside backward on this rank is re-thrown after the
  // exchange completed (its missing gradients sent as zero) and the ranks agreed on the failure;
  // the other ranks throw NumericError, so none hangs and none applies the step.
  void backward(const Tensor& loss, double weight = -1);
  // The exchange alone, for a rank without samples in this step (weight 0) or for gradients made
  // some other way: exchanges the current grad() of every parameter (undefined = zero).
  void sync_gradients(double weight = -1);

  // Step counter of the stochastic rounding keys: one per backward/sync_gradients. Set it when
  // resuming so a resumed run draws the same roundings as an uninterrupted one.
  std::int64_t step() const;
  void set_step(std::int64_t step);

  const DataParallelOptions& options() const;
  const ExchangeStats& stats() const;
  void reset_stats();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace shiftq::dist
