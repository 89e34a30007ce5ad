#include "shiftq/io/safetensors.hpp"

#include "core/utf8.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <set>
#include <string_view>
#include <utility>
#include <vector>

namespace shiftq::io {
namespace {
using detail::append_utf8;

static_assert(std::endian::native == std::endian::little,
              "shiftq's safetensors I/O copies tensor bytes as-is: it needs a little-endian host");

constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;  // 100 MB: anything larger is corrupt
constexpr std::uint64_t kMaxNumel = std::numeric_limits<std::int64_t>::max() / 4;
constexpr std::string_view kMetadataKey = "__metadata__";

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw IOError("safetensors file '" + path + "': " + what);
}

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

const unsigned char* raw_bytes(const Tensor& t) {
  switch (t.dtype()) {
    case DType::f32: return reinterpret_cast<const unsigned char*>(t.data<float>());
    case DType::s32: return reinterpret_cast<const unsigned char*>(t.data<std::int32_t>());
    case DType::s8: return reinterpret_cast<const unsigned char*>(t.data<std::int8_t>());
    case DType::u8: return t.data<std::uint8_t>();
  }
  return nullptr;
}

unsigned char* raw_bytes(Tensor& t) { return const_cast<unsigned char*>(raw_bytes(std::as_const(t))); }

// Flat index of the first NaN/Inf of an f32 tensor, or -1.
std::int64_t first_non_finite(const Tensor& t) {
  if (t.dtype() != DType::f32) return -1;
  const float* p = t.data<float>();
  for (std::int64_t i = 0; i < t.numel(); ++i)
    if (!std::isfinite(p[i])) return i;
  return -1;
}

// ---- UTF-8 and JSON strings --------------------------------------------------------------------

// Strict UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing above U+10FFFF.
bool valid_utf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    // Sequence length from the lead byte, and the lead byte's payload bits.
    const int len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
    if (len == 0) return false;
    std::uint32_t cp = c & (0x7Fu >> (len == 1 ? 0 : len));
    if (i + static_cast<std::size_t>(len) > s.size()) return false;
    for (int k = 1; k < len; ++k) {
      const auto b = static_cast<unsigned char>(s[i + static_cast<std::size_t>(k)]);
      if ((b & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (b & 0x3F);
    }
    static constexpr std::uint32_t kMinForLength[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMinForLength[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += static_cast<std::size_t>(len);
  }
  return true;
}

// `s` as a quoted JSON string: '"', '\' and control characters escaped, UTF-8 passed through.
std::string json_string(std::string_view s) {
  std::string out = "\"";
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (ch) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          static constexpr char kHex[] = "0123456789abcdef";
          out += "\\u00";
          out += kHex[c >> 4];
          out += kHex[c & 0xF];
        } else {
          out += ch;
        }
    }
  }
  return out + "\"";
}

// ---- the header parser -------------------------------------------------------------------------

// One tensor of the header. Offsets are relative to the start of the data section.
struct Entry {
  std::string name;
  DType dtype = DType::f32;
  Shape shape;
  std::uint64_t begin = 0, end = 0;
};

struct Header {
  std::vector<Entry> entries;
  std::map<std::string, std::string> metadata;
};

// Strict parser for the JSON subset of safetensors headers (objects, arrays, strings with every
// escape incl. \uXXXX surrogate pairs, integers), directed by the schema so that memory stays
// proportional to the header: {"<name>": {"dtype": str, "shape": [int...], "data_offsets": [int, int]},
// "__metadata__": {str: str}}. Duplicate keys, unknown fields and trailing characters are errors.
class HeaderParser {
 public:
  HeaderParser(std::string_view text, const std::string& path) : text_(text), path_(path) {}

  Header parse() {
    Header h;
    parse_object("the header", [&](const std::string& key) {
      if (key == kMetadataKey) parse_metadata(h.metadata);
      else h.entries.push_back(parse_entry(key));
    });
    skip_ws();
    if (!at_end()) syntax_error("trailing characters after the header object");
    return h;
  }

 private:
  [[noreturn]] void syntax_error(const std::string& what) const {
    fail(path_, "malformed JSON header at byte " + std::to_string(pos_) + ": " + what);
  }
  bool at_end() const { return pos_ >= text_.size(); }
  char peek() const { return at_end() ? '\0' : text_[pos_]; }
  void skip_ws() {
    while (!at_end() && (peek() == ' ' || peek() == '\t' || peek() == '\n' || peek() == '\r')) ++pos_;
  }
  void expect(char c, const std::string& context) {
    skip_ws();
    if (at_end() || peek() != c) syntax_error(std::string("expected '") + c + "' " + context);
    ++pos_;
  }
  static bool is_digit(char c) { return c >= '0' && c <= '9'; }

