// Tensor-core launchers (tc_kernels.cuh) and the shape-only rule by which launch_shrink /
// launch_expand and their slices variants take them.
#include <atomic>

#include "dispatch.cuh"
#include "lora_kernels/kernel_launch.h"
#include "lora_kernels/launch.h"
#include "lora_kernels/tc_kernels.cuh"

namespace lora_kernels::cuda {
namespace {
std::atomic<uint64_t> g_tc_launches{0};

// fp16 / bf16 only: T is __half or __nv_bfloat16.
template <typename Fn>
cudaError_t dispatch_half(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kFloat16: return fn(__half{});
    case DType::kBFloat16: return fn(__nv_bfloat16{});
    default: return cudaErrorInvalidValue;
  }
}

// 16-byte loads when x's rows and A are 16-byte aligned (the CUDA-core shrink's rule).
bool shrink_vec(const ShrinkParams& p) {
  return p.h_in % 8 == 0 && p.x_stride % 8 == 0 && detail::aligned16(p.x) && detail::aligned16(p.lora_a);
}
// 16-byte loads of B's rows when B is 16-byte aligned and R a multiple of 8 (the CUDA-core rule).
bool expand_vec(const ExpandParams& p) { return p.max_rank % 8 == 0 && detail::aligned16(p.lora_b); }
// Grid x: one block per group of kTcTokens tokens of the device plan (find_group).
template <typename Params>
unsigned groups_of(const Params& p) {
  return static_cast<unsigned>(max_groups(p.map.num_tokens, p.num_slots, tiles::kTcTokens));
}
}  // namespace

bool tensor_core_path(DType dtype, const TokenMap& map) {
  if (dtype != DType::kFloat16 && dtype != DType::kBFloat16) return false;
  const int64_t T = map.num_tokens;
  if (T < tiles::kTcMinTokens) return false;
  if (map.indices.present()) return true;
  return T >= tiles::kTcMinTokensPerSegment * map.num_segments;
}

uint64_t tensor_core_launches() { return g_tc_launches.load(std::memory_order_relaxed); }

cudaError_t launch_shrink_tc(const ShrinkParams& p, cudaStream_t stream) {
  if (p.map.num_tokens == 0 || p.max_rank == 0) return cudaSuccess;
  if (!detail::plan_ready(p.map, p.num_slots)) return cudaErrorInvalidValue;
  const dim3 grid(groups_of(p), detail::ceil_div(p.max_rank, tiles::kTcShrinkRank));
  return dispatch_half(p.dtype, [&](auto elem) {
    using T = decltype(elem);
    g_tc_launches.fetch_add(1, std::memory_order_relaxed);
    if (shrink_vec(p))
      LK_LAUNCH(grid, detail::kThreads, 0, stream, detail::tc_shrink_kernel<T, 8>)(p);
    else
      LK_LAUNCH(grid, detail::kThreads, 0, stream, detail::tc_shrink_kernel<T, 1>)(p);
    return cudaGetLastError();
  });
}

cudaError_t launch_expand_tc(const ExpandParams& p, cudaStream_t stream) {
  if (p.map.num_tokens == 0 || p.max_rank == 0 || p.h_out == 0) return cudaSuccess;
  if (!detail::plan_ready(p.map, p.num_slots)) return cudaErrorInvalidValue;
  const dim3 grid(groups_of(p), detail::ceil_div(p.h_out, tiles::kTcExpandCols));
  return dispatch_half(p.dtype, [&](auto elem) {
    using T = decltype(elem);
    g_tc_launches.fetch_add(1, std::memory_order_relaxed);
    if (expand_vec(p))
      LK_LAUNCH(grid, detail::kThreads, 0, stream, detail::tc_expand_kernel<T, 8>)(p);
    else
      LK_LAUNCH(grid, detail::kThreads, 0, stream, detail::tc_expand_kernel<T, 1>)(p);
    return cudaGetLastError();
  });
}

cudaError_t launch_shrink_slices_tc(const ShrinkParams* slices, int64_t n, cudaStream_t stream) {
  if (n <= 0 || slices[0].map.num_tokens == 0) return cudaSuccess;
  if (!detail::plans_ready(slices, n)) return cudaErrorInvalidValue;
  return dispatch_half(slices[0].dtype, [&](auto elem) {
    using T = decltype(elem);
    using Batch = detail::SliceBatch<ShrinkParams>;
    return detail::for_each_slice_batch<Batch>(
        slices, n, detail::kMaxSlicesPerLaunch,
        [](const ShrinkParams& p) -> int64_t {
          return p.max_rank == 0 ? 0 : detail::ceil_div(p.max_rank, tiles::kTcShrinkRank);
        },
        [](const ShrinkParams& p) { return shrink_vec(p); },  // as launch_shrink_tc decides
        [&](const Batch& batch, int64_t blocks) {
          const dim3 grid(groups_of(slices[0]), static_cast<unsigned>(blocks));
          g_tc_launches.fetch_add(1, std::memory_order_relaxed);
          LK_LAUNCH(grid, detail::kThreads, 0, stream, detail::tc_shrink_slices_kernel<T>)(batch);
          return cudaGetLastError();
        });
  });
}

cudaError_t launch_expand_slices_tc(const ExpandParams* slices, int64_t n, cudaStream_t stream) {
  if (n <= 0 || slices[0].map.num_tokens == 0) return cudaSuccess;
  if (!detail::plans_ready(slices, n)) return cudaErrorInvalidValue;
  return dispatch_half(slices[0].dtype, [&](auto elem) {
    using T = decltype(elem);
    using Batch = detail::SliceBatch<ExpandParams>;
    return detail::for_each_slice_batch<Batch>(
        slices, n, detail::kMaxSlicesPerLaunch,
        [](const ExpandParams& p) -> int64_t {
          return p.max_rank == 0 || p.h_out == 0 ? 0 : detail::ceil_div(p.h_out, tiles::kTcExpandCols);
        },
        [](const ExpandParams& p) { return expand_vec(p); },  // as launch_expand_tc decides
        [&](const Batch& batch, int64_t blocks) {
          const dim3 grid(groups_of(slices[0]), static_cast<unsigned>(blocks));
          g_tc_launches.fetch_add(1, std::memory_order_relaxed);
          LK_LAUNCH(grid, detail::kThreads, 0, stream, detail::tc_expand_slices_kernel<T>)(batch);
          return cudaGetLastError();
        });
  });
}

}  // namespace lora_kernels::cuda
