#include "resnet/trainer.hpp"

#include <cmath>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <sstream>

#include "common/flags.hpp"
#include "common/nonfinite.hpp"
#include "common/resume.hpp"
#include "common/precision.hpp"
#include "common/report.hpp"
#include "resnet/model.hpp"

namespace shiftq::examples {
namespace {

// The first n images of a split (n = 0 or n >= N: all).
data::LabeledImages take_first(const data::LabeledImages& d, std::int64_t n) {
  const std::int64_t total = d.labels.numel();
  if (n <= 0 || n >= total) return d;
  Shape shape = d.images.shape();
  const std::size_t row_bytes = d.images.nbytes() / static_cast<std::size_t>(total);
  shape[0] = n;
  data::LabeledImages out{Tensor::uninitialized(shape, d.images.dtype()), Tensor::uninitialized({n}, DType::s32),
                          d.num_classes};
  std::memcpy(out.images.data<std::uint8_t>(), d.images.data<std::uint8_t>(), row_bytes * static_cast<std::size_t>(n));
  std::memcpy(out.labels.data<std::int32_t>(), d.labels.data<std::int32_t>(), sizeof(std::int32_t) * static_cast<std::size_t>(n));
  return out;
}

struct Splits {
  data::LabeledImages train, test;
  std::vector<float> mean, std;
};

Splits load_splits(const ResNetTrainConfig& c) {
  Splits s;
  if (c.dataset == "fashion-mnist") {
    const std::string dir = c.data_dir.empty() ? data::kFashionMnistDir : c.data_dir;
    s.train = data::load_fashion_mnist(dir, "train");
    s.test = data::load_fashion_mnist(dir, "test");
    s.mean = {0.2860f};  // Fashion-MNIST training-set statistics
    s.std = {0.3530f};
  } else {
    const std::string dir = c.data_dir.empty() ? "cifar-10-batches-bin" : c.data_dir;
    s.train = data::load_cifar10(dir, "train");
    s.test = data::load_cifar10(dir, "test");
    s.mean = {0.4914f, 0.4822f, 0.4465f};
    s.std = {0.2470f, 0.2435f, 0.2616f};
  }
  s.train = take_first(s.train, c.train_subset);
  s.test = take_first(s.test, c.test_subset);
  return s;
}

// Number of rows of logits [B, K] whose argmax equals the label.
std::int64_t count_correct(const Tensor& logits, const Tensor& labels) {
  const std::int64_t rows = logits.size(0), k = logits.size(1);
  const float* p = logits.data<float>();
  const std::int32_t* y = labels.data<std::int32_t>();
  std::int64_t correct = 0;
  for (std::int64_t i = 0; i < rows; ++i) {
    const float* row = p + i * k;
    correct += (std::max_element(row, row + k) - row) == y[i];
  }
  return correct;
}

struct EvalResult {
  double loss = 0, accuracy = 0;
};

// Over the whole split; in a distributed run each rank scores every world-th batch (whole batches,
// so the scores equal a single process's) and the sums are combined.
EvalResult evaluate(nn::Module& model, const data::ImageLoader& loader, const TrainerGroup& group) {
  NoGradGuard no_grad;
  model.eval();
  double loss_sum = 0;
  std::int64_t correct = 0;
  for (std::int64_t b = group.rank(); b < loader.num_batches(); b += group.world()) {
    const data::ImageBatch batch = loader.batch(0, b);
    const Tensor logits = model(batch.images);
    loss_sum += cross_entropy(logits, batch.labels).item() * static_cast<double>(batch.labels.numel());
    correct += count_correct(logits, batch.labels);
  }
  model.train();
  std::vector<double> sums{loss_sum, static_cast<double>(correct)};
  if (group.world() > 1) dist::allreduce_sum(sums);
  const auto n = static_cast<double>(loader.size());
  return {sums[0] / n, sums[1] / n};
}

// nn::recalibrate_batch_norm on the first `batches` training batches of a fresh shuffle (`epoch`
// past the last one). Every rank runs the same whole batches, so all ranks end with the same
// statistics.
void recalibrate(nn::Module& model, const data::ImageLoader& loader, std::int64_t epoch, std::int64_t batches) {
  nn::recalibrate_batch_norm(model, std::min(batches, loader.num_batches()),
                             [&](std::int64_t b) { model(loader.batch(epoch, b).images); });
}

}  // namespace

void ResNetTrainConfig::validate() const {
  require(dataset == "fashion-mnist" || dataset == "cifar10", "--dataset must be fashion-mnist or cifar10");
  require(depth >= 8 && (depth - 2) % 6 == 0, "--depth must be 6n+2 (8, 14, 20, 32, 44, 56, ...)");
  require(width >= 1, "--width must be positive");
  require(norm == "l1" || norm == "l2", "--norm must be l1 or l2");
  require(layout == "auto" || layout == "nchw" || layout == "nhwc", "--layout must be auto, nchw or nhwc");
  require(bits == 0 || (bits >= 2 && bits <= 8), "--bits must be 0 (fp32) or 2..8");
  require(act_bits == 0 || (act_bits >= 2 && act_bits <= 8), "--act-bits must be 0 (same as --bits) or 2..8");
  require(grad_bits == 0 || (grad_bits >= 2 && grad_bits <= 8), "--grad-bits must be 0 (same as --bits) or 2..8");
  require(act_range == "auto" || act_range == "symmetric", "--act-range must be auto or symmetric");
  require(act_clip == "none" || act_clip == "mse", "--act-clip must be none or mse");
  require(weight_clip == "none" || weight_clip == "mse", "--weight-clip must be none or mse");
  require(act_quant == "per-tensor" || act_quant == "shiftquant", "--act-quant must be per-tensor or shiftquant");
  require(grad_quant == "shiftquant" || grad_quant == "per-tensor" || grad_quant == "per-row",
          "--grad-quant must be shiftquant, per-tensor or per-row");
  require(first_last_bits == 0 || (first_last_bits >= 2 && first_last_bits <= 8),
          "--first-last-bits must be 0 (same as --bits) or 2..8");
  require(norm_bits == 0 || (norm_bits >= 2 && norm_bits <= 8), "--norm-bits must be 0 (float L1 norm) or 2..8");
  require(epochs >= 1 && batch >= 1, "--epochs and --batch must be positive");
  require(lr > 0 && momentum >= 0 && momentum < 1 && weight_decay >= 0 && warmup_epochs >= 0,
          "--lr must be > 0, --momentum in [0, 1), --weight-decay and --warmup-epochs >= 0");
  require(pad >= 0 && pad <= 16, "--pad must be in 0..16");
  require(eval_batch >= 1, "--eval-batch must be positive");
  require(bn_recalibrate >= 0, "--bn-recalibrate must be >= 0");
  require(!(eval_only && bn_recalibrate > 0), "--bn-recalibrate runs after training; --eval-only trains nothing");
  act_scaling.validate();
  quant_report.validate(dist.distributed);
  require(quant_report.path.empty() || bits > 0, "--quant-report needs integer training (--bits)");
  require(!eval_only || !resume.empty(), "--eval-only needs --resume CHECKPOINT");
  require(threads >= 0 && train_subset >= 0 && test_subset >= 0 && seed >= 0 && stop_after >= 0 && skip_nonfinite >= 0,
          "--threads, --train-subset, --test-subset, --seed, --stop-after and --skip-nonfinite must be >= 0");
  dist.validate();
}

ImageLayout ResNetTrainConfig::image_layout() const {
  if (layout == "auto") return bits > 0 ? ImageLayout::nhwc : ImageLayout::nchw;
  return layout == "nhwc" ? ImageLayout::nhwc : ImageLayout::nchw;
}

namespace {
// A checkpoint's configuration without the " layout=nhwc" that checkpoints recorded before the
// layout left the fingerprint (it changes no result of integer training, and only the order of
// float sums in fp32).
std::string without_layout(std::string config) {
  const std::string entry = " layout=nhwc";
  if (const auto at = config.find(entry); at != std::string::npos) config.erase(at, entry.size());
  return config;
}
}  // namespace

std::string ResNetTrainConfig::fingerprint() const {
  // An fp32 run has no quantizers: it records the quantizer flags' first defaults, so fp32
  // checkpoints resume whatever those flags (and their defaults) say.
  const bool fp32 = bits == 0;
  std::ostringstream s;
  s << "dataset=" << dataset << " train_subset=" << train_subset << " augment=" << augment << " pad=" << pad
    << " depth=" << depth << " width=" << width << " norm=" << norm << " bits=" << bits
    << " act_bits=" << act_bits << " act_range=" << act_range << " act_clip=" << (fp32 ? "none" : act_clip)
    << " act_quant=" << (fp32 ? "per-tensor" : act_quant) << " grad_quant=" << grad_quant << " first_last_bits=" << first_last_bits << " norm_bits=" << norm_bits
    << " batch=" << batch << " lr=" << lr << " momentum=" << momentum << " weight_decay=" << weight_decay
    << " warmup_epochs=" << warmup_epochs << " seed=" << seed;
  if (!fp32 && weight_clip != "none") s << " weight_clip=" << weight_clip;  // absent before the flag existed (and when none)
  if (grad_bits != 0) s << " grad_bits=" << grad_bits;
  s << act_scaling.fingerprint();
  return s.str();
}

quant::QConfig ResNetTrainConfig::qconfig() const {
  quant::QConfig q = make_qconfig(bits, act_bits, grad_quant, first_last_bits, norm_bits, act_range, act_clip,
                                  act_quant, weight_clip, grad_bits);
  act_scaling.apply(q);
  return q;
}

std::vector<EpochMetrics> train_resnet(const ResNetTrainConfig& c) {
  c.validate();
  TrainerGroup group(c.dist, c.bits);
  const bool verbose = c.verbose && group.is_root();
  const std::string checkpoint_path = group.is_root() ? c.checkpoint : std::string();
  const std::string log_path = group.is_root() ? c.log : std::string();
  if (c.threads > 0) set_num_threads(static_cast<int>(c.threads));
  check_output_path(checkpoint_path, "checkpoint");
  check_output_path(log_path, "metrics log");
  check_output_path(group.is_root() ? c.quant_report.path : std::string(), "numerics report");
  const Splits data = load_splits(c);
  const std::int64_t channels = data.train.images.dim() == 4 ? data.train.images.size(1) : 1;
  data::ImageLoader train_loader(data.train, data::ImageLoaderOptions(c.batch)
                                                 .shuffle(true)
                                                 .seed(static_cast<std::uint64_t>(c.seed))
                                                 .mean(data.mean)
                                                 .std(data.std)
                                                 .pad_crop(c.augment ? c.pad : 0)
                                                 .hflip(c.augment));
  data::ImageLoader test_loader(data.test,
                                data::ImageLoaderOptions(c.eval_batch).shuffle(false).mean(data.mean).std(data.std));

  Generator init_gen(static_cast<std::uint64_t>(c.seed));
  ResNet model({c.depth, channels, data.train.num_classes, c.width, c.norm,
                c.image_layout()},
               init_gen);
  if (c.bits > 0) nn::quantize_model(model, c.qconfig(), group.quant_seed(static_cast<std::uint64_t>(c.seed)));
  optim::SGD optimizer(model.named_parameters(),
                       optim::SGDOptions{c.lr}.momentum(c.momentum).weight_decay(c.weight_decay));
  const std::int64_t steps_per_epoch = train_loader.num_batches();
  const auto warmup_steps = static_cast<std::int64_t>(c.warmup_epochs * static_cast<double>(steps_per_epoch));
  const optim::WarmupCosine schedule(c.lr, warmup_steps, steps_per_epoch * c.epochs);

  std::int64_t first_epoch = 1, step = 0;
  if (!c.resume.empty()) {
    const io::TrainingCheckpoint ckpt = io::load_checkpoint(c.resume);
    const auto info = [&](const std::string& key) {
      const auto it = ckpt.info.find(key);
      if (it == ckpt.info.end()) throw IOError("checkpoint " + c.resume + " has no '" + key + "' entry");
      return it->second;
    };
    if (info("trainer") != "resnet" || without_layout(info("config")) != c.fingerprint())
      throw ValueError("checkpoint " + c.resume + " was written by a different configuration:\n  checkpoint: " +
                       info("config") + "\n  this run:   " + c.fingerprint());
    note_absent_state(io::restore(ckpt, c.resume, model, &optimizer), c.resume, verbose);
    first_epoch = std::stoll(info("epoch")) + 1;
    step = std::stoll(info("step"));
  }
  group.start(model, c.fingerprint(), static_cast<std::uint64_t>(c.seed));
  if (c.eval_only) {
    const EvalResult test = evaluate(model, test_loader, group);
    EpochMetrics m;
    m.epoch = first_epoch - 1;
    m.step = step;
    m.test_loss = test.loss;
    m.test_accuracy = test.accuracy;
    if (verbose)
      std::printf("%s (epoch %lld): test loss %.4f acc %.2f%% on %lld images, batches of %lld\n", c.resume.c_str(),
                  static_cast<long long>(m.epoch), m.test_loss, 100 * m.test_accuracy,
                  static_cast<long long>(test_loader.size()), static_cast<long long>(c.eval_batch));
    return {m};
  }
  MetricsLog log(log_path, /*append=*/!c.resume.empty());
  QuantReportLog quant_report(group.is_root() ? c.quant_report : QuantReportConfig{}, /*append=*/!c.resume.empty());
  if (verbose) {
    if (group.world() > 1)
      std::printf("data-parallel: %d processes, global batch %lld, %s gradient exchange\n", group.world(),
                  static_cast<long long>(c.batch), dist::to_string(c.dist.exchange(c.bits)));
    std::printf("%s: %lld train / %lld test images, ResNet-%lld (%lld parameters, %s norm), %s, %d threads\n",
                c.dataset.c_str(), static_cast<long long>(train_loader.size()),
                static_cast<long long>(test_loader.size()), static_cast<long long>(c.depth),
                static_cast<long long>(model.num_parameters()), c.norm.c_str(),
                c.bits > 0 ? c.qconfig().str().c_str() : "fp32", get_num_threads());
    if (first_epoch > 1) std::printf("resumed from %s after epoch %lld\n", c.resume.c_str(), static_cast<long long>(first_epoch - 1));
    std::fflush(stdout);
  }

  std::vector<EpochMetrics> history;
  NonFiniteGuard guard(c.skip_nonfinite);
  const std::int64_t last_epoch = c.stop_after > 0 ? std::min(c.stop_after, c.epochs) : c.epochs;
  for (std::int64_t epoch = first_epoch; epoch <= last_epoch; ++epoch) {
    Progress progress("epoch " + std::to_string(epoch) + "/" + std::to_string(c.epochs), steps_per_epoch, verbose);
    double loss_sum = 0, seconds = 0;
    std::int64_t correct = 0, seen = 0, counted_steps = 0, processed = 0;
    for (std::int64_t b = 0; b < steps_per_epoch; ++b, ++step) {
      const data::ImageBatch batch = train_loader.batch(epoch, b, group.shard());
      const std::int64_t global = std::min(c.batch, train_loader.size() - b * c.batch);
      const auto start = std::chrono::steady_clock::now();
      optimizer.set_lr(schedule.lr_at(step));
      quant_report.before_step(model, step);
      std::int64_t batch_correct = 0;
      const std::optional<double> loss = guard.run(
          [&] {
            Tensor logits;
            const double batch_loss = group.backward(
                [&] {
                  logits = model(batch.images);
                  return cross_entropy(logits, batch.labels);
                },
                optimizer, batch.labels.numel(), global, step);
            optimizer.step();
            if (logits.defined()) batch_correct = count_correct(logits, batch.labels);
            return batch_loss;
          },
          optimizer);
      seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      quant_report.after_step(model, step, loss.value_or(std::nan("")), [&] {
        return nn::probe_gradient_agreement(model, [&] { return cross_entropy(model(batch.images), batch.labels); });
      });
      processed += batch.labels.numel();
      if (loss) {
        loss_sum += *loss;
        ++counted_steps;
        correct += batch_correct;
        seen += batch.labels.numel();
      }
      char status[96];
      std::snprintf(status, sizeof status, "loss %.4f acc %.1f%% %.0f img/s", loss_sum / static_cast<double>(std::max<std::int64_t>(counted_steps, 1)),
                    100.0 * static_cast<double>(correct) / static_cast<double>(seen),
                    static_cast<double>(processed) / seconds);
      progress.update(b + 1, status);
    }
    if (group.world() > 1) {  // the epoch's sums over the ranks (each rank counted its own samples)
      std::vector<double> sums{loss_sum, static_cast<double>(correct), static_cast<double>(seen),
                               static_cast<double>(processed)};
      dist::allreduce_sum(sums);
      loss_sum = sums[0];
      correct = static_cast<std::int64_t>(sums[1]);
      seen = static_cast<std::int64_t>(sums[2]);
      processed = static_cast<std::int64_t>(sums[3]);
    }
    std::optional<double> accuracy_before_recalibration;
    if (epoch == c.epochs && c.bn_recalibrate > 0) {
      accuracy_before_recalibration = evaluate(model, test_loader, group).accuracy;
      recalibrate(model, train_loader, c.epochs + 1, c.bn_recalibrate);
    }
    const EvalResult test = evaluate(model, test_loader, group);
    EpochMetrics m{epoch,
                   step,
                   loss_sum / static_cast<double>(std::max<std::int64_t>(counted_steps, 1)),
                   static_cast<double>(correct) / static_cast<double>(std::max<std::int64_t>(seen, 1)),
                   test.loss,
                   test.accuracy,
                   static_cast<double>(processed) / seconds,
                   seconds,
                   optimizer.lr(),
                   accuracy_before_recalibration};
    history.push_back(m);
    log.write(MetricsRow()
                  .add("epoch", m.epoch)
                  .add("step", m.step)
                  .add("train_loss", m.train_loss)
                  .add("train_accuracy", m.train_accuracy)
                  .add("test_loss", m.test_loss)
                  .add("test_accuracy", m.test_accuracy)
                  .add("images_per_second", m.images_per_second)
                  .add("train_seconds", m.train_seconds)
                  .add("lr", m.lr)
                  .add("skipped_steps", guard.skipped())
                  .add_if(accuracy_before_recalibration.has_value(), "test_accuracy_before_recalibration",
                          accuracy_before_recalibration.value_or(0.0))
                  .add("precision", c.bits > 0 ? c.qconfig().str() : std::string("fp32"))
                  .add("norm", c.norm)
                  .add("layout", std::string(c.image_layout() == ImageLayout::nhwc ? "nhwc" : "nchw"))
                  .add_if(group.world() > 1, "processes", static_cast<std::int64_t>(group.world()))
                  .add_if(group.world() > 1, "exchange_bytes_per_step", group.exchange_bytes_per_step())
                  .add_if(group.world() > 1, "exchange_wait_ms_per_step", group.exchange_wait_ms_per_step()));
    if (verbose) {
      std::printf("epoch %lld: train loss %.4f acc %.2f%% | test loss %.4f acc %.2f%% | %.0f images/s (%.0f s)\n",
                  static_cast<long long>(epoch), m.train_loss, 100 * m.train_accuracy, m.test_loss,
                  100 * m.test_accuracy, m.images_per_second, m.train_seconds);
      std::fflush(stdout);
    }
    if (!checkpoint_path.empty()) {
      io::save_checkpoint(checkpoint_path, model, &optimizer,
                          {{"trainer", "resnet"},
                           {"config", c.fingerprint()},
                           {"epoch", std::to_string(epoch)},
                           {"step", std::to_string(step)},
                           {"test_accuracy", std::to_string(m.test_accuracy)}});
    }
  }
  return history;
}

}  // namespace shiftq::examples
