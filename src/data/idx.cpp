#include "shiftq/data/idx.hpp"

#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <system_error>

namespace shiftq::data {
namespace {
constexpr std::int64_t kMaxElements = std::int64_t{1} << 34;  // 16 GiB of u8: anything larger is corrupt

struct GzCloser {
  void operator()(gzFile f) const { gzclose(f); }
};
using GzHandle = std::unique_ptr<gzFile_s, GzCloser>;

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw IOError("IDX file '" + path + "': " + what);
}

// Reads exactly n bytes or throws (truncation or a corrupt gzip stream).
void read_exact(gzFile f, const std::string& path, void* dst, std::size_t n, const char* what) {
  auto* out = static_cast<unsigned char*>(dst);
  while (n > 0) {
    const unsigned chunk = static_cast<unsigned>(std::min<std::size_t>(n, 1u << 30));
    const int got = gzread(f, out, chunk);
    if (got < 0) {
      int code = 0;
      const char* msg = gzerror(f, &code);
      fail(path, std::string("corrupt compressed stream while reading ") + what + " (" + msg + ")");
    }
    if (got == 0) fail(path, std::string("truncated: file ends inside the ") + what);
    out += got;
    n -= static_cast<std::size_t>(got);
  }
}

std::uint32_t big_endian_u32(const unsigned char* b) {
  return (std::uint32_t{b[0]} << 24) | (std::uint32_t{b[1]} << 16) | (std::uint32_t{b[2]} << 8) | b[3];
}

DType idx_dtype(unsigned char code, const std::string& path) {
  switch (code) {
    case 0x08: return DType::u8;
    case 0x09: return DType::s8;
    case 0x0C: return DType::s32;
    case 0x0D: return DType::f32;
    default: {
      char hex[8];
      std::snprintf(hex, sizeof hex, "0x%02X", code);
      fail(path, std::string("unsupported element type ") + hex + " (expected 0x08, 0x09, 0x0C or 0x0D)");
    }
  }
}
}  // namespace

Tensor read_idx(const std::string& path) {
  std::FILE* probe = std::fopen(path.c_str(), "rb");
  if (!probe) fail(path, std::string("cannot open (") + std::strerror(errno) + ")");
  std::fclose(probe);
  GzHandle f(gzopen(path.c_str(), "rb"));
  if (!f) fail(path, "cannot open");

  unsigned char magic[4];
  read_exact(f.get(), path, magic, 4, "magic number");
  if (magic[0] != 0 || magic[1] != 0)
    fail(path, "bad magic number (first two bytes must be 0): not an IDX file");
  const DType dtype = idx_dtype(magic[2], path);
  const int rank = magic[3];
  if (rank < 1 || rank > 8) fail(path, "bad number of dimensions " + std::to_string(rank) + " (expected 1..8)");

  Shape dims(rank);
  std::int64_t total = 1;
  for (int d = 0; d < rank; ++d) {
    unsigned char b[4];
    read_exact(f.get(), path, b, 4, "dimension sizes");
    dims[d] = big_endian_u32(b);
    if (dims[d] == 0) fail(path, "dimension " + std::to_string(d) + " is 0");
    if (dims[d] > kMaxElements / total) fail(path, "dimensions too large (corrupt header?)");
    total *= dims[d];
  }

  // The header alone must not decide how much is allocated: a few corrupt bytes could otherwise
  // claim up to 64 GiB. A plain file must hold the data after the header; a gzip stream expands at
  // most 1032:1 (deflate's limit), which bounds what a compressed file can hold.
  const auto data_bytes = static_cast<std::uint64_t>(total) * dtype_size(dtype);
  std::error_code size_error;
  const std::uint64_t file_size = std::filesystem::file_size(path, size_error);
  if (!size_error) {  // a regular file (not a pipe or device)
    const std::uint64_t header_bytes = 4 + 4 * static_cast<std::uint64_t>(rank);
    const bool plain = gzdirect(f.get()) != 0;
    const std::uint64_t limit = plain ? file_size - std::min(file_size, header_bytes) : file_size * 1032;
    if (data_bytes > limit)
      fail(path, "truncated: the header says " + shape_str(dims) + " (" + std::to_string(data_bytes) +
                     " bytes of data) but " +
                     (plain ? "only " + std::to_string(limit) + " bytes follow it"
                            : "a " + std::to_string(file_size) + "-byte gzip file cannot hold that much"));
  }

  Tensor t = Tensor::empty(dims, dtype);
  unsigned char* raw = dtype == DType::u8 ? t.data<std::uint8_t>()
                       : dtype == DType::s8 ? reinterpret_cast<unsigned char*>(t.data<std::int8_t>())
                       : dtype == DType::s32 ? reinterpret_cast<unsigned char*>(t.data<std::int32_t>())
                                             : reinterpret_cast<unsigned char*>(t.data<float>());
  read_exact(f.get(), path, raw, t.nbytes(), "data");
  if (dtype_size(dtype) == 4) {  // big-endian -> host order
    for (std::size_t i = 0; i < t.nbytes(); i += 4) {
      const std::uint32_t v = big_endian_u32(raw + i);
      std::memcpy(raw + i, &v, 4);
    }
  }
  unsigned char extra;
  const int more = gzread(f.get(), &extra, 1);
  if (more < 0) fail(path, "corrupt compressed stream after the data");
  if (more > 0) fail(path, "trailing bytes after the data (header says " + shape_str(dims) + ")");
  // gzread() reports a gzip stream cut before its end (e.g. a missing CRC/length trailer) only
  // through gzerror(), not through its return value.
  int code = Z_OK;
  gzerror(f.get(), &code);
  if (code == Z_BUF_ERROR) fail(path, "truncated compressed stream (the gzip stream does not end)");
  if (dtype == DType::f32 && !t.all_finite()) {  // corrupt data, reported like every other file problem
    const float* p = t.data<float>();
    std::int64_t bad = 0;
    while (std::isfinite(p[bad])) ++bad;
    fail(path, "non-finite value " + std::to_string(p[bad]) + " at flat index " + std::to_string(bad));
  }
  return t;
}

