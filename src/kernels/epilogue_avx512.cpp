#define SHIFTQ_ISA_NS avx512
#include "epilogue_impl.inc"
