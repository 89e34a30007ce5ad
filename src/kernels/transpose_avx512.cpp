#define SHIFTQ_ISA_NS avx512
#include "transpose_impl.inc"
