// Tensor-core instructions, one small device function per instruction shape (DESIGN §4):
//
//   mma_m16n8k16<T>   mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32   (T = __half, __nv_bfloat16)
//   mma_m16n8k8_tf32  mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32
//   to_tf32           cvt.rna.tf32.f32
//
// Under nvcc each is one inline-PTX instruction (sm_80 and newer: the build targets sm_80 and
// sm_90). Under g++ with -DLK_SIMT (tests/simt) each is a twin: one rendezvous of the 32 lanes
// (lk_simt::warp_registers), which gathers every lane's fragment registers into the matrices,
// multiplies them and hands each lane its fragment of D. The fragment layouts are the PTX ISA's,
// "9.7.14.5.7 Matrix Fragments for mma.m16n8k8" (.tf32) and "9.7.14.5.8 Matrix Fragments for
// mma.m16n8k16 with floating point type" (.f16 / .bf16), with
//   g = laneid >> 2 (groupID), t = laneid % 4 (threadID_in_group):
//
//   m16n8k16 .f16/.bf16  A 16x16 (row): a[0] = A[g][2t, 2t+1]      a[1] = A[g+8][2t, 2t+1]
//                                       a[2] = A[g][2t+8, 2t+9]    a[3] = A[g+8][2t+8, 2t+9]
//                        B 16x8 (col):  b[0] = B[2t, 2t+1][g]      b[1] = B[2t+8, 2t+9][g]
//                        (two elements per .b32 register, the lower column / row in the low 16 bits)
//   m16n8k8 .tf32        A 16x8 (row):  a[0] = A[g][t]  a[1] = A[g+8][t]  a[2] = A[g][t+4]  a[3] = A[g+8][t+4]
//                        B 8x8 (col):   b[0] = B[t][g]  b[1] = B[t+4][g]
//   C, D 16x8 .f32 (both shapes):       c[0] = C[g][2t]  c[1] = C[g][2t+1]  c[2] = C[g+8][2t]  c[3] = C[g+8][2t+1]
//
// The twins' arithmetic: f16 / bf16 products are exact in fp32; each D element is C plus the K
// products summed in fp32 in k order (the hardware's order and internal precision are not
// documented; the tests' tolerances cover either). A .tf32 operand is read as its upper 19 bits
// (the lower 13 bits of the register cleared), as the tensor cores read it.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace lora_kernels::cuda::detail {

#if defined(LK_SIMT)
namespace simt_twin {

inline float f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
// Element h (0: low 16 bits, 1: high) of a packed f16x2 / bf16x2 register, widened exactly.
template <typename T>
inline float half_of(uint32_t reg, int h) {
  const uint16_t raw = static_cast<uint16_t>(h ? reg >> 16 : reg & 0xffffu);
  T v;
  std::memcpy(static_cast<void*>(&v), &raw, 2);
  if constexpr (std::is_same_v<T, __half>) return __half2float(v);
  else return __bfloat162float(v);
}

struct Regs {
  uint32_t a[4];
  uint32_t b[2];
  float c[4];
  float d[4];
};

// D = A B + C from the 32 lanes' fragments (m16n8k16, f16 / bf16).
template <typename T>
inline void m16n8k16(Regs* const* lane) {
  float A[16][16], B[16][8], C[16][8];
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, t = l & 3;
    const Regs& r = *lane[l];
    for (int h = 0; h < 2; ++h) {
      A[g][2 * t + h] = half_of<T>(r.a[0], h);
      A[g + 8][2 * t + h] = half_of<T>(r.a[1], h);
      A[g][2 * t + 8 + h] = half_of<T>(r.a[2], h);
      A[g + 8][2 * t + 8 + h] = half_of<T>(r.a[3], h);
      B[2 * t + h][g] = half_of<T>(r.b[0], h);
      B[2 * t + 8 + h][g] = half_of<T>(r.b[1], h);
    }
    C[g][2 * t] = r.c[0], C[g][2 * t + 1] = r.c[1], C[g + 8][2 * t] = r.c[2], C[g + 8][2 * t + 1] = r.c[3];
  }
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, t = l & 3;
    const int row[4] = {g, g, g + 8, g + 8}, col[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
    for (int i = 0; i < 4; ++i) {
      float acc = C[row[i]][col[i]];
      for (int k = 0; k < 16; ++k) acc += A[row[i]][k] * B[k][col[i]];
      lane[l]->d[i] = acc;
    }
  }
}

