// Element types of shiftq tensors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace shiftq {

// f32: values, master weights, gradients. s32: integer accumulators, labels, indices.
// s8: quantized codes (ShiftQuant-packed values). u8: unsigned codes (u8s8s32 GEMMs), raw images.
enum class DType : std::uint8_t { f32, s32, s8, u8 };

constexpr std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32:
    case DType::s32:
      return 4;
    case DType::s8:
    case DType::u8:
      return 1;
  }
  return 0;
}

constexpr std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::f32:
      return "f32";
    case DType::s32:
      return "s32";
    case DType::s8:
      return "s8";
    case DType::u8:
      return "u8";
  }
  return "?";
}

template <class T>
struct DTypeOf;
template <>
struct DTypeOf<float> {
  static constexpr DType value = DType::f32;
};
template <>
struct DTypeOf<std::int32_t> {
  static constexpr DType value = DType::s32;
};
template <>
struct DTypeOf<std::int8_t> {
  static constexpr DType value = DType::s8;
};
template <>
struct DTypeOf<std::uint8_t> {
  static constexpr DType value = DType::u8;
};
template <class T>
inline constexpr DType dtype_of = DTypeOf<T>::value;

}  // namespace shiftq
