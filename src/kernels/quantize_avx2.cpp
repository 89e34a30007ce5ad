#define SHIFTQ_ISA_NS avx2
#include "quantize_impl.inc"
