// The grouping plan (params.h GroupPlan): the tokens counted and ordered by slot on the device, once
// per op call, before the shrink; the shrink, the expand and every slice of add_lora_slices read
// it through find_group (kernels.cuh). One block of tiles::kPlanThreads threads, whatever the
// values: no host synchronization, a grid that depends on nothing, so it is CUDA-graph capturable.
//
//   1. count the tokens of each bucket (slot b < N, or bucket N: no adapter) with atomicAdd,
//      in shared memory when the N + 1 buckets fit (tiles::kPlanSharedBuckets), else in the
//      global workspace;
//   2. exclusive block scans: slot_start[0 .. N + 1] from the counts, and per group size G of
//      tiles::kPlanGroupSizes each bucket's first group (ceil(count / G) groups a bucket); the
//      counts become each bucket's scatter cursor;
//   3. scatter: each token takes the next position of its bucket (atomicAdd on the cursor);
//   4. per G, the first position of every group (groups[0] = their number): a kernel runs group
//      k in block k (find_group), on a grid of max_groups(T, N, G) <= T blocks.
//
// The order of the rows inside a bucket depends on the order of the atomics, so it varies from
// run to run. No result does: every token's shrink and expand sums are computed for that token
// alone, in an order fixed by the kernel and the shapes, whichever tokens share its group (the
// executor tests check that two different orders give bit-equal v and y).
#include <type_traits>

#include "lora_kernels/kernel_launch.h"
#include "lora_kernels/launch.h"
#include "lora_kernels/params.h"
#include "lora_kernels/tiles.h"

