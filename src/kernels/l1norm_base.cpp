#define SHIFTQ_ISA_NS base
#include "l1norm_impl.inc"
