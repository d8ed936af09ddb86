// Header-only, torch-free CUDA kernels for the multi-LoRA shrink / expand (DESIGN §1, §4).
//
// Grouping without a host sync and without scanning the indices per block: before the shrink,
// one small kernel (plan.cu, launch_build_plan) orders the tokens by slot on the device and
// lists the groups of at most G tokens of one slot (params.h GroupPlan); the shrink, the expand
// and every slice of add_lora_slices read that one plan. Block x of a grouping kernel runs group
// x (find_group: O(1), a few loads), on a grid of max_groups(T, N, G) <= T blocks, so no block
// waits on a scan and few exit empty. Each group streams its adapter's weights once for all of
// its tokens, with 16-byte loads when the alignment allows, accumulating in fp32 (fp64 for fp64
// data). Tokens without an adapter form groups of the slot -1: the shrink writes their v rows
// as 0, the expand leaves their y rows alone.
// decode.cuh builds on these pieces for few tokens: a split-K shrink and a fused one-launch
// shrink + expand (chosen by decode.cu's shape rule).
//
// These are the CUDA-core kernels (groups of kGroupTokens = 8 tokens): every fp32 / fp64 call,
// and fp16 / bf16 calls with few tokens. fp16 / bf16 calls with many tokens take the
// tensor-core kernels of tc_kernels.cuh instead (mma.sync on groups of 64 tokens of the same
// plan; launch.h: tensor_core_path).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#if defined(LK_SIMT)
#include <cstdio>
#include <cstdlib>
#endif

#include "lora_kernels/numeric.h"
#include "lora_kernels/params.h"
#include "lora_kernels/tiles.h"

namespace lora_kernels::cuda::detail {

using tiles::kMaxSlicesPerLaunch;
using tiles::kThreads;
using tiles::kWarps;

// Loads VEC elements starting at p (16 bytes in one instruction when VEC * sizeof(T) == 16;
// the launchers take that path only when p is 16-byte aligned). memcpy into the vector type
// with the alignment stated, not a uint4 pointer cast: well-defined C++ (g++ -O2 miscompiles the
// cast under strict aliasing). nvcc emits one 128-bit load (LDG.E.128) per call, as with the
// cast; a memcpy straight into the T array split some of them into narrower loads.
template <typename T, int VEC>
__device__ __forceinline__ void load_vec(const T* p, typename Numeric<T>::Acc (&out)[VEC]) {
  if constexpr (VEC * sizeof(T) == 16) {
#if defined(LK_SIMT)
    // On a GPU a misaligned 16-byte load faults; the CPU would just load it. Say so instead.
    if ((reinterpret_cast<uintptr_t>(p) & 15u) != 0) {
      std::fprintf(stderr, "lk_simt: misaligned 16-byte load at %p (a GPU faults: misaligned address)\n",
                   static_cast<const void*>(p));
      std::abort();
    }
#endif
    uint4 raw;
    memcpy(&raw, __builtin_assume_aligned(p, 16), 16);
    T e[VEC];
    memcpy(static_cast<void*>(e), &raw, 16);
#pragma unroll
    for (int i = 0; i < VEC; ++i) out[i] = Numeric<T>::load(e[i]);
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) out[i] = Numeric<T>::load(p[i]);
  }
}

