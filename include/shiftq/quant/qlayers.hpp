// Quantized training ops: Linear and Conv2d whose forward and backward GEMMs all run on int8
// operands with int32 accumulation (ShiftMM), per the table of docs/shiftquant.md:
//   forward  Y  = X W^T   X: activations (u8 codes), W: packed once per optimizer step
//   backward dX = dY W    dY: ShiftQuant, groups over C_out, one scale per row, stochastic
//            dW = dY^T X  dY: ShiftQuant, groups over rows, one scale per C_out, stochastic; X: the
//                         int8 codes saved by the forward (never fp32)
// Straight-through estimator through the forward quantizers; bias, master weights and the
// optimizer stay fp32.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include "shiftq/autograd/ops.hpp"
#include "shiftq/quant/monitor.hpp"
#include "shiftq/quant/observer.hpp"
#include "shiftq/quant/qconfig.hpp"
#include "shiftq/quant/qtensor.hpp"

namespace shiftq::quant {

// A weight quantized once and reused until the weight's storage version changes (an optimizer
// step, copy_, fill_, load_state_dict), i.e. once per optimizer step.
class PackedWeight {
 public:
  // w viewed as [rows, cols] (rows = output channels). `prepare`, when given, rearranges w before
  // quantization (the conv's channels-last patch order, a Linear's input rotation); it runs only
  // when re-packing. `variant` names what `prepare` does: another variant re-packs.
  const QTensor& get(const Tensor& w, std::int64_t rows, std::int64_t cols, const TensorQConfig& config,
                     const std::function<Tensor(const Tensor&)>& prepare = {}, std::int64_t variant = 0);
  std::int64_t packs() const { return packs_; }  // how many times it quantized (for tests)
  const QTensor& value() const { return packed_; }  // the last packed weight

 private:
  QTensor packed_;
  TensorQConfig config_;  // the quantizer of packed_ (a changed config re-packs)
  std::int64_t rows_ = 0, cols_ = 0, variant_ = 0;
  const void* storage_ = nullptr;
  std::uint64_t version_ = 0;
  std::int64_t packs_ = 0;
};

// x: [..., in], weight: [out, in], bias: [out] or undefined -> [..., out]. `config` is the layer's
// (QConfig::for_layer); ValueError if it does not validate.
Tensor quantized_linear(const Tensor& x, const Tensor& weight, const Tensor& bias, PackedWeight& packed,
                        const QConfig& config, const QuantCall& call);

// gelu(quantized_linear(...)), the same bits forward and backward, without saving the [..., out]
// pre-activation for GELU's backward: backward recomputes it from the saved input codes and the
// packed weight (the same int8 product), trading one forward GEMM for out * 4 bytes per row of saved
// memory (the MLP's widest tensor in a Transformer). AutogradError in backward if the bias was
// modified in place since the forward.
Tensor quantized_linear_gelu(const Tensor& x, const Tensor& weight, const Tensor& bias, PackedWeight& packed,
                             const QConfig& config, const QuantCall& call);

// x: [N, C, H, W], weight: [O, C, KH, KW], bias: [O] or undefined -> [N, O, OH, OW]. The input is
// quantized once (before im2col) and its codes moved to channels-last; the im2col rows are built
// from them block by block (patches ordered (ky, kx, c), as in the packed weight [O, KH*KW*C]) and
// consumed while in cache, forward and backward. Throws ValueError when C*KH*KW or O exceeds
// kernels::kMaxGemmKu8s8 (66311; e.g. more than 7367 input channels at 3x3).
Tensor quantized_conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, const Conv2dParams& params,
                        PackedWeight& packed, const QConfig& config, const QuantCall& call);

// An activation handed from one quantized layer to the next as int8 codes instead of f32 values:
// the producer (quantized_l1_batch_norm2d_relu) writes its consumer's input codes in its own pass,
// and no f32 tensor of the activation exists. `codes` carries the autograd edge: the gradient that
// flows back through it is f32 of its shape, with respect to the dequantized values (straight
// through the quantizer).
struct CodedActivation {
  Tensor codes;  // u8 [N, H, W, C]: v + 128, channels-last whatever the model's layout
  QTensor q;     // q.codes = codes viewed as [N*H*W, C]; per-tensor base, shift budget S, and one
                 // exponent per (sample, channel) group (inner_axis 0, exponents [N*C])
  // The consumer's input observer whose base quantized them (and which the producer updated): a
  // consumer whose call has another observer refuses the codes.
  const RangeObserver* observer = nullptr;
};

