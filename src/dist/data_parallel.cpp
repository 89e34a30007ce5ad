#include "shiftq/dist/data_parallel.hpp"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstring>
#include <exception>
#include <unordered_map>

#include "shiftq/autograd/node.hpp"
#include "shiftq/core/generator.hpp"
#include "shiftq/dist/dist.hpp"
#include "shiftq/kernels/grad_codec.hpp"

#ifdef SHIFTQ_HAVE_MPI
#include "dist/mpi_util.hpp"
#endif

namespace shiftq::dist {

const char* to_string(GradExchange exchange) { return exchange == GradExchange::int8 ? "int8" : "fp32"; }

GradExchange parse_grad_exchange(const std::string& name) {
  if (name == "fp32") return GradExchange::fp32;
  if (name == "int8") return GradExchange::int8;
  throw ValueError("gradient exchange must be fp32 or int8, got '" + name + "'");
}

namespace {

struct Param {
  Tensor value;
  std::int64_t offset = 0;  // in its bucket's flat gradient
};

// Parameters exchanged together; flat holds their gradients back to back, padded so that every
// rank's slice (chunk) is a whole number of codec groups.
struct Bucket {
  std::vector<std::size_t> params;
  std::int64_t numel = 0, padded = 0, chunk = 0;
  std::int64_t ready = 0;        // parameters whose gradient is complete in this backward
  int phases_done = 0;
  bool in_flight = false;
  std::vector<float> flat;        // [padded]
  std::vector<float> owned_sum;   // fp32: [chunk], this rank's slice summed over the ranks
  std::vector<std::int8_t> exps;  // int8: [padded / group]
  std::vector<std::int8_t> codes;       // int8: [padded], this rank's codes, then the gathered means
  std::vector<std::int8_t> received;    // int8: [world, chunk], every rank's codes of this rank's slice
  std::vector<std::int8_t> owned_mean;  // int8: [chunk]
#ifdef SHIFTQ_HAVE_MPI
  MPI_Request request = MPI_REQUEST_NULL;
#endif
};

// The key of one stochastic rounding of the int8 exchange: stage 0 quantizes a rank's gradient,
// stage 1 rounds an owner's mean; distinct for every (seed, rank, stage, step, bucket).
[[maybe_unused]] std::uint64_t rounding_key(std::uint64_t seed, int rank, int stage, std::int64_t step,
                                            std::size_t bucket) {
  const auto stream = philox4x32(seed ^ 0x6a09e667f3bcc909ull, static_cast<std::uint64_t>(rank) * 2 + static_cast<std::uint64_t>(stage),
                                 static_cast<std::uint64_t>(step));
  const auto block = philox4x32((static_cast<std::uint64_t>(stream[0]) << 32) | stream[1], bucket, 0);
  return (static_cast<std::uint64_t>(block[0]) << 32) | block[1];
}

}  // namespace

struct DataParallel::Impl {
  DataParallelOptions options;
  nn::Module* model = nullptr;
  int rank = 0, world = 1;
  std::vector<Param> params;
  NamedTensors buffers;
  std::vector<Bucket> buckets;
  std::unordered_map<const AutogradMeta*, std::size_t> param_of_meta;
  std::vector<std::size_t> bucket_of_param;
  std::int64_t step = 0;
  ExchangeStats stats;
  // per step
  double weight = 1;
  bool broken = false;    // a DistError left MPI requests in flight: the buffers must never be freed
  std::vector<std::size_t> next_issue;  // per phase: the next bucket to start it (bucket order)
#ifdef SHIFTQ_HAVE_MPI
  std::vector<MPI_Comm> phase_comms;  // one communicator per phase: each sees its buckets in order
  MPI_Comm stamp_comm = MPI_COMM_NULL;
  std::vector<std::int64_t> stamps_in;  // [world]: the step each peer announced
  std::int64_t stamp_out = 0;
  std::vector<MPI_Request> stamp_requests;
#endif

  int num_phases() const { return options.exchange() == GradExchange::int8 ? 3 : 2; }
  std::int64_t pad_unit() const {
    return options.exchange() == GradExchange::int8 ? world * options.group_size() : world;
  }

