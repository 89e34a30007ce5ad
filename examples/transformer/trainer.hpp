// The char-GPT trainer behind shiftq-train-gpt, as functions so tests can run it in-process.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <shiftq/shiftq.hpp>

#include "common/distributed.hpp"
#include "common/quant_report.hpp"

namespace shiftq::examples {

struct GPTTrainConfig {
  // data
  std::string data = "kjv.txt";  // any UTF-8 text; scripts/prepare-kjv.sh writes the King James Bible
  double val_fraction = 0.1;
  // model
  std::int64_t layers = 4, d_model = 256, heads = 4, context = 128;
  std::string norm = "l2";  // l2: LayerNorm, l1: L1LayerNorm
  bool tie = false;
  // precision: bits 0 = fp32; 2..8 = integer Linear GEMMs and attention matmuls
  std::int64_t bits = 0;
  std::int64_t act_bits = 0;              // activation bits (0 = same as bits)
  std::int64_t grad_bits = 0;             // gradient bits (0 = same as bits)
  std::string grad_quant = "shiftquant";  // shiftquant | per-tensor | per-row
  std::string act_quant = "per-tensor";   // per-tensor | shiftquant (power-of-two groups over the input features, S = 8 - bits) | shiftquant-tokens (a group per token) | per-token (a float scale per token) | per-token-blocks (and an integer multiplier per 16 features)
  std::string act_clip = "none";          // none | mse (QuantizeParams::mse_clip)
  std::string weight_clip = "none";       // none | mse (QuantizeParams::mse_clip)
  std::string weight_quant = "shiftquant";  // shiftquant (power-of-two exponents per output channel on a per-tensor base) | per-channel (a float scale per output channel)
  std::string act_rotation = "none";      // none | hadamard (QConfig::linear_input_rotation)
  std::int64_t head_bits = 8;             // output head (0 = same as --bits)
  std::int64_t attn_bits = 0;             // attention matmuls Q K^T and P V (0 = the activation bits)
  std::int64_t norm_bits = 8;             // fully quantized L1LayerNorm (0 = float L1 norm)
  ActScalingConfig act_scaling;           // where activation ranges come from (--act-scaling)
  QuantReportConfig quant_report;         // --quant-report FILE: per-layer numerics every N steps
  // optimization: AdamW, linear warmup then cosine decay to min_lr_ratio * lr
  std::int64_t steps = 1000, batch = 32, warmup = 100;
  double lr = 1e-3, min_lr_ratio = 0.1, weight_decay = 0.1, clip = 1.0;
  // evaluation / logging
  std::int64_t eval_every = 200, eval_batches = 16;
  // run
  std::int64_t threads = 0, seed = 1;
  std::string checkpoint;             // saved (atomically) at every evaluation when set
  std::string resume;                 // continue training from this checkpoint
  std::string log;                    // JSON-lines metrics
  std::int64_t stop_after = 0;        // stop after this step as if interrupted (0 = run all)
  std::int64_t skip_nonfinite = 0;    // skip up to N consecutive steps with NaN/Inf (0 = stop with the error)
  bool verbose = true;
  DistConfig dist;                    // --distributed: data-parallel over MPI (rank 0 prints, logs and saves)

  void validate() const;  // UsageError
  std::string fingerprint() const;
  std::string precision() const;  // the log's "precision": fp32, or the QConfig and the attention bits
  quant::QConfig qconfig() const;
};

struct GPTEvalPoint {
  std::int64_t step = 0;
  double train_loss = 0;   // mean over the steps since the previous evaluation
  double val_loss = 0;     // nats per character
  double val_bpc = 0;      // bits per character
  double tokens_per_second = 0;
};

// Trains (or resumes) and returns the evaluation points of this call. Throws shiftq::Error.
std::vector<GPTEvalPoint> train_gpt(const GPTTrainConfig& config);

struct SampleOptions {
  std::string prompt = "The ";
  std::int64_t length = 500;
  double temperature = 0.8;
  std::int64_t top_k = 40;
  std::int64_t seed = 1;
};
// Generates `length` characters after `prompt` from a checkpoint written by train_gpt.
std::string sample_gpt(const std::string& checkpoint, const SampleOptions& options);
// The model and precision description a checkpoint of train_gpt holds, as sample_gpt rebuilds the
// model from it (the training-only fields keep their defaults). Throws IOError for a checkpoint of
// another trainer or one with a missing or invalid description.
GPTTrainConfig gpt_model_config(const std::string& checkpoint);

}  // namespace shiftq::examples
