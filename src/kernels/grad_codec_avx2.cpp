#define SHIFTQ_ISA_NS avx2
#include "grad_codec_impl.inc"
