// IDX files: write/read round trips (plain and gzip), every malformed-file error, MNIST-style
// pairs, and the installed Fashion-MNIST test split.
#include <gtest/gtest.h>
#include <zlib.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
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

class IdxTest : public testing::TempDirTest {};

void gzip_bytes(const std::string& path, const Bytes& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr) << path;
  ASSERT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())), static_cast<int>(bytes.size()));
  ASSERT_EQ(gzclose(f), Z_OK);
}

// Expects read_idx(path) to throw IOError whose message names the file (and contains `what`).
void expect_io_error(const std::string& path, const std::string& what = "") {
  testing::expect_file_io_error("read_idx", [&] { data::read_idx(path); }, path, what);
}

template <class T>
void expect_same(const Tensor& a, const Tensor& b) {
  ASSERT_EQ(a.dtype(), b.dtype());
  ASSERT_EQ(a.shape(), b.shape());
  EXPECT_EQ(std::memcmp(a.data<T>(), b.data<T>(), a.nbytes()), 0);
}

Tensor u8_tensor(const Shape& shape, int offset = 0) {
  Tensor t = Tensor::zeros(shape, DType::u8);
  for (std::int64_t i = 0; i < t.numel(); ++i) t.data<std::uint8_t>()[i] = static_cast<std::uint8_t>((i * 37 + offset) % 256);
  return t;
}

// ---- round trips ----

TEST_F(IdxTest, RoundTripU8) {
  Tensor t = u8_tensor({3, 4, 5});
  data::write_idx(path("u8.idx"), t);
  expect_same<std::uint8_t>(data::read_idx(path("u8.idx")), t);
}

TEST_F(IdxTest, RoundTripS8) {
  Tensor t = Tensor::zeros({256}, DType::s8);
  for (int i = 0; i < 256; ++i) t.data<std::int8_t>()[i] = static_cast<std::int8_t>(i - 128);
  data::write_idx(path("s8.idx"), t);
  expect_same<std::int8_t>(data::read_idx(path("s8.idx")), t);
}

TEST_F(IdxTest, RoundTripS32) {
  Tensor t = Tensor::from_vector(std::vector<std::int32_t>{0, -1, 1, std::numeric_limits<std::int32_t>::min(),
                                                           std::numeric_limits<std::int32_t>::max(), 0x01020304},
                                 {2, 3});
  data::write_idx(path("s32.idx"), t);
  expect_same<std::int32_t>(data::read_idx(path("s32.idx")), t);
}

TEST_F(IdxTest, RoundTripF32) {
  Tensor t = Tensor::from_vector(std::vector<float>{0.0f, -0.0f, 1.5f, -3.25e-30f, 3.0e38f, 1e-45f,
                                                    std::numeric_limits<float>::min(), 123456.789f},
                                 {2, 2, 1, 2});
  data::write_idx(path("f32.idx"), t);
  expect_same<float>(data::read_idx(path("f32.idx")), t);
}

TEST_F(IdxTest, WrittenFileIsBigEndianIdx) {
  data::write_idx(path("s32.idx"), Tensor::from_vector(std::vector<std::int32_t>{0x01020304, -2}, {1, 2}));
  EXPECT_EQ(read_bytes(path("s32.idx")), (Bytes{0, 0, 0x0C, 2, 0, 0, 0, 1, 0, 0, 0, 2,  // header
                                                0x01, 0x02, 0x03, 0x04, 0xFF, 0xFF, 0xFF, 0xFE}));
  data::write_idx(path("f32.idx"), Tensor::from_vector(std::vector<float>{1.0f}, {1}));
  EXPECT_EQ(read_bytes(path("f32.idx")), (Bytes{0, 0, 0x0D, 1, 0, 0, 0, 1, 0x3F, 0x80, 0, 0}));
  data::write_idx(path("u8.idx"), u8_tensor({2}));
  EXPECT_EQ(read_bytes(path("u8.idx")), (Bytes{0, 0, 0x08, 1, 0, 0, 0, 2, 0, 37}));
}

TEST_F(IdxTest, ReadsHandWrittenFile) {
  // s8 [3] = {-1, 0, 127}
  write_bytes(path("hand.idx"), Bytes{0, 0, 0x09, 1, 0, 0, 0, 3, 0xFF, 0x00, 0x7F});
  Tensor t = data::read_idx(path("hand.idx"));
  EXPECT_EQ(t.dtype(), DType::s8);
  EXPECT_EQ(t.to_vector<std::int8_t>(), (std::vector<std::int8_t>{-1, 0, 127}));
}

