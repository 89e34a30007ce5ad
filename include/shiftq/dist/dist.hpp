// Data-parallel process group over Open MPI (MPI_COMM_WORLD): start-up, rank and world size,
// parameter broadcast, configuration agreement and small reductions for metrics.
//
// Built with MPI when CMake finds it (SHIFTQ_WITH_MPI, the default then). Without MPI, or when the
// process was not started by mpirun, the group is one process: rank 0 of 1, and every call here is
// a no-op or an identity, so the same training code runs single-process.
//
// Every blocking call waits at most `timeout()` seconds with no progress, then throws DistError
// naming the ranks that had not arrived (when it knows them). After a DistError the group is
// unusable: the program should report the error and call abort(), which ends every rank.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "shiftq/core/error.hpp"
#include "shiftq/nn/module.hpp"

namespace shiftq::dist {

// A failure of the process group: a peer that did not arrive in time, ranks that disagree, MPI errors.
class DistError : public Error {
 public:
  using Error::Error;
};

// True when shiftq was built with MPI.
bool mpi_available();

// Joins the process group (MPI_Init_thread, MPI_THREAD_FUNNELED: only the calling thread uses MPI).
// Idempotent. Without MPI, does nothing. Throws DistError when MPI cannot start.
void init();
// Leaves the group (MPI_Finalize). Call once, after the last collective; no-op when not initialized.
void finalize();
// Ends every rank of the job at once (MPI_Abort) with `exit_code`; exits the process without MPI.
[[noreturn]] void abort(int exit_code);
bool is_initialized();

int rank();        // 0 when not initialized
int world_size();  // 1 when not initialized

// Seconds a blocking call waits for its peers without any progress before it throws DistError.
void set_timeout(double seconds);
double timeout();

// Waits for every rank (with the timeout).
void barrier();
// Copies rank `root`'s parameters and buffers into every rank's model (same names, shapes and dtypes
// on every rank, else DistError).
void broadcast_parameters(nn::Module& model, int root = 0);
// The same for the buffers only (BatchNorm running statistics).
void broadcast_buffers(nn::Module& model, int root = 0);
// Element-wise sums over the ranks; every rank gets the same values.
void allreduce_sum(std::vector<double>& values);
// Throws DistError on every rank unless all ranks passed the same `config` text; the message names
// the ranks that differ from rank 0 and shows both texts. Cheap: one exchange at start-up.
void check_same_config(const std::string& config);
// True on every rank when `ok` is true on every rank.
bool all_true(bool ok);

}  // namespace shiftq::dist
