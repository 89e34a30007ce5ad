// The ResNet trainer behind shiftq-train-resnet, as a function so tests can run it in-process.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <shiftq/shiftq.hpp>

#include "common/distributed.hpp"
#include "common/quant_report.hpp"

namespace shiftq::examples {

struct ResNetTrainConfig {
  // data
  std::string dataset = "fashion-mnist";  // or "cifar10"
  std::string data_dir;                   // empty: the dataset's default location
  std::int64_t train_subset = 0;          // use only the first N training images (0 = all)
  std::int64_t test_subset = 0;           // evaluate on the first N test images (0 = all)
  bool augment = true;                    // random crop (padding `pad`) + horizontal flip
  std::int64_t pad = 2;
  // model
  std::int64_t depth = 20;
  std::int64_t width = 16;
  std::string norm = "l2";  // l2: BatchNorm2d, l1: L1BatchNorm2d
  // The activations' memory order (ResNetOptions::layout): nchw | nhwc (channels-last: the quantized
  // convolutions and L1 norms without layout moves, the same results as nchw bit for bit; the fp32
  // convolution permutes) | auto (nhwc for integer training, where it is the faster, nchw for fp32).
  // Not part of the configuration's fingerprint: a checkpoint resumes in either layout.
  std::string layout = "auto";
  // precision: bits 0 = fp32; 2..8 = integer training (weights, activations, gradients)
  std::int64_t bits = 0;
  std::int64_t act_bits = 0;              // activation bits (0 = same as bits)
  std::int64_t grad_bits = 0;             // gradient bits (0 = same as bits)
  std::string act_range = "auto";         // auto: unsigned codes for non-negative activations; symmetric
  // The default activation and weight quantizers are the best measured 4-bit configuration
  // (docs/results.md); the paper's recipe is act_quant "per-tensor", act_clip and weight_clip "none".
  std::string act_clip = "mse";           // none: range = max |x|; mse: least-squared-error range or group exponents
  std::string weight_clip = "mse";        // none | mse: least-squared-error group exponents (QuantizeParams::mse_clip)
  std::string act_quant = "shiftquant";   // per-tensor | shiftquant (S = 7 - bits; 8 - bits if symmetric)
  std::string grad_quant = "shiftquant";  // shiftquant | per-tensor | per-row
  std::int64_t first_last_bits = 8;
  std::int64_t norm_bits = 8;             // fully quantized L1 norms (0 = float L1 norms)
  ActScalingConfig act_scaling;           // where activation ranges come from (--act-scaling)
  // optimization: SGD + momentum, linear warmup then cosine decay, per step
  std::int64_t epochs = 3;
  std::int64_t batch = 128;
  double lr = 0.1;
  double momentum = 0.9;
  double weight_decay = 5e-4;
  double warmup_epochs = 0.5;
  // run
  std::int64_t threads = 0;  // 0: library default
  std::int64_t seed = 1;
  std::string checkpoint;  // saved (atomically) after every epoch when set
  std::string resume;      // continue from this checkpoint
  std::string log;         // JSON-lines metrics
  std::int64_t stop_after = 0;  // stop after this epoch as if interrupted (0 = run all; tests resume)
  std::int64_t skip_nonfinite = 0;  // skip up to N consecutive steps with NaN/Inf (0 = stop with the error)
  std::int64_t eval_batch = 500;  // test-set batch size
  // After the last epoch, re-estimate the norms' running statistics (and the observed activation
  // ranges) on this many training batches with the final weights (nn::recalibrate_batch_norm); 0 = off.
  std::int64_t bn_recalibrate = 0;
  bool eval_only = false;  // with resume: evaluate the checkpoint on the test set, no training
  bool verbose = true;     // progress and per-epoch lines on stdout
  QuantReportConfig quant_report;  // --quant-report FILE: per-layer numerics every N steps
  DistConfig dist;         // --distributed: data-parallel over MPI (rank 0 prints, logs and saves)

  // Throws UsageError for invalid combinations.
  void validate() const;
  // The settings a checkpoint must agree with to be resumed (model, precision, data, recipe).
  std::string fingerprint() const;
  quant::QConfig qconfig() const;
  ImageLayout image_layout() const;  // `layout` as the enum
};

struct EpochMetrics {
  std::int64_t epoch = 0, step = 0;
  double train_loss = 0, train_accuracy = 0, test_loss = 0, test_accuracy = 0;
  double images_per_second = 0, train_seconds = 0, lr = 0;
  std::optional<double> test_accuracy_before_recalibration;  // the last epoch with --bn-recalibrate
};

// Trains and evaluates; returns one entry per epoch run by this call (a resumed run starts after the
// checkpoint's epoch). With eval_only, returns one entry for the checkpoint's epoch holding only the
// test loss and accuracy (nothing is trained, logged or saved). Throws shiftq::Error (IOError for
// data/checkpoint problems).
std::vector<EpochMetrics> train_resnet(const ResNetTrainConfig& config);

}  // namespace shiftq::examples
