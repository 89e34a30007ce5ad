#define SHIFTQ_ISA_NS base
#include "transpose_impl.inc"
