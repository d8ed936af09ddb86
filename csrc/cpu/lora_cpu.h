// CPU implementation of the multi-LoRA ops, torch-free.
//
// Tokens are grouped by adapter slot (a counting sort for per-token indices; segments are
// groups already), and each group is split into work items of at most `max_group_tokens`
// tokens, so each adapter's weights are read once per item however many tokens use it.
// The caller runs work units in parallel (the torch binding uses at::parallel_for); each
// unit is (work item, block of output columns) and units write disjoint outputs.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "lora_kernels/params.h"

namespace lora_kernels::cpu {

struct WorkItem {
  int64_t slot;   // adapter slot, or -1 ("no adapter")
  int64_t begin;  // positions [begin, end) in Plan::order
  int64_t end;
};

struct Plan {
  std::vector<int64_t> order;  // token rows grouped by slot
  std::vector<WorkItem> items;
};

// Checks every index value (slots in [-1, N), segments well formed) and groups tokens.
// Returns an empty string on success, else a sentence naming the bad value.
std::string build_plan(const TokenMap& map, int64_t num_slots, int64_t max_group_tokens, Plan* plan);

// Checks ranks[a] in [0, R] for every slot; empty string on success.
std::string check_ranks(const IndexVec& ranks, int64_t num_slots, int64_t max_rank);

// Checks 0 <= token_ids[t] < vocab for every token; empty string on success.
std::string check_token_ids(const IndexVec& token_ids, int64_t num_tokens, int64_t vocab);

// Column blocks per work item (rank rows for the shrink, output features for the expand).
int64_t shrink_column_blocks(const ShrinkParams& p, const Plan& plan);
int64_t expand_column_blocks(const ExpandParams& p);

// Run work units [begin, end) of units = items x column blocks (item-major).
void shrink(const ShrinkParams& p, const Plan& plan, int64_t begin, int64_t end);
void expand(const ExpandParams& p, const Plan& plan, int64_t begin, int64_t end);
// Embedding shrink: one unit per work item.
void embedding_shrink(const EmbeddingShrinkParams& p, const Plan& plan, int64_t begin, int64_t end);

// add_lora_slices: n slices (each its own weights, ranks, v and column range of y) over one plan,
// numbered slice-major: slice s owns units [offsets[s], offsets[s + 1]) of the n slices' units,
// so one parallel loop covers every slice x work item x column block of a phase.
// Returns offsets (n + 1 entries; the last is the number of units).
std::vector<int64_t> shrink_slice_offsets(const ShrinkParams* p, int64_t n, const Plan& plan);
std::vector<int64_t> expand_slice_offsets(const ExpandParams* p, int64_t n, const Plan& plan);
// Run units [begin, end) of those numberings.
void shrink_slices(const ShrinkParams* p, const std::vector<int64_t>& offsets, const Plan& plan, int64_t begin,
                   int64_t end);
void expand_slices(const ExpandParams* p, const std::vector<int64_t>& offsets, const Plan& plan, int64_t begin,
                   int64_t end);

}  // namespace lora_kernels::cpu
