#include "io/safetensors_header.hpp"

#include <cstddef>
#include <iterator>
#include <limits>
#include <set>
#include <utility>

#include <nlohmann/json.hpp>

#include "shiftq/core/error.hpp"

namespace shiftq::io::detail {
namespace {

using json = nlohmann::json;
using ordered_json = nlohmann::ordered_json;

// The header text for nlohmann's lexer, one byte at a time, remembering how far the lexer has read:
// the schema errors found in the SAX callbacks then name a byte position, like the lexer's own.
class TrackingIterator {
 public:
  using iterator_category = std::input_iterator_tag;
  using value_type = char;
  using difference_type = std::ptrdiff_t;
  using pointer = const char*;
  using reference = const char&;

  TrackingIterator(const char* p, const char** read_up_to) : p_(p), read_up_to_(read_up_to) {}
  reference operator*() const { return *p_; }
  TrackingIterator& operator++() {
    *read_up_to_ = ++p_;
    return *this;
  }
  TrackingIterator operator++(int) {
    TrackingIterator old = *this;
    ++*this;
    return old;
  }
  bool operator==(const TrackingIterator& other) const { return p_ == other.p_; }
  bool operator!=(const TrackingIterator& other) const { return p_ != other.p_; }

 private:
  const char* p_;
  const char** read_up_to_;
};

// nlohmann's message without its "[json.exception.parse_error.101] parse error at line 1, column 5: "
// prefix (the caller names the byte instead), and without the bytes last read when they are not
// UTF-8 (the message must be text).
std::string lexer_message(const nlohmann::detail::exception& ex) {
  std::string_view m = ex.what();
  const std::size_t close = m.find("] ");
  if (m.substr(0, 16) == "[json.exception." && close != std::string_view::npos) m.remove_prefix(close + 2);
  if (m.substr(0, 11) == "parse error") {
    const std::size_t colon = m.find(": ");
    if (colon != std::string_view::npos) m.remove_prefix(colon + 2);
  }
  std::string out(m);
  if (const std::size_t last = out.find("; last read: "); last != std::string::npos && !is_valid_utf8(out)) {
    const std::size_t expected = out.find("; expected", last);
    out.erase(last, expected == std::string::npos ? std::string::npos : expected - last);
  }
  return out;
}

// SAX handler directed by the schema: each event must be what the schema expects next, so nothing
// but the header's own strings and integers is ever stored.
class HeaderSax final : public nlohmann::json_sax<json> {
 public:
  HeaderSax(std::string_view text, const std::string& path, const char* const* read_up_to)
      : text_(text), path_(path), read_up_to_(read_up_to) {}

  bool finished() const { return expect_ == Expect::nothing; }
  Header take() { return std::move(header_); }

  bool null() override { unexpected(); }
  bool boolean(bool) override { unexpected(); }
  bool binary(binary_t&) override { unexpected(); }

  bool number_integer(number_integer_t v) override {
    if (expect_ != Expect::array_item) unexpected();
    if (v == std::numeric_limits<std::int64_t>::min()) syntax_error("integer out of range");
    array_->push_back(v);
    return true;
  }
  bool number_unsigned(number_unsigned_t v) override {
    if (expect_ != Expect::array_item) unexpected();
    if (v > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) syntax_error("integer out of range");
    array_->push_back(static_cast<std::int64_t>(v));
    return true;
  }
  // A fraction or exponent, or an integer beyond 64 bits (which the lexer reads as a double).
  bool number_float(number_float_t, const string_t& literal) override {
    if (expect_ != Expect::array_item) unexpected();
    if (literal.find_first_of(".eE") == string_t::npos) syntax_error("integer out of range");
    syntax_error("only integers are allowed here");
  }

  bool string(string_t& s) override {
    if (expect_ == Expect::metadata_value) {
      header_.metadata.emplace(std::move(key_), std::move(s));
      expect_ = Expect::metadata_key;
    } else if (expect_ == Expect::dtype_value) {
      entry_.dtype = std::move(s);
      expect_ = Expect::entry_key;
    } else {
      unexpected();
    }
    return true;
  }

