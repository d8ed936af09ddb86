// Shrink launchers: explicit instantiations per dtype, vectorized and scalar paths.
#include "dispatch.cuh"
#include "lora_kernels/kernel_launch.h"
#include "lora_kernels/kernels.cuh"
#include "lora_kernels/launch.h"

namespace lora_kernels::cuda {
namespace {
constexpr int kRows = 4;       // rank rows per block
constexpr int kMaxTokens = 8;  // tokens of one group sharing the weight stream
}  // namespace

cudaError_t launch_shrink(const ShrinkParams& p, cudaStream_t stream) {
  if (p.map.num_tokens == 0 || p.max_rank == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(p.map.num_tokens), detail::ceil_div(p.max_rank, kRows));
  return detail::dispatch_dtype(p.dtype, [&](auto elem) {
    using T = decltype(elem);
    constexpr int kVec = 16 / sizeof(T);
    const bool vectorized = p.h_in % kVec == 0 && p.x_stride % kVec == 0 &&
                            detail::aligned16(p.x) && detail::aligned16(p.lora_a);
    if (vectorized)
      LK_LAUNCH(grid, detail::kThreads, 0, stream, detail::shrink_kernel<T, kVec, kRows, kMaxTokens>)(p);
    else
      LK_LAUNCH(grid, detail::kThreads, 0, stream, detail::shrink_kernel<T, 1, kRows, kMaxTokens>)(p);
    return cudaGetLastError();
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