TEST_F(IdxTest, GzipCompressedReadsTheSame) {
  Tensor t = u8_tensor({50, 28, 28}, 5);
  data::write_idx(path("plain.idx"), t);
  gzip_bytes(path("data-idx3-ubyte.gz"), read_bytes(path("plain.idx")));
  gzip_bytes(path("no-suffix"), read_bytes(path("plain.idx")));  // detected from the content
  ASSERT_LT(fs::file_size(path("data-idx3-ubyte.gz")), fs::file_size(path("plain.idx")));
  expect_same<std::uint8_t>(data::read_idx(path("data-idx3-ubyte.gz")), t);
  expect_same<std::uint8_t>(data::read_idx(path("no-suffix")), t);

  Tensor f = Tensor::from_vector(std::vector<float>{1.0f, -2.5f, 3.75f}, {3});
  data::write_idx(path("f.idx"), f);
  gzip_bytes(path("f.idx.gz"), read_bytes(path("f.idx")));
  expect_same<float>(data::read_idx(path("f.idx.gz")), f);
}

TEST_F(IdxTest, WriteErrors) {
  EXPECT_THROW(data::write_idx(path("scalar.idx"), Tensor::scalar(1.0f)), ShapeError);
  EXPECT_THROW(data::write_idx(path("missing-dir/x.idx"), u8_tensor({2})), IOError);
  EXPECT_THROW(data::write_idx(path("undefined.idx"), Tensor()), ValueError);
}

// ---- malformed files ----

TEST_F(IdxTest, MissingFile) { expect_io_error(path("does-not-exist.idx")); }

TEST_F(IdxTest, EmptyFile) {
  write_bytes(path("empty.idx"), Bytes{});
  expect_io_error(path("empty.idx"), "truncated");
}

TEST_F(IdxTest, BadMagic) {
  write_bytes(path("magic.idx"), Bytes{0x01, 0, 0x08, 1, 0, 0, 0, 1, 5});
  expect_io_error(path("magic.idx"), "magic");
  write_bytes(path("magic2.idx"), Bytes{0, 0x02, 0x08, 1, 0, 0, 0, 1, 5});
  expect_io_error(path("magic2.idx"), "magic");
}

TEST_F(IdxTest, UnknownTypeCode) {
  write_bytes(path("type.idx"), Bytes{0, 0, 0x0B, 1, 0, 0, 0, 1, 0, 0});  // 0x0B (int16) unsupported
  expect_io_error(path("type.idx"), "0x0B");
}

TEST_F(IdxTest, ZeroOrBadDims) {
  write_bytes(path("zero.idx"), Bytes{0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 0});
  expect_io_error(path("zero.idx"), "is 0");
  write_bytes(path("rank0.idx"), Bytes{0, 0, 0x08, 0, 7});
  expect_io_error(path("rank0.idx"));
  write_bytes(path("huge.idx"), Bytes{0, 0, 0x08, 3, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
                                      0xFF, 0xFF});
  expect_io_error(path("huge.idx"), "too large");
  write_bytes(path("short-header.idx"), Bytes{0, 0, 0x08, 2, 0, 0, 0, 2});
  expect_io_error(path("short-header.idx"), "truncated");
}

TEST_F(IdxTest, TruncatedData) {
  data::write_idx(path("full.idx"), u8_tensor({10, 10}));
  Bytes bytes = read_bytes(path("full.idx"));
  bytes.resize(bytes.size() - 3);
  write_bytes(path("truncated.idx"), bytes);
  expect_io_error(path("truncated.idx"), "truncated");

  data::write_idx(path("s32.idx"), Tensor::from_vector(std::vector<std::int32_t>{1, 2, 3}, {3}));
  Bytes s32 = read_bytes(path("s32.idx"));
  s32.pop_back();  // half an element missing
  write_bytes(path("s32-truncated.idx"), s32);
  expect_io_error(path("s32-truncated.idx"), "truncated");
}

