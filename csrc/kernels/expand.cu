// Expand launcher: explicit instantiations per dtype, vectorized and scalar paths.
#include "dispatch.cuh"
#include "lora_kernels/kernel_launch.h"
#include "lora_kernels/kernels.cuh"
#include "lora_kernels/launch.h"

namespace lora_kernels::cuda {
namespace {
constexpr int kMaxTokens = tiles::kGroupTokens;

// The vector path (kVec elements per 16-byte load of B's rows) when B is 16-byte aligned and R a
// multiple of kVec. One rule for launch_expand and for each slice of launch_expand_slices.
template <int kVec>
bool expand_vectorized(const ExpandParams& p) {
  return p.max_rank % kVec == 0 && detail::aligned16(p.lora_b);
}
}  // namespace

cudaError_t launch_expand(const ExpandParams& p, cudaStream_t stream) {
  if (p.map.num_tokens == 0 || p.max_rank == 0 || p.h_out == 0) return cudaSuccess;
  if (!detail::plan_ready(p.map, p.num_slots)) return cudaErrorInvalidValue;
  if (tensor_core_path(p.dtype, p.map)) return launch_expand_tc(p, stream);  // tc.cu
  const dim3 grid(static_cast<unsigned>(max_groups(p.map.num_tokens, p.num_slots, kMaxTokens)), detail::ceil_div(p.h_out, detail::kThreads));
  return detail::dispatch_dtype(p.dtype, [&](auto elem) {
    using T = decltype(elem);
    constexpr int kVec = 16 / sizeof(T);
    if (expand_vectorized<kVec>(p))
      LK_LAUNCH(grid, detail::kThreads, 0, stream, detail::expand_kernel<T, kVec, kMaxTokens>)(p);
    else
      LK_LAUNCH(grid, detail::kThreads, 0, stream, detail::expand_kernel<T, 1, kMaxTokens>)(p);
    return cudaGetLastError();
  });
}

cudaError_t launch_expand_slices(const ExpandParams* slices, int64_t n, cudaStream_t stream) {
  if (n <= 0 || slices[0].map.num_tokens == 0) return cudaSuccess;
  if (!detail::plans_ready(slices, n)) return cudaErrorInvalidValue;
  if (tensor_core_path(slices[0].dtype, slices[0].map)) return launch_expand_slices_tc(slices, n, stream);  // tc.cu
  return detail::dispatch_dtype(slices[0].dtype, [&](auto elem) {
    using T = decltype(elem);
    constexpr int kVec = 16 / sizeof(T);
    using Batch = detail::SliceBatch<ExpandParams>;
    return detail::for_each_slice_batch<Batch>(
        slices, n, detail::kMaxSlicesPerLaunch,
        [](const ExpandParams& p) -> int64_t {
          return p.max_rank == 0 || p.h_out == 0 ? 0 : detail::ceil_div(p.h_out, detail::kThreads);
        },
        [](const ExpandParams& p) { return expand_vectorized<kVec>(p); },  // as launch_expand decides
        [&](const Batch& batch, int64_t blocks) {
          const dim3 grid(static_cast<unsigned>(max_groups(slices[0].map.num_tokens, slices[0].num_slots, kMaxTokens)),
                          static_cast<unsigned>(blocks));
          LK_LAUNCH(grid, detail::kThreads, 0, stream, detail::expand_slices_kernel<T, kVec, kMaxTokens>)(batch);
          return cudaGetLastError();
        });
  });
}

}  // namespace lora_kernels::cuda
