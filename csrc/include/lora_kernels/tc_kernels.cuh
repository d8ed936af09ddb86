// Tensor-core shrink and expand (fp16 / bf16, sm_80 and newer), header-only and torch-free like
// kernels.cuh, whose grouping (find_group) they share. The launchers (csrc/kernels/tc.cu) take
// them for calls with many tokens (tiles.h: kTcMinTokens; a decision on shapes only).
//
// Block x runs group x of the device plan: up to kTcTokens tokens of one slot
// (find_group<kTcTokens>; the plan lists groups of that size too, tiles::kPlanGroupSizes). 8 warps; warp w owns the 16 token rows
// 16 * (w % 4) of the group and half of the block's output columns. Per step the block stages a
// tile of the tokens' activations and a tile of the adapter's weights in shared memory (16-byte
// loads when the launcher found the rows aligned; zero padding past H, the rank, the group),
// then each warp runs mma.sync on fragments read from shared memory (mma.cuh). So every weight
// tile is read from global memory once per group of up to 64 tokens, and every element of y is
// read and written once.
//
// Precision (chosen to match the CUDA-core kernels, which accumulate in fp32):
//  - shrink: v = x A^T as m16n8k16 MMAs on x and A in their storage dtype: the products of two
//    fp16 / bf16 numbers are exact in fp32 and the MMA accumulates in fp32.
//  - expand: v is fp32. Rounding it to fp16 / bf16 for an f16 MMA would add a relative error of
//    2^-9 / 2^-8 per element; instead the expand runs m16n8k8 TF32 MMAs with v split into
//    hi = tf32(v) and lo = tf32(v - hi) (two MMAs, fp32 accumulation): hi + lo equals v up to
//    about 2^-22 relative, and B (fp16 / bf16) converts to tf32 exactly (fp16's 10 mantissa
//    bits and bf16's 7 fit tf32's 10; both exponent ranges fit tf32's), so the update keeps
//    about fp32 accuracy at twice the MMAs of a plain TF32 expand. The MMA count is small next
//    to the bytes moved (r <= 64 columns of v per token).
#pragma once

#include <cstdint>
#include <cstring>

#include "lora_kernels/kernels.cuh"
#include "lora_kernels/mma.cuh"

namespace lora_kernels::cuda::detail {

using tiles::kTcExpandCols;
using tiles::kTcExpandRank;
using tiles::kTcShrinkK;
using tiles::kTcShrinkRank;
using tiles::kTcTokens;

static_assert(kWarps == 8 && kTcTokens == 64, "tensor-core kernels: 8 warps, 4 of 16 token rows x 2 column halves");
static_assert(kTcShrinkRank == 2 * 4 * 8 && kTcExpandCols == 2 * 8 * 8, "per warp: 4 (shrink) / 8 (expand) n-tiles of 8");
static_assert(kTcShrinkK % 16 == 0 && kTcExpandRank % 8 == 0, "chunks of whole MMA k-steps");

__device__ __forceinline__ float tc_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}
__device__ __forceinline__ uint32_t tc_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}
// Two consecutive 16-bit elements (shared memory, 4-byte aligned) as one f16x2 / bf16x2 register:
// the element at the lower address in the low half (PTX "elements low to high").
__device__ __forceinline__ uint32_t tc_pair(const uint16_t* p) {
  uint32_t u;
  memcpy(&u, __builtin_assume_aligned(p, 4), 4);
  return u;
}

