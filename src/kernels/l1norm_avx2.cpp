#define SHIFTQ_ISA_NS avx2
#include "l1norm_impl.inc"
