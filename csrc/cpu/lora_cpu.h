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

// add_lora_slices: n slices (each its own weights, ranks, v and column range of y, all sharing x
// and the token map) over one plan. Each phase is one set of units that the caller runs in
// parallel, covering every slice x work item x column block.
struct SliceUnits {
  // fused (shrink only): one unit per work item computes every slice's rank rows, staging x
  // once; possible when each slice takes its whole rank in one unit (shrink_column_blocks == 1).
  // Otherwise slice s owns units [offsets[s], offsets[s + 1]) and runs them as its own.
  bool fused = false;
  std::vector<int64_t> offsets;  // n + 1 entries
  int64_t total = 0;             // the number of units
};
// `allow_fused`: the caller has enough work items for its threads without splitting by slice.
SliceUnits shrink_slice_units(const ShrinkParams* p, int64_t n, const Plan& plan, bool allow_fused);
SliceUnits expand_slice_units(const ExpandParams* p, int64_t n, const Plan& plan);
// Run units [begin, end) of those numberings; the results are bit-for-bit those of running
// each slice's shrink / expand on its own.
void shrink_slices(const ShrinkParams* p, const SliceUnits& units, const Plan& plan, int64_t begin, int64_t end);
void expand_slices(const ExpandParams* p, const SliceUnits& units, const Plan& plan, int64_t begin, int64_t end);

}  // namespace lora_kernels::cpu