  void build_buckets() {
    // Reverse registration order: roughly the order in which backward completes the gradients.
    Bucket current;
    const std::int64_t limit = std::max<std::int64_t>(1, options.bucket_bytes() / 4);
    bucket_of_param.assign(params.size(), 0);
    auto close = [&] {
      if (current.params.empty()) return;
      const std::int64_t unit = pad_unit();
      current.padded = (current.numel + unit - 1) / unit * unit;
      SHIFTQ_CHECK(current.padded <= INT_MAX, ValueError, "DataParallel: a bucket of ", current.padded,
                   " values is more than one MPI call takes; split the parameter");
      current.chunk = current.padded / world;
      current.flat.assign(static_cast<std::size_t>(current.padded), 0.0f);
      if (options.exchange() == GradExchange::int8) {
        current.exps.assign(static_cast<std::size_t>(current.padded / options.group_size()), 0);
        current.codes.assign(static_cast<std::size_t>(current.padded), 0);
        current.received.assign(static_cast<std::size_t>(current.padded), 0);
        current.owned_mean.assign(static_cast<std::size_t>(current.chunk), 0);
      } else {
        current.owned_sum.assign(static_cast<std::size_t>(current.chunk), 0.0f);
      }
      buckets.push_back(std::move(current));
      current = Bucket{};
    };
    for (std::size_t k = params.size(); k-- > 0;) {
      const std::int64_t n = params[k].value.numel();
      if (!current.params.empty() && current.numel + n > limit) close();
      params[k].offset = current.numel;
      bucket_of_param[k] = buckets.size();
      current.params.push_back(k);
      current.numel += n;
    }
    close();
  }

  // ---- the phases -------------------------------------------------------------------------------
  // fp32: 0 reduce-scatter of weight * grad, 1 all-gather of the owners' sums.
  // int8: 0 max-allreduce of the group exponents, 1 all-to-all of the codes (every owner gets its
  // slice from every rank), 2 all-gather of the owners' rounded means.

  void gather_gradients(Bucket& b) {
    const float scale = static_cast<float>(options.exchange() == GradExchange::int8 ? weight * world : weight);
    std::fill(b.flat.begin(), b.flat.end(), 0.0f);
    for (std::size_t k : b.params) {
      const Param& p = params[k];
      float* dst = b.flat.data() + p.offset;
      const Tensor grad = p.value.grad();
      if (grad.defined()) {
        const float* src = grad.data<float>();
        for (std::int64_t i = 0; i < grad.numel(); ++i) dst[i] = scale * src[i];
      }
    }
  }

