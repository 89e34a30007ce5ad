// libFuzzer target: data::read_cifar10_file (CIFAR-10 binary batches: 3073-byte records).
// A successful read must hold exactly the file's records: labels in [0, 10), the image bytes as-is.
#include <cstring>

#include "fuzz_common.hpp"

using namespace shiftq;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::init();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const fuzz::TempFile input("cifar");
  input.write(data, size);

  data::LabeledImages d;
  if (!fuzz::expect_only<IOError>("read_cifar10_file", [&] { d = data::read_cifar10_file(input.path()); }))
    return 0;

  FUZZ_CHECK(size > 0 && size % static_cast<std::size_t>(data::kCifar10RecordBytes) == 0);
  const auto n = static_cast<std::int64_t>(size) / data::kCifar10RecordBytes;
  FUZZ_CHECK(d.num_classes == 10);
  FUZZ_CHECK(d.images.dtype() == DType::u8 && d.images.shape() == (Shape{n, 3, 32, 32}));
  FUZZ_CHECK(d.labels.dtype() == DType::s32 && d.labels.shape() == (Shape{n}));
  const std::int32_t* labels = d.labels.data<std::int32_t>();
  const std::uint8_t* images = d.images.data<std::uint8_t>();
  constexpr std::int64_t kImage = data::kCifar10RecordBytes - 1;
  for (std::int64_t i = 0; i < n; ++i) {
    const std::uint8_t* record = data + i * data::kCifar10RecordBytes;
    FUZZ_CHECK(labels[i] >= 0 && labels[i] < 10 && labels[i] == record[0]);
    FUZZ_CHECK(std::memcmp(images + i * kImage, record + 1, kImage) == 0);
  }
  return 0;
}
