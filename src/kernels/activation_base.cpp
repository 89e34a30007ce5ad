#define SHIFTQ_ISA_NS base
#include "activation_impl.inc"
