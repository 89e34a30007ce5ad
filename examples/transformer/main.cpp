// shiftq-train-gpt: trains a character-level GPT on a text file (default: the King James Bible,
// see scripts/prepare-kjv.sh) in fp32 or with b-bit integer GEMMs, and samples from checkpoints.
//
//   shiftq-train-gpt --steps 1000                               # fp32, LayerNorm
//   shiftq-train-gpt --steps 1000 --bits 6 --norm l1            # 6-bit ShiftQuant + quantized L1LayerNorm
//   shiftq-train-gpt --sample 400 --load gpt.safetensors --prompt "And God said"
//
// Exit codes: 0 done, 1 runtime error (data, checkpoint, numerics), 2 bad command line.
#include <cstdio>

#include "common/cli.hpp"
#include "transformer/trainer.hpp"

int main(int argc, char** argv) {
  using namespace shiftq::examples;
  GPTTrainConfig c;
  SampleOptions s;
  std::int64_t sample = 0;
  std::string load;
  Flags flags("shiftq-train-gpt",
              "Train a character-level GPT in fp32 or with sub-8-bit integer GEMMs (ShiftQuant), or sample from one.");
  flags.add("data", &c.data, "UTF-8 text file (scripts/prepare-kjv.sh kjv.txt writes the King James Bible)")
      .add("val-fraction", &c.val_fraction, "the last fraction of the text is the validation split")
      .add("layers", &c.layers, "Transformer blocks")
      .add("d-model", &c.d_model, "model width")
      .add("heads", &c.heads, "attention heads")
      .add("context", &c.context, "context length in characters")
      .add("norm", &c.norm, "l2 (LayerNorm) or l1 (L1LayerNorm)")
      .add("tie", &c.tie, "tie the output head to the token embedding (the head then stays fp32)")
      .add("bits", &c.bits, "0 = fp32; 2..8 = integer Linear GEMMs and attention matmuls")
      .add("act-bits", &c.act_bits, "activation bits (0 = same as --bits)")
      .add("grad-bits", &c.grad_bits, "gradient bits (0 = same as --bits; ShiftQuant S = 8 - bits)")
      .add("grad-quant", &c.grad_quant, "gradient quantizer: shiftquant, per-tensor or per-row")
      .add("act-quant", &c.act_quant, "Linear input quantizer: per-tensor; shiftquant (power-of-two groups over the input features on a per-tensor base, S = 8 - bits; with delayed scaling each feature's range is observed); shiftquant-tokens (one power-of-two group per token, from the token's own values, on the observed per-tensor base); per-token (a float scale per token, no groups; with --act-clip mse each token's range is MSE-clipped); or per-token-blocks (a float scale per token and an integer multiplier m in [1, 2^(8 - bits)] per 16 features folded into the codes; with --act-clip mse each block's multiplier by least squared error)")
      .add("act-clip", &c.act_clip, "activation range: none (max |x|) | mse (least squared error: per-tensor, the clipped range; shiftquant, each group's exponent)")
      .add("weight-clip", &c.weight_clip, "weight range: none (max |w|) | mse (each output channel's power-of-two exponent, or with --weight-quant per-channel its range, by least squared error)")
      .add("weight-quant", &c.weight_quant, "Linear weight quantizer: shiftquant (a power-of-two exponent per output channel on a per-tensor base, S = 8 - bits) or per-channel (a float scale per output channel, S = 0; dX's backward moves the scales into dY)")
      .add("act-rotation", &c.act_rotation, "none | hadamard: rotate every quantized Linear's input features (and its weight's) by a Walsh-Hadamard transform before quantization, which spreads outlier features; the product is unchanged in exact arithmetic")
      .add("head-bits", &c.head_bits, "bits of the output head (0 = same as --bits)")
      .add("attn-bits", &c.attn_bits, "bits of the attention matmuls Q K^T and P V (0 = the activation bits)")
      .add("norm-bits", &c.norm_bits, "bits of the fully quantized L1LayerNorm (0 = float L1 norm)")
      .add("steps", &c.steps, "optimizer steps")
      .add("batch", &c.batch, "sequences per step")
      .add("lr", &c.lr, "peak learning rate (AdamW)")
      .add("min-lr-ratio", &c.min_lr_ratio, "final learning rate as a fraction of --lr (cosine decay)")
      .add("warmup", &c.warmup, "linear warmup steps")
      .add("weight-decay", &c.weight_decay, "AdamW decoupled weight decay")
      .add("clip", &c.clip, "gradient-norm clipping (0 = off)")
      .add("eval-every", &c.eval_every, "evaluate (and checkpoint) every N steps")
      .add("eval-batches", &c.eval_batches, "validation batches per evaluation")
      .add("threads", &c.threads, "threads (0 = library default)")
      .add("seed", &c.seed, "seed of initialization, batches and stochastic rounding")
      .add("checkpoint", &c.checkpoint, "save a checkpoint here at every evaluation (atomic)")
      .add("resume", &c.resume, "continue training from this checkpoint")
      .add("log", &c.log, "append metrics to this JSON-lines file")
      .add("stop-after", &c.stop_after, "stop after this step, as if interrupted (0 = train all steps)")
      .add("skip-nonfinite", &c.skip_nonfinite, "skip up to N consecutive steps with NaN/Inf loss or gradients (0 = stop)")
      .add("verbose", &c.verbose, "progress bar and evaluation lines")
      .add("sample", &sample, "generate N characters from --load instead of training")
      .add("load", &load, "checkpoint to sample from")
      .add("prompt", &s.prompt, "prompt for --sample")
      .add("temperature", &s.temperature, "sampling temperature")
      .add("top-k", &s.top_k, "sample from the k most likely characters (0 = all)")
      .add("sample-seed", &s.seed, "seed of the sampler");
  c.act_scaling.add_flags(flags);
  c.quant_report.add_flags(flags);
  c.dist.add_flags(flags);
  const auto validate = [&] {
    require(sample >= 0, "--sample must be >= 0");
    require(sample == 0 || !load.empty(), "--sample needs --load CHECKPOINT");
    require(sample == 0 || !c.dist.distributed, "--sample runs in one process (no --distributed)");
    c.validate();
  };
  return run_cli(flags, argc, argv, c.dist, validate, [&] {
    if (sample > 0) {
      s.length = sample;
      std::printf("%s%s\n", s.prompt.c_str(), sample_gpt(load, s).c_str());
      return 0;
    }
    const auto history = train_gpt(c);
    if (!history.empty() && shiftq::dist::rank() == 0)
      std::printf("final validation loss: %.4f (%.3f bits/char)\n", history.back().val_loss, history.back().val_bpc);
    return 0;
  });
}
