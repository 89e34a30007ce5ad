#define SHIFTQ_ISA_NS base
#include "grad_codec_impl.inc"
