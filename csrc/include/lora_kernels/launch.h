// Torch-free CUDA launchers: raw pointers in (params.h), launch on `stream`, return the
// launch's cudaError_t. No host synchronization; every grid depends on shapes only, so every
// launch is CUDA-graph capturable. Any index value is safe: slots outside [0, N) act as "no
// adapter", ranks are clamped to [0, R], token ids outside [0, vocab) read nothing.
//
// Grouping: once per op call, before the shrink, launch_build_plan orders the tokens by slot on
// the device (a device workspace of plan_workspace_bytes(T, N) bytes; no host sync, no O(T^2)
// scan); every launcher below that groups tokens (all but launch_embedding_shrink) reads that
// plan from its params' map.plan. One plan serves the shrink, the expand and every slice of a
// call, as long as they share the token map and N. A C++ server calls, per batch:
//
//   size_t bytes = plan_workspace_bytes(T, N);          // host arithmetic only
//   void* ws = /* bytes of device memory, 16-byte aligned, e.g. from its own pool */;
//   GroupPlan plan;
//   launch_build_plan(map, N, ws, bytes, &plan, stream); // fills `plan`, launches one block
//   shrink.map.plan = expand.map.plan = plan;             // then launch_shrink / launch_expand
//
// on the same stream (the workspace must outlive the launches that read it). A launcher whose
// map.plan was not built for its T and N returns cudaErrorInvalidValue and launches nothing.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "lora_kernels/params.h"

namespace lora_kernels::cuda {

// The plan's arrays are int32: at most this many tokens (the kernels' grid.x limit too) and slots.
constexpr int64_t kMaxPlanTokens = 2147483647;
constexpr int64_t kMaxPlanSlots = 2147483647 - 2;

// Device bytes the plan of T tokens over N slots needs (about 8 * (T + N) bytes); 0 when T or N
// is negative or over the limits above.
size_t plan_workspace_bytes(int64_t num_tokens, int64_t num_slots);

// Builds the plan of `map` over `num_slots` slots in `workspace` (at least plan_workspace_bytes,
// 16-byte aligned, contents ignored) on `stream`, and sets *plan (host struct: pointers into the
// workspace, T and N) for the launchers' map.plan. cudaErrorInvalidValue for a missing or too
// small workspace or sizes over the limits. T = 0 and N = 0 are fine.
cudaError_t launch_build_plan(const TokenMap& map, int64_t num_slots, void* workspace, size_t workspace_bytes,
                              GroupPlan* plan, cudaStream_t stream);

// v[t, j] = x[t] . lora_a[a, j] for j < r_a, else 0 (every row of v is written).
cudaError_t launch_shrink(const ShrinkParams& p, cudaStream_t stream);

// y[t] += scaling[a] * (v[t, :r_a] @ lora_b[a, :, :r_a].T + lora_bias[a]) for tokens with a
// valid slot and r_a > 0; other rows of y are not touched.
cudaError_t launch_expand(const ExpandParams& p, cudaStream_t stream);

// add_lora_slices' two phases: launch_shrink / launch_expand on each of the n slices (every
// slice shares the token map, its plan, T and the dtype; each has its own weights, ranks, v and
// y column view), in one launch per phase for up to 8 slices (more go in launches of 8 slices
// each, and a chunk also closes before its folded grid would pass 65535 block columns). Each
// slice's results are bit-equal to launch_shrink / launch_expand on that slice alone.
cudaError_t launch_shrink_slices(const ShrinkParams* slices, int64_t n, cudaStream_t stream);
cudaError_t launch_expand_slices(const ExpandParams* slices, int64_t n, cudaStream_t stream);

// v[t, j] = lora_a[a, j, token_ids[t]] for j < r_a, else 0. Per token: needs no plan.
cudaError_t launch_embedding_shrink(const EmbeddingShrinkParams& p, cudaStream_t stream);

}  // namespace lora_kernels::cuda