  // {"key": value, ...}: calls member(key) with pos_ at the value; rejects duplicate keys.
  template <class F>
  void parse_object(const std::string& what, F&& member) {
    expect('{', "to open " + what);
    std::set<std::string> seen;
    skip_ws();
    if (peek() == '}') {
      ++pos_;
      return;
    }
    while (true) {
      skip_ws();
      if (peek() != '"') syntax_error("expected a string key in " + what);
      const std::size_t key_pos = pos_;
      std::string key = parse_string();
      if (!seen.insert(key).second) {
        pos_ = key_pos;
        syntax_error("duplicate key " + json_string(key) + " in " + what);
      }
      expect(':', "after key " + json_string(key));
      skip_ws();
      member(key);
      skip_ws();
      if (peek() == ',') {
        ++pos_;
      } else if (peek() == '}') {
        ++pos_;
        return;
      } else {
        syntax_error("expected ',' or '}' in " + what);
      }
    }
  }

  std::string parse_string() {
    ++pos_;  // opening quote
    std::string out;
    while (true) {
      if (at_end()) syntax_error("unterminated string");
      const auto c = static_cast<unsigned char>(text_[pos_]);
      if (c == '"') break;
      if (c < 0x20) syntax_error("unescaped control character in a string");
      if (c == '\\') {
        parse_escape(out);
      } else {
        out += static_cast<char>(c);
        ++pos_;
      }
    }
    ++pos_;  // closing quote
    if (!valid_utf8(out)) syntax_error("string is not valid UTF-8");
    return out;
  }

  void parse_escape(std::string& out) {
    ++pos_;  // backslash
    if (at_end()) syntax_error("unterminated escape");
    const char e = text_[pos_++];
    switch (e) {
      case '"': out += '"'; break;
      case '\\': out += '\\'; break;
      case '/': out += '/'; break;
      case 'b': out += '\b'; break;
      case 'f': out += '\f'; break;
      case 'n': out += '\n'; break;
      case 'r': out += '\r'; break;
      case 't': out += '\t'; break;
      case 'u': append_utf8(out, parse_unicode_escape()); break;
      default:
        --pos_;
        syntax_error(std::string("invalid escape '\\") + e + "'");
    }
  }

  // After "\u": 4 hex digits, or a surrogate pair "\uD83D\uDE00".
  std::uint32_t parse_unicode_escape() {
    const std::uint32_t hi = parse_hex4();
    if (hi >= 0xDC00 && hi <= 0xDFFF) syntax_error("unpaired low surrogate in \\u escape");
    if (hi < 0xD800 || hi > 0xDBFF) return hi;
    if (text_.substr(pos_, 2) != "\\u") syntax_error("high surrogate not followed by a \\u low surrogate");
    pos_ += 2;
    const std::uint32_t lo = parse_hex4();
    if (lo < 0xDC00 || lo > 0xDFFF) syntax_error("high surrogate not followed by a low surrogate");
    return 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
  }

  std::uint32_t parse_hex4() {
    std::uint32_t v = 0;
    for (int i = 0; i < 4; ++i, ++pos_) {
      const char c = peek();
      const int digit = is_digit(c) ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                                               : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
      if (at_end() || digit < 0) syntax_error("\\u escape needs 4 hex digits");
      v = v * 16 + static_cast<std::uint32_t>(digit);
    }
    return v;
  }

  // -?(0|[1-9][0-9]*) within int64; fractions and exponents are rejected.
  std::int64_t parse_integer() {
    const bool negative = peek() == '-';
    if (negative) ++pos_;
    if (!is_digit(peek())) syntax_error("expected an integer");
    if (peek() == '0' && pos_ + 1 < text_.size() && is_digit(text_[pos_ + 1]))
      syntax_error("integer with a leading zero");
    constexpr std::uint64_t kMax = std::numeric_limits<std::int64_t>::max();
    std::uint64_t v = 0;
    while (is_digit(peek())) {
      const auto d = static_cast<std::uint64_t>(peek() - '0');
      if (v > (kMax - d) / 10) syntax_error("integer out of range");
      v = v * 10 + d;
      ++pos_;
    }
    if (peek() == '.' || peek() == 'e' || peek() == 'E') syntax_error("only integers are allowed here");
    return negative ? -static_cast<std::int64_t>(v) : static_cast<std::int64_t>(v);
  }

