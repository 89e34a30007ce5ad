// Resuming from a checkpoint in the example trainers: what to tell the user about state that an
// older checkpoint did not hold.
#pragma once

#include <cstdio>
#include <string>
#include <vector>

#include <shiftq/shiftq.hpp>

namespace shiftq::examples {

// `absent`: io::restore's list of the model's optional buffers missing from the checkpoint; they
// keep their fresh values, so those parts of the run start over (and the resumed run is not
// bit-identical to an uninterrupted one). Observed activation ranges (delayed scaling) are named
// apart: they are recalibrated by the next training steps, and until then a layer quantizes with its
// batch's own range.
inline void note_absent_state(const std::vector<std::string>& absent, const std::string& path, bool verbose) {
  if (absent.empty() || !verbose) return;
  auto is_range = [](const std::string& name) {
    for (const std::string suffix : {nn::kInputHistoryBuffer, nn::kInputObserverBuffer})
      if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
        return true;
    return false;
  };
  std::string names;
  std::size_t ranges = 0, others = 0;
  for (const std::string& name : absent) {
    if (is_range(name)) {
      ++ranges;
      continue;
    }
    names += (names.empty() ? "" : ", ") + name;
    ++others;
  }
  if (ranges)
    std::printf("note: checkpoint %s has no observed activation ranges (%zu tensors); they are recalibrated from "
                "the next training steps, and until then each layer quantizes with its batch's own range\n",
                path.c_str(), ranges);
  if (others)
    std::printf("note: checkpoint %s predates %zu state tensor(s) of this model (%s); they start from their "
                "initial values\n",
                path.c_str(), others, names.c_str());
}

}  // namespace shiftq::examples
