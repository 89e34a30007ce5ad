// Safetensors files: round trips of every dtype, the exact byte layout, every malformed-file error
// (truncation at every byte, flipped header bytes, hand-written bad headers) and atomic writes.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "testing/files.hpp"
#include "testing/gradcheck.hpp"

namespace shiftq {
namespace {
namespace fs = std::filesystem;
using testing::Bytes;
using testing::read_bytes;
using testing::write_bytes;
using io::TensorFile;
using namespace std::string_literals;

class SafetensorsTest : public testing::TempDirTest {
 protected:
  // Names of the entries of the test directory, sorted.
  std::vector<std::string> listing() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir_)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }
};

// A file with an 8-byte little-endian length, `header` as given (no padding added) and `data`.
Bytes raw_file(const std::string& header, const Bytes& data = {}) {
  Bytes out(8 + header.size() + data.size());
  const std::uint64_t n = header.size();
  for (std::size_t i = 0; i < 8; ++i) out[i] = static_cast<unsigned char>(n >> (8 * i));
  std::memcpy(out.data() + 8, header.data(), header.size());
  if (!data.empty()) std::memcpy(out.data() + 8 + header.size(), data.data(), data.size());
  return out;
}

// Expects load_safetensors(path) to throw IOError whose message names the file (and contains `what`).
void expect_io_error(const std::string& path, const std::string& what = "") {
  testing::expect_file_io_error("load_safetensors", [&] { io::load_safetensors(path); }, path, what);
}

template <class T>
Tensor make(const Shape& shape, const std::vector<T>& values) {
  Tensor t = Tensor::zeros(shape, dtype_of<T>);
  EXPECT_EQ(static_cast<std::int64_t>(values.size()), t.numel());
  std::copy(values.begin(), values.end(), t.data<T>());
  return t;
}


void expect_same_tensors(const std::map<std::string, Tensor>& a, const std::map<std::string, Tensor>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, t] : a) {
    auto it = b.find(name);
    ASSERT_NE(it, b.end()) << name;
    EXPECT_EQ(t.dtype(), it->second.dtype()) << name;
    EXPECT_EQ(t.shape(), it->second.shape()) << name;
    ASSERT_EQ(t.nbytes(), it->second.nbytes()) << name;
    EXPECT_EQ(std::memcmp(t.raw_bytes(), it->second.raw_bytes(), t.nbytes()), 0) << name;
  }
}

TensorFile sample_file() {
  TensorFile f;
  f.tensors["weight"] = make<float>({2, 3}, {1.5f, -0.0f, 1e-40f, std::numeric_limits<float>::max(), -3.25f, 0.0f});
  f.tensors["labels"] = make<std::int32_t>({4}, {0, -1, std::numeric_limits<std::int32_t>::min(),
                                                  std::numeric_limits<std::int32_t>::max()});
  f.tensors["codes"] = make<std::int8_t>({3}, {-128, 0, 127});
  f.tensors["pixels"] = make<std::uint8_t>({2, 2}, {0, 1, 128, 255});
  f.tensors["scale"] = make<float>({1}, {0.125f});
  f.tensors["step"] = make<std::int32_t>({1}, {7});
  f.tensors["scalar"] = make<float>({}, {42.0f});
  f.tensors["empty"] = Tensor::zeros({0, 3}, DType::u8);
  f.metadata = {{"epoch", "3"}, {"note", "hello"}};
  return f;
}

// ---- a small, independent JSON validator (full grammar), for the header ----

class JsonChecker {
 public:
  explicit JsonChecker(const std::string& s) : s_(s) {}
  bool valid() {
    ws();
    if (!value()) return false;
    ws();
    return i_ == s_.size();
  }