// Found by tests/fuzz/fuzz_idx: a header claiming far more data than the file holds made read_idx
// allocate (and zero) that much before reading anything, up to 64 GiB from a 20-byte file. It must
// fail as truncated before allocating: a plain file must hold the data, a gzip file at most 1032x
// its size (deflate's maximum ratio).
TEST_F(IdxTest, HeaderClaimingMoreThanTheFileHoldsFailsBeforeAllocating) {
  // The fuzzer's input: s32 [2, 4177526783] (33 GB) followed by 42 bytes.
  write_bytes(path("fuzz.idx"), Bytes{0x00, 0x00, 0x0C, 0x02, 0x00, 0x00, 0x00, 0x02, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF,
                                      0xFF, 0xFF, 0x74, 0x00, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0xA4, 0x00,
                                      0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0xFF,
                                      0xFF, 0xFF, 0xFF, 0x7F, 0x33, 0xFF, 0xFF, 0x80, 0x00, 0x00, 0x00, 0x00, 0x01,
                                      0xE2, 0x40});
  expect_io_error(path("fuzz.idx"), "only 42 bytes follow it");
  // s32 [65536, 65536, 4]: 2^34 elements (the largest header accepted), 64 GiB, and no data at all.
  const Bytes header{0, 0, 0x0C, 3, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 4};
  write_bytes(path("huge.idx"), header);
  expect_io_error(path("huge.idx"), "truncated: the header says [65536, 65536, 4] (68719476736 bytes of data)");
  gzip_bytes(path("huge.gz"), header);
  expect_io_error(path("huge.gz"), "gzip file cannot hold that much");
  // Exactly enough data still reads (plain and compressed); one byte less is truncated.
  Bytes full{0, 0, 0x08, 2, 0, 0, 0, 3, 0, 0, 0, 2, 1, 2, 3, 4, 5, 6};
  write_bytes(path("exact.idx"), full);
  EXPECT_EQ(data::read_idx(path("exact.idx")).shape(), (Shape{3, 2}));
  gzip_bytes(path("exact.gz"), full);
  EXPECT_EQ(data::read_idx(path("exact.gz")).shape(), (Shape{3, 2}));
  full.pop_back();
  write_bytes(path("short.idx"), full);
  expect_io_error(path("short.idx"), "only 5 bytes follow it");
}

TEST_F(IdxTest, TrailingBytes) {
  data::write_idx(path("full.idx"), u8_tensor({4, 4}));
  Bytes bytes = read_bytes(path("full.idx"));
  bytes.push_back(0);
  write_bytes(path("trailing.idx"), bytes);
  expect_io_error(path("trailing.idx"), "trailing");
  gzip_bytes(path("trailing.gz"), bytes);
  expect_io_error(path("trailing.gz"), "trailing");
}

TEST_F(IdxTest, TruncatedGzip) {
  // Pseudo-random bytes compress poorly, so the compressed stream is long enough to cut in half.
  Generator gen(1);
  Tensor t = Tensor::zeros({4000}, DType::u8);
  for (std::int64_t i = 0; i < t.numel(); ++i) t.data<std::uint8_t>()[i] = static_cast<std::uint8_t>(gen.next_u32());
  data::write_idx(path("plain.idx"), t);
  gzip_bytes(path("full.gz"), read_bytes(path("plain.idx")));
  Bytes gz = read_bytes(path("full.gz"));
  ASSERT_GT(gz.size(), 1000u);
  gz.resize(gz.size() / 2);
  write_bytes(path("cut.gz"), gz);
  expect_io_error(path("cut.gz"));
  // Only the 8-byte gzip trailer (CRC, length) missing: all data present, stream unfinished.
  Bytes no_trailer = read_bytes(path("full.gz"));
  no_trailer.resize(no_trailer.size() - 8);
  write_bytes(path("no-trailer.gz"), no_trailer);
  expect_io_error(path("no-trailer.gz"), "truncated");
}

TEST_F(IdxTest, CorruptGzip) {
  data::write_idx(path("plain.idx"), u8_tensor({64, 64}));
  gzip_bytes(path("full.gz"), read_bytes(path("plain.idx")));
  Bytes gz = read_bytes(path("full.gz"));
  for (std::size_t i = 12; i < gz.size() - 8; ++i) gz[i] ^= 0x5A;  // garble the deflate stream
  write_bytes(path("corrupt.gz"), gz);
  expect_io_error(path("corrupt.gz"));
}

TEST_F(IdxTest, F32WithNaNOrInf) {
  data::write_idx(path("nan.idx"), Tensor::from_vector(std::vector<float>{1.0f, NAN, 2.0f}, {3}));
  expect_io_error(path("nan.idx"));
  data::write_idx(path("inf.idx"), Tensor::from_vector(std::vector<float>{0.0f, 1.0f, -INFINITY}, {3}));
  expect_io_error(path("inf.idx"), "index 2");
}

// ---- MNIST-style pairs ----

TEST_F(IdxTest, LoadMnistPair) {
  data::write_idx(path("images"), u8_tensor({5, 4, 3}));
  Tensor labels = Tensor::zeros({5}, DType::u8);
  for (int i = 0; i < 5; ++i) labels.data<std::uint8_t>()[i] = static_cast<std::uint8_t>(2 * i);
  data::write_idx(path("labels"), labels);
  const data::LabeledImages d = data::load_mnist(path("images"), path("labels"));
  expect_same<std::uint8_t>(d.images, u8_tensor({5, 4, 3}));
  EXPECT_EQ(d.labels.dtype(), DType::s32);
  EXPECT_EQ(d.labels.to_vector<std::int32_t>(), (std::vector<std::int32_t>{0, 2, 4, 6, 8}));
  EXPECT_EQ(d.num_classes, 10);
}