// D = A B + C from the 32 lanes' fragments (m16n8k8, tf32).
inline void m16n8k8_tf32(Regs* const* lane) {
  const auto tf32 = [](uint32_t u) { return f32(u & 0xffffe000u); };
  float A[16][8], B[8][8], C[16][8];
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, t = l & 3;
    const Regs& r = *lane[l];
    A[g][t] = tf32(r.a[0]), A[g + 8][t] = tf32(r.a[1]), A[g][t + 4] = tf32(r.a[2]), A[g + 8][t + 4] = tf32(r.a[3]);
    B[t][g] = tf32(r.b[0]), B[t + 4][g] = tf32(r.b[1]);
    C[g][2 * t] = r.c[0], C[g][2 * t + 1] = r.c[1], C[g + 8][2 * t] = r.c[2], C[g + 8][2 * t + 1] = r.c[3];
  }
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, t = l & 3;
    const int row[4] = {g, g, g + 8, g + 8}, col[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
    for (int i = 0; i < 4; ++i) {
      float acc = C[row[i]][col[i]];
      for (int k = 0; k < 8; ++k) acc += A[row[i]][k] * B[k][col[i]];
      lane[l]->d[i] = acc;
    }
  }
}

template <void (*F)(Regs* const*)>
inline void run(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4]) {
  Regs r;
  std::memcpy(r.a, a, sizeof r.a);
  std::memcpy(r.b, b, sizeof r.b);
  std::memcpy(r.c, c, sizeof r.c);
  lk_simt::warp_registers<Regs, F>(r);
  std::memcpy(d, r.d, sizeof r.d);
}

}  // namespace simt_twin
#endif

// D = A B + C, A 16x16 and B 16x8 in T (__half or __nv_bfloat16), C and D 16x8 fp32.
template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                             const float (&c)[4]) {
  static_assert(std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>, "mma_m16n8k16: fp16 or bf16");
#if defined(LK_SIMT)
  simt_twin::run<simt_twin::m16n8k16<T>>(d, a, b, c);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
          "f"(c[3]));
  }
#elif defined(__CUDA_ARCH__)
  __trap();  // below sm_80: never built (cuda_archs are 8.0 and 9.0)
#endif
}

// D = A B + C, A 16x8 and B 8x8 in tf32 (fp32 registers whose lower 13 bits are ignored), C and D fp32.
__device__ __forceinline__ void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                                 const float (&c)[4]) {
#if defined(LK_SIMT)
  simt_twin::run<simt_twin::m16n8k8_tf32>(d, a, b, c);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%10, %11, %12, %13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
        "f"(c[3]));
#elif defined(__CUDA_ARCH__)
  __trap();
#endif
}

// x rounded to tf32 (10 mantissa bits, nearest, ties away from zero), as fp32 bits with the
// lower 13 bits zero. Per thread (no rendezvous).
__device__ __forceinline__ uint32_t to_tf32(float x) {
#if defined(LK_SIMT)
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) == 0x7f800000u) return (u & 0xffffe000u) | ((u & 0x1fffu) ? 0x2000u : 0u);  // inf, NaN
  return (u + 0x1000u) & 0xffffe000u;  // magnitude rounded half away from zero; may carry into the exponent
#elif defined(__CUDA_ARCH__)
  uint32_t u;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(u) : "f"(x));
  return u;
#else
  (void)x;
  return 0;
#endif
}

}  // namespace lora_kernels::cuda::detail