namespace lora_kernels::cuda {
namespace detail {
namespace {

constexpr int kPlanThreads = tiles::kPlanThreads;
constexpr int kPlanWarps = kPlanThreads / 32;
constexpr int kSizes = tiles::kNumPlanGroupSizes;

// The workspace, writable (GroupPlan holds the same arrays read-only).
struct PlanArrays {
  int32_t* slot_start;           // [N + 2]
  int32_t* rows_by_slot;         // [T]
  int32_t* slot_at;              // [T]
  int32_t* cursor;               // [N + 1]: counts and cursors when they do not fit in shared memory
  int32_t* group_start[kSizes];  // [N + 2]: per group size, the bucket's first group
  int32_t* groups[kSizes];       // [1 + max_groups]: the number of groups, then each one's first position
};

// f(std::integral_constant<int, i>) for each index i of tiles::kPlanGroupSizes (compile-time
// sizes: the divisions by G are shifts or multiplications).
template <int I = 0, typename F>
__device__ __forceinline__ void each_size(F&& f) {
  if constexpr (I < kSizes) {
    f(std::integral_constant<int, I>{});
    each_size<I + 1>(f);
  }
}

// Token t's bucket: its slot when in [0, N), else N (no adapter). Segments: the last segment s
// with seg_indptr[s] <= t, when t lies inside it (empty segments before it are skipped; a token
// outside every segment has no adapter).
__device__ __forceinline__ int32_t bucket_of(const TokenMap& map, int64_t t, int64_t num_slots) {
  int64_t slot = -1;
  if (map.indices.present()) {
    slot = map.indices[t];
  } else if (map.num_segments > 0) {
    int64_t lo = 0, hi = map.num_segments - 1;
    while (lo < hi) {
      const int64_t mid = (lo + hi + 1) / 2;
      if (map.seg_indptr[mid] <= t) lo = mid; else hi = mid - 1;
    }
    const int64_t start = map.seg_indptr[lo], end = map.seg_indptr[lo + 1];
    if (start <= t && t < end) slot = map.seg_adapter[lo];
  }
  return static_cast<int32_t>(slot >= 0 && slot < num_slots ? slot : num_slots);
}

// Block-wide exclusive scan of value(b) over b in [0, n): out[b] = the sum before b, out[n] = the
// total, kPlanThreads values a round (a warp scan, then the warps' totals).
template <typename Value>
__device__ void block_scan(int32_t n, Value value, int32_t* out, int32_t* warp_total) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  int32_t carry = 0;
  for (int32_t base = 0; base < n; base += kPlanThreads) {
    const int32_t b = base + tid;
    const int32_t c = b < n ? value(b) : 0;
    int32_t x = c;
#pragma unroll
    for (int offset = 1; offset < 32; offset <<= 1) {
      const int32_t y = __shfl_up_sync(0xffffffffu, x, offset);
      if (lane >= offset) x += y;
    }
    if (lane == 31) warp_total[warp] = x;
    __syncthreads();
    int32_t before = carry, total = 0;
    for (int w = 0; w < kPlanWarps; ++w) {
      if (w < warp) before += warp_total[w];
      total += warp_total[w];
    }
    if (b < n) out[b] = before + x - c;
    carry += total;
    __syncthreads();  // warp_total is rewritten by the next round
  }
  if (tid == 0) out[n] = carry;
  __syncthreads();
}

__global__ void __launch_bounds__(kPlanThreads) build_plan_kernel(const TokenMap map, const int64_t num_slots,
                                                                  const PlanArrays out) {
  __shared__ int32_t shared_count[tiles::kPlanSharedBuckets];
  __shared__ int32_t warp_total[kPlanWarps];
  const int tid = threadIdx.x;
  const int64_t T = map.num_tokens;
  const int32_t buckets = static_cast<int32_t>(num_slots + 1);
  int32_t* count = buckets <= tiles::kPlanSharedBuckets ? shared_count : out.cursor;

  // 1. Tokens per bucket.
  for (int32_t b = tid; b < buckets; b += kPlanThreads) count[b] = 0;
  __syncthreads();
  for (int64_t t = tid; t < T; t += kPlanThreads) atomicAdd(&count[bucket_of(map, t, num_slots)], 1);
  __syncthreads();

  // 2. Each bucket's first position, and per group size its first group; then the counts
  //    become the scatter cursors (each thread rewrites only its own buckets, after the scans).
  block_scan(buckets, [&](int32_t b) { return count[b]; }, out.slot_start, warp_total);
  each_size([&](auto i) {
    constexpr int32_t g = tiles::kPlanGroupSizes[i];
    block_scan(buckets, [&](int32_t b) { return (count[b] + g - 1) / g; }, out.group_start[i], warp_total);
  });
  for (int32_t b = tid; b < buckets; b += kPlanThreads) count[b] = out.slot_start[b];
  __syncthreads();

  // 3. Scatter: each token takes the next position of its bucket.
  for (int64_t t = tid; t < T; t += kPlanThreads) {
    const int32_t b = bucket_of(map, t, num_slots);
    const int32_t p = atomicAdd(&count[b], 1);
    out.rows_by_slot[p] = static_cast<int32_t>(t);
    out.slot_at[p] = b;
  }
  __syncthreads();  // slot_at is read below at positions other threads wrote

  // 4. Per group size, the first position of every group, in bucket order.
  for (int64_t p = tid; p < T; p += kPlanThreads) {
    const int32_t b = out.slot_at[p];
    const int32_t offset = static_cast<int32_t>(p) - out.slot_start[b];
    each_size([&](auto i) {
      constexpr int32_t g = tiles::kPlanGroupSizes[i];
      if (offset % g == 0) out.groups[i][1 + out.group_start[i][b] + offset / g] = static_cast<int32_t>(p);
    });
  }
  if (tid == 0)
    for (int i = 0; i < kSizes; ++i) out.groups[i][0] = out.group_start[i][buckets];
}

constexpr size_t kAlign = 16;
size_t padded(int64_t ints) { return (static_cast<size_t>(ints) * sizeof(int32_t) + kAlign - 1) / kAlign * kAlign; }

bool plan_fits(int64_t num_tokens, int64_t num_slots) {
  return num_tokens >= 0 && num_slots >= 0 && num_tokens <= kMaxPlanTokens && num_slots <= kMaxPlanSlots;
}

// Carves the workspace into the plan's arrays (in this order); returns the bytes used.
size_t carve(char* base, int64_t T, int64_t N, PlanArrays* out) {
  size_t at = 0;
  const auto take = [&](int64_t ints) {
    int32_t* p = base ? reinterpret_cast<int32_t*>(base + at) : nullptr;
    at += padded(ints);
    return p;
  };
  out->slot_start = take(N + 2);
  out->rows_by_slot = take(T);
  out->slot_at = take(T);
  out->cursor = take(N + 1);
  for (int i = 0; i < kSizes; ++i) {
    out->group_start[i] = take(N + 2);
    out->groups[i] = take(1 + max_groups(T, N, tiles::kPlanGroupSizes[i]));
  }
  return at;
}

}  // namespace
}  // namespace detail

size_t plan_workspace_bytes(int64_t num_tokens, int64_t num_slots) {
  if (!detail::plan_fits(num_tokens, num_slots)) return 0;
  detail::PlanArrays unused;
  return detail::carve(nullptr, num_tokens, num_slots, &unused);
}

cudaError_t launch_build_plan(const TokenMap& map, int64_t num_slots, void* workspace, size_t workspace_bytes,
                              GroupPlan* plan, cudaStream_t stream) {
  if (!plan || !detail::plan_fits(map.num_tokens, num_slots)) return cudaErrorInvalidValue;
  if (!workspace || workspace_bytes < plan_workspace_bytes(map.num_tokens, num_slots) ||
      reinterpret_cast<uintptr_t>(workspace) % detail::kAlign != 0)
    return cudaErrorInvalidValue;
  detail::PlanArrays out;
  detail::carve(static_cast<char*>(workspace), map.num_tokens, num_slots, &out);
  *plan = GroupPlan{};
  plan->slot_start = out.slot_start, plan->rows_by_slot = out.rows_by_slot, plan->slot_at = out.slot_at;
  for (int i = 0; i < detail::kSizes; ++i) plan->groups[i] = out.groups[i];
  plan->num_tokens = map.num_tokens, plan->num_slots = num_slots;
  LK_LAUNCH(1, detail::kPlanThreads, 0, stream, detail::build_plan_kernel)(map, num_slots, out);
  return cudaGetLastError();
}

}  // namespace lora_kernels::cuda
