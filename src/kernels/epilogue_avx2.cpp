#define SHIFTQ_ISA_NS avx2
#include "epilogue_impl.inc"
