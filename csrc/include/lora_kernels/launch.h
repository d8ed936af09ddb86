// Torch-free CUDA launchers: raw pointers in (params.h), launch on `stream`, return the
// launch's cudaError_t. No host synchronization; the grid depends on shapes only, so every
// launch is CUDA-graph capturable. Any index value is safe: slots outside [0, N) act as "no
// adapter", ranks are clamped to [0, R], token ids outside [0, vocab) read nothing.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

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
// results are bit-equal to launch_shrink / launch_expand on that slice alone (the same path,
// tensor cores or not, and the same per-block code).
cudaError_t launch_shrink_slices(const ShrinkParams* slices, int64_t n, cudaStream_t stream);
cudaError_t launch_expand_slices(const ExpandParams* slices, int64_t n, cudaStream_t stream);

// v[t, j] = lora_a[a, j, token_ids[t]] for j < r_a, else 0.
cudaError_t launch_embedding_shrink(const EmbeddingShrinkParams& p, cudaStream_t stream);

// The tensor-core path (tc.cu, tc_kernels.cuh): what launch_shrink / launch_expand (and their
// slices variants) compute, with mma.sync and fp32 accumulation (fp16 / bf16 only;
// cudaErrorInvalidValue for other dtypes; not bit-equal to the CUDA-core kernels) on groups of
// up to 64 tokens of one slot. Those four launchers call them when tensor_core_path(dtype, map) holds: fp16 / bf16 and a call with many tokens (at least
// tiles::kTcMinTokens; with segments also tiles::kTcMinTokensPerSegment per segment on average),
// a rule on shapes only (index values stay on the device). The build targets sm_80 and sm_90
// only, so every device that runs these kernels has the instructions.
bool tensor_core_path(DType dtype, const TokenMap& map);
cudaError_t launch_shrink_tc(const ShrinkParams& p, cudaStream_t stream);
cudaError_t launch_expand_tc(const ExpandParams& p, cudaStream_t stream);
cudaError_t launch_shrink_slices_tc(const ShrinkParams* slices, int64_t n, cudaStream_t stream);
cudaError_t launch_expand_slices_tc(const ExpandParams* slices, int64_t n, cudaStream_t stream);
// How many tensor-core kernels this process has launched (a counter for tests and benchmarks).
uint64_t tensor_core_launches();

}  // namespace lora_kernels::cuda