  void scatter_gradients(const Bucket& b) {
    for (std::size_t k : b.params) {
      Param& p = params[k];
      Tensor grad = p.value.grad();
      if (!grad.defined()) {
        grad = Tensor::uninitialized(p.value.shape());
        p.value.set_grad(grad);
      }
      std::memcpy(grad.data<float>(), b.flat.data() + p.offset, sizeof(float) * static_cast<std::size_t>(p.value.numel()));
    }
  }

#ifdef SHIFTQ_HAVE_MPI
  void issue(std::size_t index, int phase) {
    Bucket& b = buckets[index];
    const bool int8 = options.exchange() == GradExchange::int8;
    const MPI_Comm comm = phase_comms[static_cast<std::size_t>(phase)];
    const std::int64_t p1 = world - 1;
    const auto chunk = static_cast<int>(b.chunk);
    int code = MPI_SUCCESS;
    if (phase == 0) {
      gather_gradients(b);
      if (int8) {
        kernels::grad_group_exponents_f32(b.flat.data(), b.padded, options.group_size(), b.exps.data());
        const auto groups = static_cast<std::int64_t>(b.exps.size());
        code = MPI_Iallreduce(MPI_IN_PLACE, b.exps.data(), static_cast<int>(groups), MPI_INT8_T, MPI_MAX, comm, &b.request);
        stats.bytes_sent += 2 * p1 * ((groups + world - 1) / world);
      } else {
        code = MPI_Ireduce_scatter_block(b.flat.data(), b.owned_sum.data(), chunk, MPI_FLOAT, MPI_SUM, comm, &b.request);
        stats.bytes_sent += p1 * b.chunk * 4;
      }
    } else if (phase == 1 && int8) {
      kernels::grad_quantize_f32(b.flat.data(), b.padded, options.group_size(), b.exps.data(),
                                 rounding_key(options.seed(), rank, 0, step, index), b.codes.data());
      code = MPI_Ialltoall(b.codes.data(), chunk, MPI_INT8_T, b.received.data(), chunk, MPI_INT8_T, comm, &b.request);
      stats.bytes_sent += p1 * b.chunk;
    } else if (phase == 1) {
      code = MPI_Iallgather(b.owned_sum.data(), chunk, MPI_FLOAT, b.flat.data(), chunk, MPI_FLOAT, comm, &b.request);
      stats.bytes_sent += p1 * b.chunk * 4;
    } else {
      kernels::grad_mean_codes_s8(b.received.data(), world, b.chunk, rounding_key(options.seed(), rank, 1, step, index),
                                  b.owned_mean.data());
      code = MPI_Iallgather(b.owned_mean.data(), chunk, MPI_INT8_T, b.codes.data(), chunk, MPI_INT8_T, comm, &b.request);
      stats.bytes_sent += p1 * b.chunk;
    }
    detail::check_mpi(code, "DataParallel exchange");
    b.in_flight = true;
  }

  void complete(Bucket& b) {
    b.in_flight = false;
    ++b.phases_done;
    if (b.phases_done < num_phases()) return;
    if (options.exchange() == GradExchange::int8)
      kernels::grad_dequantize_s8(b.codes.data(), b.padded, options.group_size(), b.exps.data(), b.flat.data());
    scatter_gradients(b);
  }

  // Completes what finished and starts what can start; true when anything changed.
  bool progress() {
    bool changed = false;
    for (Bucket& b : buckets) {
      if (!b.in_flight) continue;
      int flag = 0;
      detail::check_mpi(MPI_Test(&b.request, &flag, MPI_STATUS_IGNORE), "MPI_Test");
      if (flag) {
        complete(b);
        changed = true;
      }
    }
    for (int phase = 0; phase < num_phases(); ++phase) {
      std::size_t& next = next_issue[static_cast<std::size_t>(phase)];
      while (next < buckets.size()) {
        const Bucket& b = buckets[next];
        const bool can_start = !b.in_flight && b.phases_done == phase &&
                               (phase > 0 || b.ready == static_cast<std::int64_t>(b.params.size()));
        if (!can_start) break;
        issue(next++, phase);
        changed = true;
      }
    }
    return changed;
  }

  void announce_step() {
    stamp_out = step;
    stamps_in.assign(static_cast<std::size_t>(world), -1);
    stamp_requests.clear();
    for (int peer = 0; peer < world; ++peer) {
      if (peer == rank) continue;
      stamp_requests.emplace_back();
      detail::check_mpi(MPI_Irecv(&stamps_in[static_cast<std::size_t>(peer)], 1, MPI_INT64_T, peer, 0, stamp_comm,
                                  &stamp_requests.back()),
                        "MPI_Irecv");
      stamp_requests.emplace_back();
      detail::check_mpi(MPI_Isend(&stamp_out, 1, MPI_INT64_T, peer, 0, stamp_comm, &stamp_requests.back()), "MPI_Isend");
    }
  }

  // The peers that have not announced this step yet, for a timeout's message.
  std::string missing_ranks() {
    std::string missing;
    std::size_t request = 0;
    for (int peer = 0; peer < world; ++peer) {
      if (peer == rank) continue;
      int flag = 0;
      MPI_Request& r = stamp_requests[request];
      if (r != MPI_REQUEST_NULL) MPI_Test(&r, &flag, MPI_STATUS_IGNORE);
      if (r != MPI_REQUEST_NULL) missing += (missing.empty() ? "" : ", ") + std::to_string(peer);
      request += 2;
    }
    return missing.empty() ? std::string("every peer reached this step; one stopped inside the exchange")
                           : "rank(s) " + missing + " did not reach step " + std::to_string(step);
  }

