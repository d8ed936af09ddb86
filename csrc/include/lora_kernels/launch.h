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

// v[t, j] = lora_a[a, j, token_ids[t]] for j < r_a, else 0.
cudaError_t launch_embedding_shrink(const EmbeddingShrinkParams& p, cudaStream_t stream);

}  // namespace lora_kernels::cuda
