#define SHIFTQ_ISA_NS avx512
#include "l1norm_impl.inc"