// Stages VEC elements of src (avail of them valid; zeros past) as raw 16-bit values at dst
// (shared memory; 16-byte aligned when VEC * 2 == 16). One 16-byte load when all VEC are valid.
template <typename T, int VEC>
__device__ __forceinline__ void tc_stage16(uint16_t* dst, const T* src, int64_t avail) {
  static_assert(sizeof(T) == 2, "fp16 / bf16");
  if constexpr (VEC * sizeof(T) == 16) {
    if (avail >= VEC) {
#if defined(LK_SIMT)
      if ((reinterpret_cast<uintptr_t>(src) & 15u) != 0) {
        std::fprintf(stderr, "lk_simt: misaligned 16-byte load at %p (a GPU faults: misaligned address)\n",
                     static_cast<const void*>(src));
        std::abort();
      }
#endif
      uint4 raw;
      memcpy(&raw, __builtin_assume_aligned(src, 16), 16);
      memcpy(dst, &raw, 16);
      return;
    }
  }
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    uint16_t u = 0;
    if (e < avail) memcpy(&u, src + e, 2);
    dst[e] = u;
  }
}

struct TcShrinkShared {
  TokenGroup<kTcTokens> g;
  alignas(16) uint16_t xs[kTcTokens][kTcShrinkK + 8];   // +8: fragment reads hit 32 distinct banks
  alignas(16) uint16_t as[kTcShrinkRank][kTcShrinkK + 8];
};

// v[t, j0 : j0 + kTcShrinkRank] (j0 = row_block * kTcShrinkRank) for group `group` of the plan:
// x . A[slot, j] for j < r, exactly 0 for r <= j < R (every column of the block's range is written).
template <typename T, int VEC>
__device__ __forceinline__ void tc_shrink_block(const ShrinkParams& p, int64_t group, int64_t row_block,
                                                TcShrinkShared& sh) {
  constexpr int G = kTcTokens, NR = kTcShrinkRank, KC = kTcShrinkK, kChunks = KC / VEC;
  TokenGroup<G>& g = sh.g;
  find_group<G>(p.map, group, g);
  const int count = g.count;
  if (count == 0) return;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, gq = lane >> 2, tq = lane & 3;
  const int64_t r = effective_rank(p.ranks, g.slot, p.num_slots, p.max_rank);
  const int64_t j0 = row_block * NR;
  const int64_t rows_here = p.max_rank - j0 < NR ? p.max_rank - j0 : NR;
  const int jn = static_cast<int>(r - j0 < 0 ? 0 : (r - j0 < rows_here ? r - j0 : rows_here));
  const int wm = warp & 3, wn = warp >> 2;
  const bool m_live = wm * 16 < count;  // warp-uniform: this warp's token rows hold tokens

  float acc[4][4];
#pragma unroll
  for (int nt = 0; nt < 4; ++nt)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[nt][i] = 0.f;

  if (jn > 0) {
    const T* x = static_cast<const T*>(p.x);
    const T* a = static_cast<const T*>(p.lora_a) + (g.slot * p.max_rank + j0) * p.h_in;
    for (int64_t k0 = 0; k0 < p.h_in; k0 += KC) {
      __syncthreads();  // every warp is done with the previous chunk
      for (int i = tid; i < G * kChunks; i += kThreads) {
        const int m = i / kChunks, c = (i % kChunks) * VEC;
        const int64_t k = k0 + c;
        tc_stage16<T, VEC>(&sh.xs[m][c], x + (m < count ? g.rows[m] * p.x_stride + k : 0), m < count ? p.h_in - k : 0);
      }
      for (int i = tid; i < NR * kChunks; i += kThreads) {
        const int j = i / kChunks, c = (i % kChunks) * VEC;
        const int64_t k = k0 + c;
        tc_stage16<T, VEC>(&sh.as[j][c], a + (j < jn ? j * p.h_in + k : 0), j < jn ? p.h_in - k : 0);
      }
      __syncthreads();
      if (!m_live) continue;
      const int r0 = wm * 16 + gq;
      for (int kk = 0; kk < KC && k0 + kk < p.h_in; kk += 16) {
        const uint32_t af[4] = {tc_pair(&sh.xs[r0][kk + 2 * tq]), tc_pair(&sh.xs[r0 + 8][kk + 2 * tq]),
                                tc_pair(&sh.xs[r0][kk + 2 * tq + 8]), tc_pair(&sh.xs[r0 + 8][kk + 2 * tq + 8])};
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          const int n0 = wn * 32 + nt * 8;
          if (n0 >= jn) break;  // warp-uniform: the rest is zero padding
          const uint32_t bf[2] = {tc_pair(&sh.as[n0 + gq][kk + 2 * tq]), tc_pair(&sh.as[n0 + gq][kk + 2 * tq + 8])};
          mma_m16n8k16<T>(acc[nt], af, bf, acc[nt]);
        }
      }
    }
  }

  float* v = static_cast<float*>(p.v);