TEST_F(IdxTest, LoadMnistCountMismatch) {
  data::write_idx(path("images"), u8_tensor({5, 4, 4}));
  data::write_idx(path("labels"), u8_tensor({4}));
  try {
    data::load_mnist(path("images"), path("labels"));
    ADD_FAILURE() << "no IOError for 4 labels and 5 images";
  } catch (const IOError& e) {
    EXPECT_NE(std::string(e.what()).find(path("labels")), std::string::npos) << e.what();
  }
}

TEST_F(IdxTest, LoadMnistLabelOutOfRange) {
  data::write_idx(path("images"), u8_tensor({3, 2, 2}));
  data::write_idx(path("labels"), Tensor::from_vector(std::vector<float>{1, 10, 3}, {3}).to(DType::u8));
  try {
    data::load_mnist(path("images"), path("labels"));
    ADD_FAILURE() << "no IOError for label 10 with 10 classes";
  } catch (const IOError& e) {
    EXPECT_NE(std::string(e.what()).find(path("labels")), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(data::load_mnist(path("images"), path("labels"), 11));
}

TEST_F(IdxTest, LoadMnistWrongRanksOrTypes) {
  data::write_idx(path("images2d"), u8_tensor({3, 4}));
  data::write_idx(path("images"), u8_tensor({3, 2, 2}));
  data::write_idx(path("labels"), u8_tensor({3}));
  data::write_idx(path("labels-s32"), Tensor::from_vector(std::vector<std::int32_t>{0, 1, 2}, {3}));
  EXPECT_THROW(data::load_mnist(path("images2d"), path("labels")), IOError);
  EXPECT_THROW(data::load_mnist(path("images"), path("labels-s32")), IOError);
  EXPECT_THROW(data::load_mnist(path("images"), path("missing")), IOError);
}

TEST_F(IdxTest, FashionMnistMissingDirectory) {
  try {
    data::load_fashion_mnist(path("no-such-dir"), "test");
    ADD_FAILURE() << "no IOError for a missing directory";
  } catch (const IOError& e) {
    EXPECT_NE(std::string(e.what()).find("dataset-fashion-mnist"), std::string::npos) << e.what();
  }
  EXPECT_THROW(data::load_fashion_mnist(path("no-such-dir"), "validation"), ValueError);
}

TEST_F(IdxTest, FashionMnistFromAnotherDirectory) {
  // The loader's file naming, exercised on a tiny fake split.
  gzip_bytes(path("t10k-images-idx3-ubyte.gz"), [&] {
    data::write_idx(path("img"), u8_tensor({2, 28, 28}));
    return read_bytes(path("img"));
  }());
  gzip_bytes(path("t10k-labels-idx1-ubyte.gz"), [&] {
    data::write_idx(path("lab"), Tensor::from_vector(std::vector<float>{9, 0}, {2}).to(DType::u8));
    return read_bytes(path("lab"));
  }());
  const data::LabeledImages d = data::load_fashion_mnist(dir_.string(), "test");
  EXPECT_EQ(d.images.shape(), (Shape{2, 28, 28}));
  EXPECT_EQ(d.labels.to_vector<std::int32_t>(), (std::vector<std::int32_t>{9, 0}));
}

// ---- the installed dataset (Debian's dataset-fashion-mnist, a declared dependency) ----

void check_fashion_split(const std::string& split, std::int64_t n) {
  ASSERT_TRUE(fs::is_directory(data::kFashionMnistDir))
      << data::kFashionMnistDir << " is missing: install dataset-fashion-mnist";
  const data::LabeledImages d = data::load_fashion_mnist(data::kFashionMnistDir, split);
  EXPECT_EQ(d.images.dtype(), DType::u8);
  EXPECT_EQ(d.images.shape(), (Shape{n, 28, 28}));
  EXPECT_EQ(d.labels.dtype(), DType::s32);
  EXPECT_EQ(d.labels.shape(), (Shape{n}));
  EXPECT_EQ(d.num_classes, 10);
  std::vector<std::int64_t> per_class(10, 0);
  for (std::int32_t l : d.labels.to_vector<std::int32_t>()) {
    ASSERT_GE(l, 0);
    ASSERT_LT(l, 10);
    ++per_class[static_cast<std::size_t>(l)];
  }
  for (std::int64_t c : per_class) EXPECT_EQ(c, n / 10);  // Fashion-MNIST is balanced
  // Real images: a wide range of intensities.
  const std::uint8_t* px = d.images.data<std::uint8_t>();
  const auto [lo, hi] = std::minmax_element(px, px + d.images.numel());
  EXPECT_EQ(*lo, 0);
  EXPECT_EQ(*hi, 255);
}

TEST(FashionMnist, TestSplit) { check_fashion_split("test", 10000); }

TEST(FashionMnist, TrainSplit) { check_fashion_split("train", 60000); }

}  // namespace
}  // namespace shiftq
