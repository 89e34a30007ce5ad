// shiftq-train-resnet: trains a CIFAR-style ResNet on Fashion-MNIST (Debian's dataset-fashion-mnist)
// or CIFAR-10 (binary version), in fp32 or with b-bit integer GEMMs forward and backward.
//
//   shiftq-train-resnet --epochs 3                          # fp32, BatchNorm
//   shiftq-train-resnet --epochs 3 --bits 4 --norm l1       # W4A4G4 ShiftQuant + fully quantized L1 BatchNorm
//   shiftq-train-resnet --epochs 3 --bits 4 --norm l1 --act-quant per-tensor --act-clip none --weight-clip none  # the paper's recipe
//   mpirun -np 2 shiftq-train-resnet --distributed --bits 4 --norm l1   # data-parallel, 2 processes
//
// Exit codes: 0 done, 1 runtime error (data, checkpoint, numerics), 2 bad command line.
#include <cstdio>

#include "common/cli.hpp"
#include "resnet/trainer.hpp"

int main(int argc, char** argv) {
  using namespace shiftq::examples;
  ResNetTrainConfig c;
  Flags flags("shiftq-train-resnet",
              "Train a CIFAR-style ResNet in fp32 or with sub-8-bit integer GEMMs (ShiftQuant) forward and backward.");
  flags.add("dataset", &c.dataset, "fashion-mnist or cifar10")
      .add("data", &c.data_dir, "dataset directory (default: /usr/share/datasets/fashion-mnist; cifar10: ./cifar-10-batches-bin)")
      .add("train-subset", &c.train_subset, "train on the first N images only (0 = all)")
      .add("test-subset", &c.test_subset, "evaluate on the first N test images only (0 = all)")
      .add("augment", &c.augment, "random crop with padding + horizontal flip")
      .add("pad", &c.pad, "padding of the random crop")
      .add("depth", &c.depth, "ResNet depth, 6n+2 (20, 32, 56, ...)")
      .add("width", &c.width, "channels of the first stage")
      .add("norm", &c.norm, "l2 (BatchNorm2d) or l1 (L1BatchNorm2d)")
      .add("layout", &c.layout, "memory order of the activations: auto (nhwc for integer training, nchw for fp32), nchw, or nhwc (channels-last: the quantized convolutions and L1 norms without layout moves, the same results bit for bit)")
      .add("bits", &c.bits, "0 = fp32; 2..8 = integer training with b-bit weights, activations and gradients")
      .add("act-bits", &c.act_bits, "activation bits (0 = same as --bits)")
      .add("grad-bits", &c.grad_bits, "gradient bits (0 = same as --bits; ShiftQuant S = 8 - bits)")
      .add("act-range", &c.act_range, "auto (unsigned codes for non-negative activations) | symmetric")
      .add("act-quant", &c.act_quant, "activation quantizer: per-tensor, or shiftquant (power-of-two groups per sample and channel; S = 7 - bits, 8 - bits with --act-range symmetric)")
      .add("act-clip", &c.act_clip, "activation range: none (max |x|) | mse (least squared error: per-tensor, the clipped range; shiftquant, each group's exponent)")
      .add("weight-clip", &c.weight_clip, "weight range: none (max |w|) | mse (each output channel's power-of-two exponent by least squared error)")
      .add("grad-quant", &c.grad_quant, "gradient quantizer: shiftquant, per-tensor or per-row")
      .add("first-last-bits", &c.first_last_bits, "bits of the first and last layer (0 = same as --bits)")
      .add("norm-bits", &c.norm_bits, "bits of the fully quantized L1 norms (0 = float L1 norm)")
      .add("epochs", &c.epochs, "training epochs")
      .add("batch", &c.batch, "batch size")
      .add("lr", &c.lr, "peak learning rate (SGD, linear warmup then cosine decay)")
      .add("momentum", &c.momentum, "SGD momentum")
      .add("weight-decay", &c.weight_decay, "L2 weight decay")
      .add("warmup-epochs", &c.warmup_epochs, "linear warmup length in epochs")
      .add("threads", &c.threads, "threads (0 = library default)")
      .add("seed", &c.seed, "seed of initialization, shuffling, augmentation and stochastic rounding")
      .add("checkpoint", &c.checkpoint, "save a checkpoint here after every epoch (atomic)")
      .add("resume", &c.resume, "continue training from this checkpoint")
      .add("log", &c.log, "append per-epoch metrics to this JSON-lines file")
      .add("stop-after", &c.stop_after, "stop after this epoch, as if interrupted (0 = train all epochs)")
      .add("eval-batch", &c.eval_batch, "test-set batch size")
      .add("bn-recalibrate", &c.bn_recalibrate, "after the last epoch, re-estimate the norms' running statistics and the observed activation ranges on N training batches with the final weights (0 = off)")
      .add("eval-only", &c.eval_only, "with --resume: evaluate the checkpoint on the test set and exit")
      .add("skip-nonfinite", &c.skip_nonfinite, "skip up to N consecutive steps with NaN/Inf loss or gradients (0 = stop)")
      .add("verbose", &c.verbose, "progress bar and per-epoch lines");
  c.act_scaling.add_flags(flags);
  c.quant_report.add_flags(flags);
  c.dist.add_flags(flags);
  return run_cli(flags, argc, argv, c.dist, [&] { c.validate(); }, [&] {
    const auto history = train_resnet(c);
    if (!history.empty() && shiftq::dist::rank() == 0)
      std::printf("final test accuracy: %.2f%%\n", 100.0 * history.back().test_accuracy);
    return 0;
  });
}