  std::vector<std::int64_t> parse_integer_array(const std::string& what) {
    std::vector<std::int64_t> out;
    expect('[', "to open " + what);
    skip_ws();
    if (peek() == ']') {
      ++pos_;
      return out;
    }
    while (true) {
      skip_ws();
      out.push_back(parse_integer());
      skip_ws();
      if (peek() == ']') {
        ++pos_;
        return out;
      }
      expect(',', "or ']' in " + what);
    }
  }

  void parse_metadata(std::map<std::string, std::string>& metadata) {
    parse_object("__metadata__", [&](const std::string& key) {
      if (peek() != '"') syntax_error("__metadata__ value of " + json_string(key) + " must be a string");
      metadata.emplace(key, parse_string());
    });
  }

  Entry parse_entry(const std::string& name) {
    const std::string what = "tensor " + json_string(name);
    Entry e;
    e.name = name;
    bool has_dtype = false, has_shape = false, has_offsets = false;
    parse_object(what, [&](const std::string& field) {
      if (field == "dtype") {
        has_dtype = true;
        if (peek() != '"') syntax_error(what + ": dtype must be a string");
        const std::string tag = parse_string();
        if (!dtype_from_tag(tag, e.dtype))
          fail(path_, what + " has unsupported dtype " + json_string(tag) + " (shiftq reads F32, I32, I8, U8)");
      } else if (field == "shape") {
        has_shape = true;
        for (std::int64_t d : parse_integer_array(what + " shape")) {
          if (d < 0) fail(path_, what + " has a negative dimension " + std::to_string(d));
          e.shape.push_back(d);
        }
      } else if (field == "data_offsets") {
        has_offsets = true;
        const std::vector<std::int64_t> off = parse_integer_array(what + " data_offsets");
        if (off.size() != 2 || off[0] < 0 || off[1] < 0)
          fail(path_, what + ": data_offsets must be two non-negative integers [begin, end]");
        e.begin = static_cast<std::uint64_t>(off[0]);
        e.end = static_cast<std::uint64_t>(off[1]);
      } else {
        fail(path_, what + " has an unknown field " + json_string(field));
      }
    });
    if (!has_dtype || !has_shape || !has_offsets)
      fail(path_, what + " lacks " + (!has_dtype ? "dtype" : !has_shape ? "shape" : "data_offsets"));
    return e;
  }

  std::string_view text_;
  const std::string& path_;
  std::size_t pos_ = 0;
};

// ---- header validation against the data section ------------------------------------------------

// Bytes of `e`'s data from its shape; throws when the shape disagrees with its offsets.
void check_extent(const Entry& e, std::uint64_t data_size, const std::string& path) {
  const std::string what = "tensor " + json_string(e.name);
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
      fail(path, "tensors " + json_string(previous->name) + " and " + json_string(e.name) + " overlap");
    if (e.begin > cursor)
      fail(path, "data bytes [" + std::to_string(cursor) + ", " + std::to_string(e.begin) +
                     ") belong to no tensor");
    cursor = e.end;
    previous = &e;
  }
  if (cursor != data_size)
    fail(path, "the last " + std::to_string(data_size - cursor) + " bytes of the data section belong to no tensor");
}

// ---- POSIX file helpers ------------------------------------------------------------------------

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

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

[[noreturn]] void save_failed(const std::string& path, const std::string& what, int err) {
  throw IOError("cannot save '" + path + "': " + what + " (" + std::strerror(err) + ")");
}

// Removes the temporary file unless the save committed it.
class TempFileGuard {
 public:
  explicit TempFileGuard(std::string path) : path_(std::move(path)) {}
  ~TempFileGuard() {
    if (!path_.empty()) ::unlink(path_.c_str());
  }
  TempFileGuard(const TempFileGuard&) = delete;
  TempFileGuard& operator=(const TempFileGuard&) = delete;
  void commit() { path_.clear(); }

 private:
  std::string path_;
};

std::string temp_path_for(const std::string& path) {
  static std::atomic<std::uint64_t> counter{0};
  return path + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter.fetch_add(1));
}

