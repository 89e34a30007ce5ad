// Resuming from a checkpoint in the example trainers: what to tell the user about state that an
// older checkpoint did not hold.
#pragma once

#include <cstdio>
#include <string>
#include <vector>

namespace shiftq::examples {

// `absent`: io::restore's list of the model's optional buffers missing from the checkpoint; they
// keep their fresh values, so those parts of the run start over (and the resumed run is not
// bit-identical to an uninterrupted one).
inline void note_absent_state(const std::vector<std::string>& absent, const std::string& path, bool verbose) {
  if (absent.empty() || !verbose) return;
  std::string names;
  for (const std::string& name : absent) names += (names.empty() ? "" : ", ") + name;
  std::printf("note: checkpoint %s predates %zu state tensor(s) of this model (%s); they start from their "
              "initial values\n",
              path.c_str(), absent.size(), names.c_str());
}

}  // namespace shiftq::examples
