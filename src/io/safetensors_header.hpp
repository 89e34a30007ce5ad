// The JSON header of a safetensors file, read and written with nlohmann/json (a private dependency:
// no public header includes it). This layer knows the header's schema, not what its values mean:
// dtype names, dims and offsets are checked by the format (safetensors.cpp).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace shiftq::io::detail {

inline constexpr std::string_view kMetadataKey = "__metadata__";

// One tensor of the header, as written there. Offsets are relative to the start of the data section.
struct HeaderEntry {
  std::string name;
  std::string dtype;
  std::vector<std::int64_t> shape;
  std::vector<std::int64_t> data_offsets;
};

struct Header {
  std::vector<HeaderEntry> entries;  // in the header's order
  std::map<std::string, std::string> metadata;
};

// Throws IOError "safetensors file '<path>': <what>".
[[noreturn]] void safetensors_error(const std::string& path, const std::string& what);

// Strict parser of {"<name>": {"dtype": str, "shape": [int...], "data_offsets": [int...]}, ...,
// "__metadata__": {str: str}}: RFC 8259 JSON (no byte-order mark, no trailing bytes, strings valid
// UTF-8) whose numbers are integers within int64, every key of the schema present once, no other
// key. Streams the text (SAX), so that memory stays proportional to the header. Throws IOError
// naming `path`: "malformed JSON header at byte N: ..." for a syntax or schema error, and
// "tensor \"x\" lacks shape" / "has an unknown field ..." for an incomplete or unknown entry.
Header parse_header(std::string_view text, const std::string& path);

// Compact JSON, the entries in the given order with keys dtype, shape, data_offsets, then
// "__metadata__" unless `metadata` is empty. Every string must be valid UTF-8 (is_valid_utf8).
std::string write_header(const std::vector<HeaderEntry>& entries, const std::map<std::string, std::string>& metadata);

// `s` as a JSON string literal, for messages (bytes that are not UTF-8 become U+FFFD).
std::string json_quoted(std::string_view s);

// Strict UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing above U+10FFFF.
bool is_valid_utf8(std::string_view s);

}  // namespace shiftq::io::detail
