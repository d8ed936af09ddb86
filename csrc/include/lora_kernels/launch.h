// Torch-free CUDA launchers: raw pointers in (params.h), launch on `stream`, return the
// launch's cudaError_t. No host synchronization; the grid depends on shapes only, so every
// launch is CUDA-graph capturable. Any index value is safe: slots outside [0, N) act as "no
// adapter", ranks are clamped to [0, R], token ids outside [0, vocab) read nothing.
#pragma once

#include <cuda_runtime.h>

#include "lora_kernels/params.h"

namespace lora_kernels::cuda {

// v[t, j] = x[t] . lora_a[a, j] for j < r_a, else 0 (every row of v is written).
cudaError_t launch_shrink(const ShrinkParams& p, cudaStream_t stream);

// y[t] += scaling[a] * (v[t, :r_a] @ lora_b[a, :, :r_a].T + lora_bias[a]) for tokens with a
// valid slot and r_a > 0; other rows of y are not touched.
cudaError_t launch_expand(const ExpandParams& p, cudaStream_t stream);

// add_lora_slices' two phases: launch_shrink / launch_expand on each of the n slices (every
// slice shares the token map, T and the dtype; each has its own weights, ranks, v and y column
// view), in one launch per phase for up to 8 slices (more go in launches of 8 slices each, and a
// chunk also closes before its folded grid would pass 65535 block columns). Each slice's
// results are bit-equal to launch_shrink / launch_expand on that slice alone.
cudaError_t launch_shrink_slices(const ShrinkParams* slices, int64_t n, cudaStream_t stream);
cudaError_t launch_expand_slices(const ExpandParams* slices, int64_t n, cudaStream_t stream);

// v[t, j] = lora_a[a, j, token_ids[t]] for j < r_a, else 0.
cudaError_t launch_embedding_shrink(const EmbeddingShrinkParams& p, cudaStream_t stream);

}  // namespace lora_kernels::cuda
