// Data-parallel training in the example trainers (--distributed, under mpirun): the flags, the
// process group's start-up checks and one training step with the gradient exchange.
//
// --batch is the global batch: each step, rank r trains on its slice of the same global batch
// (data::shard_range) and DataParallel makes every gradient the global batch's mean gradient, so the
// learning rate and schedule need no change with the number of processes, and a checkpoint resumes
// with any number of them. Rank 0 alone prints, logs and writes checkpoints.
#pragma once

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include <shiftq/shiftq.hpp>

#include "common/flags.hpp"
#include "common/nonfinite.hpp"

namespace shiftq::examples {

struct DistConfig {
  bool distributed = false;
  std::string grad_exchange = "auto";  // auto: int8 for integer training, fp32 otherwise
  std::int64_t bucket_kib = 1024;
  double timeout = 600;  // seconds without progress before a collective gives up

  void add_flags(Flags& flags) {
    flags.add("distributed", &distributed, "data-parallel training over MPI: start under mpirun -np N (--batch is the global batch)")
        .add("grad-exchange", &grad_exchange, "distributed gradient exchange: auto (int8 for --bits > 0), fp32 or int8")
        .add("bucket-kib", &bucket_kib, "distributed gradient bucket size in KiB of fp32 gradients")
        .add("dist-timeout", &timeout, "seconds a rank waits for the others without progress before stopping with an error");
  }
  void validate() const {
    require(grad_exchange == "auto" || grad_exchange == "fp32" || grad_exchange == "int8",
            "--grad-exchange must be auto, fp32 or int8");
    require(bucket_kib >= 1, "--bucket-kib must be positive");
    require(timeout > 0, "--dist-timeout must be positive");
  }
  dist::GradExchange exchange(std::int64_t bits) const {
    if (grad_exchange == "auto") return bits > 0 ? dist::GradExchange::int8 : dist::GradExchange::fp32;
    return dist::parse_grad_exchange(grad_exchange);
  }
};

// This process's part in a (possibly single-process) run.
class TrainerGroup {
 public:
  // Without --distributed: rank 0 of 1, and backward() is a plain loss.backward().
  TrainerGroup(const DistConfig& config, std::int64_t bits)
      : config_(config), bits_(bits),
        rank_(config.distributed ? dist::rank() : 0), world_(config.distributed ? dist::world_size() : 1) {
    if (config.distributed) {
      if (!dist::mpi_available()) throw dist::DistError("--distributed: this shiftq was built without MPI (SHIFTQ_WITH_MPI)");
      dist::set_timeout(config.timeout);
    }
  }

  int rank() const { return rank_; }
  int world() const { return world_; }
  bool is_root() const { return rank_ == 0; }
  data::Shard shard() const { return {rank_, world_}; }
  // Stochastic-rounding seed of this rank's quantized layers: rank 0 keeps the run's seed (a
  // one-process run is unchanged); the others get their own streams.
  std::uint64_t quant_seed(std::uint64_t seed) const {
    return rank_ == 0 ? seed : philox4x32(seed, 0x5eed, static_cast<std::uint64_t>(rank_))[0] ^ seed;
  }

  // After the model is built (and restored): every rank must have the same configuration; rank 0's
  // parameters and buffers are copied to all; the gradient exchange is set up.
  void start(nn::Module& model, const std::string& fingerprint, std::uint64_t seed) {
    if (!config_.distributed) return;
    dist::check_same_config(fingerprint + " grad_exchange=" + dist::to_string(config_.exchange(bits_)) +
                            " bucket_kib=" + std::to_string(config_.bucket_kib));
    dist::broadcast_parameters(model);
    dp_ = std::make_unique<dist::DataParallel>(model, dist::DataParallelOptions()
                                                          .exchange(config_.exchange(bits_))
                                                          .bucket_bytes(config_.bucket_kib * 1024)
                                                          .seed(seed));
  }

  // One step's forward + backward + exchange: `forward()` returns this rank's mean loss over its
  // `local` samples (not called when local == 0); afterwards every gradient is the mean gradient
  // over the `global` samples of the step. Returns the loss weighted by local / global (their sum
  // over the ranks is the global batch's mean loss). A NumericError in the forward or a non-finite
  // loss on any rank throws NumericError on every rank, before backward; so does a failed backward
  // (DataParallel::backward).
  template <class Forward>
  double backward(Forward&& forward, optim::Optimizer& optimizer, std::int64_t local, std::int64_t global,
                  std::int64_t step) {
    if (!dp_) {
      Tensor loss = forward();
      check_loss(loss.item());
      optimizer.zero_grad();
      loss.backward();
      return loss.item();
    }
    const double weight = static_cast<double>(local) / static_cast<double>(global);
    Tensor loss;
    double value = 0;
    std::string failure;  // this rank's NumericError in the forward (a non-finite activation)
    if (local > 0) {
      try {
        loss = forward();
        value = loss.item();
      } catch (const NumericError& e) {
        failure = e.what();
      }
    }
    // Every rank learns whether any rank failed, so that all skip (or stop at) the same step.
    const bool ok = failure.empty() && std::isfinite(value);
    if (!dist::all_true(ok)) {
      if (!failure.empty()) throw NumericError(failure);
      throw NumericError(ok ? "training forward failed on another rank (non-finite values)"
                            : "training loss is " + std::to_string(value));
    }
    optimizer.zero_grad();
    dp_->set_step(step);
    if (local > 0)
      dp_->backward(loss, weight);
    else
      dp_->sync_gradients(0.0);
    return value * weight;
  }

  // Milliseconds per step that this rank waited for the exchange after its backward (ExchangeStats).
  double exchange_wait_ms_per_step() const {
    if (!dp_ || dp_->stats().steps == 0) return 0.0;
    return 1e3 * dp_->stats().wait_seconds / static_cast<double>(dp_->stats().steps);
  }
  // Bytes this rank sent per exchange so far (ExchangeStats), 0 in one process.
  double exchange_bytes_per_step() const {
    if (!dp_ || dp_->stats().steps == 0) return 0.0;
    return static_cast<double>(dp_->stats().bytes_sent) / static_cast<double>(dp_->stats().steps);
  }

 private:
  DistConfig config_;
  std::int64_t bits_;
  int rank_, world_;
  std::unique_ptr<dist::DataParallel> dp_;
};

// main() of a trainer: joins the process group with --distributed, runs `body` (which returns the
// exit code), and maps errors to exit codes (1 runtime, 2 usage). A distributed run's error ends
// every rank (dist::abort), so no peer waits for a rank that is gone.
template <class Body>
int run_trainer_main(bool distributed, Body&& body) {
  try {
    if (distributed) dist::init();
  } catch (const shiftq::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  int code = 0;
  try {
    code = body();
  } catch (const shiftq::Error& e) {
    std::fprintf(stderr, "error%s: %s\n", distributed ? (" on rank " + std::to_string(dist::rank())).c_str() : "", e.what());
    std::fflush(stderr);
    if (distributed && dist::world_size() > 1) dist::abort(1);
    code = 1;
  }
  if (distributed) dist::finalize();
  return code;
}

}  // namespace shiftq::examples