  void finish_exchange() {
    using Clock = std::chrono::steady_clock;
    const auto start = Clock::now();
    for (Bucket& b : buckets) b.ready = static_cast<std::int64_t>(b.params.size());
    auto last_progress = Clock::now();
    detail::PollBackoff backoff;
    const auto all_done = [&] {
      return std::all_of(buckets.begin(), buckets.end(), [&](const Bucket& b) { return b.phases_done == num_phases(); });
    };
    while (!all_done()) {
      if (progress()) {
        last_progress = Clock::now();
        backoff.reset();
        continue;
      }
      const double waited = std::chrono::duration<double>(Clock::now() - last_progress).count();
      if (waited > timeout())
        throw DistError("rank " + std::to_string(rank) + ": gradient exchange of step " + std::to_string(step) +
                        ": no progress for " + std::to_string(static_cast<long long>(waited)) + " s (dist::timeout " +
                        std::to_string(timeout()) + " s); " + missing_ranks());
      backoff.pause();
    }
    detail::wait_all(stamp_requests, "gradient exchange of step " + std::to_string(step),
                     [this] { return missing_ranks(); });
    // The ranks agree on the step: a rank that skipped or repeated one would pair its collectives
    // with another step's.
    for (int peer = 0; peer < world; ++peer)
      if (peer != rank && stamps_in[static_cast<std::size_t>(peer)] != step)
        throw DistError("rank " + std::to_string(rank) + ": gradient exchange of step " + std::to_string(step) +
                        " met rank " + std::to_string(peer) + " at step " +
                        std::to_string(stamps_in[static_cast<std::size_t>(peer)]) +
                        " (the ranks must call backward/sync_gradients equally often, with the same set_step)");
    stats.wait_seconds += std::chrono::duration<double>(Clock::now() - start).count();
  }
#endif

  void begin_step(double w) {
    SHIFTQ_CHECK(w == -1 || (w >= 0 && std::isfinite(w)), ValueError,
                 "DataParallel: weight must be >= 0 (this rank's share of the batch), got ", w);
    weight = w == -1 ? 1.0 / world : w;
    for (Bucket& b : buckets) {
      b.ready = 0;
      b.phases_done = 0;
      b.in_flight = false;
    }
    next_issue.assign(static_cast<std::size_t>(num_phases()), 0);
#ifdef SHIFTQ_HAVE_MPI
    if (world > 1) announce_step();
#endif
  }

  void on_ready(const AutogradMeta& meta) {
    if (world == 1) return;  // nothing to exchange
    const auto it = param_of_meta.find(&meta);
    if (it == param_of_meta.end()) return;
    ++buckets[bucket_of_param[it->second]].ready;
#ifdef SHIFTQ_HAVE_MPI
    progress();
#endif
  }

  // Completes the exchange; `ok` = this rank's backward succeeded. Returns whether it succeeded on
  // every rank (one small allreduce), so that all ranks drop a failed step alike.
  bool end_step(bool ok) {
    bool all_ok = ok;
    if (world == 1) {
      // One process: the gradient is already the batch's, up to the weight.
      for (Param& p : params) {
        Tensor grad = p.value.grad();
        if (!grad.defined()) {
          p.value.set_grad(Tensor::zeros(p.value.shape()));
          continue;
        }
        if (weight != 1.0) {
          float* g = grad.data<float>();
          for (std::int64_t i = 0; i < grad.numel(); ++i) g[i] *= static_cast<float>(weight);
        }
      }
    } else {
#ifdef SHIFTQ_HAVE_MPI
      finish_exchange();
      all_ok = all_true(ok);
      if (options.broadcast_buffers() && !buffers.empty())
        detail::broadcast_tensors(buffers, 0, "DataParallel: buffer broadcast of step " + std::to_string(step));
#endif
    }
    ++stats.steps;
    for (const Bucket& b : buckets) stats.values += b.numel;
    ++step;
    return all_ok;
  }

