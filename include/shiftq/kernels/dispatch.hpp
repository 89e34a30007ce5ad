// How every kernel op picks its implementation. Each op has one entry point (kernels::relu_f32,
// kernels::gemm_u8s8s32, ...) that chooses, inside kernels/, among its implementations: the
// plain reference (the `_ref` function beside it, the ground truth in tests) when the reference path
// is forced, otherwise the fastest one this CPU runs (AVX-512, AVX2 or x86-64 builds of shiftq's
// own kernels; oneDNN's JIT GEMMs). Callers never choose a variant.
#pragma once

#include <cstdint>

namespace shiftq::kernels {

enum class KernelPath : std::uint8_t {
  optimized,  // oneDNN / shiftq's own vectorized kernels
  reference,  // plain loops or Eigen: slow, simple, the ground truth in tests
};

// Process-wide kernel path. Initialized from SHIFTQ_KERNELS ("reference" or "optimized").
void set_kernel_path(KernelPath path);
KernelPath kernel_path();

}  // namespace shiftq::kernels
