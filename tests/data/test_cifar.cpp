// CIFAR-10 binary files: synthetic files written here read back exactly; malformed or missing
// files raise IOError naming the file.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "testing/files.hpp"
#include "testing/gradcheck.hpp"

namespace shiftq {
namespace {
namespace fs = std::filesystem;
using testing::Bytes;
using testing::write_bytes;

class CifarTest : public testing::TempDirTest {};

// Records with labels `labels`; pixel p of record i is (i * 31 + p * 7 + salt) % 256.
Bytes cifar_records(const std::vector<int>& labels, int salt = 0) {
  Bytes out;
  for (std::size_t i = 0; i < labels.size(); ++i) {
    out.push_back(static_cast<unsigned char>(labels[i]));
    for (int p = 0; p < 3072; ++p)
      out.push_back(static_cast<unsigned char>((static_cast<int>(i) * 31 + p * 7 + salt) % 256));
  }
  return out;
}

void expect_matches(const data::LabeledImages& d, const Bytes& records, std::int64_t first_record = 0) {
  const std::int64_t n = d.labels.numel();
  for (std::int64_t i = 0; i < n; ++i) {
    const unsigned char* r = records.data() + (first_record + i) * 3073;
    ASSERT_EQ(d.labels.data<std::int32_t>()[i], r[0]) << "record " << i;
    ASSERT_EQ(std::memcmp(d.images.data<std::uint8_t>() + i * 3072, r + 1, 3072), 0) << "record " << i;
  }
}

void expect_io_error(const std::string& path, const std::string& what = "") {
  testing::expect_file_io_error("read_cifar10_file", [&] { data::read_cifar10_file(path); }, path, what);
}

TEST_F(CifarTest, ReadsRecordsExactly) {
  const Bytes records = cifar_records({3, 0, 9, 5});
  write_bytes(path("batch.bin"), records);
  const data::LabeledImages d = data::read_cifar10_file(path("batch.bin"));
  EXPECT_EQ(d.images.dtype(), DType::u8);
  EXPECT_EQ(d.images.shape(), (Shape{4, 3, 32, 32}));
  EXPECT_EQ(d.labels.dtype(), DType::s32);
  EXPECT_EQ(d.labels.to_vector<std::int32_t>(), (std::vector<std::int32_t>{3, 0, 9, 5}));
  EXPECT_EQ(d.num_classes, 10);
  expect_matches(d, records);
  // Layout: CHW planes, row-major. Record 1, green channel (plane 1), row 2, column 5.
  const std::int64_t p = 1024 + 2 * 32 + 5;
  EXPECT_EQ(d.images.data<std::uint8_t>()[3072 + p], static_cast<std::uint8_t>((31 + p * 7) % 256));
}

TEST_F(CifarTest, LoadSplits) {
  std::vector<Bytes> train;
  for (int k = 0; k < 5; ++k) {
    train.push_back(cifar_records({k, (k + 1) % 10, 9 - k}, k * 13));
    write_bytes(path("data_batch_" + std::to_string(k + 1) + ".bin"), train.back());
  }
  const Bytes test = cifar_records({1, 2}, 99);
  write_bytes(path("test_batch.bin"), test);

  const data::LabeledImages tr = data::load_cifar10(dir_.string(), "train");
  EXPECT_EQ(tr.images.shape(), (Shape{15, 3, 32, 32}));
  EXPECT_EQ(tr.num_classes, 10);
  for (int k = 0; k < 5; ++k) {  // the files concatenated in order
    for (std::int64_t i = 0; i < 3; ++i) {
      const unsigned char* r = train[static_cast<std::size_t>(k)].data() + i * 3073;
      ASSERT_EQ(tr.labels.data<std::int32_t>()[k * 3 + i], r[0]);
      ASSERT_EQ(std::memcmp(tr.images.data<std::uint8_t>() + (k * 3 + i) * 3072, r + 1, 3072), 0);
    }
  }
  const data::LabeledImages te = data::load_cifar10(dir_.string(), "test");
  EXPECT_EQ(te.images.shape(), (Shape{2, 3, 32, 32}));
  expect_matches(te, test);

  // The parent directory of the extracted cifar-10-batches-bin/ works too.
  fs::create_directories(dir_ / "parent2" / "cifar-10-batches-bin");
  write_bytes(path("parent2/cifar-10-batches-bin/test_batch.bin"), test);
  expect_matches(data::load_cifar10(path("parent2"), "test"), test);
}

TEST_F(CifarTest, LoadedImagesFeedTheLoader) {
  const Bytes records = cifar_records({4, 7, 1});
  write_bytes(path("test_batch.bin"), records);
  const data::LabeledImages d = data::load_cifar10(dir_.string(), "test");
  data::ImageLoader loader(d, data::ImageLoaderOptions(3).shuffle(false));
  const data::ImageBatch b = loader.batch(0, 0);
  EXPECT_EQ(b.images.shape(), (Shape{3, 3, 32, 32}));
  EXPECT_EQ(b.labels.to_vector<std::int32_t>(), (std::vector<std::int32_t>{4, 7, 1}));
  EXPECT_EQ(b.images.data<float>()[3072 + 10], static_cast<float>(records[3073 + 1 + 10]) / 255.0f);
}

TEST_F(CifarTest, TruncatedFile) {
  Bytes records = cifar_records({1, 2});
  records.pop_back();
  write_bytes(path("short.bin"), records);
  expect_io_error(path("short.bin"), "3073");
  records.resize(100);
  write_bytes(path("tiny.bin"), records);
  expect_io_error(path("tiny.bin"), "not a multiple");
  records = cifar_records({1});
  records.push_back(0);  // one byte too many
  write_bytes(path("long.bin"), records);
  expect_io_error(path("long.bin"), "not a multiple");
}

TEST_F(CifarTest, EmptyFile) {
  write_bytes(path("empty.bin"), Bytes{});
  expect_io_error(path("empty.bin"), "empty");
}

TEST_F(CifarTest, BadLabel) {
  write_bytes(path("label.bin"), cifar_records({0, 9, 10, 1}));
  expect_io_error(path("label.bin"), "label 10 of record 2");
  write_bytes(path("label255.bin"), cifar_records({255}));
  expect_io_error(path("label255.bin"), "label 255");
}

TEST_F(CifarTest, MissingFiles) {
  expect_io_error(path("nope.bin"));
  expect_io_error(dir_.string());  // a directory is not a file
  for (int k = 1; k <= 4; ++k) write_bytes(path("data_batch_" + std::to_string(k) + ".bin"), cifar_records({k}));
  try {
    data::load_cifar10(dir_.string(), "train");  // data_batch_5.bin is missing
    ADD_FAILURE() << "no IOError for a missing data_batch_5.bin";
  } catch (const IOError& e) {
    EXPECT_NE(std::string(e.what()).find(path("data_batch_5.bin")), std::string::npos) << e.what();
  }
  try {
    data::load_cifar10(path("no-such-dir"), "test");
    ADD_FAILURE() << "no IOError for a missing directory";
  } catch (const IOError& e) {
    EXPECT_NE(std::string(e.what()).find("test_batch.bin"), std::string::npos) << e.what();
  }
  write_bytes(path("data_batch_5.bin"), cifar_records({3, 11}));  // a bad file in a split names itself
  try {
    data::load_cifar10(dir_.string(), "train");
    ADD_FAILURE() << "no IOError for label 11";
  } catch (const IOError& e) {
    EXPECT_NE(std::string(e.what()).find(path("data_batch_5.bin")), std::string::npos) << e.what();
  }
  EXPECT_THROW(data::load_cifar10(dir_.string(), "validation"), ValueError);
}

}  // namespace
}  // namespace shiftq
