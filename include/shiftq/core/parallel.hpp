// Thread count used by shiftq's kernels and by oneDNN (both run on OpenMP).
#pragma once

namespace shiftq {

// Sets the number of threads for every subsequent shiftq call from this process; n >= 1.
// Defaults to the OpenMP default (OMP_NUM_THREADS or the number of cores).
void set_num_threads(int n);
int get_num_threads();

}  // namespace shiftq