  // Runs one step's exchange around `produce_gradients` (backward, or nothing).
  template <class Produce>
  void run_step(double w, Produce&& produce_gradients) {
    try {
      begin_step(w);
      std::exception_ptr failure;
      try {
        produce_gradients();
      } catch (const DistError&) {
        throw;  // the group itself failed: no further collectives
      } catch (...) {
        failure = std::current_exception();
      }
      const bool all_ok = end_step(failure == nullptr);
      if (failure) std::rethrow_exception(failure);
      if (!all_ok)
        throw NumericError("DataParallel: backward failed on another rank at step " + std::to_string(step - 1) +
                           "; the step is dropped on every rank");
    } catch (const DistError&) {
      broken = true;
      throw;
    }
  }
};

DataParallel::DataParallel(nn::Module& model, DataParallelOptions options) : impl_(std::make_unique<Impl>()) {
  SHIFTQ_CHECK(options.bucket_bytes() > 0, ValueError, "DataParallel: bucket_bytes must be > 0, got ",
               options.bucket_bytes());
  SHIFTQ_CHECK(options.group_size() > 0, ValueError, "DataParallel: group_size must be > 0, got ", options.group_size());
  Impl& s = *impl_;
  s.options = options;
  s.model = &model;
  s.rank = rank();
  s.world = world_size();
  for (const auto& [name, value] : model.named_parameters()) {
    if (!value.requires_grad()) continue;
    SHIFTQ_CHECK(value.dtype() == DType::f32, DTypeError, "DataParallel: parameter ", name, " is ", value.str(),
                 "; only f32 parameters are exchanged");
    s.param_of_meta[value.meta().get()] = s.params.size();
    s.params.push_back({value, 0});
  }
  if (s.world > 1) s.build_buckets();
#ifdef SHIFTQ_HAVE_MPI
  if (s.world > 1) {
    check_same_config(std::string("DataParallel exchange=") + to_string(options.exchange()) +
                      " bucket_bytes=" + std::to_string(options.bucket_bytes()) +
                      " group_size=" + std::to_string(options.group_size()) + " buckets=" +
                      std::to_string(s.buckets.size()) + "\n" + detail::layout_of(model.named_parameters()));
    s.buffers = model.named_buffers();
    check_same_config(detail::layout_of(s.buffers));
    for (int phase = 0; phase < s.num_phases(); ++phase) s.phase_comms.push_back(detail::dup_world());
    s.stamp_comm = detail::dup_world();
  }
#endif
}

DataParallel::~DataParallel() {
#ifdef SHIFTQ_HAVE_MPI
  if (impl_->broken) {  // requests may still write into the buckets: keep them
    detail::abandoned().push_back(std::shared_ptr<Impl>(impl_.release()));
    return;
  }
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  for (MPI_Comm& c : impl_->phase_comms) MPI_Comm_free(&c);
  if (impl_->stamp_comm != MPI_COMM_NULL) MPI_Comm_free(&impl_->stamp_comm);
#endif
}

void DataParallel::backward(const Tensor& loss, double weight) {
  Impl& s = *impl_;
  s.run_step(weight, [&] {
    GradReadyHookGuard hook([&s](const AutogradMeta& leaf) { s.on_ready(leaf); });
    loss.backward();
  });
}

void DataParallel::sync_gradients(double weight) {
  impl_->run_step(weight, [] {});
}

std::int64_t DataParallel::step() const { return impl_->step; }
void DataParallel::set_step(std::int64_t step) {
  SHIFTQ_CHECK(step >= 0, ValueError, "DataParallel::set_step: step must be >= 0, got ", step);
  impl_->step = step;
}
const DataParallelOptions& DataParallel::options() const { return impl_->options; }
const ExchangeStats& DataParallel::stats() const { return impl_->stats; }
void DataParallel::reset_stats() { impl_->stats = ExchangeStats{}; }

}  // namespace shiftq::dist
