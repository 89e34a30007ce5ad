#include "io/atomic_file.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <vector>

#include "shiftq/core/error.hpp"

namespace shiftq::io::detail {
namespace {

[[noreturn]] void save_failed(const std::string& path, const std::string& what, int err) {
  throw IOError("cannot save '" + path + "': " + what + " (" + std::strerror(err) + ")");
}

std::string temp_path_for(const std::string& path) {
  static std::atomic<std::uint64_t> counter{0};
  return path + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter.fetch_add(1));
}

// Writes all n bytes; false with errno set on failure.
bool write_all(int fd, const unsigned char* src, std::size_t n) {
  while (n > 0) {
    const ssize_t put = ::write(fd, src, std::min<std::size_t>(n, std::size_t{1} << 30));
    if (put < 0 && errno == EINTR) continue;
    if (put < 0) return false;
    if (put == 0) {
      errno = EIO;
      return false;
    }
    src += put;
    n -= static_cast<std::size_t>(put);
  }
  return true;
}

// fsync of the directory holding `path`, so that the rename itself is durable.
void sync_directory(const std::string& path) {
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  const std::string dir = parent.empty() ? std::string(".") : parent.string();
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.get() < 0) save_failed(path, "file written, but cannot open its directory to sync it", errno);
  if (::fsync(fd.get()) != 0 && errno != EINVAL)
    save_failed(path, "file written, but syncing its directory failed", errno);
}

// Removes `path`.tmp-<pid>-<n> files left by saves of processes that no longer exist (killed
// mid-save: their temp file never got renamed). Best effort: a file that cannot be listed or
// removed stays. Temp files of live processes (a concurrent save, or this process) are kept; a pid
// reused by an unrelated process keeps its file until a later save.
void remove_stale_temp_files(const std::string& path) {
  namespace fs = std::filesystem;
  const fs::path target(path);
  const std::string prefix = target.filename().string() + ".tmp-";
  const fs::path dir = target.parent_path().empty() ? fs::path(".") : target.parent_path();
  std::error_code ec;
  std::vector<fs::path> stale;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.rfind(prefix, 0) != 0) continue;
    const std::string rest = name.substr(prefix.size());  // "<pid>-<n>"
    const std::size_t dash = rest.find('-');
    if (dash == 0 || dash == std::string::npos || dash > 9 ||
        !std::all_of(rest.begin(), rest.begin() + static_cast<std::ptrdiff_t>(dash), [](char c) { return c >= '0' && c <= '9'; }))
      continue;
    const pid_t pid = static_cast<pid_t>(std::stol(rest.substr(0, dash)));
    if (pid <= 0 || pid == ::getpid()) continue;
    if (::kill(pid, 0) != 0 && errno == ESRCH) stale.push_back(it->path());
  }
  for (const fs::path& p : stale) fs::remove(p, ec);
}

}  // namespace

UniqueFd::~UniqueFd() {
  if (fd_ >= 0) ::close(fd_);
}

AtomicFileWriter::AtomicFileWriter(std::string path)
    : path_(std::move(path)), tmp_(temp_path_for(path_)),
      fd_(::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666)) {
  if (fd_.get() < 0) save_failed(path_, "cannot create temporary file '" + tmp_ + "'", errno);
}

AtomicFileWriter::~AtomicFileWriter() {
  if (committed_) return;
  if (fd_.get() >= 0) ::close(fd_.release());
  ::unlink(tmp_.c_str());
}

void AtomicFileWriter::write(const void* data, std::size_t n) {
  if (!write_all(fd_.get(), static_cast<const unsigned char*>(data), n))
    save_failed(path_, "writing '" + tmp_ + "' failed", errno);
}

void AtomicFileWriter::commit() {
  if (::fsync(fd_.get()) != 0) save_failed(path_, "fsync of '" + tmp_ + "' failed", errno);
  if (::close(fd_.release()) != 0) save_failed(path_, "closing '" + tmp_ + "' failed", errno);
  if (::rename(tmp_.c_str(), path_.c_str()) != 0)
    save_failed(path_, "cannot rename '" + tmp_ + "' over it", errno);
  committed_ = true;  // the temp file is `path` now
  sync_directory(path_);
  remove_stale_temp_files(path_);
}

}  // namespace shiftq::io::detail
