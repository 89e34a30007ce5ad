// The safetensors format: dtype names, the layout of header and data, and the validation of the
// tensor table against the data section. The JSON header is read and written by
// safetensors_header.cpp, files are replaced atomically by atomic_file.cpp.
#include "shiftq/io/safetensors.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string_view>
#include <utility>
#include <vector>

#include "io/atomic_file.hpp"
#include "io/safetensors_header.hpp"

namespace shiftq::io {
namespace {
using detail::json_quoted;
using detail::kMetadataKey;

static_assert(std::endian::native == std::endian::little,
              "shiftq's safetensors I/O copies tensor bytes as-is: it needs a little-endian host");

constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;  // 100 MB: anything larger is corrupt
constexpr std::uint64_t kMaxNumel = std::numeric_limits<std::int64_t>::max() / 4;

[[noreturn]] void fail(const std::string& path, const std::string& what) { detail::safetensors_error(path, what); }

// ---- dtypes and raw bytes ----------------------------------------------------------------------

std::string_view dtype_tag(DType dtype) {
  switch (dtype) {
    case DType::f32: return "F32";
    case DType::s32: return "I32";
    case DType::s8: return "I8";
    case DType::u8: return "U8";
  }
  return "?";
}

bool dtype_from_tag(std::string_view tag, DType& out) {
  for (DType d : {DType::f32, DType::s32, DType::s8, DType::u8})
    if (dtype_tag(d) == tag) {
      out = d;
      return true;
    }
  return false;
}


// Flat index of the first NaN/Inf of an f32 tensor, or -1.
std::int64_t first_non_finite(const Tensor& t) {
  if (t.dtype() != DType::f32) return -1;
  const float* p = t.data<float>();
  for (std::int64_t i = 0; i < t.numel(); ++i)
    if (!std::isfinite(p[i])) return i;
  return -1;
}

// ---- the tensor table ----------------------------------------------------------------------------

// One tensor of the header, its values checked. Offsets are relative to the start of the data section.
struct Entry {
  std::string name;
  DType dtype = DType::f32;
  Shape shape;
  std::uint64_t begin = 0, end = 0;
};

// A known dtype, no negative dims, two non-negative offsets (not yet checked against the data section).
Entry to_entry(detail::HeaderEntry& h, const std::string& path) {
  const std::string what = "tensor " + json_quoted(h.name);
  Entry e;
  if (!dtype_from_tag(h.dtype, e.dtype))
    fail(path, what + " has unsupported dtype " + json_quoted(h.dtype) + " (shiftq reads F32, I32, I8, U8)");
  for (std::int64_t d : h.shape)
    if (d < 0) fail(path, what + " has a negative dimension " + std::to_string(d));
  const std::vector<std::int64_t>& off = h.data_offsets;
  if (off.size() != 2 || off[0] < 0 || off[1] < 0)
    fail(path, what + ": data_offsets must be two non-negative integers [begin, end]");
  e.name = std::move(h.name);
  e.shape = std::move(h.shape);
  e.begin = static_cast<std::uint64_t>(off[0]);
  e.end = static_cast<std::uint64_t>(off[1]);
  return e;
}

// Bytes of `e`'s data from its shape; throws when the shape disagrees with its offsets.
void check_extent(const Entry& e, std::uint64_t data_size, const std::string& path) {
  const std::string what = "tensor " + json_quoted(e.name);
  if (e.begin > e.end) fail(path, what + " has reversed data_offsets [" + std::to_string(e.begin) + ", " +
                                      std::to_string(e.end) + "]");
  if (e.end > data_size)
    fail(path, what + " has data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                   "] beyond the " + std::to_string(data_size) + "-byte data section (truncated file?)");
  // In order, like shape_numel() (which Tensor applies to the shape): a product that overflows
  // before a 0 extent is absurd (Tensor would throw ShapeError for it), one after a 0 is not.
  std::uint64_t numel = 1;
  for (std::int64_t d : e.shape) {
    const auto u = static_cast<std::uint64_t>(d);
    if (u != 0 && numel > kMaxNumel / u) fail(path, what + " has an absurd shape " + shape_str(e.shape));
    numel *= u;
  }
  const std::uint64_t span = e.end - e.begin;
  if (numel * dtype_size(e.dtype) != span)
    fail(path, what + ": shape " + shape_str(e.shape) + " of " + std::string(dtype_tag(e.dtype)) + " needs " +
                   std::to_string(numel * dtype_size(e.dtype)) + " bytes but data_offsets [" +
                   std::to_string(e.begin) + ", " + std::to_string(e.end) + "] hold " + std::to_string(span));
}

// The tensors must tile [0, data_size) exactly: no overlap, no gap, no uncovered tail.
// Sorts `entries` by offset.
void check_coverage(std::vector<Entry>& entries, std::uint64_t data_size, const std::string& path) {
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  std::uint64_t cursor = 0;
  const Entry* previous = nullptr;
  for (const Entry& e : entries) {
    if (e.begin < cursor)
      fail(path, "tensors " + json_quoted(previous->name) + " and " + json_quoted(e.name) + " overlap");
    if (e.begin > cursor)
      fail(path, "data bytes [" + std::to_string(cursor) + ", " + std::to_string(e.begin) +
                     ") belong to no tensor");
    cursor = e.end;
    previous = &e;
  }
  if (cursor != data_size)
    fail(path, "the last " + std::to_string(data_size - cursor) + " bytes of the data section belong to no tensor");
}

void read_exact(int fd, const std::string& path, unsigned char* dst, std::size_t n, const char* what) {
  while (n > 0) {
    const ssize_t got = ::read(fd, dst, std::min<std::size_t>(n, std::size_t{1} << 30));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) fail(path, std::string("read error in the ") + what + " (" + std::strerror(errno) + ")");
    if (got == 0) fail(path, std::string("truncated: file ends inside the ") + what);
    dst += got;
    n -= static_cast<std::size_t>(got);
  }
}

// ---- writing -----------------------------------------------------------------------------------

void validate_for_save(const TensorFile& file) {
  for (const auto& [name, t] : file.tensors) {
    SHIFTQ_CHECK(t.defined(), ValueError, "save_safetensors: tensor '", name, "' is undefined");
    SHIFTQ_CHECK(name != kMetadataKey, ValueError, "save_safetensors: '__metadata__' is not a valid tensor name");
    SHIFTQ_CHECK(detail::is_valid_utf8(name), ValueError, "save_safetensors: tensor name ", json_quoted(name),
                 " is not valid UTF-8");
    const std::int64_t bad = first_non_finite(t);
    if (bad >= 0)
      throw NumericError(shiftq::detail::cat("save_safetensors: tensor '", name, "' holds a non-finite value (",
                                             t.data<float>()[bad], ") at flat index ", bad, "; nothing was written"));
  }
  for (const auto& [key, value] : file.metadata)
    SHIFTQ_CHECK(detail::is_valid_utf8(key) && detail::is_valid_utf8(value), ValueError,
                 "save_safetensors: metadata entry ", json_quoted(key), " is not valid UTF-8");
}

// The JSON header, tensors in sorted-name order with contiguous offsets, padded with spaces to a
// multiple of 8 bytes.
std::string build_header(const TensorFile& file) {
  std::vector<detail::HeaderEntry> entries;
  entries.reserve(file.tensors.size());
  std::int64_t offset = 0;
  for (const auto& [name, t] : file.tensors) {
    const auto end = offset + static_cast<std::int64_t>(t.nbytes());
    entries.push_back({name, std::string(dtype_tag(t.dtype())), t.shape(), {offset, end}});
    offset = end;
  }
  std::string h = detail::write_header(entries, file.metadata);
  h.append((8 - h.size() % 8) % 8, ' ');
  return h;
}

}  // namespace

