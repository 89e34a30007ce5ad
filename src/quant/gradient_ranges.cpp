// Noted ranges of output gradients, handed from the op that writes a gradient to the op whose
// backward quantizes it (qlayers_internal.hpp).
#include <array>
#include <memory>

#include "quant/qlayers_internal.hpp"

namespace shiftq::quant::internal {
namespace {
struct Note {
  std::weak_ptr<const void> storage;  // expired: free (or never used)
  std::uint64_t version = 0;
  std::int64_t rows = 0, cols = 0;
  bool ready = false;  // filled (note_gradient_ranges_done)
  GradientRanges ranges;
};

struct Notes {
  std::array<Note, kGradientRangeNotes> slots;
  int next = 0;  // the oldest slot, replaced by the next note
};

Notes& notes() {
  thread_local Notes n;  // the vectors keep their capacity: no fresh pages per step
  return n;
}

bool same_tensor(const Note& n, const Tensor& dy) {
  const std::shared_ptr<const void> storage = n.storage.lock();
  return storage && storage.get() == dy.storage_id() && n.version == dy.version();
}
}  // namespace

GradientRanges& gradient_ranges_slot(const Tensor& dy, std::int64_t R, std::int64_t C) {
  Notes& all = notes();
  Note& n = all.slots[static_cast<std::size_t>(all.next)];
  all.next = (all.next + 1) % kGradientRangeNotes;
  n.storage = dy.storage_token();
  n.version = dy.version();
  n.rows = R;
  n.cols = C;
  n.ready = false;
  n.ranges.row_max.resize(static_cast<std::size_t>(R));
  n.ranges.col_max.resize(static_cast<std::size_t>(C));
  return n.ranges;
}

void note_gradient_ranges_done(const Tensor& dy) {
  for (Note& n : notes().slots)
    if (!n.ready && same_tensor(n, dy)) n.ready = true;
}

const GradientRanges* find_gradient_ranges(const Tensor& dy, std::int64_t R, std::int64_t C) {
  for (Note& n : notes().slots)
    if (n.ready && n.rows == R && n.cols == C && same_tensor(n, dy)) {
      n.ready = false;
      n.storage.reset();
      return &n.ranges;
    }
  return nullptr;
}
}  // namespace shiftq::quant::internal
