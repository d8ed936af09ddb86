// CPU implementation of the multi-LoRA ops, torch-free.
//
// Tokens are grouped by adapter slot (a counting sort for per-token indices; segments are
// groups already), and each group is split into work items of at most `max_group_tokens`
// tokens, so each adapter's weights are read once per item however many tokens use it.
// The caller runs work units in parallel (the torch binding uses at::parallel_for); each
// unit is (work item, block of output columns) and units write disjoint outputs.
#pragma once

#include <cstdint>
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

// Groups tokens by slot. The map's values must have passed check_token_map
// (lora_kernels/checks.h): a slot outside [-1, N) or a malformed segment list is not checked here.
Plan build_plan(const TokenMap& map, int64_t num_slots, int64_t max_group_tokens);

// Column blocks per work item (rank rows for the shrink, output features for the expand).
int64_t shrink_column_blocks(const ShrinkParams& p, const Plan& plan);
int64_t expand_column_blocks(const ExpandParams& p);

// Run work units [begin, end) of units = items x column blocks (item-major).
void shrink(const ShrinkParams& p, const Plan& plan, int64_t begin, int64_t end);
void expand(const ExpandParams& p, const Plan& plan, int64_t begin, int64_t end);
// Embedding shrink: one unit per work item.
void embedding_shrink(const EmbeddingShrinkParams& p, const Plan& plan, int64_t begin, int64_t end);

}  // namespace lora_kernels::cpu