 private:
  void ws() {
    while (i_ < s_.size() && std::strchr(" \t\n\r", s_[i_]) && s_[i_] != '\0') ++i_;
  }
  bool eat(char c) {
    ws();
    if (i_ >= s_.size() || s_[i_] != c) return false;
    ++i_;
    return true;
  }
  bool literal(const char* lit) {
    if (s_.compare(i_, std::strlen(lit), lit) != 0) return false;
    i_ += std::strlen(lit);
    return true;
  }
  bool value() {
    ws();
    if (i_ >= s_.size()) return false;
    const char c = s_[i_];
    if (c == '{') return container('}', true);
    if (c == '[') return container(']', false);
    if (c == '"') return string();
    return literal("true") || literal("false") || literal("null") || number();
  }
  bool container(char close, bool object) {
    ++i_;
    if (eat(close)) return true;
    do {
      if (object && !(string() && eat(':'))) return false;
      if (!value()) return false;
    } while (eat(','));
    return eat(close);
  }
  bool string() {
    ws();
    if (i_ >= s_.size() || s_[i_] != '"') return false;
    for (++i_; i_ < s_.size(); ++i_) {
      const auto c = static_cast<unsigned char>(s_[i_]);
      if (c == '"') {
        ++i_;
        return true;
      }
      if (c < 0x20) return false;
      if (c == '\\') {
        ++i_;
        if (i_ >= s_.size() || !std::strchr("\"\\/bfnrtu", s_[i_])) return false;
        if (s_[i_] == 'u') {
          for (int k = 0; k < 4; ++k)
            if (++i_ >= s_.size() || !std::isxdigit(static_cast<unsigned char>(s_[i_]))) return false;
        }
      }
    }
    return false;
  }
  bool digits() {
    const std::size_t start = i_;
    while (i_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[i_]))) ++i_;
    return i_ > start;
  }
  // -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
  bool number() {
    if (i_ < s_.size() && s_[i_] == '-') ++i_;
    const std::size_t start = i_;
    if (!digits() || (s_[start] == '0' && i_ - start > 1)) return false;
    if (i_ < s_.size() && s_[i_] == '.') {
      ++i_;
      if (!digits()) return false;
    }
    if (i_ < s_.size() && (s_[i_] == 'e' || s_[i_] == 'E')) {
      ++i_;
      if (i_ < s_.size() && (s_[i_] == '+' || s_[i_] == '-')) ++i_;
      if (!digits()) return false;
    }
    return true;
  }

  const std::string& s_;
  std::size_t i_ = 0;
};

// The header text of a saved file.
std::string header_of(const Bytes& file) {
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | file.at(static_cast<std::size_t>(i));
  return std::string(file.begin() + 8, file.begin() + 8 + static_cast<std::ptrdiff_t>(n));
}

// ---- round trips ----

TEST_F(SafetensorsTest, RoundTripAllDtypes) {
  const TensorFile f = sample_file();
  io::save_safetensors(path("all.safetensors"), f);
  const TensorFile g = io::load_safetensors(path("all.safetensors"));
  expect_same_tensors(f.tensors, g.tensors);
  EXPECT_EQ(g.metadata, f.metadata);
  EXPECT_EQ(g.tensors.at("scale").shape(), (Shape{1}));
  EXPECT_EQ(g.tensors.at("scalar").shape(), Shape{});
  EXPECT_EQ(g.tensors.at("scalar").item(), 42.0f);
  EXPECT_EQ(g.tensors.at("codes").dtype(), DType::s8);
  EXPECT_EQ(g.tensors.at("codes").to_vector<std::int8_t>(), (std::vector<std::int8_t>{-128, 0, 127}));
  // Loaded tensors own their storage.
  EXPECT_FALSE(g.tensors.at("weight").shares_storage(f.tensors.at("weight")));
}

TEST_F(SafetensorsTest, SaveRemovesTempFilesOfDeadProcessesOnly) {
  // A process that has exited: its pid is free (reaped), like a trainer killed mid-save.
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) ::_exit(0);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  const std::string target = path("c.safetensors");
  const std::string dead = target + ".tmp-" + std::to_string(child) + "-3";
  const std::string live = target + ".tmp-" + std::to_string(::getppid()) + "-0";  // a save still in flight
  const std::vector<std::string> unrelated = {path("other.safetensors.tmp-" + std::to_string(child) + "-0"),
                                              target + ".tmp-x-1", target + ".tmp-" + std::to_string(child), target + ".bak"};
  for (const std::string& p : unrelated) testing::write_bytes(p, {1, 2, 3});
  testing::write_bytes(dead, {1, 2, 3});
  testing::write_bytes(live, {1, 2, 3});
  io::TensorFile f;
  f.tensors["w"] = Tensor::ones({3});
  io::save_safetensors(target, f);
  EXPECT_FALSE(std::filesystem::exists(dead));
  EXPECT_TRUE(std::filesystem::exists(live));
  for (const std::string& p : unrelated) EXPECT_TRUE(std::filesystem::exists(p)) << p;
  EXPECT_EQ(io::load_safetensors(target).tensors.at("w").to_vector<float>(), std::vector<float>(3, 1.0f));
}

