#include "shiftq/data/text.hpp"

#include "data/utf8.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>

namespace shiftq::data {
namespace {
using detail::append_utf8;

// Decodes the UTF-8 sequence at s[i] (strict: no overlong forms, surrogates or code points above
// U+10FFFF). Returns its length in bytes and sets cp, or returns 0 when it is invalid.
std::size_t decode_utf8(const std::string& s, std::size_t i, char32_t& cp) {
  const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char b0 = byte(i);
  if (b0 < 0x80) {
    cp = b0;
    return 1;
  }
  std::size_t len = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    len = 2;
    cp = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    len = 3;
    cp = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;  // overlong
    if (b0 == 0xED) hi = 0x9F;  // UTF-16 surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    len = 4;
    cp = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;  // overlong
    if (b0 == 0xF4) hi = 0x8F;  // above U+10FFFF
  } else {
    return 0;
  }
  if (i + len > s.size()) return 0;
  for (std::size_t k = 1; k < len; ++k) {
    const unsigned char b = byte(i + k);
    if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) return 0;
    cp = (cp << 6) | (b & 0x3F);
  }
  return len;
}

// "'a' (U+0061)", or just "U+000A" for control characters.
std::string describe(char32_t cp) {
  char code[16];
  std::snprintf(code, sizeof code, "U+%04X", static_cast<unsigned>(cp));
  if (cp < 0x20 || (cp >= 0x7F && cp < 0xA0)) return code;
  std::string s = "'";
  append_utf8(s, cp);
  return s + "' (" + code + ")";
}

// Why the bytes at offset i do not decode (for error messages).
std::string utf8_problem(const std::string& s, std::size_t i) {
  char b[8];
  std::snprintf(b, sizeof b, "0x%02X", static_cast<unsigned>(static_cast<unsigned char>(s[i])));
  return "invalid UTF-8 at byte offset " + std::to_string(i) + " (byte " + b + ")";
}

// The code points of s; throws Exc with `what` and the offset of the first invalid sequence.
template <class Exc>
std::vector<char32_t> decode_all(const std::string& s, const std::string& what) {
  std::vector<char32_t> out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) {
    char32_t cp = 0;
    const std::size_t len = decode_utf8(s, i, cp);
    if (len == 0) throw Exc(what + ": " + utf8_problem(s, i));
    out.push_back(cp);
    i += len;
  }
  return out;
}

}  // namespace

std::string read_text_file(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) throw IOError("text file '" + path + "': is a directory");
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!f) throw IOError("text file '" + path + "': cannot open (" + std::strerror(errno) + ")");
  std::string text;
  const auto expected = std::filesystem::file_size(path, ec);
  if (!ec) text.reserve(static_cast<std::size_t>(expected));
  char buf[1 << 16];
  std::size_t got = 0;
  while ((got = std::fread(buf, 1, sizeof buf, f.get())) > 0) text.append(buf, got);
  if (std::ferror(f.get())) throw IOError("text file '" + path + "': read error (" + std::strerror(errno) + ")");
  if (text.empty()) throw IOError("text file '" + path + "': file is empty");
  for (std::size_t i = 0; i < text.size();) {
    char32_t cp = 0;
    const std::size_t len = decode_utf8(text, i, cp);
    if (len == 0) throw IOError("text file '" + path + "': " + utf8_problem(text, i));
    i += len;
  }
  return text;
}

// ---- CharVocab ----

CharVocab::CharVocab(std::vector<char32_t> chars) : chars_(std::move(chars)) {
  ascii_.fill(-1);
  for (std::size_t id = 0; id < chars_.size(); ++id)
    if (chars_[id] < 128) ascii_[chars_[id]] = static_cast<std::int32_t>(id);
}

CharVocab CharVocab::build(const std::string& text) {
  SHIFTQ_CHECK(!text.empty(), ValueError, "CharVocab::build: the text is empty");
  std::vector<bool> seen(0x110000, false);
  for (std::size_t i = 0; i < text.size();) {
    char32_t cp = 0;
    const std::size_t len = decode_utf8(text, i, cp);
    if (len == 0) throw ValueError("CharVocab::build: " + utf8_problem(text, i));
    seen[cp] = true;
    i += len;
  }
  std::vector<char32_t> chars;
  for (char32_t cp = 0; cp < 0x110000; ++cp)
    if (seen[cp]) chars.push_back(cp);
  return CharVocab(std::move(chars));
}

CharVocab CharVocab::from_string(const std::string& chars_utf8) {
  SHIFTQ_CHECK(!chars_utf8.empty(), ValueError, "CharVocab::from_string: the vocabulary string is empty");
  std::vector<char32_t> chars = decode_all<ValueError>(chars_utf8, "CharVocab::from_string");
  for (std::size_t i = 1; i < chars.size(); ++i) {
    if (chars[i] > chars[i - 1]) continue;
    // chars[0, i) is strictly increasing, so a binary search tells a duplicate from a misplaced character.
    const auto prefix_end = chars.begin() + static_cast<std::ptrdiff_t>(i);
    SHIFTQ_CHECK(!std::binary_search(chars.begin(), prefix_end, chars[i]), ValueError,
                 "CharVocab::from_string: duplicate character ", describe(chars[i]), " (position ", i, ")");
    throw ValueError("CharVocab::from_string: character " + describe(chars[i]) + " (position " + std::to_string(i) +
                     ") comes after " + describe(chars[i - 1]) +
                     ": characters must be in increasing code-point order, as to_string() writes them");
  }
  return CharVocab(std::move(chars));
}

std::string CharVocab::to_string() const {
  std::string s;
  for (char32_t cp : chars_) append_utf8(s, cp);
  return s;
}

