#include "shiftq/dist/dist.hpp"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <memory>
#include <cstring>
#include <thread>

#ifdef SHIFTQ_HAVE_MPI
#include "dist/mpi_util.hpp"
#endif

namespace shiftq::dist {
namespace {
double g_timeout_seconds = 600.0;


// Parameters and buffers, or buffers only, by name: every rank must list the same ones.
[[maybe_unused]] NamedTensors state_of(const nn::Module& model, bool with_parameters) {
  NamedTensors out = with_parameters ? model.named_parameters() : NamedTensors{};
  for (auto& named : model.named_buffers()) out.push_back(named);
  return out;
}
}  // namespace

void set_timeout(double seconds) {
  SHIFTQ_CHECK(seconds > 0, ValueError, "dist::set_timeout: seconds must be > 0, got ", seconds);
  g_timeout_seconds = seconds;
}
double timeout() { return g_timeout_seconds; }

#ifdef SHIFTQ_HAVE_MPI

namespace {
bool g_we_initialized = false;
MPI_Comm g_comm = MPI_COMM_NULL;  // a duplicate of MPI_COMM_WORLD for the calls of this file
}  // namespace

namespace detail {

MPI_Comm world_comm() {
  if (g_comm == MPI_COMM_NULL) throw DistError("dist: call dist::init() first");
  return g_comm;
}

void check_mpi(int code, const char* call) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  throw DistError(std::string(call) + " failed on rank " + std::to_string(rank()) + ": " + std::string(text, length));
}

void PollBackoff::pause() {
  // About a millisecond of busy polling (a collective between ranks on one machine completes in
  // microseconds), then 50 us sleeps.
  if (++polls_ < 2000) {
    std::this_thread::yield();
    return;
  }
  std::this_thread::sleep_for(std::chrono::microseconds(50));
}

// Buffers of requests that timed out: MPI may still write them, so they are never freed.
std::vector<std::shared_ptr<void>>& abandoned() {
  static std::vector<std::shared_ptr<void>> buffers;
  return buffers;
}

void wait_all(std::vector<MPI_Request>& requests, const std::string& what,
              const std::function<std::string()>& who_is_missing, std::shared_ptr<void> in_flight) {
  using Clock = std::chrono::steady_clock;
  auto last_progress = Clock::now();
  PollBackoff backoff;
  int done_before = -1;
  for (;;) {
    int done = 0;
    for (MPI_Request& r : requests) {
      int flag = 0;
      if (r != MPI_REQUEST_NULL) check_mpi(MPI_Test(&r, &flag, MPI_STATUS_IGNORE), "MPI_Test");
      done += r == MPI_REQUEST_NULL ? 1 : 0;
    }
    if (done == static_cast<int>(requests.size())) return;
    if (done != done_before) {
      done_before = done;
      last_progress = Clock::now();
    }
    const double waited = std::chrono::duration<double>(Clock::now() - last_progress).count();
    if (waited > timeout()) {
      std::string message = "rank " + std::to_string(rank()) + ": " + what + ": no progress for " +
                            std::to_string(static_cast<long long>(waited)) + " s (dist::timeout " +
                            std::to_string(timeout()) + " s)";
      const std::string missing = who_is_missing ? who_is_missing() : std::string();
      if (in_flight) abandoned().push_back(std::move(in_flight));
      throw DistError(message + (missing.empty() ? "; a peer rank stopped or hangs" : "; " + missing));
    }
    backoff.pause();
  }
}

std::string layout_of(const NamedTensors& tensors) {
  std::string layout;
  for (const auto& [name, t] : tensors) layout += name + " " + t.str() + "\n";
  return layout;
}

void broadcast_tensors(NamedTensors& tensors, int root, const std::string& what) {
  std::size_t total = 0;
  for (const auto& named : tensors) total += named.second.nbytes();
  auto packed = std::make_shared<std::vector<std::uint8_t>>(total);
  const bool is_root = rank() == root;
  std::size_t offset = 0;
  for (auto& [name, t] : tensors) {
    if (is_root) std::memcpy(packed->data() + offset, t.raw_bytes(), t.nbytes());
    offset += t.nbytes();
  }
  // Pieces of at most 1 GiB: MPI counts are int.
  constexpr std::size_t kPiece = std::size_t{1} << 30;
  std::vector<MPI_Request> requests;
  for (std::size_t begin = 0; begin < total; begin += kPiece) {
    requests.emplace_back();
    check_mpi(MPI_Ibcast(packed->data() + begin, static_cast<int>(std::min(kPiece, total - begin)), MPI_BYTE, root,
                         world_comm(), &requests.back()),
              "MPI_Ibcast");
  }
  wait_all(requests, what, {}, packed);
  if (is_root) return;
  offset = 0;
  for (auto& [name, t] : tensors) {
    std::memcpy(t.raw_bytes(), packed->data() + offset, t.nbytes());
    t.bump_version();
    offset += t.nbytes();
  }
}

MPI_Comm dup_world() {
  MPI_Comm comm = MPI_COMM_NULL;
  check_mpi(MPI_Comm_dup(MPI_COMM_WORLD, &comm), "MPI_Comm_dup");
  check_mpi(MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
  return comm;
}

}  // namespace detail

namespace {
MPI_Comm comm() { return detail::world_comm(); }

// Every rank's text, in rank order.
std::vector<std::string> allgather_text(const std::string& text, const std::string& what) {
  const int world = world_size();
  struct Buffers {
    std::string mine, all;
    int length = 0;
    std::vector<int> lengths, offsets;
  };
  auto b = std::make_shared<Buffers>();
  b->mine = text;
  b->length = static_cast<int>(text.size());
  b->lengths.assign(static_cast<std::size_t>(world), 0);
  std::vector<MPI_Request> request(1);
  detail::check_mpi(MPI_Iallgather(&b->length, 1, MPI_INT, b->lengths.data(), 1, MPI_INT, comm(), request.data()),
                    "MPI_Iallgather");
  detail::wait_all(request, what, {}, b);
  b->offsets.assign(static_cast<std::size_t>(world), 0);
  for (int r = 1; r < world; ++r) b->offsets[r] = b->offsets[r - 1] + b->lengths[r - 1];
  b->all.assign(static_cast<std::size_t>(b->offsets.back() + b->lengths.back()), '\0');
  detail::check_mpi(MPI_Iallgatherv(b->mine.data(), b->length, MPI_CHAR, b->all.data(), b->lengths.data(),
                                    b->offsets.data(), MPI_CHAR, comm(), request.data()),
                    "MPI_Iallgatherv");
  detail::wait_all(request, what, {}, b);
  std::vector<std::string> out;
  for (int r = 0; r < world; ++r)
    out.push_back(b->all.substr(static_cast<std::size_t>(b->offsets[r]), static_cast<std::size_t>(b->lengths[r])));
  return out;
}

void broadcast_state(nn::Module& model, int root, bool with_parameters) {
  if (world_size() == 1) return;
  SHIFTQ_CHECK(root >= 0 && root < world_size(), ValueError, "dist: root ", root, " is not a rank of ", world_size());
  NamedTensors state = state_of(model, with_parameters);
  check_same_config(detail::layout_of(state));  // names, dtypes and shapes agree before any bytes move
  detail::broadcast_tensors(state, root, with_parameters ? "dist::broadcast_parameters" : "dist::broadcast_buffers");
}
}  // namespace

bool mpi_available() { return true; }

void init() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = 0;
    detail::check_mpi(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
    g_we_initialized = true;
    if (provided < MPI_THREAD_FUNNELED)
      throw DistError("dist::init: this MPI library does not support MPI_THREAD_FUNNELED (provides level " +
                      std::to_string(provided) + ")");
  }
  if (g_comm == MPI_COMM_NULL) g_comm = detail::dup_world();
}

