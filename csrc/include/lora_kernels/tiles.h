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

}  // namespace lora_kernels::cuda::tiles