void write_idx(const std::string& path, const Tensor& tensor) {
  check_defined(tensor, "write_idx", "tensor");
  SHIFTQ_CHECK(tensor.dim() >= 1 && tensor.dim() <= 8, ShapeError, "write_idx: rank must be 1..8, got ", tensor.str());
  unsigned char code = 0;
  switch (tensor.dtype()) {
    case DType::u8: code = 0x08; break;
    case DType::s8: code = 0x09; break;
    case DType::s32: code = 0x0C; break;
    case DType::f32: code = 0x0D; break;
  }
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path.c_str(), "wb"), &std::fclose);
  if (!f) throw IOError("write_idx: cannot create '" + path + "' (" + std::strerror(errno) + ")");
  std::vector<unsigned char> bytes{0, 0, code, static_cast<unsigned char>(tensor.dim())};
  auto put_be = [&](std::uint32_t v) {
    for (int s = 24; s >= 0; s -= 8) bytes.push_back(static_cast<unsigned char>(v >> s));
  };
  for (std::int64_t d : tensor.shape()) put_be(static_cast<std::uint32_t>(d));
  const auto* raw = tensor.dtype() == DType::u8 ? tensor.data<std::uint8_t>()
                    : tensor.dtype() == DType::s8 ? reinterpret_cast<const unsigned char*>(tensor.data<std::int8_t>())
                    : tensor.dtype() == DType::s32 ? reinterpret_cast<const unsigned char*>(tensor.data<std::int32_t>())
                                                   : reinterpret_cast<const unsigned char*>(tensor.data<float>());
  if (dtype_size(tensor.dtype()) == 4) {
    for (std::size_t i = 0; i < tensor.nbytes(); i += 4) {
      std::uint32_t v;
      std::memcpy(&v, raw + i, 4);
      put_be(v);
    }
  } else {
    bytes.insert(bytes.end(), raw, raw + tensor.nbytes());
  }
  if (std::fwrite(bytes.data(), 1, bytes.size(), f.get()) != bytes.size() || std::fflush(f.get()) != 0)
    throw IOError("write_idx: write to '" + path + "' failed (" + std::strerror(errno) + ")");
}

LabeledImages load_mnist(const std::string& images_path, const std::string& labels_path,
                         std::int64_t num_classes) {
  Tensor images = read_idx(images_path);
  Tensor labels_u8 = read_idx(labels_path);
  if (images.dtype() != DType::u8 || images.dim() != 3)
    fail(images_path, "expected u8 images of rank 3 [N, H, W], got " + images.str());
  if (labels_u8.dtype() != DType::u8 || labels_u8.dim() != 1)
    fail(labels_path, "expected u8 labels of rank 1 [N], got " + labels_u8.str());
  if (labels_u8.size(0) != images.size(0))
    fail(labels_path, std::to_string(labels_u8.size(0)) + " labels for " + std::to_string(images.size(0)) +
                          " images in '" + images_path + "'");
  Tensor labels = labels_u8.to(DType::s32);
  const std::int32_t* l = labels.data<std::int32_t>();
  for (std::int64_t i = 0; i < labels.numel(); ++i)
    if (l[i] >= num_classes)
      fail(labels_path, "label " + std::to_string(l[i]) + " at index " + std::to_string(i) +
                            " is outside [0, " + std::to_string(num_classes) + ")");
  return {images, labels, num_classes};
}

LabeledImages load_fashion_mnist(const std::string& dir, const std::string& split) {
  SHIFTQ_CHECK(split == "train" || split == "test", ValueError, "load_fashion_mnist: split must be 'train' or 'test', got '", split, "'");
  const std::string prefix = dir + "/" + (split == "train" ? "train" : "t10k");
  const std::string images = prefix + "-images-idx3-ubyte.gz", labels = prefix + "-labels-idx1-ubyte.gz";
  std::FILE* probe = std::fopen(images.c_str(), "rb");
  if (!probe)
    throw IOError("Fashion-MNIST not found at '" + images + "': install Debian's dataset-fashion-mnist "
                  "(apt-get install dataset-fashion-mnist) or pass the directory that holds the IDX files");
  std::fclose(probe);
  return load_mnist(images, labels, 10);
}

}  // namespace shiftq::data