template <typename Acc>
__device__ __forceinline__ Acc warp_sum(Acc v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <int kMaxTokens>
struct TokenGroup {
  int64_t rows[kMaxTokens];  // token rows of x / v / y
  int64_t slot;              // -1 for the bucket of tokens without an adapter
  int count;                 // 0: this block leads no group
};

// Block-wide (every thread calls it): fills `g` with group number `group` of map.plan for group
// size G (G must be in tiles::kPlanGroupSizes): the tokens at sorted positions
// [first, first + min(G, end - first)) of one bucket (a slot, or the no-adapter bucket with
// slot -1), first a multiple of G past the bucket's start. g.count is 0 when there is no such
// group (group >= the plan's number of groups), so a grid of any size works; the launchers use
// max_groups(T, N, G) <= T blocks. O(1) per block: three dependent loads, then the rows. Every
// thread sees g after the call.
template <int G>
__device__ void find_group(const TokenMap& map, int64_t group, TokenGroup<G>& g) {
  constexpr int kSize = tiles::plan_group_index(G);
  static_assert(kSize >= 0, "find_group<G>: add G to tiles::kPlanGroupSizes so that the plan lists its groups");
  const GroupPlan& plan = map.plan;
  if (threadIdx.x == 0) {
    const int32_t* groups = plan.groups[kSize];
    g.count = 0;
    if (group < groups[0]) {
      const int32_t first = groups[1 + group];
      const int32_t b = plan.slot_at[first];
      const int32_t end = plan.slot_start[b + 1];
      g.count = end - first < G ? end - first : G;
      g.slot = b < plan.num_slots ? b : -1;
    }
  }
  __syncthreads();
  const int n = g.count;
  if (n > 0) {
    const int32_t first = plan.groups[kSize][1 + group];
    for (int i = threadIdx.x; i < n; i += blockDim.x) g.rows[i] = plan.rows_by_slot[first + i];
  }
  __syncthreads();
}

// Block-wide: for the group's tokens m and the jn rank rows j of A below the slot's rank
// (from row j0), the sums x[rows[m], k0:k1) . A[slot, j0 + j, k0:k1), each thread's share
// reduced over its warp into partial[warp][m * kRows + j] (the caller adds the kWarps entries
// in warp order; the barrier this ends with makes them visible). The shrink runs it on
// [0, H_in); each split-K block of the decode path (decode.cuh) on its own chunk of H_in, with
// the same per-thread order, so a single split is bit-equal to the shrink.
template <typename T, int VEC, int kRows, int kMaxTokens>
__device__ __forceinline__ void shrink_partial_sums(const ShrinkParams& p, const TokenGroup<kMaxTokens>& g, int64_t j0,
                                                    int jn, int64_t k0, int64_t k1,
                                                    typename Numeric<T>::Acc (&partial)[kWarps][kMaxTokens * kRows]) {
  using Acc = typename Numeric<T>::Acc;
  const int tid = threadIdx.x;
  const int count = g.count;
  Acc acc[kMaxTokens][kRows];
#pragma unroll
  for (int m = 0; m < kMaxTokens; ++m)
#pragma unroll
    for (int j = 0; j < kRows; ++j) acc[m][j] = Acc(0);

  if (jn > 0) {
    const T* a = static_cast<const T*>(p.lora_a) + (g.slot * p.max_rank + j0) * p.h_in;
    const T* x = static_cast<const T*>(p.x);
    for (int64_t k = k0 + static_cast<int64_t>(tid) * VEC; k < k1; k += kThreads * VEC) {
      Acc w[kRows][VEC];
#pragma unroll
      for (int j = 0; j < kRows; ++j) {
        if (j < jn) {
          load_vec<T, VEC>(a + j * p.h_in + k, w[j]);
        } else {
#pragma unroll
          for (int e = 0; e < VEC; ++e) w[j][e] = Acc(0);
        }
      }
#pragma unroll
      for (int m = 0; m < kMaxTokens; ++m) {
        if (m < count) {
          Acc xv[VEC];
          load_vec<T, VEC>(x + g.rows[m] * p.x_stride + k, xv);
#pragma unroll
          for (int j = 0; j < kRows; ++j)
#pragma unroll
            for (int e = 0; e < VEC; ++e) acc[m][j] += xv[e] * w[j][e];
        }
      }
    }
  }

  const int lane = tid & 31, warp = tid >> 5;
#pragma unroll
  for (int m = 0; m < kMaxTokens; ++m)
#pragma unroll
    for (int j = 0; j < kRows; ++j) {
      const Acc s = warp_sum(acc[m][j]);
      if (lane == 0) partial[warp][m * kRows + j] = s;
    }
  __syncthreads();
}

// Shared memory of one shrink block.
template <typename Acc, int kRows, int kMaxTokens>
struct ShrinkShared {
  TokenGroup<kMaxTokens> g;
  Acc partial[kWarps][kMaxTokens * kRows];
};

// The work of one shrink block (block-wide): writes v[t, j0 : j0 + kRows], j0 = row_block * kRows,
// for group number `group` of the plan. shrink_kernel and shrink_slices_kernel both run it.
template <typename T, int VEC, int kRows, int kMaxTokens>
__device__ __forceinline__ void shrink_block(const ShrinkParams& p, int64_t group, int64_t row_block,
                                             ShrinkShared<typename Numeric<T>::Acc, kRows, kMaxTokens>& sh) {
  using Acc = typename Numeric<T>::Acc;
  TokenGroup<kMaxTokens>& g = sh.g;
  auto& partial = sh.partial;
  find_group<kMaxTokens>(p.map, group, g);
  const int count = g.count;
  if (count == 0) return;
  const int tid = threadIdx.x;
  const int64_t r = effective_rank(p.ranks, g.slot, p.num_slots, p.max_rank);
  const int64_t j0 = row_block * kRows;
  const int64_t rows_here = p.max_rank - j0 < kRows ? p.max_rank - j0 : kRows;
  const int64_t computed = r - j0 < 0 ? 0 : (r - j0 < rows_here ? r - j0 : rows_here);
  const int jn = static_cast<int>(computed);

  shrink_partial_sums<T, VEC, kRows, kMaxTokens>(p, g, j0, jn, 0, p.h_in, partial);
  Acc* v = static_cast<Acc*>(p.v);
  for (int i = tid; i < count * kRows; i += kThreads) {
    const int m = i / kRows, j = i % kRows;
    if (j >= rows_here) continue;
    Acc s = Acc(0);
    if (j < jn) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) s += partial[w][i];
    }
    v[g.rows[m] * p.v_stride + j0 + j] = s;
  }
}