#pragma unroll
  for (int nt = 0; nt < 4; ++nt)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int m = wm * 16 + gq + (i >> 1) * 8, n = wn * 32 + nt * 8 + 2 * tq + (i & 1);
      if (m < count && n < rows_here) v[g.rows[m] * p.v_stride + j0 + n] = n < jn ? acc[nt][i] : 0.f;
    }
}

// grid (max_groups(T, N, kTcTokens), ceil(R / kTcShrinkRank)); block kThreads.
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) tc_shrink_kernel(const ShrinkParams p) {
  __shared__ TcShrinkShared sh;
  tc_shrink_block<T, VEC>(p, blockIdx.x, blockIdx.y, sh);
}

struct TcExpandShared {
  TokenGroup<kTcTokens> g;
  alignas(16) float vs[kTcTokens][kTcExpandRank + 4];  // +4: fragment reads hit 32 distinct banks
  alignas(16) float bs[kTcExpandCols][kTcExpandRank + 4];
};

// y[t, o] += scaling[slot] * (v[t, :r] . B[slot, o, :r] + bias[slot, o]) for the group led by
// group `group` of the plan and the block's kTcExpandCols output features o; y untouched when r == 0.
template <typename T, int VEC>
__device__ __forceinline__ void tc_expand_block(const ExpandParams& p, int64_t group, int64_t col_block,
                                                TcExpandShared& sh) {
  constexpr int G = kTcTokens, NC = kTcExpandCols, RC = kTcExpandRank, kChunks = RC / VEC;
  TokenGroup<G>& g = sh.g;
  find_group<G>(p.map, group, g);
  const int count = g.count;
  if (count == 0) return;
  const int64_t r = effective_rank(p.ranks, g.slot, p.num_slots, p.max_rank);
  if (r == 0) return;  // no adapter, or rank 0: y untouched
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, gq = lane >> 2, tq = lane & 3;
  const int wm = warp & 3, wn = warp >> 2;
  const bool m_live = wm * 16 < count;
  const int64_t o_base = col_block * NC;
  const float* v = static_cast<const float*>(p.v);
  const T* b = static_cast<const T*>(p.lora_b) + g.slot * p.h_out * p.max_rank;

  float acc[8][4];
#pragma unroll
  for (int nt = 0; nt < 8; ++nt)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[nt][i] = 0.f;

  for (int64_t c0 = 0; c0 < r; c0 += RC) {
    __syncthreads();  // every warp is done with the previous chunk
    for (int i = tid; i < G * RC; i += kThreads) {
      const int m = i / RC, j = i % RC;
      sh.vs[m][j] = m < count && c0 + j < r ? v[g.rows[m] * p.v_stride + c0 + j] : 0.f;
    }
    for (int i = tid; i < NC * kChunks; i += kThreads) {
      const int oo = i / kChunks, c = (i % kChunks) * VEC;
      const int64_t o = o_base + oo, j = c0 + c, avail = o < p.h_out ? r - j : 0;
      float w[VEC];
      if (VEC > 1 && avail >= VEC) {
        load_vec<T, VEC>(b + o * p.max_rank + j, w);
      } else {
#pragma unroll
        for (int e = 0; e < VEC; ++e) w[e] = e < avail ? Numeric<T>::load(b[o * p.max_rank + j + e]) : 0.f;
      }
#pragma unroll
      for (int e = 0; e < VEC; ++e) sh.bs[oo][c + e] = w[e];
    }
    __syncthreads();
    if (!m_live) continue;
    const int r0 = wm * 16 + gq;
    for (int kk = 0; kk < RC && c0 + kk < r; kk += 8) {
      const float av[4] = {sh.vs[r0][kk + tq], sh.vs[r0 + 8][kk + tq], sh.vs[r0][kk + tq + 4], sh.vs[r0 + 8][kk + tq + 4]};
      uint32_t hi[4], lo[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        hi[i] = to_tf32(av[i]);
        lo[i] = to_tf32(av[i] - tc_f32(hi[i]));
      }
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        const int n0 = wn * 64 + nt * 8;
        if (o_base + n0 >= p.h_out) break;  // warp-uniform: past H_out
        const uint32_t bf[2] = {tc_bits(sh.bs[n0 + gq][kk + tq]), tc_bits(sh.bs[n0 + gq][kk + tq + 4])};
        mma_m16n8k8_tf32(acc[nt], lo, bf, acc[nt]);
        mma_m16n8k8_tf32(acc[nt], hi, bf, acc[nt]);
      }
    }
  }
  if (!m_live) return;
  const float scale = static_cast<const float*>(p.scaling)[g.slot];
  const T* bias = p.lora_bias ? static_cast<const T*>(p.lora_bias) + g.slot * p.h_out : nullptr;
  T* y = static_cast<T*>(p.y);
