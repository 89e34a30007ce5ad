#define SHIFTQ_ISA_NS avx512
#include "grad_codec_impl.inc"