void save_safetensors(const std::string& path, const TensorFile& file) {
  validate_for_save(file);
  const std::string header = build_header(file);
  detail::AtomicFileWriter out(path);
  unsigned char length[8];
  const std::uint64_t n = header.size();
  std::memcpy(length, &n, 8);  // little-endian host (static_assert above)
  out.write(length, 8);
  out.write(header.data(), header.size());
  for (const auto& [name, t] : file.tensors) out.write(t.raw_bytes(), t.nbytes());
  out.commit();
}

TensorFile load_safetensors(const std::string& path) {
  detail::UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) fail(path, std::string("cannot open (") + std::strerror(errno) + ")");
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) fail(path, std::string("cannot stat (") + std::strerror(errno) + ")");
  if (!S_ISREG(st.st_mode)) fail(path, "not a regular file");
  const auto file_size = static_cast<std::uint64_t>(st.st_size);
  if (file_size < 8)
    fail(path, "file is " + std::to_string(file_size) + " bytes, shorter than the 8-byte header length");

  unsigned char length[8];
  read_exact(fd.get(), path, length, 8, "header length");
  std::uint64_t header_size = 0;
  std::memcpy(&header_size, length, 8);
  if (header_size > kMaxHeaderBytes)
    fail(path, "header length " + std::to_string(header_size) + " is absurd (over 100 MB): not a safetensors file?");
  if (header_size > file_size - 8)
    fail(path, "header length " + std::to_string(header_size) + " exceeds the " + std::to_string(file_size - 8) +
                   " bytes that follow it (truncated or not a safetensors file)");
  std::string text(header_size, '\0');
  read_exact(fd.get(), path, reinterpret_cast<unsigned char*>(text.data()), text.size(), "header");

  detail::Header header = detail::parse_header(text, path);
  std::vector<Entry> entries;
  entries.reserve(header.entries.size());
  for (detail::HeaderEntry& h : header.entries) entries.push_back(to_entry(h, path));
  const std::uint64_t data_size = file_size - 8 - header_size;
  for (const Entry& e : entries) check_extent(e, data_size, path);
  check_coverage(entries, data_size, path);

  TensorFile out;
  out.metadata = std::move(header.metadata);
  for (const Entry& e : entries) {  // in offset order: one sequential read
    Tensor t = Tensor::uninitialized(e.shape, e.dtype);
    read_exact(fd.get(), path, t.raw_bytes(), t.nbytes(), "data section");
    const std::int64_t bad = first_non_finite(t);
    if (bad >= 0)
      throw NumericError("safetensors file '" + path + "': tensor " + json_quoted(e.name) +
                         " holds a non-finite value (" + std::to_string(t.data<float>()[bad]) + ") at flat index " +
                         std::to_string(bad));
    out.tensors.emplace(e.name, std::move(t));
  }
  return out;
}

}  // namespace shiftq::io
