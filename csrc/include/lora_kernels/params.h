// Torch-free argument structs shared by the CPU implementation and the CUDA launchers.
//
// Vocabulary (DESIGN §1): T tokens, H_in / H_out features, N adapter slots, R max rank,
// S segments. For every token t with slot a = adapter(t) and rank r_a:
//
//   shrink:  v[t, j] = x[t] . lora_a[a, j]                  for j < r_a, else 0
//   expand:  y[t]   += scaling[a] * (v[t, :r_a] @ lora_b[a, :, :r_a].T + lora_bias[a])
//
// a == -1 (or r_a == 0) leaves y[t] untouched and v[t] zero. Weights are contiguous;
// x, y and v are row-strided (unit column stride). Sizes are runtime values.
#pragma once

#include <cstdint>

#include "lora_kernels/tiles.h"

#if defined(__CUDACC__)
#define LK_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define LK_HOST_DEVICE inline
#endif

namespace lora_kernels {

// Element type of activations and weights. The accumulator (and v) is float32, or float64
// for float64 inputs.
enum class DType : int32_t { kFloat16 = 0, kBFloat16 = 1, kFloat32 = 2, kFloat64 = 3 };

// An integer vector that may be int32 or int64 (indices, segments, ranks, token ids).
struct IndexVec {
  const void* data = nullptr;
  bool is_int64 = false;
  bool given = false;  // explicit: an empty tensor's data pointer may be null

  LK_HOST_DEVICE bool present() const { return given; }
  LK_HOST_DEVICE int64_t operator[](int64_t i) const {
    return is_int64 ? static_cast<const int64_t*>(data)[i]
                    : static_cast<int64_t>(static_cast<const int32_t*>(data)[i]);
  }
};

// The tokens ordered by slot, built on the device by cuda::launch_build_plan (launch.h) before
// the shrink / expand launches that read it (CUDA only; the CPU builds its own plan). Bucket b
// (b < N: slot b; b == N: every token whose slot is outside [0, N), i.e. no adapter) holds the
// sorted positions [slot_start[b], slot_start[b + 1]); rows_by_slot[p] is the token row at
// position p and slot_at[p] its bucket. For each group size G_i of tiles::kPlanGroupSizes, the
// groups of at most G_i tokens of one bucket, bucket after bucket: groups[i][0] is their number
// and groups[i][1 + k] the first position of group k (a multiple of G_i past its bucket's
// start). The order of the rows inside a bucket is not fixed (an atomic scatter); no result
// depends on it. All int32: T < 2^31.
struct GroupPlan {
  const int32_t* slot_start = nullptr;    // [N + 2]; slot_start[0] = 0, slot_start[N + 1] = T
  const int32_t* rows_by_slot = nullptr;  // [T]
  const int32_t* slot_at = nullptr;       // [T], values in [0, N]
  const int32_t* groups[cuda::tiles::kNumPlanGroupSizes] = {};  // [1 + max_groups(T, N, G_i)]
  int64_t num_tokens = -1, num_slots = -1;  // the T and N it was built for (the launchers check)
};

// The most groups of at most G tokens T tokens over N slots (+ the no-adapter bucket) can form:
// the grid.x of a kernel that runs one group per block (find_group), whatever the index values.
LK_HOST_DEVICE int64_t max_groups(int64_t num_tokens, int64_t num_slots, int64_t group) {
  const int64_t bound = (num_tokens + group - 1) / group + num_slots + 1;
  return num_tokens < bound ? num_tokens : bound;
}

// How tokens map to adapter slots: per-token `indices` (BGMV), or segments (SGMV) when
// `indices` is absent: tokens [seg_indptr[s], seg_indptr[s+1]) use slot seg_adapter[s]. The
// CUDA launchers also need `plan`, built from this map by launch_build_plan.
struct TokenMap {
  int64_t num_tokens = 0;    // T
  IndexVec indices;          // [T]
  IndexVec seg_indptr;       // [S+1]
  IndexVec seg_adapter;      // [S]
  int64_t num_segments = 0;  // S
  GroupPlan plan;            // CUDA launchers only
};

struct ShrinkParams {
  const void* x = nullptr;  // [T, H_in], row stride x_stride
  int64_t x_stride = 0;
  const void* lora_a = nullptr;  // [N, R, H_in], contiguous
  void* v = nullptr;             // [T, R] accumulator dtype, row stride v_stride
  int64_t v_stride = 0;
  IndexVec ranks;  // [N] or absent (then every slot has rank R)
  int64_t num_slots = 0, max_rank = 0, h_in = 0;
  DType dtype = DType::kFloat32;
  TokenMap map;
};

struct ExpandParams {
  void* y = nullptr;  // [T, H_out], row stride y_stride
  int64_t y_stride = 0;
  const void* v = nullptr;  // [T, R] accumulator dtype, row stride v_stride
  int64_t v_stride = 0;
  const void* lora_b = nullptr;     // [N, H_out, R], contiguous
  const void* scaling = nullptr;    // [N], accumulator dtype
  const void* lora_bias = nullptr;  // [N, H_out] or null
  IndexVec ranks;
  int64_t num_slots = 0, max_rank = 0, h_out = 0;
  DType dtype = DType::kFloat32;
  TokenMap map;
};

// Embedding LoRA shrink: v[t, j] = lora_a[a, j, token_ids[t]] for j < r_a, else 0.
struct EmbeddingShrinkParams {
  IndexVec token_ids;            // [T]
  const void* lora_a = nullptr;  // [N, R, vocab], contiguous
  void* v = nullptr;             // [T, R] accumulator dtype, contiguous rows of v_stride
  int64_t v_stride = 0;
  IndexVec ranks;
  int64_t num_slots = 0, max_rank = 0, vocab = 0;
  DType dtype = DType::kFloat32;
  TokenMap map;  // per-token indices only
};

// Rank of slot a as the kernels use it: 0 for a slot outside [0, N), clamped to [0, R].
LK_HOST_DEVICE int64_t effective_rank(const IndexVec& ranks, int64_t slot, int64_t num_slots,
                                      int64_t max_rank) {
  if (slot < 0 || slot >= num_slots) return 0;
  if (!ranks.present()) return max_rank;
  const int64_t r = ranks[slot];
  return r < 0 ? 0 : (r > max_rank ? max_rank : r);
}

}  // namespace lora_kernels
