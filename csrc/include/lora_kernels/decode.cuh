// Decode kernels (few tokens; per-token indices or segments): a split-K shrink, and shrink +
// expand in one launch. Header-only and torch-free, like kernels.cuh, whose grouping
// (find_group), vector loads and reductions they reuse. The launchers and the shape-only rule
// that picks them are in csrc/kernels/decode.cu (launch.h: decode_config, launch_shrink_decode,
// launch_add_lora).
//
// Grid (max_groups(T, N, kGroupTokens), ceil(R / kRows) * splits): block (x, y) works for group
// x of the device plan (find_group; blocks past the last group exit at once), on rank rows j0 = (y % row blocks) *
// kRows .. + kRows and on H_in's split y / row blocks, [split * chunk, split * chunk + chunk).
// It writes its fp32 (fp64) partial sums of v to the workspace, partial[split][t][j] (only
// j below the slot's rank), then arrives at its group's counter (__threadfence, then one
// atomicAdd: the "last block" pattern, no block ever waits for another). The block that
// arrives last (ticket == arrivals - 1) sums the partials of every split in split order (a fixed
// order: the bits of v do not depend on which block came last), and
//   - decode_kernel<..., kFused = false>: writes v (launch_shrink_decode; launch_expand follows);
//   - decode_kernel<..., kFused = true>: stages v in shared memory and runs the group's whole
//     expand itself, every 256-column tile of H_out in turn, with the arithmetic of expand_block
//     (so y is bit-equal to launch_shrink_decode + launch_expand on the same config).
// It then sets its counter back to 0, so a workspace stays ready for the next launch.
#pragma once

#include "lora_kernels/kernels.cuh"

