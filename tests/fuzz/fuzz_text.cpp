// libFuzzer target: the character-level text pipeline: data::read_text_file, CharVocab::build /
// from_string / encode / decode, and TextDataset (train windows, validation batches) on the text.
// Invariants of successful calls: the file reads back as the input; decode(encode(text)) == text;
// from_string(to_string()) is the same vocabulary; targets are the inputs shifted by one token.
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "fuzz_common.hpp"

using namespace shiftq;
using data::CharVocab;
using data::TextDataset;

namespace {

// Every (input, target) window of `b`: targets[r, t] is the token after inputs[r, t], and every
// token id is in the vocabulary.
void check_windows(const data::TokenBatch& b, std::int64_t vocab_size) {
  FUZZ_CHECK(b.inputs.dim() == 2 && b.inputs.shape() == b.targets.shape());
  const std::int64_t rows = b.inputs.size(0), context = b.inputs.size(1);
  const std::int32_t* in = b.inputs.data<std::int32_t>();
  const std::int32_t* tg = b.targets.data<std::int32_t>();
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t t = 0; t < context; ++t) {
      FUZZ_CHECK(in[r * context + t] >= 0 && in[r * context + t] < vocab_size);
      FUZZ_CHECK(tg[r * context + t] >= 0 && tg[r * context + t] < vocab_size);
      if (t + 1 < context) FUZZ_CHECK(tg[r * context + t] == in[r * context + t + 1]);
    }
}

void check_dataset(const std::string& text, const CharVocab& vocab, const std::uint8_t* data, std::size_t size) {
  // Parameters from the input's first and last bytes, so that the fuzzer explores them too.
  const double val_fraction = static_cast<double>(data[0] % 10) / 10.0;  // 0.0 .. 0.9
  const std::int64_t context = 1 + data[size - 1] % 8;
  const std::int64_t batch = 1 + (data[size - 1] >> 4) % 4;
  std::vector<std::int32_t> ids;
  FUZZ_CHECK(fuzz::expect_only<>("CharVocab::encode of the vocabulary's own text", [&] { ids = vocab.encode(text); }));

  std::unique_ptr<TextDataset> ds;
  if (!fuzz::expect_only<ValueError>("TextDataset", [&] {
        ds = std::make_unique<TextDataset>(text, vocab, val_fraction);
      }))
    return;
  FUZZ_CHECK(ds->tokens() == ids);
  FUZZ_CHECK(ds->train_size() > 0 && ds->train_size() + ds->val_size() == static_cast<std::int64_t>(ids.size()));

  Generator gen(size);
  data::TokenBatch b;
  if (fuzz::expect_only<ValueError>("TextDataset::sample_train", [&] { b = ds->sample_train(batch, context, gen); })) {
    FUZZ_CHECK(ds->train_size() >= context + 1);
    FUZZ_CHECK(b.inputs.shape() == (Shape{batch, context}));
    check_windows(b, vocab.size());
  } else {
    FUZZ_CHECK(ds->train_size() < context + 1);
  }

  std::int64_t batches = 0;
  FUZZ_CHECK(fuzz::expect_only<>("TextDataset::num_val_batches", [&] { batches = ds->num_val_batches(batch, context); }));
  FUZZ_CHECK(batches >= 0);
  for (std::int64_t i = 0; i < batches; ++i) {
    FUZZ_CHECK(fuzz::expect_only<>("TextDataset::val_batch", [&] { b = ds->val_batch(i, batch, context); }));
    check_windows(b, vocab.size());
  }
  FUZZ_CHECK(!fuzz::expect_only<ValueError>("TextDataset::val_batch past the end",
                                            [&] { ds->val_batch(batches, batch, context); }));
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::init();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const fuzz::TempFile input("text");
  input.write(data, size);
  const std::string raw(reinterpret_cast<const char*>(data), size);

  // The input as a vocabulary string (what a checkpoint's "vocab" entry holds).
  std::optional<CharVocab> stored;
  if (fuzz::expect_only<ValueError>("CharVocab::from_string", [&] { stored = CharVocab::from_string(raw); })) {
    FUZZ_CHECK(stored->to_string() == raw);
    FUZZ_CHECK(stored->size() >= 1);
  }

  // Encoding with a vocabulary that may lack characters of the input.
  static const CharVocab letters = CharVocab::build("\n abcdefghijklmnopqrstuvwxyz\xC3\xA9\xE2\x82\xAC");
  std::vector<std::int32_t> ids;
  if (fuzz::expect_only<ValueError>("CharVocab::encode", [&] { ids = letters.encode(raw); }))
    FUZZ_CHECK(letters.decode(ids) == raw);

  std::string text;
  if (!fuzz::expect_only<IOError>("read_text_file", [&] { text = data::read_text_file(input.path()); })) {
    // Invalid UTF-8 or empty: the in-memory entry points must refuse it too.
    FUZZ_CHECK(!fuzz::expect_only<ValueError>("CharVocab::build", [&] { CharVocab::build(raw); }));
    return 0;
  }
  FUZZ_CHECK(text == raw);

  std::optional<CharVocab> built;
  FUZZ_CHECK(fuzz::expect_only<>("CharVocab::build of a valid text", [&] { built = CharVocab::build(text); }));
  const CharVocab& vocab = *built;
  FUZZ_CHECK(vocab.size() >= 1);
  FUZZ_CHECK(fuzz::expect_only<>("CharVocab::from_string(to_string())", [&] {
    FUZZ_CHECK(CharVocab::from_string(vocab.to_string()) == vocab);
  }));
  std::vector<std::int32_t> encoded;
  FUZZ_CHECK(fuzz::expect_only<>("CharVocab::encode + decode", [&] {
    encoded = vocab.encode(text);
    FUZZ_CHECK(vocab.decode(encoded) == text);
  }));
  check_dataset(text, vocab, data, size);
  return 0;
}
