#define SHIFTQ_ISA_NS avx512
#include "quantize_impl.inc"
