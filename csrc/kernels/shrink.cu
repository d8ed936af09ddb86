// Shrink launchers: explicit instantiations per dtype, vectorized and scalar paths.
#include "dispatch.cuh"
#include "lora_kernels/kernel_launch.h"
#include "lora_kernels/kernels.cuh"
#include "lora_kernels/launch.h"

namespace lora_kernels::cuda {
namespace {
constexpr int kRows = tiles::kShrinkRows;
constexpr int kMaxTokens = tiles::kGroupTokens;

// The vector path (kVec elements per 16-byte load) when x's rows and A are 16-byte aligned. One
// rule for launch_shrink and for each slice of launch_shrink_slices, so the two stay bit-equal.
template <int kVec>
bool shrink_vectorized(const ShrinkParams& p) {
  return p.h_in % kVec == 0 && p.x_stride % kVec == 0 && detail::aligned16(p.x) && detail::aligned16(p.lora_a);
}
}  // namespace

cudaError_t launch_shrink(const ShrinkParams& p, cudaStream_t stream) {
  if (p.map.num_tokens == 0 || p.max_rank == 0) return cudaSuccess;
  if (!detail::plan_ready(p.map, p.num_slots)) return cudaErrorInvalidValue;
  if (tensor_core_path(p.dtype, p.map)) return launch_shrink_tc(p, stream);  // tc.cu
  const dim3 grid(static_cast<unsigned>(max_groups(p.map.num_tokens, p.num_slots, kMaxTokens)), detail::ceil_div(p.max_rank, kRows));
  return detail::dispatch_dtype(p.dtype, [&](auto elem) {
    using T = decltype(elem);
    constexpr int kVec = 16 / sizeof(T);
    if (shrink_vectorized<kVec>(p))
      LK_LAUNCH(grid, detail::kThreads, 0, stream, detail::shrink_kernel<T, kVec, kRows, kMaxTokens>)(p);
    else
      LK_LAUNCH(grid, detail::kThreads, 0, stream, detail::shrink_kernel<T, 1, kRows, kMaxTokens>)(p);
    return cudaGetLastError();
  });
}

cudaError_t launch_shrink_slices(const ShrinkParams* slices, int64_t n, cudaStream_t stream) {
  if (n <= 0 || slices[0].map.num_tokens == 0) return cudaSuccess;
  if (!detail::plans_ready(slices, n)) return cudaErrorInvalidValue;
  if (tensor_core_path(slices[0].dtype, slices[0].map)) return launch_shrink_slices_tc(slices, n, stream);  // tc.cu
  return detail::dispatch_dtype(slices[0].dtype, [&](auto elem) {
    using T = decltype(elem);
    constexpr int kVec = 16 / sizeof(T);
    using Batch = detail::SliceBatch<ShrinkParams>;
    return detail::for_each_slice_batch<Batch>(
        slices, n, detail::kMaxSlicesPerLaunch,
        [](const ShrinkParams& p) -> int64_t { return p.max_rank == 0 ? 0 : detail::ceil_div(p.max_rank, kRows); },
        [](const ShrinkParams& p) { return shrink_vectorized<kVec>(p); },  // as launch_shrink decides
        [&](const Batch& batch, int64_t blocks) {
          const dim3 grid(static_cast<unsigned>(max_groups(slices[0].map.num_tokens, slices[0].num_slots, kMaxTokens)),
                          static_cast<unsigned>(blocks));
          LK_LAUNCH(grid, detail::kThreads, 0, stream, detail::shrink_slices_kernel<T, kVec, kRows, kMaxTokens>)(batch);
          return cudaGetLastError();
        });
  });
}

cudaError_t launch_embedding_shrink(const EmbeddingShrinkParams& p, cudaStream_t stream) {
  if (p.map.num_tokens == 0 || p.max_rank == 0) return cudaSuccess;
  const unsigned blocks = detail::ceil_div(p.map.num_tokens * p.max_rank, detail::kThreads);
  return detail::dispatch_dtype(p.dtype, [&](auto elem) {
    using T = decltype(elem);
    LK_LAUNCH(blocks, detail::kThreads, 0, stream, detail::embedding_shrink_kernel<T>)(p);
    return cudaGetLastError();
  });
}

}  // namespace lora_kernels::cuda