// fsync of the directory holding `path`, so that the rename itself is durable.
void sync_directory(const std::string& path) {
  std::string dir = std::filesystem::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  Fd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
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

// ---- writing -----------------------------------------------------------------------------------

void validate_for_save(const TensorFile& file) {
  for (const auto& [name, t] : file.tensors) {
    SHIFTQ_CHECK(t.defined(), ValueError, "save_safetensors: tensor '", name, "' is undefined");
    SHIFTQ_CHECK(name != kMetadataKey, ValueError, "save_safetensors: '__metadata__' is not a valid tensor name");
    SHIFTQ_CHECK(valid_utf8(name), ValueError, "save_safetensors: tensor name ", json_string(name),
                 " is not valid UTF-8");
    const std::int64_t bad = first_non_finite(t);
    if (bad >= 0)
      throw NumericError(detail::cat("save_safetensors: tensor '", name, "' holds a non-finite value (",
                                     t.data<float>()[bad], ") at flat index ", bad, "; nothing was written"));
  }
  for (const auto& [key, value] : file.metadata)
    SHIFTQ_CHECK(valid_utf8(key) && valid_utf8(value), ValueError, "save_safetensors: metadata entry ",
                 json_string(key), " is not valid UTF-8");
}

// The JSON header, tensors in sorted-name order with contiguous offsets, padded with spaces to a
// multiple of 8 bytes.
std::string build_header(const TensorFile& file) {
  std::string h = "{";
  std::uint64_t offset = 0;
  for (const auto& [name, t] : file.tensors) {
    if (h.size() > 1) h += ',';
    h.append(json_string(name)).append(":{\"dtype\":\"").append(dtype_tag(t.dtype())).append("\",\"shape\":[");
    for (std::size_t d = 0; d < t.shape().size(); ++d) {
      if (d > 0) h += ',';
      h.append(std::to_string(t.shape()[d]));
    }
    h.append("],\"data_offsets\":[").append(std::to_string(offset)).append(",");
    offset += t.nbytes();
    h.append(std::to_string(offset)).append("]}");
  }
  if (!file.metadata.empty()) {
    if (h.size() > 1) h += ',';
    h.append("\"__metadata__\":{");
    for (const auto& [key, value] : file.metadata) {
      if (h.back() != '{') h += ',';
      h.append(json_string(key)).append(":").append(json_string(value));
    }
    h += '}';
  }
  h += '}';
  h.append((8 - h.size() % 8) % 8, ' ');
  return h;
}

}  // namespace

void save_safetensors(const std::string& path, const TensorFile& file) {
  validate_for_save(file);
  const std::string header = build_header(file);
  const std::string tmp = temp_path_for(path);
  Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666));
  if (fd.get() < 0) save_failed(path, "cannot create temporary file '" + tmp + "'", errno);
  TempFileGuard guard(tmp);

  unsigned char length[8];
  const std::uint64_t n = header.size();
  std::memcpy(length, &n, 8);  // little-endian host (static_assert above)
  bool ok = write_all(fd.get(), length, 8) &&
            write_all(fd.get(), reinterpret_cast<const unsigned char*>(header.data()), header.size());
  for (auto it = file.tensors.begin(); ok && it != file.tensors.end(); ++it)
    ok = write_all(fd.get(), raw_bytes(it->second), it->second.nbytes());
  if (!ok) save_failed(path, "writing '" + tmp + "' failed", errno);
  if (::fsync(fd.get()) != 0) save_failed(path, "fsync of '" + tmp + "' failed", errno);
  if (::close(fd.release()) != 0) save_failed(path, "closing '" + tmp + "' failed", errno);
  if (::rename(tmp.c_str(), path.c_str()) != 0)
    save_failed(path, "cannot rename '" + tmp + "' over it", errno);
  guard.commit();
  sync_directory(path);
  remove_stale_temp_files(path);
}

TensorFile load_safetensors(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
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

  Header header = HeaderParser(text, path).parse();
  const std::uint64_t data_size = file_size - 8 - header_size;
  for (const Entry& e : header.entries) check_extent(e, data_size, path);
  check_coverage(header.entries, data_size, path);

  TensorFile out;
  out.metadata = std::move(header.metadata);
  for (const Entry& e : header.entries) {  // in offset order: one sequential read
    Tensor t = Tensor::uninitialized(e.shape, e.dtype);
    read_exact(fd.get(), path, raw_bytes(t), t.nbytes(), "data section");
    const std::int64_t bad = first_non_finite(t);
    if (bad >= 0)
      throw NumericError("safetensors file '" + path + "': tensor " + json_string(e.name) +
                         " holds a non-finite value (" + std::to_string(t.data<float>()[bad]) + ") at flat index " +
                         std::to_string(bad));
    out.tensors.emplace(e.name, std::move(t));
  }
  return out;
}

}  // namespace shiftq::io