  bool start_object(std::size_t) override {
    if (expect_ == Expect::header) expect_ = Expect::header_key;
    else if (expect_ == Expect::metadata_object) expect_ = Expect::metadata_key;
    else if (expect_ == Expect::entry_object) expect_ = Expect::entry_key;
    else unexpected();
    return true;
  }

  bool key(string_t& k) override {
    switch (expect_) {
      case Expect::header_key:
        if (!header_keys_.insert(k).second) duplicate_key(k, "the header");
        if (k == kMetadataKey) {
          expect_ = Expect::metadata_object;
        } else {
          entry_ = HeaderEntry{};
          entry_.name = std::move(k);
          has_dtype_ = has_shape_ = has_offsets_ = false;
          expect_ = Expect::entry_object;
        }
        break;
      case Expect::metadata_key:
        if (header_.metadata.count(k) != 0) duplicate_key(k, std::string(kMetadataKey));
        key_ = std::move(k);
        expect_ = Expect::metadata_value;
        break;
      case Expect::entry_key:
        entry_key(k);
        break;
      default:
        unexpected();
    }
    return true;
  }

  bool end_object() override {
    if (expect_ == Expect::header_key) {
      expect_ = Expect::nothing;
    } else if (expect_ == Expect::metadata_key) {
      expect_ = Expect::header_key;
    } else if (expect_ == Expect::entry_key) {
      if (!has_dtype_ || !has_shape_ || !has_offsets_)
        safetensors_error(path_, entry_what() + " lacks " + (!has_dtype_ ? "dtype" : !has_shape_ ? "shape" : "data_offsets"));
      header_.entries.push_back(std::move(entry_));
      expect_ = Expect::header_key;
    } else {
      unexpected();
    }
    return true;
  }

  bool start_array(std::size_t) override {
    if (expect_ == Expect::shape_array) array_ = &entry_.shape;
    else if (expect_ == Expect::offsets_array) array_ = &entry_.data_offsets;
    else unexpected();
    expect_ = Expect::array_item;
    return true;
  }
  bool end_array() override {
    if (expect_ != Expect::array_item) unexpected();
    expect_ = Expect::entry_key;
    return true;
  }

  // A syntax error found by the lexer or parser: `position` counts the bytes read, the offending one
  // included (end of input counts as one more).
  bool parse_error(std::size_t position, const std::string&, const nlohmann::detail::exception& ex) override {
    syntax_error_at(position > 0 ? position - 1 : 0, lexer_message(ex));
  }

  [[noreturn]] void syntax_error_at(std::size_t byte, const std::string& what) const {
    safetensors_error(path_, "malformed JSON header at byte " + std::to_string(byte) + ": " + what);
  }

 private:
  enum class Expect {
    header,           // the header object
    header_key,       // a tensor name, "__metadata__" or the header's '}'
    metadata_object,  // the __metadata__ object
    metadata_key,     // a metadata key or '}'
    metadata_value,   // a metadata string
    entry_object,     // a tensor's object
    entry_key,        // dtype, shape, data_offsets or the tensor's '}'
    dtype_value,      // the dtype string
    shape_array,      // '[' of the shape
    offsets_array,    // '[' of the data_offsets
    array_item,       // an integer or ']'
    nothing,          // after the header object
  };

  std::string entry_what() const { return "tensor " + json_quoted(entry_.name); }

  void entry_key(const std::string& field) {
    const auto first = [&](bool& seen) {
      if (seen) duplicate_key(field, entry_what());
      seen = true;
    };
    if (field == "dtype") {
      first(has_dtype_);
      expect_ = Expect::dtype_value;
    } else if (field == "shape") {
      first(has_shape_);
      expect_ = Expect::shape_array;
    } else if (field == "data_offsets") {
      first(has_offsets_);
      expect_ = Expect::offsets_array;
    } else {
      safetensors_error(path_, entry_what() + " has an unknown field " + json_quoted(field));
    }
  }

