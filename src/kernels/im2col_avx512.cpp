#define SHIFTQ_ISA_NS avx512
#include "im2col_impl.inc"
