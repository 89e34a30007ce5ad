// CIFAR-10, binary version ("cifar-10-batches-bin": data_batch_1.bin ... data_batch_5.bin,
// test_batch.bin). Each file is a sequence of 3073-byte records: 1 label byte (0..9) followed by the
// 32x32 image as 3 planes (R, G, B) of 1024 bytes, row-major.
#pragma once

#include <string>

#include "shiftq/data/idx.hpp"

namespace shiftq::data {

inline constexpr std::int64_t kCifar10RecordBytes = 1 + 3 * 32 * 32;

// Reads one CIFAR-10 .bin file: images u8 [N, 3, 32, 32], labels s32 [N], num_classes 10.
// Throws IOError naming the file for a missing/unreadable or empty file, a size that is not a
// multiple of 3073 bytes (truncated or not CIFAR-10), or a label byte above 9.
LabeledImages read_cifar10_file(const std::string& path);

// The "train" split (data_batch_1..5.bin, 50000 images, in file order) or the "test" split
// (test_batch.bin, 10000 images) from `dir`, which holds the .bin files (or holds the extracted
// cifar-10-batches-bin directory). ValueError for another split; IOError naming the missing file.
LabeledImages load_cifar10(const std::string& dir, const std::string& split);

}  // namespace shiftq::data
