// Atomic replacement of a file (POSIX): write a temporary file next to it, fsync, rename() over the
// target, fsync of the directory. Readers see the old file or the complete new one, never a torn
// write; a crash leaves at most a stale temporary file, which a later save removes.
#pragma once

#include <cstddef>
#include <string>
#include <utility>

namespace shiftq::io::detail {

// An owned file descriptor (closed on destruction; -1 = none).
class UniqueFd {
 public:
  explicit UniqueFd(int fd = -1) : fd_(fd) {}
  ~UniqueFd();
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

// Writes `path` atomically: the constructor creates `path` + ".tmp-<pid>-<counter>" (O_EXCL, default
// permissions), write() appends to it, commit() fsyncs and closes it, renames it over `path` and
// fsyncs the directory. Every failure throws IOError "cannot save '<path>': <what> (<strerror>)".
// Without a successful commit() (an exception while writing), the destructor removes the temporary
// file and an existing file at `path` is left as it was; only a failed fsync of the directory, after
// the rename, leaves the new file in place (the message says so). After a commit, temporary files of
// `path` left by processes that no longer exist are removed (best effort).
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::string path);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  void write(const void* data, std::size_t n);
  void commit();

  const std::string& temp_path() const { return tmp_; }

 private:
  std::string path_, tmp_;
  UniqueFd fd_;
  bool committed_ = false;
};

}  // namespace shiftq::io::detail
