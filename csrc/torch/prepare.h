// Argument checking and parameter building shared by the CPU and CUDA registrations.
// Every check names the op, the argument, the expected and the actual value (DESIGN §5).
#pragma once

#include <ATen/core/Tensor.h>

#include <initializer_list>
#include <optional>
#include <vector>

#include "lora_kernels/params.h"

namespace lora_kernels::binding {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// Accumulator / v dtype for an activation dtype: float32, or float64 for float64.
at::ScalarType acc_dtype(at::ScalarType dtype);

// One tensor argument of an op, by name; `tensor` is null for an optional argument not given.
struct Arg {
  const char* name;
  const Tensor* tensor;
};
inline Arg arg(const char* name, const Tensor& t) { return {name, &t}; }
inline Arg arg(const char* name, const OptTensor& t) { return {name, t.has_value() ? &*t : nullptr}; }

// Every tensor argument must be on the device of the op's lead tensor (y for the ops that
// write y, x for the shrinks). Checked first: a call that mixes devices is refused by name
// before any shape or value check reads it.
void check_devices(const char* op, const Arg& lead, const std::vector<Arg>& args);
inline void check_devices(const char* op, const Arg& lead, std::initializer_list<Arg> args) {
  check_devices(op, lead, std::vector<Arg>(args));
}

// The output y (2-D, unit column stride: checked before) must not write one memory location
// from two rows, and no input may share memory with it: the result would depend on the order
// the kernels visit rows and columns. Row-strided views of a wider tensor (a column slice of a
// fused qkv output) are fine, and so are inputs in other column slices of the same tensor.
void check_no_overlap(const char* op, const Tensor& y, const std::vector<Arg>& inputs);
inline void check_no_overlap(const char* op, const Tensor& y, std::initializer_list<Arg> inputs) {
  check_no_overlap(op, y, std::vector<Arg>(inputs));
}

// Per-token indices, or segments, checked against T (devices are checked by check_devices).
TokenMap make_token_map(const char* op, int64_t num_tokens, const OptTensor& indices, const OptTensor& seg_indptr,
                        const OptTensor& seg_adapter);

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

// add_lora_slices' value checks: the token map once (as check_values, named after `op`), then
// each slice's ranks[i] against its R_i = max_ranks[i], named "op (slice i)".
void check_slice_values(const char* op, const TokenMap& map, const OptTensor& indices, const OptTensor& seg_indptr,
                        const OptTensor& seg_adapter, const std::vector<OptTensor>& ranks,
                        const std::vector<int64_t>& max_ranks, int64_t num_slots);

}  // namespace lora_kernels::binding
