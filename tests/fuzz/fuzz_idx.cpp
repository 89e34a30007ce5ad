// libFuzzer target: data::read_idx (IDX files, plain or gzip-compressed).
// A successful read must give a tensor that write_idx() writes and read_idx() reads back bit for bit.
#include <cstring>

#include "fuzz_common.hpp"

using namespace shiftq;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::init();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const fuzz::TempFile input("idx");
  static const fuzz::TempFile copy("idx", "-rewritten");
  input.write(data, size);

  Tensor t;
  if (!fuzz::expect_only<IOError>("read_idx", [&] { t = data::read_idx(input.path()); })) return 0;

  FUZZ_CHECK(t.defined());
  FUZZ_CHECK(t.dim() >= 1 && t.dim() <= 8);
  FUZZ_CHECK(t.numel() >= 1);
  if (t.dtype() == DType::f32) FUZZ_CHECK(t.all_finite());
  // A plain (not gzip) file holds exactly the 4-byte magic, 4 bytes per dim and the data.
  const bool gzip = size >= 2 && data[0] == 0x1F && data[1] == 0x8B;
  if (!gzip) FUZZ_CHECK(size == 4 + 4 * static_cast<std::size_t>(t.dim()) + t.nbytes());

  Tensor back;
  FUZZ_CHECK(fuzz::expect_only<>("write_idx + read_idx of a loaded tensor", [&] {
    data::write_idx(copy.path(), t);
    back = data::read_idx(copy.path());
  }));
  FUZZ_CHECK(back.dtype() == t.dtype() && back.shape() == t.shape());
  FUZZ_CHECK(std::memcmp(back.raw_bytes(), t.raw_bytes(), t.nbytes()) == 0);
  return 0;
}