TEST_F(SafetensorsTest, RoundTripEmptyMetadataAndEmptyFile) {
  TensorFile f;
  f.tensors["x"] = make<std::int32_t>({1}, {5});
  io::save_safetensors(path("nometa.safetensors"), f);
  EXPECT_EQ(header_of(read_bytes(path("nometa.safetensors"))).find("__metadata__"), std::string::npos);
  const TensorFile g = io::load_safetensors(path("nometa.safetensors"));
  EXPECT_TRUE(g.metadata.empty());
  expect_same_tensors(f.tensors, g.tensors);

  io::save_safetensors(path("nothing.safetensors"), TensorFile{});
  const Bytes bytes = read_bytes(path("nothing.safetensors"));
  EXPECT_EQ(bytes, raw_file("{}      "));
  const TensorFile h = io::load_safetensors(path("nothing.safetensors"));
  EXPECT_TRUE(h.tensors.empty());
  EXPECT_TRUE(h.metadata.empty());

  TensorFile meta_only;
  meta_only.metadata["k"] = "";
  io::save_safetensors(path("meta.safetensors"), meta_only);
  EXPECT_EQ(io::load_safetensors(path("meta.safetensors")).metadata, meta_only.metadata);
  // An explicitly empty "__metadata__" object is accepted too.
  write_bytes(path("empty-meta.safetensors"), raw_file("{\"__metadata__\":{}}"));
  EXPECT_TRUE(io::load_safetensors(path("empty-meta.safetensors")).metadata.empty());
}

TEST_F(SafetensorsTest, RoundTripUnicodeAndEscapes) {
  TensorFile f;
  const std::string odd = std::string("q\"b\\s/n\nt\tc\x01") + "\x7f" + "\xc3\xa9" + "\xf0\x9f\x98\x80";
  f.tensors[odd] = make<std::uint8_t>({1}, {9});
  f.tensors[""] = make<std::uint8_t>({1}, {8});
  f.tensors["nul\0byte"s] = make<std::uint8_t>({1}, {7});  // written as \u0000, not as a raw NUL
  f.metadata[odd] = odd + odd;
  io::save_safetensors(path("odd.safetensors"), f);
  EXPECT_TRUE(JsonChecker(header_of(read_bytes(path("odd.safetensors")))).valid());
  const TensorFile g = io::load_safetensors(path("odd.safetensors"));
  expect_same_tensors(f.tensors, g.tensors);
  EXPECT_EQ(g.metadata, f.metadata);
}

TEST_F(SafetensorsTest, ReadsJsonEscapesWrittenByOthers) {
  // \u escapes (incl. a surrogate pair), \/ and whitespace between tokens, as other writers may produce.
  const std::string header =
      "{ \"caf\\u00e9\\ud83d\\ude00\\/x\" : { \"shape\" : [ 2 ] ,\n\"data_offsets\":[0,2],\t\"dtype\":\"U8\" },\r\n"
      "  \"__metadata__\": {\"\\u0041\":\"\\\"\\\\\\b\\f\\n\\r\\t\"} }";
  write_bytes(path("others.safetensors"), raw_file(header, {3, 4}));
  const TensorFile g = io::load_safetensors(path("others.safetensors"));
  ASSERT_EQ(g.tensors.count("caf\xc3\xa9\xf0\x9f\x98\x80/x"), 1u);
  EXPECT_EQ(g.tensors.begin()->second.to_vector<std::uint8_t>(), (std::vector<std::uint8_t>{3, 4}));
  EXPECT_EQ(g.metadata.at("A"), "\"\\\b\f\n\r\t");
}

// ---- layout ----

