// Crash safety of checkpoints: a child process saves checkpoints to one path in a loop and is
// SIGKILLed at pseudo-random moments (mid-write, mid-fsync, mid-rename: wherever it happens to be).
// After every kill the path must either not exist yet (only before the first completed save) or
// hold one complete checkpoint: every tensor and every metadata entry from the same iteration,
// never a mix, never a torn file; and the saved iteration never goes backwards. It is the iteration
// of the last save_checkpoint() that returned before the kill (reported through a pipe), or of the
// one in flight if that one got as far as its rename. Temp files of killed saves may be left behind
// (save_safetensors cannot remove them when killed); they are counted, and a later save to the same
// path must still work.
#include <gtest/gtest.h>

#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <system_error>
#include <thread>

#include "testing/gradcheck.hpp"

namespace shiftq {
namespace {
namespace fs = std::filesystem;

// ~1.8 MB of tensors (f32 and s32, model and optimizer), every element = the iteration number
// (negated in the optimizer state), plus metadata that names the iteration too.
io::TrainingCheckpoint make_state() {
  io::TrainingCheckpoint c;
  c.model["conv.weight"] = Tensor::zeros({64, 32, 3, 3});     // 73.7 KB
  c.model["fc.weight"] = Tensor::zeros({512, 640});           // 1.31 MB
  c.model["fc.bias"] = Tensor::zeros({512});
  c.model["step_counts"] = Tensor::zeros({20000}, DType::s32);  // 80 KB
  c.optimizer["fc.weight.momentum_buffer"] = Tensor::zeros({512, 160});  // 328 KB
  return c;
}

// Sets every value of `c` to iteration `it`. Plain loops over the raw data (no parallel_for): this
// runs in a forked child, where an OpenMP pool inherited from the parent is not usable.
void set_iteration(io::TrainingCheckpoint& c, std::int64_t it) {
  for (auto& [name, t] : c.model) {
    if (t.dtype() == DType::s32) std::fill_n(t.data<std::int32_t>(), t.numel(), static_cast<std::int32_t>(it));
    else std::fill_n(t.data<float>(), t.numel(), static_cast<float>(it));
  }
  for (auto& [name, t] : c.optimizer) std::fill_n(t.data<float>(), t.numel(), -static_cast<float>(it));
  c.generators["data"] = GeneratorState{static_cast<std::uint64_t>(it), static_cast<std::uint64_t>(it) * 3, 2};
  c.info["iteration"] = std::to_string(it);
}

// The iteration of a loaded checkpoint; fails the test (and returns -1) unless every tensor and
// every entry holds that same iteration.
std::int64_t consistent_iteration(const io::TrainingCheckpoint& c, const io::TrainingCheckpoint& layout) {
  EXPECT_EQ(c.model.size(), layout.model.size());
  EXPECT_EQ(c.optimizer.size(), layout.optimizer.size());
  const auto info = c.info.find("iteration");
  if (info == c.info.end()) {
    ADD_FAILURE() << "no info/iteration";
    return -1;
  }
  const std::int64_t it = std::stoll(info->second);
  bool ok = true;
  for (const auto& [name, ref] : layout.model) {
    const auto found = c.model.find(name);
    if (found == c.model.end() || found->second.shape() != ref.shape() || found->second.dtype() != ref.dtype()) {
      ADD_FAILURE() << "model tensor " << name << " missing or reshaped";
      return -1;
    }
    const Tensor& t = found->second;
    for (std::int64_t i = 0; i < t.numel() && ok; ++i) {
      const double v = t.dtype() == DType::s32 ? t.data<std::int32_t>()[i] : t.data<float>()[i];
      if (v != static_cast<double>(it)) {
        ADD_FAILURE() << "model tensor " << name << "[" << i << "] = " << v << " in a checkpoint of iteration " << it;
        ok = false;
      }
    }
  }
  for (const auto& [name, ref] : layout.optimizer) {
    const auto found = c.optimizer.find(name);
    if (found == c.optimizer.end() || found->second.shape() != ref.shape()) {
      ADD_FAILURE() << "optimizer tensor " << name << " missing or reshaped";
      return -1;
    }
    const float* p = found->second.data<float>();
    for (std::int64_t i = 0; i < found->second.numel() && ok; ++i)
      if (p[i] != -static_cast<float>(it)) {
        ADD_FAILURE() << "optimizer tensor " << name << "[" << i << "] = " << p[i] << " in a checkpoint of iteration "
                      << it;
        ok = false;
      }
  }
  const auto gen = c.generators.find("data");
  if (gen == c.generators.end() || gen->second.seed != static_cast<std::uint64_t>(it) ||
      gen->second.counter != static_cast<std::uint64_t>(it) * 3) {
    ADD_FAILURE() << "rng/data does not belong to iteration " << it;
    ok = false;
  }
  return ok ? it : -1;
}

std::int64_t count_temp_files(const fs::path& dir, const std::string& name) {
  std::int64_t n = 0;
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.path().filename().string().rfind(name + ".tmp-", 0) == 0) ++n;
  return n;
}

// Saves iterations first, first + 1, ... to `path` until killed, and reports each completed save
// (save_checkpoint returned) by writing its iteration to `report`. Never returns.
[[noreturn]] void saver_child(const std::string& path, std::int64_t first, pid_t parent, int report) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the test
  if (::getppid() != parent) ::_exit(4);
  try {
    io::TrainingCheckpoint c = make_state();
    for (std::int64_t it = first; it < first + 1000000; ++it) {
      set_iteration(c, it);
      io::save_checkpoint(path, c);
      if (::write(report, &it, sizeof it) != static_cast<ssize_t>(sizeof it)) ::_exit(6);
    }
  } catch (...) {
    ::_exit(3);
  }
  ::_exit(5);
}