// grid (max_groups(T, N, kMaxTokens), ceil(R / kRows)); block kThreads. Writes v[t, j0 : j0 + kRows] for the group's tokens.
template <typename T, int VEC, int kRows, int kMaxTokens>
__global__ void __launch_bounds__(kThreads) shrink_kernel(const ShrinkParams p) {
  __shared__ ShrinkShared<typename Numeric<T>::Acc, kRows, kMaxTokens> sh;
  shrink_block<T, VEC, kRows, kMaxTokens>(p, blockIdx.x, blockIdx.y, sh);
}

using tiles::kRankChunk;

// Shared memory of one expand block.
template <typename Acc, int kMaxTokens>
struct ExpandShared {
  TokenGroup<kMaxTokens> g;
  Acc vs[kMaxTokens][kRankChunk];
};

// The work of one expand block (block-wide): output features col_block * kThreads + threadIdx.x of
// group number `group` of the plan. expand_kernel and expand_slices_kernel both run it.
template <typename T, int VEC, int kMaxTokens>
__device__ __forceinline__ void expand_block(const ExpandParams& p, int64_t group, int64_t col_block,
                                             ExpandShared<typename Numeric<T>::Acc, kMaxTokens>& sh) {
  using Acc = typename Numeric<T>::Acc;
  TokenGroup<kMaxTokens>& g = sh.g;
  auto& vs = sh.vs;
  find_group<kMaxTokens>(p.map, group, g);
  const int count = g.count;
  if (count == 0) return;
  const int64_t r = effective_rank(p.ranks, g.slot, p.num_slots, p.max_rank);
  if (r == 0) return;  // no adapter, or rank 0: y untouched
  const int tid = threadIdx.x;
  const int64_t o = col_block * kThreads + tid;
  const bool active = o < p.h_out;
  const T* b = static_cast<const T*>(p.lora_b) + (g.slot * p.h_out + (active ? o : 0)) * p.max_rank;
  const Acc* v = static_cast<const Acc*>(p.v);

  Acc acc[kMaxTokens];
#pragma unroll
  for (int m = 0; m < kMaxTokens; ++m) acc[m] = Acc(0);
  for (int64_t c0 = 0; c0 < r; c0 += kRankChunk) {
    const int cn = static_cast<int>(r - c0 < kRankChunk ? r - c0 : kRankChunk);
    __syncthreads();
    for (int i = tid; i < count * kRankChunk; i += kThreads) {
      const int m = i / kRankChunk, j = i % kRankChunk;
      vs[m][j] = j < cn ? v[g.rows[m] * p.v_stride + c0 + j] : Acc(0);
    }
    __syncthreads();
    if (!active) continue;
    int j = 0;
    for (; j + VEC <= cn; j += VEC) {
      Acc bv[VEC];
      load_vec<T, VEC>(b + c0 + j, bv);
#pragma unroll
      for (int m = 0; m < kMaxTokens; ++m)
        if (m < count)
#pragma unroll
          for (int e = 0; e < VEC; ++e) acc[m] += vs[m][j + e] * bv[e];
    }
    for (; j < cn; ++j) {
      const Acc bj = Numeric<T>::load(b[c0 + j]);
#pragma unroll
      for (int m = 0; m < kMaxTokens; ++m)
        if (m < count) acc[m] += vs[m][j] * bj;
    }
  }
  if (!active) return;
  const Acc scale = static_cast<const Acc*>(p.scaling)[g.slot];
  const Acc bias = p.lora_bias
                       ? Numeric<T>::load(static_cast<const T*>(p.lora_bias)[g.slot * p.h_out + o])
                       : Acc(0);
  T* y = static_cast<T*>(p.y);
#pragma unroll
  for (int m = 0; m < kMaxTokens; ++m) {
    if (m < count) {
      T* out = y + g.rows[m] * p.y_stride + o;
      *out = Numeric<T>::store(Numeric<T>::load(*out) + scale * (acc[m] + bias));
    }
  }
}

