#define SHIFTQ_ISA_NS base
#include "epilogue_impl.inc"