TEST_F(SafetensorsTest, ByteExactLayout) {
  TensorFile f;
  f.tensors["b"] = make<std::uint8_t>({3}, {1, 2, 3});
  f.tensors["a"] = make<float>({1}, {1.0f});
  f.metadata["k"] = "v";
  io::save_safetensors(path("tiny.safetensors"), f);

  // Sorted names, contiguous offsets, metadata last, no whitespace; 131 bytes padded to 136.
  const std::string json =
      R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
      R"("b":{"dtype":"U8","shape":[3],"data_offsets":[4,7]},"__metadata__":{"k":"v"}})";
  ASSERT_EQ(json.size(), 131u);
  // 1.0f little-endian, then the three bytes.
  const Bytes expected = raw_file(json + std::string(5, ' '), {0x00, 0x00, 0x80, 0x3F, 1, 2, 3});
  const unsigned char length[8] = {0x88, 0, 0, 0, 0, 0, 0, 0};  // 136, little-endian u64
  ASSERT_EQ(expected.size(), 8u + 136u + 7u);
  EXPECT_EQ(std::memcmp(expected.data(), length, 8), 0);
  EXPECT_EQ(read_bytes(path("tiny.safetensors")), expected);
}

TEST_F(SafetensorsTest, HeaderIsValidJsonWithSortedContiguousOffsets) {
  const TensorFile f = sample_file();
  io::save_safetensors(path("all.safetensors"), f);
  const Bytes bytes = read_bytes(path("all.safetensors"));
  const std::string header = header_of(bytes);
  EXPECT_EQ(header.size() % 8, 0u);
  EXPECT_TRUE(JsonChecker(header).valid()) << header;
  EXPECT_FALSE(JsonChecker(header + "x").valid());  // the checker itself can fail
  EXPECT_FALSE(JsonChecker(header.substr(0, header.size() / 2)).valid());

  // Names appear in sorted order, and their offsets tile the data section in that order.
  std::vector<std::string> names;
  std::uint64_t cursor = 0;
  const std::string dtype_field = "\":{\"dtype\":\"", offsets_field = "\"data_offsets\":[";
  for (std::size_t at = header.find(dtype_field); at != std::string::npos; at = header.find(dtype_field, at + 1)) {
    const std::size_t name_begin = header.rfind('"', at - 1) + 1;  // names here are plain lowercase
    names.push_back(header.substr(name_begin, at - name_begin));
    const std::size_t offsets = header.find(offsets_field, at) + offsets_field.size();
    std::size_t comma = 0, close = 0;
    const std::uint64_t begin = std::stoull(header.substr(offsets), &comma);
    const std::uint64_t end = std::stoull(header.substr(offsets + comma + 1), &close);
    EXPECT_EQ(header.substr(offsets + comma + 1 + close, 2), "]}");
    EXPECT_EQ(begin, cursor) << names.back();
    EXPECT_EQ(end - begin, f.tensors.at(names.back()).nbytes()) << names.back();
    cursor = end;
  }
  EXPECT_EQ(names.size(), f.tensors.size());
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
  EXPECT_EQ(cursor, bytes.size() - 8 - header.size());
}

// ---- save-side validation ----

