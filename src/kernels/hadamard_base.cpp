#define SHIFTQ_ISA_NS base
#include "hadamard_impl.inc"
