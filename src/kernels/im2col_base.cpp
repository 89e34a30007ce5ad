#define SHIFTQ_ISA_NS base
#include "im2col_impl.inc"
