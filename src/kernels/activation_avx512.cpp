#define SHIFTQ_ISA_NS avx512
#include "activation_impl.inc"
