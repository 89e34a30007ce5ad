#include "transformer/trainer.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <optional>
#include <sstream>

#include "common/flags.hpp"
#include "common/nonfinite.hpp"
#include "common/resume.hpp"
#include "common/precision.hpp"
#include "common/report.hpp"
#include "transformer/model.hpp"

namespace shiftq::examples {
namespace {

constexpr const char* kPrepareHint =
    "; prepare the default corpus with `scripts/prepare-kjv.sh kjv.txt` (Debian packages bible-kjv and "
    "bible-kjv-text) or pass any UTF-8 text file with --data";

const std::string& info_entry(const io::TrainingCheckpoint& ckpt, const std::string& path, const std::string& key) {
  const auto it = ckpt.info.find(key);
  if (it == ckpt.info.end()) throw IOError("checkpoint " + path + " has no '" + key + "' entry");
  return it->second;
}

// `text`, the checkpoint entry `key`, as an integer.
std::int64_t parse_int(const std::string& text, const std::string& path, const std::string& key) {
  try {
    std::size_t used = 0;
    const std::int64_t value = std::stoll(text, &used);
    if (used == text.size()) return value;
  } catch (const std::logic_error&) {
  }
  throw IOError("checkpoint " + path + ": entry '" + key + "' is not an integer: '" + text + "'");
}

std::int64_t info_int(const io::TrainingCheckpoint& ckpt, const std::string& path, const std::string& key) {
  return parse_int(info_entry(ckpt, path, key), path, key);
}

GPTOptions model_options(const GPTTrainConfig& c, std::int64_t vocab_size) {
  return {vocab_size, c.context, c.layers, c.d_model, c.heads, c.norm, c.tie};
}

// quant_seed keys the quantized layers' stochastic rounding (TrainerGroup::quant_seed per rank).
std::unique_ptr<GPT> build_model(const GPTTrainConfig& c, std::int64_t vocab_size, std::uint64_t quant_seed) {
  Generator init_gen(static_cast<std::uint64_t>(c.seed));
  auto model = std::make_unique<GPT>(model_options(c, vocab_size), init_gen);
  if (c.bits > 0) model->quantize(c.qconfig(), quant_seed, static_cast<int>(c.attn_bits));
  return model;
}

// The rows of a batch that `shard` takes (data::shard_range); the batch itself for one process.
data::TokenBatch shard_rows(const data::TokenBatch& batch, data::Shard shard) {
  if (shard.world == 1) return batch;
  const std::int64_t t = batch.inputs.size(1);
  const std::pair<std::int64_t, std::int64_t> range = data::shard_range(batch.inputs.size(0), shard);
  const std::int64_t begin = range.first, end = range.second;  // plain locals: the lambda captures them
  const auto rows = [&](const Tensor& all) {
    Tensor part = Tensor::uninitialized({end - begin, t}, DType::s32);
    std::copy_n(all.data<std::int32_t>() + begin * t, (end - begin) * t, part.data<std::int32_t>());
    return part;
  };
  return {rows(batch.inputs), rows(batch.targets)};
}

// logits [B, T, V], targets [B, T] -> mean cross-entropy
Tensor lm_loss(const Tensor& logits, const Tensor& targets) {
  const std::int64_t v = logits.size(2);
  return cross_entropy(reshape(logits, {-1, v}), reshape(targets, {-1}));
}

// Mean over the validation batches; in a distributed run each rank scores every world-th batch.
double validation_loss(GPT& model, const data::TextDataset& text, const GPTTrainConfig& c, const TrainerGroup& group) {
  NoGradGuard no_grad;
  model.eval();
  const std::int64_t batches = std::min(c.eval_batches, text.num_val_batches(c.batch, c.context));
  std::vector<double> sum{0.0};
  for (std::int64_t i = group.rank(); i < batches; i += group.world()) {
    const data::TokenBatch b = text.val_batch(i, c.batch, c.context);
    sum[0] += lm_loss(model(b.inputs), b.targets).item();
  }
  model.train();
  if (group.world() > 1) dist::allreduce_sum(sum);
  return sum[0] / static_cast<double>(batches);
}

io::TrainingCheckpoint make_checkpoint(const GPTTrainConfig& c, GPT& model, const optim::Optimizer& optimizer,
                                       const Generator& data_gen, const data::CharVocab& vocab, std::int64_t step,
                                       double val_loss) {
  io::TrainingCheckpoint ckpt;
  ckpt.model = model.state_dict();  // the quantized layers' call counters included
  ckpt.optimizer = optimizer.state_dict();
  ckpt.generators["data"] = data_gen.state();
  ckpt.info = {{"trainer", "gpt"},
               {"config", c.fingerprint()},
               {"step", std::to_string(step)},
               {"val_loss", std::to_string(val_loss)},
               {"vocab", vocab.to_string()},
               {"layers", std::to_string(c.layers)},
               {"d_model", std::to_string(c.d_model)},
               {"heads", std::to_string(c.heads)},
               {"context", std::to_string(c.context)},
               {"norm", c.norm},
               {"tie", c.tie ? "1" : "0"},
               {"bits", std::to_string(c.bits)},
               {"act_bits", std::to_string(c.act_bits)},
               {"grad_bits", std::to_string(c.grad_bits)},
               {"grad_quant", c.grad_quant},
               {"act_quant", c.act_quant},
               {"act_clip", c.act_clip},
               {"weight_clip", c.weight_clip},
               {"weight_quant", c.weight_quant},
               {"act_rotation", c.act_rotation},
               {"act_scaling", c.act_scaling.mode + ":" + std::to_string(c.act_scaling.history)},
               {"head_bits", std::to_string(c.head_bits)},
               {"attn_bits", std::to_string(c.attn_bits)},
               {"norm_bits", std::to_string(c.norm_bits)},
               {"seed", std::to_string(c.seed)}};
  return ckpt;
}

}  // namespace

void GPTTrainConfig::validate() const {
  require(val_fraction > 0 && val_fraction < 1, "--val-fraction must be in (0, 1)");
  require(layers >= 1 && d_model >= 1 && heads >= 1 && context >= 1, "--layers, --d-model, --heads, --context must be positive");
  require(d_model % heads == 0, "--d-model must be divisible by --heads");
  require(norm == "l1" || norm == "l2", "--norm must be l1 or l2");
  require(bits == 0 || (bits >= 2 && bits <= 8), "--bits must be 0 (fp32) or 2..8");
  require(act_bits == 0 || (act_bits >= 2 && act_bits <= 8), "--act-bits must be 0 (same as --bits) or 2..8");
  require(grad_bits == 0 || (grad_bits >= 2 && grad_bits <= 8), "--grad-bits must be 0 (same as --bits) or 2..8");
  require(grad_quant == "shiftquant" || grad_quant == "per-tensor" || grad_quant == "per-row",
          "--grad-quant must be shiftquant, per-tensor or per-row");
  require(act_quant == "per-tensor" || act_quant == "shiftquant" || act_quant == "shiftquant-tokens" ||
              act_quant == "per-token" || act_quant == "per-token-blocks",
          "--act-quant must be per-tensor, shiftquant, shiftquant-tokens, per-token or per-token-blocks");
  require(act_clip == "none" || act_clip == "mse", "--act-clip must be none or mse");
  require(weight_clip == "none" || weight_clip == "mse", "--weight-clip must be none or mse");
  require(weight_quant == "shiftquant" || weight_quant == "per-channel", "--weight-quant must be shiftquant or per-channel");
  require(act_rotation == "none" || act_rotation == "hadamard", "--act-rotation must be none or hadamard");
  require(act_rotation == "none" || bits > 0, "--act-rotation needs integer training (--bits)");
  require(head_bits == 0 || (head_bits >= 2 && head_bits <= 8), "--head-bits must be 0 (same as --bits) or 2..8");
  require(attn_bits == 0 || (attn_bits >= 2 && attn_bits <= 8), "--attn-bits must be 0 (the activation bits) or 2..8");
  require(norm_bits == 0 || (norm_bits >= 2 && norm_bits <= 8), "--norm-bits must be 0 (float L1 norm) or 2..8");
  require(steps >= 1 && batch >= 1 && warmup >= 0, "--steps and --batch must be positive, --warmup >= 0");
  require(lr > 0 && min_lr_ratio >= 0 && min_lr_ratio <= 1 && weight_decay >= 0 && clip >= 0,
          "--lr > 0, --min-lr-ratio in [0, 1], --weight-decay >= 0, --clip >= 0 (0 = off)");
  require(eval_every >= 1 && eval_batches >= 1, "--eval-every and --eval-batches must be positive");
  require(threads >= 0 && seed >= 0 && stop_after >= 0 && skip_nonfinite >= 0,
          "--threads, --seed, --stop-after and --skip-nonfinite must be >= 0");
  act_scaling.validate();
  quant_report.validate(dist.distributed);
  require(quant_report.path.empty() || bits > 0, "--quant-report needs integer training (--bits)");
  dist.validate();
}

std::string GPTTrainConfig::fingerprint() const {
  std::ostringstream s;
  s << "val_fraction=" << val_fraction << " layers=" << layers << " d_model=" << d_model << " heads=" << heads
    << " context=" << context << " norm=" << norm << " tie=" << tie << " bits=" << bits << " act_bits=" << act_bits << " grad_quant=" << grad_quant
    << " head_bits=" << head_bits << " norm_bits=" << norm_bits << " steps=" << steps << " batch=" << batch
    << " warmup=" << warmup << " lr=" << lr << " min_lr_ratio=" << min_lr_ratio << " weight_decay=" << weight_decay
    << " clip=" << clip << " seed=" << seed;
  // Absent at their defaults, as before the flags existed (older checkpoints keep resuming).
  if (act_quant != "per-tensor") s << " act_quant=" << act_quant;
  if (attn_bits != 0) s << " attn_bits=" << attn_bits;
  if (act_clip != "none") s << " act_clip=" << act_clip;
  if (weight_clip != "none") s << " weight_clip=" << weight_clip;
  if (weight_quant != "shiftquant") s << " weight_quant=" << weight_quant;
  if (act_rotation != "none") s << " act_rotation=" << act_rotation;
  if (grad_bits != 0) s << " grad_bits=" << grad_bits;
  s << act_scaling.fingerprint();
  return s.str();
}

std::string GPTTrainConfig::precision() const {
  if (bits == 0) return "fp32";
  std::string s = qconfig().str();
  if (attn_bits != 0) s += "; attention matmuls: " + std::to_string(attn_bits) + "-bit";
  return s;
}

quant::QConfig GPTTrainConfig::qconfig() const {
  // Linear inputs are signed (norm outputs, GELU, attention outputs): ShiftQuant groups take the
  // symmetric budget S = 8 - b.
  const bool shiftquant = act_quant == "shiftquant" || act_quant == "shiftquant-tokens";
  quant::QConfig q = make_qconfig(bits, act_bits, grad_quant, head_bits, norm_bits, shiftquant ? "symmetric" : "auto",
                                  act_clip, shiftquant ? "shiftquant" : "per-tensor", weight_clip, grad_bits);
  if (act_quant == "shiftquant-tokens") q.linear_input_groups = quant::LinearInputGroups::rows;
  if (act_quant == "per-token") q.linear_input_groups = quant::LinearInputGroups::row_scales;
  if (act_quant == "per-token-blocks") q.linear_input_groups = quant::LinearInputGroups::row_blocks;
  if (act_rotation == "hadamard") q.linear_input_rotation = quant::LinearInputRotation::hadamard;
  if (weight_quant == "per-channel") {
    q.weights.kind = quant::QuantizerKind::per_row;
    q.weights.shift_budget = 0;
  }
  act_scaling.apply(q);
  return q;
}

std::vector<GPTEvalPoint> train_gpt(const GPTTrainConfig& c) {
  c.validate();
  TrainerGroup group(c.dist, c.bits);
  const bool verbose = c.verbose && group.is_root();
  const std::string checkpoint_path = group.is_root() ? c.checkpoint : std::string();
  const std::string log_path = group.is_root() ? c.log : std::string();
  if (c.threads > 0) set_num_threads(static_cast<int>(c.threads));
  check_output_path(checkpoint_path, "checkpoint");
  check_output_path(log_path, "metrics log");
  check_output_path(group.is_root() ? c.quant_report.path : std::string(), "numerics report");
  std::string text;
  try {
    text = data::read_text_file(c.data);
  } catch (const IOError& e) {
    throw IOError(std::string(e.what()) + kPrepareHint);
  }
  std::optional<io::TrainingCheckpoint> ckpt;
  if (!c.resume.empty()) {
    ckpt = io::load_checkpoint(c.resume);
    if (info_entry(*ckpt, c.resume, "trainer") != "gpt" || info_entry(*ckpt, c.resume, "config") != c.fingerprint())
      throw ValueError("checkpoint " + c.resume + " was written by a different configuration:\n  checkpoint: " +
                       info_entry(*ckpt, c.resume, "config") + "\n  this run:   " + c.fingerprint());
  }
  const data::TextDataset dataset =
      ckpt ? data::TextDataset(text, data::CharVocab::from_string(info_entry(*ckpt, c.resume, "vocab")), c.val_fraction)
           : data::TextDataset(text, c.val_fraction);
  auto model = build_model(c, dataset.vocab().size(), group.quant_seed(static_cast<std::uint64_t>(c.seed)));
  optim::AdamW optimizer(model->named_parameters(), optim::AdamWOptions{c.lr}.weight_decay(c.weight_decay));
  const optim::WarmupCosine schedule(c.lr, std::min(c.warmup, c.steps - 1), c.steps, c.lr * c.min_lr_ratio);
  Generator data_gen(static_cast<std::uint64_t>(c.seed) ^ 0x9e3779b97f4a7c15ull);
  std::int64_t step = 0;
  if (ckpt) {
    note_absent_state(io::restore(*ckpt, c.resume, *model, &optimizer), c.resume, verbose);
    const auto gen = ckpt->generators.find("data");
    if (gen == ckpt->generators.end()) throw IOError("checkpoint " + c.resume + " has no 'data' generator state");
    data_gen.set_state(gen->second);
    step = info_int(*ckpt, c.resume, "step");
  }
  group.start(*model, c.fingerprint(), static_cast<std::uint64_t>(c.seed));
  const std::vector<Tensor> params = model->parameters();
  MetricsLog log(log_path, /*append=*/ckpt.has_value());
  QuantReportLog quant_report(group.is_root() ? c.quant_report : QuantReportConfig{}, /*append=*/ckpt.has_value());
  if (verbose) {
    if (group.world() > 1)
      std::printf("data-parallel: %d processes, global batch %lld, %s gradient exchange\n", group.world(),
                  static_cast<long long>(c.batch), dist::to_string(c.dist.exchange(c.bits)));
    std::printf("%s: %lld train / %lld validation characters, vocabulary %lld\n"
                "GPT: %lld layers, d_model %lld, %lld heads, context %lld, %lld parameters, %s norm; %s; %d threads\n",
                c.data.c_str(), static_cast<long long>(dataset.train_size()), static_cast<long long>(dataset.val_size()),
                static_cast<long long>(dataset.vocab().size()), static_cast<long long>(c.layers),
                static_cast<long long>(c.d_model), static_cast<long long>(c.heads), static_cast<long long>(c.context),
                static_cast<long long>(model->num_parameters()), c.norm.c_str(),
                c.precision().c_str(), get_num_threads());
    if (step > 0) std::printf("resumed from %s at step %lld\n", c.resume.c_str(), static_cast<long long>(step));
    std::fflush(stdout);
  }

  std::vector<GPTEvalPoint> history;
  double loss_sum = 0, seconds = 0;
  std::int64_t window_steps = 0, window_counted = 0;
  NonFiniteGuard guard(c.skip_nonfinite);
  Progress progress("train", c.steps, verbose);
  const std::int64_t last_step = c.stop_after > 0 ? std::min(c.stop_after, c.steps) : c.steps;
  while (step < last_step) {
    // Every rank draws the same global batch and trains on its rows of it.
    const data::TokenBatch batch = shard_rows(dataset.sample_train(c.batch, c.context, data_gen), group.shard());
    const auto start = std::chrono::steady_clock::now();
    optimizer.set_lr(schedule.lr_at(step));
    quant_report.before_step(*model, step);
    const std::optional<double> loss = guard.run(
        [&] {
          const double batch_loss = group.backward([&] { return lm_loss((*model)(batch.inputs), batch.targets); },
                                                   optimizer, batch.inputs.size(0), c.batch, step);
          if (c.clip > 0) optim::clip_grad_norm(params, c.clip);
          optimizer.step();
          return batch_loss;
        },
        optimizer);
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    quant_report.after_step(*model, step, loss.value_or(std::nan("")), [&] {
      return nn::probe_gradient_agreement(
          *model, [&] { return lm_loss((*model)(batch.inputs), batch.targets); },
          [&](bool on) { model->set_attention_quantized(on); });
    });
    ++step;
    ++window_steps;
    if (loss) {
      loss_sum += *loss;
      ++window_counted;
    }
    const double tokens_per_second = static_cast<double>(window_steps * c.batch * c.context) / seconds;
    char status[80];
    std::snprintf(status, sizeof status, "loss %.4f %.0f tok/s", loss_sum / static_cast<double>(std::max<std::int64_t>(window_counted, 1)),
                  tokens_per_second);
    progress.update(step, status);
    if (step % c.eval_every != 0 && step != last_step) continue;
    if (group.world() > 1) {  // the window's losses summed over the ranks (each is weighted by its share)
      std::vector<double> sums{loss_sum};
      dist::allreduce_sum(sums);
      loss_sum = sums[0];
    }
    const double val = validation_loss(*model, dataset, c, group);
    const GPTEvalPoint point{step, loss_sum / static_cast<double>(std::max<std::int64_t>(window_counted, 1)), val, val / std::log(2.0),
                             tokens_per_second};
    history.push_back(point);
    log.write(MetricsRow()
                  .add("step", point.step)
                  .add("train_loss", point.train_loss)
                  .add("val_loss", point.val_loss)
                  .add("val_bpc", point.val_bpc)
                  .add("tokens_per_second", point.tokens_per_second)
                  .add("lr", optimizer.lr())
                  .add("skipped_steps", guard.skipped())
                  .add("precision", c.precision())
                  .add("norm", c.norm)
                  .add_if(group.world() > 1, "processes", static_cast<std::int64_t>(group.world()))
                  .add_if(group.world() > 1, "exchange_bytes_per_step", group.exchange_bytes_per_step())
                  .add_if(group.world() > 1, "exchange_wait_ms_per_step", group.exchange_wait_ms_per_step()));
    if (verbose) {
      std::printf("step %lld: train loss %.4f | val loss %.4f (%.3f bits/char) | %.0f tokens/s\n",
                  static_cast<long long>(step), point.train_loss, point.val_loss, point.val_bpc,
                  point.tokens_per_second);
      std::fflush(stdout);
    }
    if (!checkpoint_path.empty())
      io::save_checkpoint(checkpoint_path, make_checkpoint(c, *model, optimizer, data_gen, dataset.vocab(), step, val));
    loss_sum = 0;
    seconds = 0;
    window_steps = 0;
    window_counted = 0;
  }
  return history;
}

namespace {
GPTTrainConfig model_config(const io::TrainingCheckpoint& ckpt, const std::string& checkpoint) {
  if (info_entry(ckpt, checkpoint, "trainer") != "gpt")
    throw IOError("checkpoint " + checkpoint + " was not written by the GPT trainer");
  GPTTrainConfig c;
  c.layers = info_int(ckpt, checkpoint, "layers");
  c.d_model = info_int(ckpt, checkpoint, "d_model");
  c.heads = info_int(ckpt, checkpoint, "heads");
  c.context = info_int(ckpt, checkpoint, "context");
  c.norm = info_entry(ckpt, checkpoint, "norm");
  c.tie = info_entry(ckpt, checkpoint, "tie") == "1";
  c.bits = info_int(ckpt, checkpoint, "bits");
  c.act_bits = info_int(ckpt, checkpoint, "act_bits");
  c.grad_quant = info_entry(ckpt, checkpoint, "grad_quant");
  // Written since the flags existed; older checkpoints hold the defaults.
  for (auto [key, field] : {std::pair{"act_quant", &c.act_quant}, std::pair{"act_clip", &c.act_clip},
                            std::pair{"weight_clip", &c.weight_clip}, std::pair{"weight_quant", &c.weight_quant},
                            std::pair{"act_rotation", &c.act_rotation}})
    if (ckpt.info.count(key)) *field = ckpt.info.at(key);
  for (auto [key, field] : {std::pair{"attn_bits", &c.attn_bits}, std::pair{"grad_bits", &c.grad_bits}})
    if (ckpt.info.count(key)) *field = info_int(ckpt, checkpoint, key);
  if (ckpt.info.count("act_scaling")) {  // "mode:history": the observers' shape and rule
    const std::string& scaling = ckpt.info.at("act_scaling");
    const std::size_t colon = scaling.find(':');
    if (colon == std::string::npos)
      throw IOError("checkpoint " + checkpoint + ": info act_scaling='" + scaling + "' is not mode:history");
    c.act_scaling.mode = scaling.substr(0, colon);
    c.act_scaling.history = parse_int(scaling.substr(colon + 1), checkpoint, "act_scaling");
  }
  c.head_bits = info_int(ckpt, checkpoint, "head_bits");
  c.norm_bits = info_int(ckpt, checkpoint, "norm_bits");
  c.seed = info_int(ckpt, checkpoint, "seed");
  try {
    c.validate();
  } catch (const UsageError& e) {
    throw IOError("checkpoint " + checkpoint + " holds an invalid model description: " + e.what());
  }
  return c;
}
}  // namespace

GPTTrainConfig gpt_model_config(const std::string& checkpoint) {
  return model_config(io::load_checkpoint(checkpoint), checkpoint);
}

std::string sample_gpt(const std::string& checkpoint, const SampleOptions& options) {
  if (options.length < 0 || options.temperature <= 0 || options.top_k < 0)
    throw ValueError("sample: need length >= 0, temperature > 0, top_k >= 0 (0 = all)");
  const io::TrainingCheckpoint ckpt = io::load_checkpoint(checkpoint);
  const GPTTrainConfig c = model_config(ckpt, checkpoint);
  const data::CharVocab vocab = data::CharVocab::from_string(info_entry(ckpt, checkpoint, "vocab"));
  auto model = build_model(c, vocab.size(), static_cast<std::uint64_t>(c.seed));
  io::restore(ckpt, checkpoint, *model, nullptr);
  model->eval();
  NoGradGuard no_grad;

  std::vector<std::int32_t> tokens = vocab.encode(options.prompt);
  if (tokens.empty()) throw ValueError("sample: the prompt must not be empty");
  Generator gen(static_cast<std::uint64_t>(options.seed));
  const auto v = static_cast<std::size_t>(vocab.size());
  std::vector<std::int32_t> generated;
  std::vector<std::pair<float, std::int32_t>> candidates(v);
  for (std::int64_t n = 0; n < options.length; ++n) {
    const auto t = std::min<std::int64_t>(static_cast<std::int64_t>(tokens.size()), c.context);
    const std::vector<std::int32_t> window(tokens.end() - t, tokens.end());
    const Tensor logits = (*model)(Tensor::from_vector(window, {1, t}));  // [1, t, V]
    const float* last = logits.data<float>() + (t - 1) * static_cast<std::int64_t>(v);
    for (std::size_t i = 0; i < v; ++i)
      candidates[i] = {last[i] / static_cast<float>(options.temperature), static_cast<std::int32_t>(i)};
    const std::size_t k = options.top_k > 0 ? std::min<std::size_t>(v, static_cast<std::size_t>(options.top_k)) : v;
    std::partial_sort(candidates.begin(), candidates.begin() + static_cast<std::ptrdiff_t>(k), candidates.end(),
                      [](const auto& a, const auto& b) { return a.first > b.first; });
    double total = 0;
    std::vector<double> weights(k);
    for (std::size_t i = 0; i < k; ++i) total += weights[i] = std::exp(candidates[i].first - candidates[0].first);
    double r = gen.uniform() * total;
    std::size_t pick = 0;
    while (pick + 1 < k && (r -= weights[pick]) > 0) ++pick;
    tokens.push_back(candidates[pick].second);
    generated.push_back(candidates[pick].second);
  }
  return vocab.decode(generated);
}

}  // namespace shiftq::examples
