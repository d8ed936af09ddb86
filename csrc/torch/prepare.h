// Argument checking and parameter building shared by the CPU and CUDA registrations.
// Every check names the op, the argument, the expected and the actual value (DESIGN §5).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <vector>

#include "lora_kernels/params.h"

namespace lora_kernels::cpu {
struct Plan;
}

namespace lora_kernels::binding {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// Accumulator / v dtype for an activation dtype: float32, or float64 for float64.
at::ScalarType acc_dtype(at::ScalarType dtype);

// Per-token indices, or segments, checked against T and the device of `ref`.
TokenMap make_token_map(const char* op, int64_t num_tokens, const Tensor& ref, const char* ref_name,
                        const OptTensor& indices, const OptTensor& seg_indptr, const OptTensor& seg_adapter);

// Checks the values of indices / segments / ranks (and token ids) on the host. CPU tensors are
// read in place; device tensors are copied (only done on CUDA under LORA_KERNELS_DEBUG=1).
void check_values(const char* op, const TokenMap& map, const OptTensor& indices, const OptTensor& seg_indptr,
                  const OptTensor& seg_adapter, const OptTensor& ranks, int64_t num_slots, int64_t max_rank,
                  const OptTensor& token_ids = std::nullopt, int64_t vocab = 0);

// True when LORA_KERNELS_DEBUG is set to a non-empty value other than "0".
bool debug_checks_enabled();

// Checks x / lora_a and allocates v [T, R]; `v` receives the new tensor.
ShrinkParams prepare_shrink(const char* op, const Tensor& x, const Tensor& lora_a, const TokenMap& map,
                            const OptTensor& ranks, Tensor* v);

// Checks y / v / lora_b / scaling / lora_bias. `scaling_acc` receives scaling in the
// accumulator dtype (a no-op view when it already is).
ExpandParams prepare_expand(const char* op, const Tensor& y, const Tensor& v, const Tensor& lora_b,
                            const Tensor& scaling, const OptTensor& lora_bias, const TokenMap& map,
                            const OptTensor& ranks, Tensor* scaling_acc);

// Checks token_ids / lora_a for add_lora_embedding and allocates v [T, R].
EmbeddingShrinkParams prepare_embedding_shrink(const char* op, const Tensor& y, const Tensor& token_ids,
                                               const Tensor& lora_a, const TokenMap& map, const OptTensor& ranks,
                                               Tensor* v);

// add_lora_slices: what its value checks need (the token map once, the ranks of every slice).
struct SliceValues {
  const char* op = nullptr;
  TokenMap map;
  OptTensor indices, seg_indptr, seg_adapter;
  std::vector<OptTensor> ranks;     // per slice
  std::vector<int64_t> max_ranks;   // R_i per slice
  int64_t num_slots = 0;            // N, the same for every slice
};

// Checks the index values once and each slice's ranks (ranks[i] against R_i) on the host.
// The grouping of tokens by slot that the check builds goes to `plan` when given (work items of
// at most `group_tokens` tokens), so the CPU executor builds it once for every slice and phase.
void check_slice_values(const SliceValues& s, int64_t group_tokens, cpu::Plan* plan);

}  // namespace lora_kernels::binding
