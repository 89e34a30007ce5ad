// libFuzzer target: io::load_safetensors and io::load_checkpoint on the same bytes.
// Documented errors: IOError (malformed file) and NumericError (NaN/Inf in F32 data). A successful
// load_checkpoint must agree with load_safetensors (same tensors, "format" metadata present).
#include <cstring>

#include "fuzz_common.hpp"

using namespace shiftq;

namespace {

bool same_tensor(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         std::memcmp(a.raw_bytes(), b.raw_bytes(), a.nbytes()) == 0;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::init();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const fuzz::TempFile input("checkpoint");
  input.write(data, size);

  io::TensorFile file;
  const bool file_ok = fuzz::expect_only<IOError, NumericError>(
      "load_safetensors", [&] { file = io::load_safetensors(input.path()); });
  if (file_ok) {
    std::uint64_t header = 0;
    FUZZ_CHECK(size >= 8);
    std::memcpy(&header, data, 8);
    std::uint64_t bytes = 0;
    for (const auto& [name, t] : file.tensors) {
      FUZZ_CHECK(t.defined());
      if (t.dtype() == DType::f32) FUZZ_CHECK(t.all_finite());
      bytes += t.nbytes();
    }
    FUZZ_CHECK(8 + header + bytes == size);  // the tensors tile the data section exactly
  }

  io::TrainingCheckpoint ckpt;
  if (!fuzz::expect_only<IOError, NumericError>("load_checkpoint",
                                                [&] { ckpt = io::load_checkpoint(input.path()); }))
    return 0;
  FUZZ_CHECK(file_ok);
  FUZZ_CHECK(file.metadata.count("format") == 1 && file.metadata.at("format") == io::kCheckpointFormat);
  FUZZ_CHECK(ckpt.model.size() + ckpt.optimizer.size() == file.tensors.size());
  for (const auto& [name, t] : ckpt.model) FUZZ_CHECK(same_tensor(t, file.tensors.at("model/" + name)));
  for (const auto& [name, t] : ckpt.optimizer) FUZZ_CHECK(same_tensor(t, file.tensors.at("optim/" + name)));
  FUZZ_CHECK(1 + ckpt.generators.size() + ckpt.info.size() == file.metadata.size());
  for (const auto& [name, s] : ckpt.generators) FUZZ_CHECK(s.word <= 4);
  return 0;
}