namespace lora_kernels::cuda::detail {

// The arguments of one decode launch (by value, __grid_constant__).
struct DecodeParams {
  ShrinkParams shrink;
  ExpandParams expand;     // the fused kernel only (same token map as shrink)
  void* partial = nullptr;  // [splits, T, R], the accumulator dtype (workspace)
  unsigned* counters = nullptr;  // [T] arrivals per plan group (workspace, zero between launches)
  int64_t splits = 1;  // K splits of H_in
  int64_t chunk = 0;   // H_in elements per split: a multiple of the shrink's vector width
};

template <typename Acc, int kRows, int kMaxTokens>
struct DecodeShared {
  TokenGroup<kMaxTokens> g;
  Acc partial[kWarps][kMaxTokens * kRows];
  Acc vs[kMaxTokens][kRankChunk];
  int last;
};

// Loads that skip L1 (ld.global.cg): the partials were written by other blocks of this launch.
template <typename Acc>
__device__ __forceinline__ Acc load_partial(const Acc* p) {
  return __ldcg(p);
}

// v[t, c0 + j] for the group's tokens, j < cn: the partials of every split summed in split order.
template <typename Acc, int kMaxTokens>
__device__ __forceinline__ Acc reduced_v(const DecodeParams& d, const TokenGroup<kMaxTokens>& g, int m, int64_t j) {
  const Acc* part = static_cast<const Acc*>(d.partial);
  const int64_t T = d.shrink.map.num_tokens, R = d.shrink.max_rank;
  Acc s = Acc(0);
  for (int64_t k = 0; k < d.splits; ++k) s += load_partial(part + (k * T + g.rows[m]) * R + j);
  return s;
}

// grid (max_groups(T, N, kGroupTokens), ceil(R / kRows) * splits), block kThreads, at most 128 registers a thread (2 blocks
// per SM: the rule in decode.cu counts on it). VA: the shrink's vector width (x, A); VB: the
// expand's (B), fused only.
//
// decode_block is the work of block (group, col) (block-wide); decode_kernel runs it on
// (blockIdx.x, blockIdx.y), decode_slices_kernel on each slice's own params.
template <typename T, int VA, int VB, int kRows, int kMaxTokens, bool kFused>
__device__ __forceinline__ void decode_block(const DecodeParams& d, int64_t group, int64_t col,
                                             DecodeShared<typename Numeric<T>::Acc, kRows, kMaxTokens>& sh) {
  using Acc = typename Numeric<T>::Acc;
  const ShrinkParams& p = d.shrink;
  TokenGroup<kMaxTokens>& g = sh.g;
  const int tid = threadIdx.x;
  // group: the plan's group number; counters[group] is its counter
  const int64_t row_blocks = (p.max_rank + kRows - 1) / kRows;
  const int64_t row_block = col % row_blocks, split = col / row_blocks;
  find_group<kMaxTokens>(p.map, group, g);
  const int count = g.count;
  if (count == 0) return;
  const int64_t r = effective_rank(p.ranks, g.slot, p.num_slots, p.max_rank);
  const int64_t j0 = row_block * kRows;
  const int64_t rows_here = p.max_rank - j0 < kRows ? p.max_rank - j0 : kRows;
  const int jn = static_cast<int>(r - j0 < 0 ? 0 : (r - j0 < rows_here ? r - j0 : rows_here));
  const int64_t k0 = split * d.chunk;
  const int64_t k1 = p.h_in - k0 < d.chunk ? p.h_in : k0 + d.chunk;

  // This block's partial sums: the shrink's (shrink_partial_sums) on [k0, k1).
  shrink_partial_sums<T, VA, kRows, kMaxTokens>(p, g, j0, jn, k0, k1, sh.partial);
  const int64_t T_ = p.map.num_tokens, R = p.max_rank;
  Acc* part = static_cast<Acc*>(d.partial);
  for (int i = tid; i < count * kRows; i += kThreads) {
    const int m = i / kRows, j = i % kRows;
    if (j >= jn) continue;  // past the rank: never read
    Acc s = Acc(0);
#pragma unroll
    for (int w = 0; w < kWarps; ++w) s += sh.partial[w][i];
    part[(split * T_ + g.rows[m]) * R + j0 + j] = s;
  }

  // Arrive; the last of the group's row_blocks * splits blocks goes on.
  __threadfence();
  __syncthreads();
  if (tid == 0) {
    const unsigned arrivals = static_cast<unsigned>(row_blocks * d.splits);
    const unsigned ticket = atomicAdd(d.counters + group, 1u);
    sh.last = ticket == arrivals - 1u;
    if (sh.last) d.counters[group] = 0;  // every block of the group has arrived: ready for the next launch
    __threadfence();
  }
  __syncthreads();
  if (!sh.last) return;

  if constexpr (!kFused) {
    Acc* v = static_cast<Acc*>(p.v);
    for (int64_t i = tid; i < count * R; i += kThreads) {
      const int m = static_cast<int>(i / R);
      const int64_t j = i % R;
      v[g.rows[m] * p.v_stride + j] = j < r ? reduced_v<Acc>(d, g, m, j) : Acc(0);
    }
  } else {
    // expand_block's arithmetic on the group found above, for every column tile.
    const ExpandParams& e = d.expand;
    if (r == 0) return;  // no adapter, or rank 0: y untouched
    const Acc scale = static_cast<const Acc*>(e.scaling)[g.slot];
    T* y = static_cast<T*>(e.y);
    for (int64_t col0 = 0; col0 < e.h_out; col0 += kThreads) {
      const int64_t o = col0 + tid;
      const bool active = o < e.h_out;
      const T* b = static_cast<const T*>(e.lora_b) + (g.slot * e.h_out + (active ? o : 0)) * e.max_rank;
      Acc out_acc[kMaxTokens];
#pragma unroll
      for (int m = 0; m < kMaxTokens; ++m) out_acc[m] = Acc(0);
      for (int64_t c0 = 0; c0 < r; c0 += kRankChunk) {
        const int cn = static_cast<int>(r - c0 < kRankChunk ? r - c0 : kRankChunk);
        if (col0 == 0 || r > kRankChunk) {  // v fits one chunk: staged once for every tile
          __syncthreads();
          for (int i = tid; i < count * kRankChunk; i += kThreads) {
            const int m = i / kRankChunk, j = i % kRankChunk;
            sh.vs[m][j] = j < cn ? reduced_v<Acc>(d, g, m, c0 + j) : Acc(0);
          }
          __syncthreads();
        }
        if (!active) continue;
        int j = 0;
        for (; j + VB <= cn; j += VB) {
          Acc bv[VB];
          load_vec<T, VB>(b + c0 + j, bv);
#pragma unroll
          for (int m = 0; m < kMaxTokens; ++m)
            if (m < count)
#pragma unroll
              for (int q = 0; q < VB; ++q) out_acc[m] += sh.vs[m][j + q] * bv[q];
        }
        for (; j < cn; ++j) {
          const Acc bj = Numeric<T>::load(b[c0 + j]);
#pragma unroll
          for (int m = 0; m < kMaxTokens; ++m)
            if (m < count) out_acc[m] += sh.vs[m][j] * bj;
        }
      }
      if (!active) continue;
      const Acc bias = e.lora_bias
                           ? Numeric<T>::load(static_cast<const T*>(e.lora_bias)[g.slot * e.h_out + o])
                           : Acc(0);
#pragma unroll
      for (int m = 0; m < kMaxTokens; ++m) {
        if (m < count) {
          T* out = y + g.rows[m] * e.y_stride + o;
          *out = Numeric<T>::store(Numeric<T>::load(*out) + scale * (out_acc[m] + bias));
        }
      }
    }
  }
}

template <typename T, int VA, int VB, int kRows, int kMaxTokens, bool kFused>
__global__ void __launch_bounds__(kThreads, 2) decode_kernel(const __grid_constant__ DecodeParams d) {
  __shared__ DecodeShared<typename Numeric<T>::Acc, kRows, kMaxTokens> sh;
  decode_block<T, VA, VB, kRows, kMaxTokens, kFused>(d, blockIdx.x, blockIdx.y, sh);
}

// add_lora_slices on the decode path (launch_add_lora_slices): every slice's first phase in one
// launch (SliceBatch's folded grid y), each slice by its own DecodeConfig (decode_config on that
// slice): kPlain runs shrink_block (launch_shrink's body; launch_expand_slices follows), kSplit
// decode_block<kFused = false> (launch_shrink_decode's; launch_expand_slices follows), kFused
// decode_block<kFused = true> (launch_add_lora's fused launch: no expand follows). Each slice
// has its own partials and counters in the workspace, so its bits are those of launch_add_lora
// on that slice with the same config.
enum class SliceMode : int32_t { kNothing = -1, kPlain = 0, kSplit = 1, kFused = 2 };
struct DecodeSlice {
  DecodeParams d;
  SliceMode mode = SliceMode::kNothing;
  bool vb = false;  // the fused expand's vector path (B); SliceBatch::vectorized is the shrink's (x, A)
};

template <typename Acc, int kRows, int kMaxTokens>
union DecodeSlicesShared {
  ShrinkShared<Acc, kRows, kMaxTokens> shrink;
  DecodeShared<Acc, kRows, kMaxTokens> decode;
};

// grid (max_groups(T, N, kMaxTokens), sum_i blocks_i): blocks_i = ceil(R_i / kRows) (kPlain), or
// ceil(R_i / kRows) * splits_i (kSplit, kFused), 0 for kNothing. 2 blocks per SM (at most 128
// registers) as decode_kernel, but for fp64: its bodies together spill under that cap (88 B on
// sm_90), so fp64 keeps 1 block per SM and no spills (not a serving dtype; same results).
template <typename T, int VEC, int kRows, int kMaxTokens>
__global__ void __launch_bounds__(kThreads, sizeof(T) == 8 ? 1 : 2) decode_slices_kernel(const __grid_constant__ SliceBatch<DecodeSlice> p) {
  __shared__ DecodeSlicesShared<typename Numeric<T>::Acc, kRows, kMaxTokens> sh;
  int64_t local = 0;
  const int i = slice_of(p, blockIdx.y, local);
  const DecodeSlice& s = p.slice[i];
  const bool va = VEC > 1 && p.vectorized[i], vb = VEC > 1 && s.vb;
  switch (s.mode) {
    case SliceMode::kPlain:
      if (va) shrink_block<T, VEC, kRows, kMaxTokens>(s.d.shrink, blockIdx.x, local, sh.shrink);
      else shrink_block<T, 1, kRows, kMaxTokens>(s.d.shrink, blockIdx.x, local, sh.shrink);
      break;
    case SliceMode::kSplit:
      if (va) decode_block<T, VEC, 1, kRows, kMaxTokens, false>(s.d, blockIdx.x, local, sh.decode);
      else decode_block<T, 1, 1, kRows, kMaxTokens, false>(s.d, blockIdx.x, local, sh.decode);
      break;
    case SliceMode::kFused:
      if (va && vb) decode_block<T, VEC, VEC, kRows, kMaxTokens, true>(s.d, blockIdx.x, local, sh.decode);
      else if (va) decode_block<T, VEC, 1, kRows, kMaxTokens, true>(s.d, blockIdx.x, local, sh.decode);
      else if (vb) decode_block<T, 1, VEC, kRows, kMaxTokens, true>(s.d, blockIdx.x, local, sh.decode);
      else decode_block<T, 1, 1, kRows, kMaxTokens, true>(s.d, blockIdx.x, local, sh.decode);
      break;
    default:
      break;  // no block columns
  }
}

}  // namespace lora_kernels::cuda::detail
