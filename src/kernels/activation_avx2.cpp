#define SHIFTQ_ISA_NS avx2
#include "activation_impl.inc"