// The last iteration reported on `fd` until EOF, or `none` when nothing was reported.
std::int64_t last_reported(int fd, std::int64_t none) {
  std::int64_t last = none, it = 0;
  while (::read(fd, &it, sizeof it) == static_cast<ssize_t>(sizeof it)) last = it;
  return last;
}

TEST(CheckpointCrashSafety, SigkillDuringSavesNeverLeavesATornOrMixedCheckpoint) {
  const fs::path dir = fs::temp_directory_path() / ("shiftq_crash_safety_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  struct RemoveDir {  // also when an assertion returns early
    fs::path dir;
    ~RemoveDir() {
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  } cleanup{dir};
  const std::string name = "ckpt.safetensors";
  const std::string path = (dir / name).string();
  const io::TrainingCheckpoint layout = make_state();

  constexpr int kKills = 30;
  std::mt19937 rng(20240607);
  std::uniform_int_distribution<int> delay_ms(0, 20);
  std::int64_t last = 0;  // iteration of the checkpoint found after the previous kill (0: none yet)
  int kills_before_first_save = 0, kills_with_progress = 0, in_flight_visible = 0;
  for (int k = 0; k < kKills; ++k) {
    int report[2];
    ASSERT_EQ(::pipe(report), 0);
    const pid_t parent = ::getpid();
    const pid_t child = ::fork();
    ASSERT_GE(child, 0) << "fork failed";
    if (child == 0) {
      ::close(report[0]);
      saver_child(path, last + 1, parent, report[1]);
    }
    ::close(report[1]);
    // Kill at a random moment after this child's first completed save, so that every kill has a
    // chance to land inside a later save however slow a loaded machine makes the first one.
    std::int64_t first_done = last;
    pollfd ready{report[0], POLLIN, 0};
    ASSERT_EQ(::poll(&ready, 1, 60000), 1) << "kill " << k << ": no save completed within 60 s";
    ASSERT_EQ(::read(report[0], &first_done, sizeof first_done), static_cast<ssize_t>(sizeof first_done));
    std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms(rng)));
    ASSERT_EQ(::kill(child, SIGKILL), 0);
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    // The newest iteration whose save_checkpoint() returned before the kill.
    const std::int64_t completed = last_reported(report[0], first_done);
    ::close(report[0]);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
        << "kill " << k << ": the saver child ended on its own (exit status " << status << ")";

    if (!fs::exists(path)) {
      ASSERT_EQ(last, 0) << "kill " << k << ": the checkpoint of iteration " << last << " disappeared";
      ASSERT_EQ(completed, 0) << "kill " << k << ": save_checkpoint returned but the file does not exist";
      ++kills_before_first_save;
      continue;
    }
    io::TrainingCheckpoint loaded;
    ASSERT_NO_THROW(loaded = io::load_checkpoint(path)) << "kill " << k << ": torn checkpoint";
    const std::int64_t it = consistent_iteration(loaded, layout);
    ASSERT_GE(it, 1) << "kill " << k << ": inconsistent checkpoint";
    ASSERT_GE(it, last) << "kill " << k << ": the iteration went backwards";
    // The last returned save is in place, or the save in flight when killed, if it got to its rename.
    ASSERT_TRUE(it == completed || it == completed + 1)
        << "kill " << k << ": found iteration " << it << ", but the last completed save was " << completed;
    if (it == completed + 1) ++in_flight_visible;
    if (it > last) ++kills_with_progress;
    last = it;
  }
  const std::int64_t leftovers = count_temp_files(dir, name);
  std::printf("[ crash    ] %d kills: %d before the first completed save, %d after new saves (%d with the save in "
              "flight already renamed in place); last iteration %lld; %lld temp files left by killed saves\n",
              kKills, kills_before_first_save, kills_with_progress, in_flight_visible, static_cast<long long>(last),
              static_cast<long long>(leftovers));
  RecordProperty("last_iteration", static_cast<int>(last));
  RecordProperty("leftover_temp_files", static_cast<int>(leftovers));
  EXPECT_GE(kills_with_progress, kKills / 2) << "the checkpoint rarely advanced between kills: the test saw little";
  // Each child's first completed save removed the temp files of the children killed before it:
  // only the last killed child's in-flight file can remain.
  EXPECT_LE(leftovers, 1);

  // A later save over the same path still works, next to the leftovers, and removes them.
  io::TrainingCheckpoint c = make_state();
  set_iteration(c, last + 1);
  ASSERT_NO_THROW(io::save_checkpoint(path, c));
  EXPECT_EQ(consistent_iteration(io::load_checkpoint(path), layout), last + 1);
  EXPECT_EQ(count_temp_files(dir, name), 0);
}

}  // namespace
}  // namespace shiftq