  // The lexer has read the token that caused the error (and at most one byte more).
  [[noreturn]] void syntax_error(const std::string& what) const {
    const auto read = static_cast<std::size_t>(*read_up_to_ - text_.data());
    syntax_error_at(read > 0 ? read - 1 : 0, what);
  }

  [[noreturn]] void duplicate_key(const std::string& key, const std::string& where) const {
    syntax_error("duplicate key " + json_quoted(key) + " in " + where);
  }

  // A value or key where the schema expects something else.
  [[noreturn]] void unexpected() const {
    switch (expect_) {
      case Expect::header: syntax_error("expected '{' to open the header");
      case Expect::metadata_object: syntax_error("expected '{' to open __metadata__");
      case Expect::metadata_value: syntax_error("__metadata__ value of " + json_quoted(key_) + " must be a string");
      case Expect::entry_object: syntax_error("expected '{' to open " + entry_what());
      case Expect::dtype_value: syntax_error(entry_what() + ": dtype must be a string");
      case Expect::shape_array: syntax_error("expected '[' to open " + entry_what() + " shape");
      case Expect::offsets_array: syntax_error("expected '[' to open " + entry_what() + " data_offsets");
      case Expect::array_item: syntax_error("expected an integer");
      default: syntax_error("unexpected value");
    }
  }

  std::string_view text_;
  const std::string& path_;
  const char* const* read_up_to_;
  Expect expect_ = Expect::header;
  Header header_;
  std::set<std::string> header_keys_;
  HeaderEntry entry_;  // the tensor being read
  bool has_dtype_ = false, has_shape_ = false, has_offsets_ = false;
  std::vector<std::int64_t>* array_ = nullptr;  // the shape or data_offsets being read
  std::string key_;                             // the metadata key whose value comes next
};

}  // namespace

void safetensors_error(const std::string& path, const std::string& what) {
  throw IOError("safetensors file '" + path + "': " + what);
}

Header parse_header(std::string_view text, const std::string& path) {
  const char* read_up_to = text.data();
  HeaderSax sax(text, path, &read_up_to);
  // nlohmann's lexer skips a UTF-8 byte-order mark, which JSON texts must not have (RFC 8259, 8.1).
  if (text.substr(0, 3) == "\xEF\xBB\xBF") sax.syntax_error_at(0, "expected '{' to open the header");
  const bool ok = json::sax_parse(TrackingIterator(text.data(), &read_up_to),
                                  TrackingIterator(text.data() + text.size(), &read_up_to), &sax,
                                  nlohmann::json::input_format_t::json, /*strict=*/true, /*ignore_comments=*/false);
  if (!ok || !sax.finished()) sax.syntax_error_at(text.size(), "incomplete header object");
  // The lexer takes a NUL byte outside a string for the end of the input: one after the object.
  if (const std::size_t nul = text.find('\0'); nul != std::string_view::npos)
    sax.syntax_error_at(nul, "trailing characters after the header object");
  return sax.take();
}

std::string write_header(const std::vector<HeaderEntry>& entries, const std::map<std::string, std::string>& metadata) {
  ordered_json header = ordered_json::object();
  for (const HeaderEntry& e : entries) {
    ordered_json entry = ordered_json::object();
    entry["dtype"] = e.dtype;
    entry["shape"] = e.shape;
    entry["data_offsets"] = e.data_offsets;
    header[e.name] = std::move(entry);
  }
  if (!metadata.empty()) {
    ordered_json& meta = header[std::string(kMetadataKey)] = ordered_json::object();
    for (const auto& [key, value] : metadata) meta[key] = value;
  }
  return header.dump();
}

std::string json_quoted(std::string_view s) {
  return json(std::string(s)).dump(-1, ' ', false, json::error_handler_t::replace);
}

bool is_valid_utf8(std::string_view s) {
  try {
    (void)json(std::string(s)).dump();  // the serializer's strict UTF-8 decoder
    return true;
  } catch (const json::type_error&) {
    return false;
  }
}

}  // namespace shiftq::io::detail
