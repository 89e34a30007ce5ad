#include "shiftq/quant/monitor.hpp"

#include <algorithm>
#include <cmath>

namespace shiftq::quant {

double TensorNumerics::relative_error() const { return value_sq > 0.0 ? std::sqrt(error_sq / value_sq) : 0.0; }

void TensorNumerics::merge(const TensorNumerics& o) {
  elements += o.elements;
  saturated += o.saturated;
  zeros += o.zeros;
  error_sq += o.error_sq;
  value_sq += o.value_sq;
  range = std::max(range, o.range);
  input_absmax = std::max(input_absmax, o.input_absmax);
  bits = o.bits;
  shift_budget = o.shift_budget;
  for (std::size_t e = 0; e < exponent_histogram.size(); ++e) exponent_histogram[e] += o.exponent_histogram[e];
}

namespace {
// Exponent k of element (r, c) (see QTensor::exponents).
std::int64_t exponent_index(const QTensor& q, std::int64_t r, std::int64_t c) {
  if (q.inner_axis == 1) return c;
  if (q.sample_groups == 0) return r;
  return r / (q.rows() / q.sample_groups) * q.cols() + c;
}
}  // namespace

TensorNumerics measure_quantization(const Tensor& x, const QTensor& q) {
  check_dtype(x, DType::f32, "measure_quantization", "x");
  SHIFTQ_CHECK(x.dim() == 2 && x.size(0) == q.rows() && x.size(1) == q.cols(), ShapeError, "measure_quantization: x ",
               x.str(), " does not match the codes ", q.codes.str());
  TensorNumerics out;
  out.bits = q.bits;
  out.shift_budget = q.shift_budget;
  out.elements = x.numel();
  const Tensor v = q.signed_codes();
  const Tensor xh = q.dequantize();
  const std::int64_t R = q.rows(), C = q.cols();
  const float* px = x.data<float>();
  const float* ph = xh.data<float>();
  const std::int8_t* pv = v.data<std::int8_t>();
  const std::int8_t* e = q.exponents.defined() ? q.exponents.data<std::int8_t>() : nullptr;
  if (e) {
    const std::int64_t groups = q.inner_axis == 1 ? C : q.sample_groups == 0 ? R : q.sample_groups * C;
    SHIFTQ_CHECK(q.exponents.numel() == groups && (q.sample_groups == 0 || R % q.sample_groups == 0), ShapeError,
                 "measure_quantization: exponents ", q.exponents.str(), " do not match the codes ", q.codes.str());
  }
  const std::uint8_t* m = q.row_block > 0 ? q.block_multipliers.data<std::uint8_t>() : nullptr;
  const std::int64_t blocks = m ? (C - 1) / q.row_block + 1 : 0;
  if (m)
    SHIFTQ_CHECK(q.block_multipliers.numel() == R * blocks, ShapeError, "measure_quantization: block multipliers ",
                 q.block_multipliers.str(), " do not match the codes ", q.codes.str());
  const int qmax = q.qmax();
  for (std::int64_t r = 0; r < R; ++r)
    for (std::int64_t c = 0; c < C; ++c) {
      const std::int64_t i = r * C + c;
      const int group_e = e ? e[exponent_index(q, r, c)] : 0;
      // The group's largest |v|: qmax 2^(S - e), or qmax m for a block multiplier m.
      const int top = m ? qmax * m[r * blocks + c / q.row_block] : qmax << (q.shift_budget - group_e);
      const float xi = px[i];
      const double d = static_cast<double>(ph[i]) - static_cast<double>(xi);
      out.error_sq += d * d;
      out.value_sq += static_cast<double>(xi) * static_cast<double>(xi);
      out.input_absmax = std::max(out.input_absmax, std::fabs(xi));
      // At the top code and beyond it by more than the f32 rounding of code * scale (a group's own
      // maximum dequantizes to within a few ulps of itself).
      if (std::abs(static_cast<int>(pv[i])) >= top && std::fabs(xi) > std::fabs(ph[i]) * (1.0f + 1e-6f)) ++out.saturated;
      if (pv[i] == 0 && xi != 0.0f) ++out.zeros;
    }
  if (e && q.shift_budget > 0)  // S = 0 has no groups: e = 0 throughout, over a layout-dependent axis
    for (std::int64_t k = 0; k < q.exponents.numel(); ++k) ++out.exponent_histogram[std::clamp<int>(e[k], 0, 8)];
  const float* s = q.scales.data<float>();
  float smax = 0.0f;
  for (std::int64_t k = 0; k < q.scales.numel(); ++k) smax = std::max(smax, s[k]);
  out.range = smax * static_cast<float>(qmax);
  return out;
}

}  // namespace shiftq::quant