TEST_F(SafetensorsTest, SaveRejectsInvalidInputsAndWritesNothing) {
  TensorFile undefined;
  undefined.tensors["x"] = Tensor();
  EXPECT_THROW(io::save_safetensors(path("f"), undefined), ValueError);
  TensorFile reserved;
  reserved.tensors["__metadata__"] = Tensor::zeros({1});
  EXPECT_THROW(io::save_safetensors(path("f"), reserved), ValueError);
  TensorFile bad_name;
  bad_name.tensors["\xff"] = Tensor::zeros({1});
  EXPECT_THROW(io::save_safetensors(path("f"), bad_name), ValueError);
  TensorFile bad_meta;
  bad_meta.metadata["k"] = "\xc0\xaf";  // overlong '/'
  EXPECT_THROW(io::save_safetensors(path("f"), bad_meta), ValueError);
  TensorFile nan;
  nan.tensors["w"] = make<float>({3}, {1.0f, NAN, 2.0f});
  try {
    io::save_safetensors(path("f"), nan);
    ADD_FAILURE() << "no NumericError for NaN";
  } catch (const NumericError& e) {
    EXPECT_NE(std::string(e.what()).find("'w'"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(listing().empty());
}

// ---- malformed files ----

TEST_F(SafetensorsTest, MissingOrUnreadableFile) {
  expect_io_error(path("missing.safetensors"), "cannot open");
  fs::create_directories(path("adir"));
  expect_io_error(path("adir"));
}

TEST_F(SafetensorsTest, ShortFileAndAbsurdHeaderLength) {
  for (std::size_t n = 0; n < 8; ++n) {
    write_bytes(path("short"), Bytes(n, 0));
    expect_io_error(path("short"), "shorter than the 8-byte header length");
  }
  Bytes too_long = raw_file("{}");
  too_long[0] = 3;  // claims 3 bytes, 2 follow
  write_bytes(path("too-long"), too_long);
  expect_io_error(path("too-long"), "exceeds");
  Bytes absurd = raw_file("{}");
  for (int i = 0; i < 4; ++i) absurd[static_cast<std::size_t>(i)] = static_cast<unsigned char>(100000001u >> (8 * i));
  write_bytes(path("absurd"), absurd);
  expect_io_error(path("absurd"), "absurd");
  Bytes huge = raw_file("{}");
  huge[7] = 0xFF;
  write_bytes(path("huge"), huge);
  expect_io_error(path("huge"), "absurd");
}

TEST_F(SafetensorsTest, MalformedJson) {
  const std::vector<std::string> headers = {
      "", " ", "{", "}", "[]", "\"x\"", "0", "{\"a\"}", "{\"a\":}", "{} x", "{}{}", "{,}", "{}\n\0"s,
      "{'__metadata__':{}}", "{\"__metadata__\":{},}", "{\"__metadata__\":{\"k\":\"v\",}}",
      "{\"__metadata__\":{\"k\":\"v}}", "{\"__metadata__\":{\"k\" \"v\"}}", "{\"__metadata__\":{\"k\":\"v\"}",
      "{\"__metadata__\":{\"k\":\"\\q\"}}", "{\"__metadata__\":{\"k\":\"\\u12G4\"}}",
      "{\"__metadata__\":{\"k\":\"\\u12\"}}", "{\"__metadata__\":{\"k\":\"\\udc00\"}}",
      "{\"__metadata__\":{\"k\":\"\\ud800x\"}}", "{\"__metadata__\":{\"k\":\"\\ud800\\u0041\"}}",
      "{\"__metadata__\":{\"k\":\"a\x01\"}}", "{\"__metadata__\":{\"k\":\"a\nb\"}}",
      "{\"__metadata__\":{\"k\":\"\xff\"}}", "{\"__metadata__\":{\"k\":\"\xc0\xaf\"}}",
      "{\"__metadata__\":{\"k\":\"\xed\xa0\x80\"}}", "{\"__metadata__\":{\"k\":1}}",
      "{\"__metadata__\":{\"k\":true}}", "{\"__metadata__\":{\"k\":null}}", "{\"__metadata__\":[]}",
      "{\"__metadata__\":\"x\"}", "{\"x\":[]}", "{\"x\":\"U8\"}",
      "{\"x\":{\"dtype\":\"U8\",\"shape\":[01],\"data_offsets\":[0,1]}}",
      "{\"x\":{\"dtype\":\"U8\",\"shape\":[1.0],\"data_offsets\":[0,1]}}",
      "{\"x\":{\"dtype\":\"U8\",\"shape\":[1e0],\"data_offsets\":[0,1]}}",
      "{\"x\":{\"dtype\":\"U8\",\"shape\":[+1],\"data_offsets\":[0,1]}}",
      "{\"x\":{\"dtype\":\"U8\",\"shape\":[-],\"data_offsets\":[0,1]}}",
      "{\"x\":{\"dtype\":\"U8\",\"shape\":[1,],\"data_offsets\":[0,1]}}",
      "{\"x\":{\"dtype\":\"U8\",\"shape\":[1 1],\"data_offsets\":[0,1]}}",
      "{\"x\":{\"dtype\":\"U8\",\"shape\":[99999999999999999999],\"data_offsets\":[0,1]}}",
      "{\"x\":{\"dtype\":\"U8\",\"shape\":\"1\",\"data_offsets\":[0,1]}}",
      "{\"x\":{\"dtype\":8,\"shape\":[1],\"data_offsets\":[0,1]}}",
      // What a general-purpose JSON parser may let through: a byte-order mark, bytes after a NUL,
      // comments, numbers beyond int64 or beyond double, nested or non-integer array items.
      "\xEF\xBB\xBF{}", "{}\0{}"s, "{}/**/", "{}//", "/**/{}",
      "{\"x\":{\"dtype\":\"U8\",\"shape\":[9223372036854775808],\"data_offsets\":[0,1]}}",
      "{\"x\":{\"dtype\":\"U8\",\"shape\":[-9223372036854775808],\"data_offsets\":[0,1]}}",
      "{\"x\":{\"dtype\":\"U8\",\"shape\":[1e400],\"data_offsets\":[0,1]}}",
      "{\"x\":{\"dtype\":\"U8\",\"shape\":[NaN],\"data_offsets\":[0,1]}}",
      "{\"x\":{\"dtype\":\"U8\",\"shape\":[[1]],\"data_offsets\":[0,1]}}",
      "{\"x\":{\"dtype\":\"U8\",\"shape\":[null],\"data_offsets\":[0,1]}}",
      "{\"x\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":{}}}",
      "{\"x\":{\"dtype\":[\"U8\"],\"shape\":[1],\"data_offsets\":[0,1]}}",
      "{\"__metadata__\":{\"k\":{}}}", "{\"__metadata__\":null}",
  };
  for (std::size_t i = 0; i < headers.size(); ++i) {
    SCOPED_TRACE("header #" + std::to_string(i) + ": " + headers[i]);
    write_bytes(path("bad"), raw_file(headers[i], {7}));
    expect_io_error(path("bad"), "malformed JSON header");
  }
}

TEST_F(SafetensorsTest, BadTensorEntries) {
  struct Case {
    std::string header;
    std::size_t data_bytes;
    std::string what;
  };
  const std::vector<Case> cases = {
      {R"({"x":{"dtype":"F16","shape":[1],"data_offsets":[0,2]}})", 2, "unsupported dtype \"F16\""},
      {R"({"x":{"dtype":"BF16","shape":[1],"data_offsets":[0,2]}})", 2, "unsupported dtype"},
      {R"({"x":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}})", 4, "unsupported dtype"},
      {R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", 4, "needs 8 bytes"},
      {R"({"x":{"dtype":"I32","shape":[1,3],"data_offsets":[0,4]}})", 4, "needs 12 bytes"},
      {R"({"x":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}})", 1, "negative dimension -1"},
      {R"({"x":{"dtype":"U8","shape":[2,-3],"data_offsets":[0,1]}})", 1, "negative dimension -3"},
      {R"({"x":{"dtype":"U8","shape":[1],"data_offsets":[-1,0]}})", 1, "non-negative"},
      {R"({"x":{"dtype":"U8","shape":[1],"data_offsets":[0]}})", 1, "two non-negative integers"},
      {R"({"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}})", 1, "two non-negative integers"},
      {R"({"x":{"dtype":"U8","shape":[1],"data_offsets":[1,0]}})", 1, "reversed"},
      {R"({"x":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})", 3, "beyond the 3-byte data section"},
      {R"({"x":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}})", 3, "data bytes [0, 1) belong to no tensor"},
      {R"({"x":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})", 3, "last 1 bytes"},
      {R"({})", 1, "last 1 bytes"},
      {R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})",
       6, "\"a\" and \"b\" overlap"},
      {R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[3,5]}})",
       5, "data bytes [2, 3) belong to no tensor"},
      {R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})",
       2, "overlap"},
      {R"({"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"x":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
       2, "duplicate key \"x\""},
      {R"({"x":{"dtype":"U8","dtype":"U8","shape":[1],"data_offsets":[0,1]}})", 1, "duplicate key \"dtype\""},
      {R"({"__metadata__":{"k":"a","k":"b"}})", 0, "duplicate key \"k\""},
      {R"({"__metadata__":{},"__metadata__":{}})", 0, "duplicate key \"__metadata__\""},
      {R"({"x":{"shape":[1],"data_offsets":[0,1]}})", 1, "lacks dtype"},
      {R"({"x":{"dtype":"U8","data_offsets":[0,1]}})", 1, "lacks shape"},
      {R"({"x":{"dtype":"U8","shape":[1]}})", 1, "lacks data_offsets"},
      {R"({"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"extra":[]}})", 1, "unknown field \"extra\""},
      // Absurd shapes are rejected from the header alone, before any allocation.
      {R"({"x":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,0]}})", 0, "absurd shape"},
      {R"({"x":{"dtype":"F32","shape":[1099511627776,1099511627776],"data_offsets":[0,0]}})", 0, "absurd shape"},
      {R"({"x":{"dtype":"F32","shape":[4294967296],"data_offsets":[0,17179869184]}})", 0, "beyond"},
      // Found with tests/fuzz/fuzz_checkpoint: an overflowing product before a 0 extent passed the header
      // checks (0 elements), then Tensor's own shape check threw ShapeError instead of IOError.
      {R"({"x":{"dtype":"F32","shape":[4611686018427387904,4611686018427387904,0],"data_offsets":[0,0]}})", 0,
       "absurd shape"},
      {R"({"x":{"dtype":"U8","shape":[2147483648,2147483648,2147483648,0],"data_offsets":[0,0]}})", 0,
       "absurd shape"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.header);
    write_bytes(path("bad"), raw_file(c.header, Bytes(c.data_bytes, 7)));
    expect_io_error(path("bad"), c.what);
  }
  // A 0 extent first: 0 elements whatever follows, as Tensor's own shape check counts them.
  write_bytes(path("zero-first"),
              raw_file(R"({"x":{"dtype":"F32","shape":[0,4611686018427387904,4611686018427387904],"data_offsets":[0,0]}})"));
  EXPECT_EQ(io::load_safetensors(path("zero-first")).tensors.at("x").numel(), 0);
}

