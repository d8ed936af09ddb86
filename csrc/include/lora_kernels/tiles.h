// Tile and launch constants of the CUDA kernels, in one place (torch-free, CUDA-free), so that
// the launchers (csrc/kernels/*.cu), the kernel bodies (kernels.cuh), the executor tests and the
// ptxas / SASS tables all read the same numbers. A kernel that needs a new constant adds it here.
#pragma once

namespace lora_kernels::cuda::tiles {

// Threads per block of every shrink / expand kernel (and its __launch_bounds__).
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// Shrink: rank rows of A one block computes (grid.y = ceil(R / kShrinkRows)).
constexpr int kShrinkRows = 4;

// Tokens of one group sharing one pass over the adapter's weights (CUDA-core shrink and expand).
constexpr int kGroupTokens = 8;

// Expand: columns of v staged in shared memory per pass over the rank.
constexpr int kRankChunk = 64;

// Decode (decode.cuh, decode.cu's decode_config): the split-K shrink adds K splits until the grid
// has about this many blocks (2 per SM of an H200's 132 SMs: decode_kernel's
// __launch_bounds__(kThreads, 2) keeps 2 blocks resident per SM).
constexpr int kDecodeTargetBlocks = 2 * 132;
// The fused shrink + expand (one launch): at most this many tokens (every group's last block
// runs at once), and at most this many kThreads-column tiles of H_out (that block streams them
// one after the other).
constexpr int kFusedMaxTokens = 64;
constexpr int kFusedMaxColTiles = 4;

// Tensor-core path (tc_kernels.cuh, fp16 / bf16): tokens of one group (one slot) per block.
constexpr int kTcTokens = 64;
// Tensor-core shrink: rank columns of v per block (grid.y = ceil(R / kTcShrinkRank)) and the
// H_in chunk staged in shared memory per step.
constexpr int kTcShrinkRank = 64;
constexpr int kTcShrinkK = 64;
// Tensor-core expand: output features per block (grid.y = ceil(H_out / kTcExpandCols)) and the
// rank chunk staged in shared memory per step.
constexpr int kTcExpandCols = 128;
constexpr int kTcExpandRank = 32;
// When launch_shrink / launch_expand take the tensor-core path (a decision on shapes only, never
// on index values): fp16 / bf16, at least kTcMinTokens tokens, and with segments at least
// kTcMinTokensPerSegment tokens per segment on average.
constexpr int kTcMinTokens = 128;
constexpr int kTcMinTokensPerSegment = 32;

// add_lora_slices: slices per launch (more go in launches of this many).
constexpr int kMaxSlicesPerLaunch = 8;

// The grouping plan (plan.cu): threads of its one block, and the most buckets (slots + 1) it
// counts in shared memory (16 KB); more buckets count in the global workspace instead.
constexpr int kPlanThreads = 1024;
constexpr int kPlanSharedBuckets = 4096;

// The group sizes the plan lists groups for: find_group<G> (kernels.cuh) needs G here. A kernel
// with another group size (e.g. a tensor-core tile of 64 tokens) adds it; each costs the plan
// (N + 2) + min(T, ceil(T / G) + N + 1) + 1 int32 of workspace and a few steps of its one block.
constexpr int kPlanGroupSizes[] = {kGroupTokens, kTcTokens};
constexpr int kNumPlanGroupSizes = static_cast<int>(sizeof(kPlanGroupSizes) / sizeof(kPlanGroupSizes[0]));

// Index of group size g in kPlanGroupSizes, -1 when absent.
constexpr int plan_group_index(int g) {
  for (int i = 0; i < kNumPlanGroupSizes; ++i)
    if (kPlanGroupSizes[i] == g) return i;
  return -1;
}

}  // namespace lora_kernels::cuda::tiles
