// Training checkpoints: model + optimizer state, RNG states and free-form info in one safetensors file.
//
// Tensors "model/<name>" (nn::Module::state_dict()) and "optim/<name>" (optim::Optimizer::state_dict());
// metadata "format" = "shiftq-checkpoint-v1", "rng/<name>" = "<seed>:<counter>:<word>" (decimal
// GeneratorState fields) and "info/<key>" = value. See docs/checkpoints.md.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "shiftq/core/generator.hpp"
#include "shiftq/core/tensor.hpp"
#include "shiftq/nn/module.hpp"
#include "shiftq/optim/optimizer.hpp"

namespace shiftq::io {

inline constexpr const char* kCheckpointFormat = "shiftq-checkpoint-v1";

struct TrainingCheckpoint {
  std::map<std::string, Tensor> model;               // nn::Module::state_dict()
  std::map<std::string, Tensor> optimizer;           // optim::Optimizer::state_dict()
  std::map<std::string, GeneratorState> generators;  // named RNG states (e.g. "init", "data", "dropout")
  std::map<std::string, std::string> info;           // free-form: "epoch", "step", "config", "vocab", ...
};

// Writes `ckpt` with the same atomicity and errors as save_safetensors().
void save_checkpoint(const std::string& path, const TrainingCheckpoint& ckpt);

// Reads a checkpoint; every load_safetensors() error, plus IOError naming the file when it is not a
// shiftq checkpoint (missing or wrong "format"), has a tensor key without a "model/" or "optim/"
// prefix, an unknown metadata key, or a malformed "rng/" entry.
TrainingCheckpoint load_checkpoint(const std::string& path);

// The checkpoint of `model` (its state_dict: parameters and buffers, the quantized layers' call
// counters included) and of `optimizer` (unless null), with `info` and `generators`, written like
// save_checkpoint above. Restoring it continues training bit for bit (same thread count).
void save_checkpoint(const std::string& path, const nn::Module& model, const optim::Optimizer* optimizer,
                     const std::map<std::string, std::string>& info = {},
                     const std::map<std::string, GeneratorState>& generators = {});

// Copies a loaded checkpoint into `model` and (unless null) `optimizer`. On a mismatch rethrows the
// exception of Module::load_state_dict / Optimizer::load_state_dict as the same type, its message
// prefixed with "checkpoint <path_for_messages> does not match the model: " (or "the optimizer: ").
// All or nothing: when it throws, neither the model nor the optimizer has been modified.
// Returns the names of the model's optional buffers that the checkpoint did not hold (they keep
// their values; the caller may say what is recalibrated). Checkpoints written before the call
// counters were buffers keep them in info "quant_counters": those are applied, and not returned.
std::vector<std::string> restore(const TrainingCheckpoint& ckpt, const std::string& path_for_messages,
                                 nn::Module& model, optim::Optimizer* optimizer);

}  // namespace shiftq::io