#pragma unroll
  for (int nt = 0; nt < 8; ++nt)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int m = wm * 16 + gq + (i >> 1) * 8;
      const int64_t o = o_base + wn * 64 + nt * 8 + 2 * tq + (i & 1);
      if (m < count && o < p.h_out) {
        const float add = acc[nt][i] + (bias ? Numeric<T>::load(bias[o]) : 0.f);
        T* out = y + g.rows[m] * p.y_stride + o;
        *out = Numeric<T>::store(Numeric<T>::load(*out) + scale * add);
      }
    }
}

// grid (max_groups(T, N, kTcTokens), ceil(H_out / kTcExpandCols)); block kThreads.
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) tc_expand_kernel(const ExpandParams p) {
  __shared__ TcExpandShared sh;
  tc_expand_block<T, VEC>(p, blockIdx.x, blockIdx.y, sh);
}

// add_lora_slices on the tensor-core path: the folded grid of SliceBatch (kernels.cuh), each
// block running the single-slice tensor-core body on its slice with that slice's vector width,
// so each slice's result is bit-equal to launch_shrink_tc / launch_expand_tc on it alone.
// grid (max_groups(T, N, kTcTokens), sum_i ceil(R_i / kTcShrinkRank)).
template <typename T>
__global__ void __launch_bounds__(kThreads) tc_shrink_slices_kernel(const __grid_constant__ SliceBatch<ShrinkParams> p) {
  __shared__ TcShrinkShared sh;
  int64_t local = 0;
  const int i = slice_of(p, blockIdx.y, local);
  if (p.vectorized[i])
    tc_shrink_block<T, 8>(p.slice[i], blockIdx.x, local, sh);
  else
    tc_shrink_block<T, 1>(p.slice[i], blockIdx.x, local, sh);
}

// grid (max_groups(T, N, kTcTokens), sum_i ceil(H_out_i / kTcExpandCols)).
template <typename T>
__global__ void __launch_bounds__(kThreads) tc_expand_slices_kernel(const __grid_constant__ SliceBatch<ExpandParams> p) {
  __shared__ TcExpandShared sh;
  int64_t local = 0;
  const int i = slice_of(p, blockIdx.y, local);
  if (p.vectorized[i])
    tc_expand_block<T, 8>(p.slice[i], blockIdx.x, local, sh);
  else
    tc_expand_block<T, 1>(p.slice[i], blockIdx.x, local, sh);
}

}  // namespace lora_kernels::cuda::detail