void finalize() {
  if (g_comm == MPI_COMM_NULL) return;
  MPI_Comm_free(&g_comm);
  g_comm = MPI_COMM_NULL;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (g_we_initialized && !finalized) MPI_Finalize();
  g_we_initialized = false;
}

void abort(int exit_code) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Abort(MPI_COMM_WORLD, exit_code);
  std::exit(exit_code);
}

bool is_initialized() { return g_comm != MPI_COMM_NULL; }

int rank() {
  if (!is_initialized()) return 0;
  int r = 0;
  MPI_Comm_rank(g_comm, &r);
  return r;
}

int world_size() {
  if (!is_initialized()) return 1;
  int w = 1;
  MPI_Comm_size(g_comm, &w);
  return w;
}

void barrier() {
  if (world_size() == 1) return;
  std::vector<MPI_Request> request(1);
  detail::check_mpi(MPI_Ibarrier(comm(), request.data()), "MPI_Ibarrier");
  detail::wait_all(request, "dist::barrier");
}

void allreduce_sum(std::vector<double>& values) {
  if (world_size() == 1 || values.empty()) return;
  SHIFTQ_CHECK(values.size() <= static_cast<std::size_t>(INT_MAX), ValueError, "dist::allreduce_sum: ",
               values.size(), " values are more than one MPI call takes");
  auto sums = std::make_shared<std::vector<double>>(values);
  std::vector<MPI_Request> request(1);
  detail::check_mpi(MPI_Iallreduce(MPI_IN_PLACE, sums->data(), static_cast<int>(sums->size()), MPI_DOUBLE, MPI_SUM,
                                   comm(), request.data()),
                    "MPI_Iallreduce");
  detail::wait_all(request, "dist::allreduce_sum", {}, sums);
  values = *sums;
}

