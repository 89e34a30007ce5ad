#define SHIFTQ_ISA_NS avx2
#include "transpose_impl.inc"
