#define SHIFTQ_ISA_NS avx2
#include "hadamard_impl.inc"
