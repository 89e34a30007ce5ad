// IDX files (MNIST / Fashion-MNIST format), plain or gzip-compressed.
#pragma once

#include <string>

#include "shiftq/core/tensor.hpp"

namespace shiftq::data {

// Reads an IDX file (".gz" or raw; detected from the content). Supported element types: 0x08
// (u8 -> u8 tensor), 0x09 (s8 -> s8), 0x0C (big-endian int32 -> s32), 0x0D (big-endian float32 -> f32).
// The tensor's shape is the file's dims. Throws IOError naming the file and the problem for a
// missing/unreadable file, a bad magic number, an unknown type, zero or absurd dims, truncated data
// (or a truncated gzip stream), trailing bytes, or NaN/Inf in f32 data.
Tensor read_idx(const std::string& path);

// Writes a tensor as an uncompressed IDX file (u8, s8, s32 or f32); used by tests and tools.
void write_idx(const std::string& path, const Tensor& tensor);

// An image classification split: images u8 [N, H, W] or [N, C, H, W], labels s32 [N].
struct LabeledImages {
  Tensor images;
  Tensor labels;
  std::int64_t num_classes = 0;
};

// Loads an MNIST-style pair of IDX files and checks that they agree (same N, 3-D images, 1-D labels
// in [0, num_classes)).
LabeledImages load_mnist(const std::string& images_path, const std::string& labels_path,
                         std::int64_t num_classes = 10);

// Where Debian's dataset-fashion-mnist package installs the data.
inline constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";

// "train" or "test" split of Fashion-MNIST from `dir` (files *-images-idx3-ubyte.gz / *-labels-idx1-ubyte.gz).
LabeledImages load_fashion_mnist(const std::string& dir, const std::string& split);

}  // namespace shiftq::data
