#include "shiftq/data/cifar.hpp"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <vector>

namespace shiftq::data {
namespace {
constexpr std::int64_t kImageBytes = kCifar10RecordBytes - 1;

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw IOError("CIFAR-10 file '" + path + "': " + what);
}

using File = std::unique_ptr<std::FILE, int (*)(std::FILE*)>;

// The whole file; throws IOError when it cannot be opened or read.
std::vector<unsigned char> read_file(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) fail(path, "is a directory, not a file");
  File f(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!f) fail(path, std::string("cannot open (") + std::strerror(errno) + ")");
  std::vector<unsigned char> bytes;
  const auto expected = std::filesystem::file_size(path, ec);
  if (!ec) bytes.reserve(static_cast<std::size_t>(expected));
  unsigned char buf[1 << 16];
  std::size_t got = 0;
  while ((got = std::fread(buf, 1, sizeof buf, f.get())) > 0) bytes.insert(bytes.end(), buf, buf + got);
  if (std::ferror(f.get())) fail(path, std::string("read error (") + std::strerror(errno) + ")");
  return bytes;
}
}  // namespace

LabeledImages read_cifar10_file(const std::string& path) {
  const std::vector<unsigned char> bytes = read_file(path);
  const auto size = static_cast<std::int64_t>(bytes.size());
  if (size == 0) fail(path, "file is empty");
  if (size % kCifar10RecordBytes != 0)
    fail(path, "size " + std::to_string(size) + " bytes is not a multiple of the 3073-byte record (1 label byte + "
               "3072 image bytes): truncated, or not a CIFAR-10 binary file");
  const std::int64_t n = size / kCifar10RecordBytes;
  Tensor images = Tensor::uninitialized({n, 3, 32, 32}, DType::u8);
  Tensor labels = Tensor::uninitialized({n}, DType::s32);
  std::uint8_t* img = images.data<std::uint8_t>();
  std::int32_t* lab = labels.data<std::int32_t>();
  for (std::int64_t i = 0; i < n; ++i) {
    const unsigned char* record = bytes.data() + i * kCifar10RecordBytes;
    if (record[0] > 9)
      fail(path, "label " + std::to_string(record[0]) + " of record " + std::to_string(i) + " (byte offset " +
                     std::to_string(i * kCifar10RecordBytes) + ") is outside [0, 10)");
    lab[i] = record[0];
    std::memcpy(img + i * kImageBytes, record + 1, static_cast<std::size_t>(kImageBytes));
  }
  return {images, labels, 10};
}

LabeledImages load_cifar10(const std::string& dir, const std::string& split) {
  SHIFTQ_CHECK(split == "train" || split == "test", ValueError,
               "load_cifar10: split must be 'train' or 'test', got '", split, "'");
  const std::vector<std::string> names =
      split == "train" ? std::vector<std::string>{"data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin",
                                                  "data_batch_4.bin", "data_batch_5.bin"}
                       : std::vector<std::string>{"test_batch.bin"};
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path root(dir);
  if (!fs::exists(root / names[0], ec) && fs::exists(root / "cifar-10-batches-bin" / names[0], ec))
    root /= "cifar-10-batches-bin";
  std::vector<LabeledImages> parts;
  std::int64_t total = 0;
  for (const std::string& name : names) {
    const std::string path = (root / name).string();
    if (!fs::exists(path, ec))
      throw IOError("CIFAR-10 file '" + path + "' not found: pass the directory holding the binary version of "
                    "CIFAR-10 (cifar-10-binary.tar.gz, extracted to cifar-10-batches-bin/)");
    parts.push_back(read_cifar10_file(path));
    total += parts.back().labels.numel();
  }
  if (parts.size() == 1) return parts.front();
  Tensor images = Tensor::uninitialized({total, 3, 32, 32}, DType::u8);
  Tensor labels = Tensor::uninitialized({total}, DType::s32);
  std::int64_t at = 0;
  for (const LabeledImages& p : parts) {
    const std::int64_t n = p.labels.numel();
    std::memcpy(images.data<std::uint8_t>() + at * kImageBytes, p.images.data<std::uint8_t>(), p.images.nbytes());
    std::memcpy(labels.data<std::int32_t>() + at, p.labels.data<std::int32_t>(), p.labels.nbytes());
    at += n;
  }
  return {images, labels, 10};
}

}  // namespace shiftq::data