// grid (max_groups(T, N, kMaxTokens), ceil(H_out / kThreads)); one output feature per thread.
template <typename T, int VEC, int kMaxTokens>
__global__ void __launch_bounds__(kThreads) expand_kernel(const ExpandParams p) {
  __shared__ ExpandShared<typename Numeric<T>::Acc, kMaxTokens> sh;
  expand_block<T, VEC, kMaxTokens>(p, blockIdx.x, blockIdx.y, sh);
}

// Several slices (add_lora_slices) in one launch per phase. The grid's y dimension is folded:
// slice i owns the block columns [first_block[i], first_block[i + 1]) (ceil(R_i / kRows) for
// shrink, ceil(H_out_i / kThreads) for expand; 0 for a slice with nothing to do), so no block
// idles on a narrower slice. Each block runs the single-slice body on its slice's own params
// with that slice's vector width, so every slice's arithmetic is the one of launch_shrink /
// launch_expand on that slice alone (bit-equal). Passed by value (__grid_constant__: indexed in
// place, not copied to local memory).
template <typename Params>
struct SliceBatch {
  Params slice[kMaxSlicesPerLaunch];
  bool vectorized[kMaxSlicesPerLaunch];
  int32_t first_block[kMaxSlicesPerLaunch + 1];
  int32_t num_slices;
};

// The slice owning folded block column `col`, and col's column within it.
template <typename Params>
__device__ __forceinline__ int slice_of(const SliceBatch<Params>& p, int64_t col, int64_t& local) {
  int i = 0;
  while (i + 1 < p.num_slices && col >= p.first_block[i + 1]) ++i;
  local = col - p.first_block[i];
  return i;
}

// grid (max_groups(T, N, kMaxTokens), sum_i ceil(R_i / kRows)).
template <typename T, int VEC, int kRows, int kMaxTokens>
__global__ void __launch_bounds__(kThreads) shrink_slices_kernel(const __grid_constant__ SliceBatch<ShrinkParams> p) {
  __shared__ ShrinkShared<typename Numeric<T>::Acc, kRows, kMaxTokens> sh;
  int64_t local = 0;
  const int i = slice_of(p, blockIdx.y, local);
  if (VEC > 1 && p.vectorized[i])
    shrink_block<T, VEC, kRows, kMaxTokens>(p.slice[i], blockIdx.x, local, sh);
  else
    shrink_block<T, 1, kRows, kMaxTokens>(p.slice[i], blockIdx.x, local, sh);
}

// grid (max_groups(T, N, kMaxTokens), sum_i ceil(H_out_i / kThreads)).
template <typename T, int VEC, int kMaxTokens>
__global__ void __launch_bounds__(kThreads) expand_slices_kernel(const __grid_constant__ SliceBatch<ExpandParams> p) {
  __shared__ ExpandShared<typename Numeric<T>::Acc, kMaxTokens> sh;
  int64_t local = 0;
  const int i = slice_of(p, blockIdx.y, local);
  if (VEC > 1 && p.vectorized[i])
    expand_block<T, VEC, kMaxTokens>(p.slice[i], blockIdx.x, local, sh);
  else
    expand_block<T, 1, kMaxTokens>(p.slice[i], blockIdx.x, local, sh);
}

// One thread per (token, rank column).
template <typename T>
__global__ void __launch_bounds__(kThreads) embedding_shrink_kernel(const EmbeddingShrinkParams p) {
  using Acc = typename Numeric<T>::Acc;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t t = i / p.max_rank, j = i % p.max_rank;
  if (t >= p.map.num_tokens) return;
  const int64_t slot = p.map.indices[t];
  const int64_t r = effective_rank(p.ranks, slot, p.num_slots, p.max_rank);
  const int64_t token = p.token_ids[t];
  Acc value = Acc(0);
  if (j < r && token >= 0 && token < p.vocab)
    value = Numeric<T>::load(static_cast<const T*>(p.lora_a)[(slot * p.max_rank + j) * p.vocab + token]);
  static_cast<Acc*>(p.v)[t * p.v_stride + j] = value;
}

}  // namespace lora_kernels::cuda::detail