char32_t CharVocab::char_at(std::int32_t id) const {
  SHIFTQ_CHECK(id >= 0 && id < size(), ValueError, "CharVocab::char_at: id ", id, " is outside [0, ", size(), ")");
  return chars_[static_cast<std::size_t>(id)];
}

std::vector<std::int32_t> CharVocab::encode(const std::string& text) const {
  std::vector<std::int32_t> ids;
  ids.reserve(text.size());
  for (std::size_t i = 0; i < text.size();) {
    const auto b = static_cast<unsigned char>(text[i]);
    if (b < 0x80 && ascii_[b] >= 0) {  // fast path: known ASCII character
      ids.push_back(ascii_[b]);
      ++i;
      continue;
    }
    char32_t cp = 0;
    const std::size_t len = decode_utf8(text, i, cp);
    if (len == 0) throw ValueError("CharVocab::encode: " + utf8_problem(text, i));
    const auto it = std::lower_bound(chars_.begin(), chars_.end(), cp);
    SHIFTQ_CHECK(it != chars_.end() && *it == cp, ValueError, "CharVocab::encode: character ", describe(cp),
                 " at byte offset ", i, " is not in the vocabulary (", size(), " characters)");
    ids.push_back(static_cast<std::int32_t>(it - chars_.begin()));
    i += len;
  }
  return ids;
}

std::string CharVocab::decode(const std::vector<std::int32_t>& ids) const {
  std::string s;
  s.reserve(ids.size());
  for (std::size_t i = 0; i < ids.size(); ++i) {
    SHIFTQ_CHECK(ids[i] >= 0 && ids[i] < size(), ValueError, "CharVocab::decode: id ", ids[i], " at position ", i,
                 " is outside [0, ", size(), ")");
    append_utf8(s, chars_[static_cast<std::size_t>(ids[i])]);
  }
  return s;
}

// ---- TextDataset ----

TextDataset::TextDataset(const std::string& text, CharVocab vocab, double val_fraction) : vocab_(std::move(vocab)) {
  SHIFTQ_CHECK(!text.empty(), ValueError, "TextDataset: the text is empty");
  SHIFTQ_CHECK(val_fraction >= 0.0 && val_fraction < 1.0, ValueError, "TextDataset: val_fraction must be in [0, 1), got ",
               val_fraction);
  tokens_ = vocab_.encode(text);
  const auto n = static_cast<std::int64_t>(tokens_.size());
  train_size_ = n - static_cast<std::int64_t>(std::llround(static_cast<double>(n) * val_fraction));
  SHIFTQ_CHECK(train_size_ > 0, ValueError, "TextDataset: val_fraction ", val_fraction, " of ", n,
               " tokens leaves no training tokens");
}

TextDataset::TextDataset(const std::string& text, double val_fraction)
    : TextDataset(text, CharVocab::build(text), val_fraction) {}

TokenBatch TextDataset::sample_train(std::int64_t batch, std::int64_t context, Generator& gen) const {
  SHIFTQ_CHECK(batch > 0 && context > 0, ValueError, "TextDataset::sample_train: batch and context must be > 0, got ",
               batch, " and ", context);
  SHIFTQ_CHECK(train_size_ >= context + 1, ValueError, "TextDataset::sample_train: the training split has ",
               train_size_, " tokens, too few for a window of context ", context, " (needs ", context + 1, ")");
  TokenBatch out{Tensor::uninitialized({batch, context}, DType::s32),
                 Tensor::uninitialized({batch, context}, DType::s32)};
  std::int32_t* in = out.inputs.data<std::int32_t>();
  std::int32_t* tg = out.targets.data<std::int32_t>();
  const auto starts = static_cast<std::uint64_t>(train_size_ - context);  // start in [0, train_size - context - 1]
  for (std::int64_t b = 0; b < batch; ++b) {
    const std::int32_t* src = tokens_.data() + gen.randint(starts);
    std::copy(src, src + context, in + b * context);
    std::copy(src + 1, src + context + 1, tg + b * context);
  }
  return out;
}

std::int64_t TextDataset::num_val_windows(std::int64_t context) const {
  return val_size() > 0 ? (val_size() - 1) / context : 0;
}

std::int64_t TextDataset::num_val_batches(std::int64_t batch, std::int64_t context) const {
  SHIFTQ_CHECK(batch > 0 && context > 0, ValueError,
               "TextDataset::num_val_batches: batch and context must be > 0, got ", batch, " and ", context);
  const std::int64_t windows = num_val_windows(context);
  return windows == 0 ? 0 : std::max<std::int64_t>(1, windows / batch);
}

TokenBatch TextDataset::val_batch(std::int64_t index, std::int64_t batch, std::int64_t context) const {
  const std::int64_t nb = num_val_batches(batch, context);
  SHIFTQ_CHECK(nb > 0, ValueError, "TextDataset::val_batch: the validation split has ", val_size(),
               " tokens, too few for a window of context ", context, " (needs ", context + 1, ")");
  SHIFTQ_CHECK(index >= 0 && index < nb, ValueError, "TextDataset::val_batch: index ", index, " is outside [0, ", nb,
               ")");
  const std::int64_t rows = std::min(batch, num_val_windows(context));
  TokenBatch out{Tensor::uninitialized({rows, context}, DType::s32),
                 Tensor::uninitialized({rows, context}, DType::s32)};
  std::int32_t* in = out.inputs.data<std::int32_t>();
  std::int32_t* tg = out.targets.data<std::int32_t>();
  const std::int32_t* val = tokens_.data() + train_size_;
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int32_t* src = val + (index * batch + r) * context;
    std::copy(src, src + context, in + r * context);
    std::copy(src + 1, src + context + 1, tg + r * context);
  }
  return out;
}

}  // namespace shiftq::data