TEST_F(SafetensorsTest, NonFiniteF32IsNumericError) {
  const std::string header = R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}})";
  for (float bad : {NAN, INFINITY, -INFINITY}) {
    const float values[3] = {1.0f, 2.0f, bad};
    Bytes data(12);
    std::memcpy(data.data(), values, 12);
    write_bytes(path("nan"), raw_file(header, data));
    try {
      io::load_safetensors(path("nan"));
      ADD_FAILURE() << "no NumericError for " << bad;
    } catch (const NumericError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("\"w\""), std::string::npos) << msg;
      EXPECT_NE(msg.find("index 2"), std::string::npos) << msg;
      EXPECT_NE(msg.find(path("nan")), std::string::npos) << msg;
    }
  }
  // The same bits as I32 are just integers.
  const float nan = NAN;
  Bytes data(4);
  std::memcpy(data.data(), &nan, 4);
  write_bytes(path("int"), raw_file(R"({"w":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}})", data));
  EXPECT_NO_THROW(io::load_safetensors(path("int")));
}

TEST_F(SafetensorsTest, TruncatedAtEveryByteOrExtended) {
  io::save_safetensors(path("full"), sample_file());
  const Bytes full = read_bytes(path("full"));
  ASSERT_GT(full.size(), 200u);
  for (std::size_t n = 0; n < full.size(); ++n) {
    SCOPED_TRACE("truncated to " + std::to_string(n) + " bytes");
    write_bytes(path("cut"), Bytes(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(n)));
    expect_io_error(path("cut"));
  }
  Bytes longer = full;
  longer.push_back(0);
  write_bytes(path("longer"), longer);
  expect_io_error(path("longer"), "belong to no tensor");
}