// quantized_conv2d on a coded input: the same products as on the f32 input whose quantization
// gave these codes (bit for bit). Y has params.layout; the input gradient is f32 [N, H, W, C], the
// codes' shape, whatever params.layout. ValueError if x.q does not describe x.codes as above, or if
// the codes were made for another observer than call.input_range (codes made for another layer).
Tensor quantized_conv2d(const CodedActivation& x, const Tensor& weight, const Tensor& bias, const Conv2dParams& params,
                        PackedWeight& packed, const QConfig& config, const QuantCall& call);

// Batched matmul with every GEMM on int8, for attention's Q K^T and P V:
//   a: [..., M, K], b: [..., K, N] (equal leading dims) -> [..., M, N].
// Forward: a with ShiftQuant groups over K and a scale per row, b with groups over K and a scale per
// column. Backward: da = g b^T and db = a^T g, each operand re-quantized with its groups along that
// product's contraction axis; g stochastically rounded. `bits` applies to a, b and g (S = 8 - bits);
// `key_id` separates the stochastic streams of different call sites. Those backward operands (a with
// groups over M, b with groups over N, nearest rounding) are quantized in the forward and saved as
// int8 codes, not as fp32.
//
// How the forward operands are scaled (`forward`):
//   shiftquant: as above (a scale per row of a / column of b, power-of-two groups over K shared by
//               all rows of a / columns of b)
//   per_row:    a with one scale per row, b with one scale per column (S = 0): output (m, n) then
//               depends on row m of a and column n of b alone (causal attention: no position's
//               codes depend on a later position)
//   per_row_a_unit_b: a per row; b per tensor (S = 0), for a b whose rows are normalized to max |.|
//               = 1 (its tensor range is then 1 whatever the other rows hold)
enum class MatmulScaling : std::uint8_t { shiftquant, per_row, per_row_a_unit_b };
Tensor quantized_matmul(const Tensor& a, const Tensor& b, int bits, std::uint64_t seed, std::uint64_t key_id,
                        std::uint64_t step, MatmulScaling forward = MatmulScaling::shiftquant);

// scaled_dot_product_attention with both batched matmuls (Q K^T and P V, forward and backward) on
// int8 through quantized_matmul; softmax and the causal mask stay fp32 (they are elementwise on the
// [T, T] scores, whose probabilities need more than 8 bits of dynamic range before P V).
// Causal: every forward code depends on one position only, so the output at position t is
// bit-identical whatever the positions after t hold: Q and K get one scale per position
// (MatmulScaling::per_row), and P V is computed as (P diag(s)) (diag(1/s) V) with s the per-position
// range of V: P diag(s) gets a scale per query row, diag(1/s) V has rows of range 1 and one fixed
// scale (per_row_a_unit_b). Non-causal attention keeps the ShiftQuant operands.
// Causal attention runs as one autograd node, one [Tq, Tk] matrix at a time: the batch's scores and
// probabilities are never materialized, and backward recomputes each P from the saved forward codes
// of Q and K^T (one extra [Tq, Dh] x [Dh, Tk] int8 product per matrix) instead of keeping P in fp32.
// Its bits are those of the composition quantized_matmul -> scaled_softmax -> mul -> quantized_matmul.
Tensor quantized_attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, int bits,
                           std::uint64_t seed, std::uint64_t key_id, std::uint64_t step);

// Causal self-attention from one fused projection: qkv: [B, T, 3 D] (Q, K and V side by side along
// the last axis, each with `heads` heads of D / heads features side by side) -> [B, T, D] (the heads
// side by side: the output projection's input). The bits of quantized_attention(q, k, v, true, ...)
// on the split heads, forward and backward, without the [B, H, T, Dh] copies of Q, K, V, the output
// and their gradients.
Tensor quantized_causal_self_attention(const Tensor& qkv, std::int64_t heads, int bits, std::uint64_t seed,
                                       std::uint64_t key_id, std::uint64_t step);

// Bytes of the tensors the last quantized_* calls on this thread saved for backward (for the
// saved-activation measurement); reset by reset_saved_activation_bytes().
std::int64_t saved_activation_bytes();
void reset_saved_activation_bytes();

}  // namespace shiftq::quant
