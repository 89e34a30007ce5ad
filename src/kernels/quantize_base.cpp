#define SHIFTQ_ISA_NS base
#include "quantize_impl.inc"
