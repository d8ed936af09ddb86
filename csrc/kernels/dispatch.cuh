// Launcher-side helpers (torch-free): the DType -> CUDA element type dispatch, alignment, grids.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "lora_kernels/numeric.h"
#include "lora_kernels/params.h"

namespace lora_kernels::cuda::detail {

// fn(T{}) with T the CUDA storage type of `dtype`, through the one dispatcher (numeric.h);
// cudaErrorInvalidValue for a value outside DType's enumerators.
template <typename Fn>
cudaError_t dispatch_dtype(DType dtype, Fn&& fn) {
  return lora_kernels::dispatch_dtype<CudaTypes>(
      dtype, [&](auto tag) { return fn(typename decltype(tag)::type{}); }, [] { return cudaErrorInvalidValue; });
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

inline unsigned ceil_div(int64_t a, int64_t b) { return static_cast<unsigned>((a + b - 1) / b); }

constexpr int64_t kMaxGridY = 65535;

// Whether map.plan was built (launch_build_plan) for this map's T and for N slots: the grouping
// kernels read it and would go out of bounds on another one.
inline bool plan_ready(const TokenMap& map, int64_t num_slots) {
  const GroupPlan& g = map.plan;
  return g.slot_start && g.rows_by_slot && g.slot_at && g.num_tokens == map.num_tokens && g.num_slots == num_slots;
}

// plan_ready for every slice (all share the token map and N in add_lora_slices).
template <typename Params>
bool plans_ready(const Params* slices, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (!plan_ready(slices[i].map, slices[i].num_slots)) return false;
  return true;
}

// Runs `launch(batch, blocks)` for consecutive chunks of the n slices: at most Batch's slice
// capacity each, and (unless one slice alone needs more) at most kMaxGridY folded block columns.
// blocks_of(slice) is the slice's block columns, vectorized_of(slice) its vector-path choice.
template <typename Batch, typename Params, typename BlocksOf, typename VecOf, typename Launch>
cudaError_t for_each_slice_batch(const Params* slices, int64_t n, int capacity, BlocksOf&& blocks_of,
                                 VecOf&& vectorized_of, Launch&& launch) {
  for (int64_t first = 0; first < n;) {
    Batch batch{};
    int64_t blocks = 0;
    int count = 0;
    batch.first_block[0] = 0;
    while (first + count < n && count < capacity) {
      const Params& s = slices[first + count];
      const int64_t nb = blocks_of(s);
      if (count > 0 && blocks + nb > kMaxGridY) break;
      batch.slice[count] = s;
      batch.vectorized[count] = vectorized_of(s);
      blocks += nb;
      batch.first_block[++count] = static_cast<int32_t>(blocks);
    }
    batch.num_slices = count;
    first += count;
    if (blocks == 0) continue;
    const cudaError_t err = launch(batch, blocks);
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace lora_kernels::cuda::detail
