// Character-level text data: UTF-8 file reading and validation, CharVocab round trips, the
// train/validation split, random training windows and deterministic validation windows.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "testing/files.hpp"
#include "testing/gradcheck.hpp"

namespace shiftq {
namespace {
namespace fs = std::filesystem;
using data::CharVocab;
using data::TextDataset;

class TextTest : public testing::TempDirTest {
 protected:
  std::string write(const std::string& name, const std::string& bytes) const {
    std::ofstream f(path(name), std::ios::binary | std::ios::trunc);
    f << bytes;
    EXPECT_TRUE(f.good());
    return path(name);
  }
};

// Expects read_text_file(path) to throw IOError naming the path and containing `what`.
void expect_io_error(const std::string& path, const std::string& what = "") {
  testing::expect_file_io_error("read_text_file", [&] { data::read_text_file(path); }, path, what);
}

template <class F>
void expect_value_error(F&& f, const std::string& what) {
  try {
    f();
    ADD_FAILURE() << "no ValueError (expected one mentioning \"" << what << "\")";
  } catch (const ValueError& e) {
    EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
  }
}

std::string utf8(char32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else if (cp < 0x800) {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    s += static_cast<char>(0xE0 | (cp >> 12));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

// n distinct characters in increasing code-point order (U+0100 ...), so with a vocabulary built
// from the text, token id == position.
std::string distinct_text(int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s += utf8(static_cast<char32_t>(0x100 + i));
  return s;
}

// ---- files ----

TEST_F(TextTest, ReadTextFile) {
  const std::string text = "First Citizen:\nBefore we proceed, h\xC3\xA9" "ar me speak \xE2\x82\xAC \xF0\x9D\x84\x9E\n";
  EXPECT_EQ(data::read_text_file(write("t.txt", text)), text);
  const std::string nul("a\0b", 3);  // NUL is valid UTF-8
  EXPECT_EQ(data::read_text_file(write("nul.txt", nul)), nul);
}

TEST_F(TextTest, ReadTextFileErrors) {
  expect_io_error(path("missing.txt"));
  expect_io_error(write("empty.txt", ""), "empty");
  expect_io_error(dir_.string());
  expect_io_error(write("bad.txt", "ab\xC3("), "byte offset 2");             // bad continuation byte
  expect_io_error(write("cut.txt", "abc\xE2\x82"), "byte offset 3");         // sequence cut by the end
  expect_io_error(write("overlong.txt", "x\xC0\x80"), "byte offset 1");      // overlong NUL
  expect_io_error(write("overlong3.txt", "\xE0\x80\xAF"), "byte offset 0");  // overlong '/'
  expect_io_error(write("surrogate.txt", "12345\xED\xA0\x80"), "byte offset 5");
  expect_io_error(write("toobig.txt", "\xF4\x90\x80\x80"), "byte offset 0");  // U+110000
  expect_io_error(write("f5.txt", "ok \xF5\x80\x80\x80"), "byte offset 3");
  expect_io_error(write("lone.txt", "\x80"), "byte offset 0");
  expect_io_error(write("latin1.txt", "caf\xE9!"), "0xE9");
}

// ---- CharVocab ----

TEST(CharVocab, BuildEncodeDecodeRoundTrip) {
  const std::string text = "h\xC3\xA9llo w\xC3\xB6rld \xE2\x82\xAC\xF0\x9D\x84\x9E!";  // héllo wörld €𝄞!
  const CharVocab vocab = CharVocab::build(text);
  // ' ', '!', 'd', 'h', 'l', 'o', 'r', 'w', 'é', 'ö', '€', '𝄞' in code-point order.
  EXPECT_EQ(vocab.size(), 12);
  EXPECT_EQ(vocab.to_string(), " !dhlorw\xC3\xA9\xC3\xB6\xE2\x82\xAC\xF0\x9D\x84\x9E");
  EXPECT_EQ(vocab.char_at(0), U' ');
  EXPECT_EQ(vocab.char_at(8), U'\u00E9');
  EXPECT_EQ(vocab.char_at(11), U'\U0001D11E');
  const std::vector<std::int32_t> ids = vocab.encode(text);
  EXPECT_EQ(ids, (std::vector<std::int32_t>{3, 8, 4, 4, 5, 0, 7, 9, 6, 4, 2, 0, 10, 11, 1}));
  EXPECT_EQ(vocab.decode(ids), text);
  EXPECT_EQ(vocab.decode({}), "");
  EXPECT_TRUE(vocab.encode("").empty());

  const CharVocab restored = CharVocab::from_string(vocab.to_string());
  EXPECT_TRUE(restored == vocab);
  EXPECT_EQ(restored.encode(text), ids);
}

TEST(CharVocab, Errors) {
  const CharVocab vocab = CharVocab::build("abc\xC3\xA9");
  expect_value_error([&] { vocab.encode("abz"); }, "'z'");
  expect_value_error([&] { vocab.encode("abz"); }, "byte offset 2");
  expect_value_error([&] { vocab.encode("a\xE2\x82\xAC"); }, "U+20AC");
  expect_value_error([&] { vocab.encode("a\n"); }, "U+000A");
  expect_value_error([&] { vocab.encode("ab\xFF"); }, "byte offset 2");
  expect_value_error([&] { vocab.decode({0, 4}); }, "id 4");
  expect_value_error([&] { vocab.decode({-1}); }, "id -1");
  EXPECT_THROW(vocab.char_at(4), ValueError);
  EXPECT_THROW(CharVocab::build(""), ValueError);
  EXPECT_THROW(CharVocab::build("a\xC3"), ValueError);
  expect_value_error([] { CharVocab::from_string(""); }, "empty");
  expect_value_error([] { CharVocab::from_string("abcb"); }, "duplicate character 'b'");
  expect_value_error([] { CharVocab::from_string("aab"); }, "duplicate character 'a'");
  expect_value_error([] { CharVocab::from_string("acb"); }, "increasing code-point order");
  expect_value_error([] { CharVocab::from_string("ab\xC3"); }, "byte offset 2");
}

// ---- TextDataset ----

TEST(TextDataset, SplitSizes) {
  std::string text;
  for (int i = 0; i < 1000; ++i) text += static_cast<char>('a' + (i * 7) % 26);
  const TextDataset ds(text);
  EXPECT_EQ(ds.train_size(), 900);
  EXPECT_EQ(ds.val_size(), 100);
  EXPECT_EQ(ds.vocab().size(), 26);
  EXPECT_EQ(ds.tokens(), ds.vocab().encode(text));

  const TextDataset quarter(text, 0.25);
  EXPECT_EQ(quarter.train_size(), 750);
  EXPECT_EQ(quarter.val_size(), 250);
  const TextDataset none(text, 0.0);
  EXPECT_EQ(none.train_size(), 1000);
  EXPECT_EQ(none.val_size(), 0);
  EXPECT_EQ(none.num_val_batches(4, 8), 0);
  EXPECT_THROW(none.val_batch(0, 4, 8), ValueError);

  // An explicit (larger) vocabulary keeps its ids.
  const CharVocab big = CharVocab::build("0123456789abcdefghijklmnopqrstuvwxyz");
  const TextDataset with_vocab(text, big);
  EXPECT_EQ(with_vocab.vocab().size(), 36);
  EXPECT_EQ(with_vocab.tokens()[0], 10);  // 'a'
  expect_value_error([&] { TextDataset(text + "!", big); }, "'!'");

  EXPECT_THROW(TextDataset(text, 1.0), ValueError);
  EXPECT_THROW(TextDataset(text, -0.1), ValueError);
  EXPECT_THROW(TextDataset(""), ValueError);
}

TEST(TextDataset, TrainWindowsStayInTheTrainSplit) {
  const TextDataset ds(distinct_text(100));  // token id == position; train = [0, 90)
  ASSERT_EQ(ds.train_size(), 90);
  const std::int64_t batch = 50, context = 10;
  Generator gen(3);
  std::set<std::int32_t> starts;
  for (int rep = 0; rep < 40; ++rep) {
    const data::TokenBatch b = ds.sample_train(batch, context, gen);
    ASSERT_EQ(b.inputs.shape(), (Shape{batch, context}));
    ASSERT_EQ(b.targets.shape(), (Shape{batch, context}));
    ASSERT_EQ(b.inputs.dtype(), DType::s32);
    const std::int32_t* in = b.inputs.data<std::int32_t>();
    const std::int32_t* tg = b.targets.data<std::int32_t>();
    for (std::int64_t r = 0; r < batch; ++r) {
      const std::int32_t s = in[r * context];
      starts.insert(s);
      for (std::int64_t t = 0; t < context; ++t) {
        ASSERT_EQ(in[r * context + t], s + t);      // a contiguous window
        ASSERT_EQ(tg[r * context + t], s + t + 1);  // shifted by one
      }
      ASSERT_GE(s, 0);
      ASSERT_LT(tg[r * context + context - 1], ds.train_size());  // never a validation token
    }
  }
  // Starts cover [0, train_size - context - 1] = [0, 79] (2000 uniform draws).
  EXPECT_EQ(*starts.begin(), 0);
  EXPECT_EQ(*starts.rbegin(), 79);
  EXPECT_EQ(starts.size(), 80u);

  // Reproducible from the generator state.
  Generator g1(17), g2(17);
  const data::TokenBatch a = ds.sample_train(8, 5, g1), b = ds.sample_train(8, 5, g2);
  EXPECT_EQ(a.inputs.to_vector<std::int32_t>(), b.inputs.to_vector<std::int32_t>());
  EXPECT_EQ(a.targets.to_vector<std::int32_t>(), b.targets.to_vector<std::int32_t>());
  EXPECT_NE(ds.sample_train(8, 5, g1).inputs.to_vector<std::int32_t>(), a.inputs.to_vector<std::int32_t>());

  // The longest possible window (context = train_size - 1) has a single start.
  Generator g3(1);
  const data::TokenBatch full = ds.sample_train(3, 89, g3);
  EXPECT_EQ(full.inputs.data<std::int32_t>()[2 * 89], 0);
  EXPECT_EQ(full.targets.data<std::int32_t>()[3 * 89 - 1], 89);
}

TEST(TextDataset, TooShortSplitThrows) {
  const TextDataset ds(distinct_text(20));  // train 18 tokens, val 2
  Generator gen(0);
  expect_value_error([&] { ds.sample_train(2, 18, gen); }, "too few");
  EXPECT_NO_THROW(ds.sample_train(2, 17, gen));
  EXPECT_THROW(ds.sample_train(0, 4, gen), ValueError);
  EXPECT_THROW(ds.sample_train(2, 0, gen), ValueError);
  EXPECT_EQ(ds.num_val_batches(4, 1), 1);  // one window of 1 (+1) token
  EXPECT_EQ(ds.num_val_batches(4, 2), 0);
  expect_value_error([&] { ds.val_batch(0, 4, 2); }, "too few");
  EXPECT_THROW(ds.num_val_batches(0, 2), ValueError);
  EXPECT_THROW(TextDataset("xy", 0.75), ValueError);  // round(1.5) = 2 validation tokens: none left to train
}

TEST(TextDataset, ValidationBatchesAreDeterministicNonOverlappingWindows) {
  const TextDataset ds(distinct_text(1000));  // val = tokens [900, 1000)
  ASSERT_EQ(ds.val_size(), 100);
  const std::int64_t context = 8, batch = 5;  // 99 / 8 = 12 windows -> 2 full batches
  ASSERT_EQ(ds.num_val_batches(batch, context), 2);
  std::set<std::int32_t> covered;
  for (std::int64_t index = 0; index < 2; ++index) {
    const data::TokenBatch b = ds.val_batch(index, batch, context);
    ASSERT_EQ(b.inputs.shape(), (Shape{batch, context}));
    const std::int32_t* in = b.inputs.data<std::int32_t>();
    const std::int32_t* tg = b.targets.data<std::int32_t>();
    for (std::int64_t r = 0; r < batch; ++r)
      for (std::int64_t t = 0; t < context; ++t) {
        const std::int32_t expected = static_cast<std::int32_t>(900 + ((index * batch + r) * context) + t);
        ASSERT_EQ(in[r * context + t], expected);
        ASSERT_EQ(tg[r * context + t], expected + 1);
        EXPECT_TRUE(covered.insert(in[r * context + t]).second) << "token " << expected << " in two windows";
      }
    const data::TokenBatch again = ds.val_batch(index, batch, context);
    EXPECT_EQ(again.inputs.to_vector<std::int32_t>(), b.inputs.to_vector<std::int32_t>());
    EXPECT_EQ(again.targets.to_vector<std::int32_t>(), b.targets.to_vector<std::int32_t>());
  }
  EXPECT_EQ(covered.size(), 80u);
  EXPECT_THROW(ds.val_batch(2, batch, context), ValueError);
  EXPECT_THROW(ds.val_batch(-1, batch, context), ValueError);

  // Fewer windows than the batch: one smaller batch with all of them.
  EXPECT_EQ(ds.num_val_batches(20, context), 1);
  const data::TokenBatch small = ds.val_batch(0, 20, context);
  EXPECT_EQ(small.inputs.shape(), (Shape{12, context}));
  EXPECT_EQ(small.targets.data<std::int32_t>()[12 * context - 1], 900 + 96);
  // The longest window uses every validation token and nothing else.
  EXPECT_EQ(ds.num_val_batches(4, 99), 1);
  const data::TokenBatch longest = ds.val_batch(0, 4, 99);
  EXPECT_EQ(longest.inputs.data<std::int32_t>()[0], 900);
  EXPECT_EQ(longest.targets.data<std::int32_t>()[98], 999);
  EXPECT_EQ(ds.num_val_batches(4, 100), 0);
}

TEST_F(TextTest, FileToBatches) {
  const std::string text = distinct_text(50) + "\n";
  const TextDataset ds(data::read_text_file(write("corpus.txt", text)), 0.2);
  EXPECT_EQ(ds.vocab().size(), 51);
  EXPECT_EQ(ds.train_size() + ds.val_size(), 51);
  EXPECT_EQ(ds.vocab().decode(ds.tokens()), text);
}

}  // namespace
}  // namespace shiftq
