// Torch-free CUDA launchers: raw pointers in (params.h), launch on `stream`, return the
// launch's cudaError_t. No host synchronization; every grid depends on shapes only, so every
// launch is CUDA-graph capturable. Any index value is safe: slots outside [0, N) act as "no
// adapter", ranks are clamped to [0, R], token ids outside [0, vocab) read nothing. The decode
// launchers also take a device workspace, sized by the shapes (decode_workspace_bytes).
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
// slice's results are bit-equal to launch_shrink / launch_expand on that slice alone (the
// same path, tensor cores or not, and the same per-block code). For few
// tokens add_lora_slices goes through launch_add_lora_slices below instead (the decode path).
cudaError_t launch_shrink_slices(const ShrinkParams* slices, int64_t n, cudaStream_t stream);
cudaError_t launch_expand_slices(const ExpandParams* slices, int64_t n, cudaStream_t stream);

// Decode (few tokens): a split-K shrink, and shrink + expand in one launch (decode.cuh).
//
// decode_config(sp, &ep) (add_lora) or decode_config(sp, nullptr) (a shrink alone) picks, from
// shapes and alignment only (T, R, H_in, H_out, dtype, vector path; never index values), how
// many K splits the shrink takes (splits = 1: the plain launch_shrink) and whether the expand
// runs in the same launch (fused); decode.cu holds the rule and its bytes / launches model.
// workspace_bytes is what the launch needs (0 for the plain path): the fp32 (fp64) partial
// sums of v and one counter per token, in one device buffer, 256-byte aligned. The counters must
// be zero when a launch starts: the launcher clears them with cudaMemsetAsync on `stream`
// unless counters_zero is true. Each launch leaves them zero again, so a server that zeroes
// its workspace once and uses it on one stream at a time may pass counters_zero = true (and
// save the memset). A config other than decode_config's (e.g. more splits) is valid too, and
// gives the same results up to the order of the fp32 sums: each split's sum, then the splits
// in order, so the bits of v and y never depend on the order the blocks ran in.
struct DecodeConfig {
  int64_t splits = 1;  // K splits of H_in in the shrink (at least 1)
  bool fused = false;  // add_lora's shrink and expand in one launch
  int64_t workspace_bytes = 0;
};
DecodeConfig decode_config(const ShrinkParams& sp, const ExpandParams* ep);
// The workspace size of another config (decode_config fills workspace_bytes itself).
int64_t decode_workspace_bytes(const ShrinkParams& sp, const DecodeConfig& c);

// launch_shrink's result with c.splits K splits (c.fused is ignored); splits <= 1 is launch_shrink.
cudaError_t launch_shrink_decode(const ShrinkParams& sp, const DecodeConfig& c, void* workspace, bool counters_zero,
                                 cudaStream_t stream);

// launch_shrink then launch_expand (sp and ep share the token map; ep.v is sp.v), by the
// config: one launch when c.fused (v is then not written: the expand reads the partials), else
// launch_shrink_decode + launch_expand.
cudaError_t launch_add_lora(const ShrinkParams& sp, const ExpandParams& ep, const DecodeConfig& c, void* workspace,
                            bool counters_zero, cudaStream_t stream);

// add_lora_slices on the decode path: launch_add_lora on each of the n slices with its own
// config c[i] (decode_config(sp[i], &ep[i]): each slice's splits and fusion come from its own
// shapes, as add_lora on that slice would take them), in one launch for every slice's shrink
// phase and one launch_expand_slices for the slices not fused (none when all are fused; more
// than 8 slices: launches of 8, as launch_shrink_slices). In the first launch each slice runs
// launch_shrink's body (splits 1, not fused), launch_shrink_decode's (splits > 1) or
// launch_add_lora's fused one, on its own partials and counters, so each slice's v and y are
// bit-equal to launch_add_lora on that slice with c[i], whatever the block order. When no
// slice needs the decode kernel this is launch_shrink_slices + launch_expand_slices (the
// workspace is then unused). sp[i] and ep[i] are slice i's params as in launch_shrink_slices /
// launch_expand_slices (ep[i].v is sp[i].v; a fused slice does not write its v). The workspace
// (add_lora_slices_workspace_bytes, 256-byte aligned) holds every decoding slice's partials,
// then their counters, which counters_zero treats as launch_add_lora does.
int64_t add_lora_slices_workspace_bytes(const ShrinkParams* sp, const ExpandParams* ep, const DecodeConfig* c,
                                        int64_t n);
cudaError_t launch_add_lora_slices(const ShrinkParams* sp, const ExpandParams* ep, const DecodeConfig* c, int64_t n,
                                   void* workspace, bool counters_zero, cudaStream_t stream);

// v[t, j] = lora_a[a, j, token_ids[t]] for j < r_a, else 0. Per token: needs no plan.
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
