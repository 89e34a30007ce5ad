// MPI helpers shared by the dist sources: error checks and waits bounded by the group's timeout.
#pragma once

#include <mpi.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "shiftq/dist/dist.hpp"

namespace shiftq::dist::detail {

// Throws DistError with MPI's message unless `code` is MPI_SUCCESS.
void check_mpi(int code, const char* call);

// Waits until every request completed. When `timeout()` seconds pass without one completing, throws
// DistError: "<what>: no progress for T s ..." followed by `who_is_missing()` when given. The
// requests' buffers, held by `in_flight`, are then kept alive for good: MPI may still write them.
void wait_all(std::vector<MPI_Request>& requests, const std::string& what,
              const std::function<std::string()>& who_is_missing = {}, std::shared_ptr<void> in_flight = nullptr);
// Keeps `buffers` alive for the rest of the process (a request on them never completed).
std::vector<std::shared_ptr<void>>& abandoned();

// Sleeps briefly after the first millisecond of polling, so a waiting rank does not take a core
// from another rank on the same machine.
class PollBackoff {
 public:
  void pause();
  void reset() { polls_ = 0; }

 private:
  int polls_ = 0;
};

// A duplicate of MPI_COMM_WORLD that returns errors instead of aborting.
MPI_Comm dup_world();
// The group's own duplicate (dist::init); DistError before init.
MPI_Comm world_comm();

// "name dtype shape" lines: what every rank must agree on before tensors are broadcast.
std::string layout_of(const NamedTensors& tensors);
// Copies rank root's bytes of `tensors` into every rank's (one packed broadcast; the layouts must agree).
void broadcast_tensors(NamedTensors& tensors, int root, const std::string& what);

}  // namespace shiftq::dist::detail
