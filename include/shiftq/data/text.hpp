// Character-level text data for language-model training: UTF-8 text files, a vocabulary over
// Unicode code points, and random / sequential (input, target) token windows.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "shiftq/core/generator.hpp"
#include "shiftq/core/tensor.hpp"

namespace shiftq::data {

// The whole file as bytes. Throws IOError naming the path when it is missing, unreadable or empty,
// or when it is not valid UTF-8 (the message gives the byte offset of the first bad sequence).
std::string read_text_file(const std::string& path);

// A vocabulary of Unicode code points (decoded from UTF-8), sorted by code point; a character's id
// is its rank.
class CharVocab {
 public:
  // The distinct characters of `text` (UTF-8). ValueError if it is empty or not valid UTF-8.
  static CharVocab build(const std::string& text);
  // Inverse of to_string(): the characters in increasing code-point order. ValueError on an empty
  // string, invalid UTF-8, a duplicate or an out-of-order character.
  static CharVocab from_string(const std::string& chars_utf8);
  // All characters concatenated in id order, UTF-8 (the form stored in checkpoints).
  std::string to_string() const;
  std::int64_t size() const { return static_cast<std::int64_t>(chars_.size()); }
  // The code point of an id; ValueError when out of range.
  char32_t char_at(std::int32_t id) const;

  // Ids of the characters of `text`. ValueError naming the first character that is not in the
  // vocabulary (and its byte offset), or on invalid UTF-8.
  std::vector<std::int32_t> encode(const std::string& text) const;
  // UTF-8 text of `ids`; ValueError on an id outside [0, size()).
  std::string decode(const std::vector<std::int32_t>& ids) const;

  bool operator==(const CharVocab& other) const { return chars_ == other.chars_; }

 private:
  explicit CharVocab(std::vector<char32_t> chars);

  std::vector<char32_t> chars_;           // sorted, distinct
  std::array<std::int32_t, 128> ascii_{};  // id of each ASCII character, -1 when absent
};

struct TokenBatch {
  Tensor inputs;   // s32 [B, T]
  Tensor targets;  // s32 [B, T]: targets[b, t] = the token after inputs[b, t]
};

// A tokenized text split by position into a training part and a validation part (the last
// val_fraction of the tokens).
class TextDataset {
 public:
  // Encodes `text` with `vocab` (ValueError for characters outside it). val_fraction in [0, 1);
  // val_size = round(tokens * val_fraction). ValueError for an empty text or no training tokens.
  TextDataset(const std::string& text, CharVocab vocab, double val_fraction = 0.1);
  // Same, with the vocabulary built from `text`.
  explicit TextDataset(const std::string& text, double val_fraction = 0.1);

  const CharVocab& vocab() const { return vocab_; }
  std::int64_t train_size() const { return train_size_; }  // tokens
  std::int64_t val_size() const { return static_cast<std::int64_t>(tokens_.size()) - train_size_; }
  const std::vector<std::int32_t>& tokens() const { return tokens_; }  // train split, then validation

  // `batch` random windows of `context` tokens from the training split: each start is uniform in
  // [0, train_size - context - 1] (one gen.randint per row, in row order), so inputs and targets
  // never reach validation tokens. ValueError for batch/context <= 0 or a split shorter than
  // context + 1 tokens.
  TokenBatch sample_train(std::int64_t batch, std::int64_t context, Generator& gen) const;

  // Validation windows are non-overlapping: window w has inputs val[w*context, (w+1)*context) and
  // targets shifted by one; there are floor((val_size - 1) / context) of them.
  // num_val_batches = floor(windows / batch), or 1 when 0 < windows < batch (a smaller batch);
  // 0 when the validation split holds no full window.
  std::int64_t num_val_batches(std::int64_t batch, std::int64_t context) const;
  // Batch `index` in [0, num_val_batches): windows [index*batch, index*batch + B) with
  // B = min(batch, windows). ValueError when out of range.
  TokenBatch val_batch(std::int64_t index, std::int64_t batch, std::int64_t context) const;

 private:
  std::int64_t num_val_windows(std::int64_t context) const;

  CharVocab vocab_;
  std::vector<std::int32_t> tokens_;
  std::int64_t train_size_ = 0;
};

}  // namespace shiftq::data
