#define SHIFTQ_ISA_NS avx2
#include "im2col_impl.inc"