void broadcast_parameters(nn::Module& model, int root) { broadcast_state(model, root, true); }
void broadcast_buffers(nn::Module& model, int root) { broadcast_state(model, root, false); }

bool all_true(bool ok) {
  if (world_size() == 1) return ok;
  auto value = std::make_shared<int>(ok ? 1 : 0);
  std::vector<MPI_Request> request(1);
  detail::check_mpi(MPI_Iallreduce(MPI_IN_PLACE, value.get(), 1, MPI_INT, MPI_MIN, comm(), request.data()),
                    "MPI_Iallreduce");
  detail::wait_all(request, "dist::all_true", {}, value);
  return *value == 1;
}

void check_same_config(const std::string& config) {
  if (world_size() == 1) return;
  const std::vector<std::string> all = allgather_text(config, "dist::check_same_config");
  std::string differing;
  for (int r = 1; r < world_size(); ++r)
    if (all[static_cast<std::size_t>(r)] != all[0]) differing += (differing.empty() ? "" : ", ") + std::to_string(r);
  if (differing.empty()) return;
  const int first = std::stoi(differing.substr(0, differing.find(',')));
  throw DistError("the ranks were started with different configurations: rank(s) " + differing +
                  " differ from rank 0\n  rank 0: " + all[0] + "\n  rank " + std::to_string(first) + ": " +
                  all[static_cast<std::size_t>(first)]);
}

#else  // without MPI: a group of one

bool mpi_available() { return false; }
void init() {}
void finalize() {}
void abort(int exit_code) { std::exit(exit_code); }
bool is_initialized() { return false; }
int rank() { return 0; }
int world_size() { return 1; }
void barrier() {}
void broadcast_parameters(nn::Module&, int) {}
void broadcast_buffers(nn::Module&, int) {}
void allreduce_sum(std::vector<double>&) {}
bool all_true(bool ok) { return ok; }
void check_same_config(const std::string&) {}

#endif

}  // namespace shiftq::dist
