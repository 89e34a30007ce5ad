#define SHIFTQ_ISA_NS avx512
#include "hadamard_impl.inc"