TEST_F(SafetensorsTest, FlippedBytesNeverCrash) {
  TensorFile f;
  f.tensors["ab"] = make<std::uint8_t>({2, 2}, {1, 2, 3, 4});  // no whitespace bytes in the data
  f.tensors["cd"] = make<std::int32_t>({1}, {0x05060708});
  f.metadata["k"] = "v";
  io::save_safetensors(path("good"), f);
  const Bytes good = read_bytes(path("good"));
  const std::size_t header_end = 8 + header_of(good).size();
  std::size_t loaded = 0, rejected = 0;
  for (std::size_t i = 0; i < header_end; ++i) {
    for (unsigned char mask : {0x01, 0x02, 0x20, 0x80, 0xFF}) {
      Bytes bad = good;
      bad[i] ^= mask;
      write_bytes(path("flipped"), bad);
      try {
        const TensorFile g = io::load_safetensors(path("flipped"));
        // Only a flip that keeps the header valid (a name or metadata character) may load, and then
        // the data is unchanged.
        ++loaded;
        EXPECT_GE(i, 8u) << "a changed length prefix loaded";
        std::size_t total = 0;
        for (const auto& [name, t] : g.tensors) total += t.nbytes();
        EXPECT_EQ(total, 8u);
      } catch (const IOError& e) {
        ++rejected;
        EXPECT_NE(std::string(e.what()).find(path("flipped")), std::string::npos) << e.what();
      } catch (const std::exception& e) {
        ADD_FAILURE() << "byte " << i << " ^ " << int(mask) << ": non-IOError " << e.what();
      }
    }
  }
  EXPECT_GT(rejected, 4 * loaded) << loaded << " flipped files loaded";
}

// ---- atomic writes ----

