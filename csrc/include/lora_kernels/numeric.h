// The one dtype trait and the one dtype dispatcher of the CPU implementation and the CUDA kernels.
//
// Numeric<T> for every storage type T: `Acc` (the accumulator: float, or double for double),
// `kDType`, `load` (exact widening to Acc) and `store` (round-to-nearest-even narrowing).
// The 16-bit storage types differ by backend only: the CPU uses the torch-free Half / BFloat16
// below (exact widening, RNE narrowing written out here); the CUDA kernels (nvcc, or g++ on the
// SIMT executor, where cuda_fp16.h / cuda_bf16.h compile on the host) use __half and
// __nv_bfloat16. dispatch_dtype<CpuTypes or CudaTypes>(dtype, fn, unknown) maps the runtime DType
// to that backend's storage type.
#pragma once

#include <cstdint>
#include <cstring>

#include "lora_kernels/params.h"

#if defined(__CUDACC__) || defined(LK_SIMT)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define LK_NUMERIC_CUDA_TYPES 1
#endif

namespace lora_kernels {

struct Half {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}
inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

inline float to_float(BFloat16 h) { return bits_float(static_cast<uint32_t>(h.bits) << 16); }

inline BFloat16 bfloat16_from_float(float f) {
  const uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return BFloat16{static_cast<uint16_t>((u >> 16) | 0x40u)};
  const uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);  // ties to even
  return BFloat16{static_cast<uint16_t>((u + rounding) >> 16)};
}

// IEEE binary16 -> binary32, exact for every input (normals, subnormals, inf, NaN).
inline float to_float(Half h) {
  const uint32_t sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
  const uint32_t exponent = (h.bits >> 10) & 0x1fu;
  uint32_t mantissa = h.bits & 0x3ffu;
  if (exponent == 0x1f) return bits_float(sign | 0x7f800000u | (mantissa << 13));
  if (exponent != 0) return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  if (mantissa == 0) return bits_float(sign);
  // Subnormal half: value = mantissa * 2^-24, exactly representable in float.
  return bits_float(sign) + (sign ? -1.0f : 1.0f) * static_cast<float>(mantissa) * 5.9604644775390625e-08f;
}

// IEEE binary32 -> binary16 with round-to-nearest-even, overflow to inf, NaN kept NaN.
inline Half half_from_float(float f) {
  const uint32_t u = float_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return Half{static_cast<uint16_t>(sign | 0x7e00u)};
  if (abs >= 0x477ff000u) return Half{static_cast<uint16_t>(sign | 0x7c00u)};  // rounds to >= 65520
  if (abs < 0x38800000u) {
    // Result is subnormal (or zero): round abs * 2^24 to an integer, ties to even.
    if (abs < 0x33000000u) return Half{sign};  // below half the smallest subnormal: +-0
    const uint32_t exponent = abs >> 23;
    const uint32_t mantissa = (abs & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - exponent;  // 14..24 for this range
    uint32_t value = mantissa >> shift;
    const uint32_t rest = mantissa & ((1u << shift) - 1u);
    const uint32_t halfway = 1u << (shift - 1u);
    if (rest > halfway || (rest == halfway && (value & 1u))) ++value;
    return Half{static_cast<uint16_t>(sign | value)};
  }
  // Normal: rebias exponent, round the 13 dropped mantissa bits to nearest even.
  uint32_t value = ((abs >> 13) - (112u << 10));
  const uint32_t rest = abs & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (value & 1u))) ++value;  // may carry into exponent
  return Half{static_cast<uint16_t>(sign | value)};
}

template <typename T>
struct Numeric;
template <>
struct Numeric<float> {
  using Acc = float;
  static constexpr DType kDType = DType::kFloat32;
  static LK_HOST_DEVICE float load(float v) { return v; }
  static LK_HOST_DEVICE float store(float v) { return v; }
};
template <>
struct Numeric<double> {
  using Acc = double;
  static constexpr DType kDType = DType::kFloat64;
  static LK_HOST_DEVICE double load(double v) { return v; }
  static LK_HOST_DEVICE double store(double v) { return v; }
};
template <>
struct Numeric<Half> {
  using Acc = float;
  static constexpr DType kDType = DType::kFloat16;
  static float load(Half v) { return to_float(v); }
  static Half store(float v) { return half_from_float(v); }
};
template <>
struct Numeric<BFloat16> {
  using Acc = float;
  static constexpr DType kDType = DType::kBFloat16;
  static float load(BFloat16 v) { return to_float(v); }
  static BFloat16 store(float v) { return bfloat16_from_float(v); }
};

// The storage types of each backend for the 16-bit dtypes.
struct CpuTypes {
  using Float16 = Half;
  using BFloat16 = lora_kernels::BFloat16;
};

#if defined(LK_NUMERIC_CUDA_TYPES)
template <>
struct Numeric<__half> {
  using Acc = float;
  static constexpr DType kDType = DType::kFloat16;
  static LK_HOST_DEVICE float load(__half v) { return __half2float(v); }
  static LK_HOST_DEVICE __half store(float v) { return __float2half_rn(v); }
};
template <>
struct Numeric<__nv_bfloat16> {
  using Acc = float;
  static constexpr DType kDType = DType::kBFloat16;
  static LK_HOST_DEVICE float load(__nv_bfloat16 v) { return __bfloat162float(v); }
  static LK_HOST_DEVICE __nv_bfloat16 store(float v) { return __float2bfloat16_rn(v); }
};

struct CudaTypes {
  using Float16 = __half;
  using BFloat16 = __nv_bfloat16;
};
#endif

// A type as a value: dispatch_dtype's callback receives TypeTag<T>{} and reads T back with
// `using T = typename decltype(tag)::type;`.
template <typename T>
struct TypeTag {
  using type = T;
};

// Calls fn(TypeTag<T>{}) with T the `Types` backend's storage type of `dtype` and returns its
// result; a value outside DType's enumerators calls unknown() instead (which returns the same
// type, e.g. an error code, or throws).
template <typename Types, typename Fn, typename Unknown>
inline decltype(auto) dispatch_dtype(DType dtype, Fn&& fn, Unknown&& unknown) {
  switch (dtype) {
    case DType::kFloat16: return fn(TypeTag<typename Types::Float16>{});
    case DType::kBFloat16: return fn(TypeTag<typename Types::BFloat16>{});
    case DType::kFloat32: return fn(TypeTag<float>{});
    case DType::kFloat64: return fn(TypeTag<double>{});
  }
  return unknown();
}

}  // namespace lora_kernels