TEST_F(SafetensorsTest, SaveIntoMissingDirectoryLeavesNothing) {
  const std::string target = path("no-such-dir/x.safetensors");
  try {
    io::save_safetensors(target, sample_file());
    ADD_FAILURE() << "no IOError";
  } catch (const IOError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(target), std::string::npos) << msg;
    EXPECT_NE(msg.find(std::strerror(ENOENT)), std::string::npos) << msg;
  }
  EXPECT_FALSE(fs::exists(path("no-such-dir")));
  EXPECT_TRUE(listing().empty());
}

TEST_F(SafetensorsTest, OverwriteLeavesNoTempFiles) {
  for (int round = 0; round < 3; ++round) {
    TensorFile f;
    f.tensors["round"] = make<std::int32_t>({1}, {round});
    io::save_safetensors(path("ckpt.safetensors"), f);
    EXPECT_EQ(listing(), std::vector<std::string>{"ckpt.safetensors"});
    EXPECT_EQ(io::load_safetensors(path("ckpt.safetensors")).tensors.at("round").to_vector<std::int32_t>(),
              std::vector<std::int32_t>{round});
  }
}

TEST_F(SafetensorsTest, SaveToRelativePath) {
  const fs::path cwd = fs::current_path();
  fs::current_path(dir_);
  TensorFile f;
  f.tensors["x"] = make<std::uint8_t>({1}, {1});
  EXPECT_NO_THROW(io::save_safetensors("relative.safetensors", f));
  fs::current_path(cwd);
  EXPECT_EQ(listing(), std::vector<std::string>{"relative.safetensors"});
}

TEST_F(SafetensorsTest, FailedWriteKeepsOldFile) {
  // A file-size limit makes write() fail with EFBIG half-way through, like a full disk.
  TensorFile old;
  old.tensors["old"] = make<std::uint8_t>({4}, {1, 2, 3, 4});
  io::save_safetensors(path("ckpt.safetensors"), old);
  const Bytes before = read_bytes(path("ckpt.safetensors"));
  TensorFile big;
  big.tensors["big"] = Tensor::zeros({1 << 16});

  struct rlimit saved {};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved), 0);
  void (*old_handler)(int) = ::signal(SIGXFSZ, SIG_IGN);
  struct rlimit limited = saved;
  limited.rlim_cur = 4096;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &limited), 0);
  std::string message;
  try {
    io::save_safetensors(path("ckpt.safetensors"), big);
  } catch (const IOError& e) {
    message = e.what();
  }
  ::setrlimit(RLIMIT_FSIZE, &saved);
  ::signal(SIGXFSZ, old_handler);

  ASSERT_FALSE(message.empty()) << "no IOError for a failed write";
  EXPECT_NE(message.find(path("ckpt.safetensors")), std::string::npos) << message;
  EXPECT_NE(message.find(std::strerror(EFBIG)), std::string::npos) << message;
  EXPECT_EQ(read_bytes(path("ckpt.safetensors")), before);
  EXPECT_EQ(listing(), std::vector<std::string>{"ckpt.safetensors"});
}

TEST_F(SafetensorsTest, SaveOverADirectoryFails) {
  fs::create_directories(path("taken"));
  EXPECT_THROW(io::save_safetensors(path("taken"), sample_file()), IOError);
  EXPECT_TRUE(fs::is_directory(path("taken")));
  EXPECT_EQ(listing(), std::vector<std::string>{"taken"});
}

TEST_F(SafetensorsTest, ReadOnlyDirectoryKeepsOldFile) {
  if (::geteuid() == 0) GTEST_SKIP() << "root ignores directory permissions";
  io::save_safetensors(path("ckpt.safetensors"), sample_file());
  const Bytes before = read_bytes(path("ckpt.safetensors"));
  fs::permissions(dir_, fs::perms::owner_read | fs::perms::owner_exec, fs::perm_options::replace);
  TensorFile other;
  other.tensors["x"] = Tensor::zeros({2});
  EXPECT_THROW(io::save_safetensors(path("ckpt.safetensors"), other), IOError);
  fs::permissions(dir_, fs::perms::owner_all, fs::perm_options::replace);
  EXPECT_EQ(read_bytes(path("ckpt.safetensors")), before);
  EXPECT_EQ(listing(), std::vector<std::string>{"ckpt.safetensors"});
}

}  // namespace
}  // namespace shiftq
