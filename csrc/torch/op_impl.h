// The ops, written once over a backend (CPU or CUDA): check every argument and index value
// first, then run. Nothing is written to y unless every check passed. A backend provides
// make_plan (the CPU groups tokens by slot once per call; shrink and expand share it) and
// shrink / expand / embedding_shrink over that plan.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "prepare.h"

namespace lora_kernels::binding {

inline int64_t num_tokens(const char* op, const char* name, const Tensor& t, const char* layout) {
  TORCH_CHECK(t.dim() == 2, op, ": ", name, " must be 2-D ", layout, ", got ", t.dim(), "-D.");
  return t.size(0);
}

// lora_b must pair with lora_a: same N and R.
inline void check_pair(const char* op, const Tensor& lora_a, const Tensor& lora_b, const char* b_layout) {
  TORCH_CHECK(lora_a.dim() == 3 && lora_b.dim() == 3, op, ": lora_a and lora_b must be 3-D, got ", lora_a.dim(),
              "-D and ", lora_b.dim(), "-D.");
  TORCH_CHECK(lora_b.size(0) == lora_a.size(0) && lora_b.size(2) == lora_a.size(1), op, ": lora_b must have shape ",
              b_layout, " with N = ", lora_a.size(0), " and R = ", lora_a.size(1), " (from lora_a), got shape ",
              lora_b.sizes(), ".");
}

template <typename Backend>
void check_index_values(const char* op, const TokenMap& map, const OptTensor& indices, const OptTensor& seg_indptr,
                        const OptTensor& seg_adapter, const OptTensor& ranks, int64_t num_slots, int64_t max_rank,
                        const OptTensor& token_ids = std::nullopt, int64_t vocab = 0) {
  if (Backend::kAlwaysCheckValues || debug_checks_enabled())
    check_values(op, map, indices, seg_indptr, seg_adapter, ranks, num_slots, max_rank, token_ids, vocab);
}

template <typename Backend>
Tensor shrink_op(const char* op, const Tensor& x, const Tensor& lora_a, const OptTensor& indices,
                 const OptTensor& seg_indptr, const OptTensor& seg_adapter, const OptTensor& ranks) {
  typename Backend::Guard guard(x.device());
  check_devices(op, arg("x", x),
                {arg("lora_a", lora_a), arg("indices", indices), arg("seg_indptr", seg_indptr),
                 arg("seg_adapter", seg_adapter), arg("ranks", ranks)});
  const TokenMap map = make_token_map(op, num_tokens(op, "x", x, "[T, H_in]"), indices, seg_indptr, seg_adapter);
  Tensor v;
  const ShrinkParams p = prepare_shrink(op, x, lora_a, map, ranks, &v);
  check_index_values<Backend>(op, map, indices, seg_indptr, seg_adapter, ranks, p.num_slots, p.max_rank);
  Backend::shrink(p, Backend::make_plan(map, p.num_slots));
  return v;
}

template <typename Backend>
void expand_op(const char* op, const Tensor& y, const Tensor& v, const Tensor& lora_b, const OptTensor& indices,
               const OptTensor& seg_indptr, const OptTensor& seg_adapter, const Tensor& scaling,
               const OptTensor& ranks, const OptTensor& lora_bias) {
  typename Backend::Guard guard(y.device());
  check_devices(op, arg("y", y),
                {arg("v", v), arg("lora_b", lora_b), arg("indices", indices), arg("seg_indptr", seg_indptr),
                 arg("seg_adapter", seg_adapter), arg("scaling", scaling), arg("ranks", ranks),
                 arg("lora_bias", lora_bias)});
  const TokenMap map = make_token_map(op, num_tokens(op, "y", y, "[T, H_out]"), indices, seg_indptr, seg_adapter);
  Tensor scaling_acc;
  const ExpandParams p = prepare_expand(op, y, v, lora_b, scaling, lora_bias, map, ranks, &scaling_acc);
  check_no_overlap(op, y,
                   {arg("v", v), arg("lora_b", lora_b), arg("indices", indices), arg("seg_indptr", seg_indptr),
                    arg("seg_adapter", seg_adapter), arg("scaling", scaling), arg("ranks", ranks),
                    arg("lora_bias", lora_bias)});
  check_index_values<Backend>(op, map, indices, seg_indptr, seg_adapter, ranks, p.num_slots, p.max_rank);
  Backend::expand(p, Backend::make_plan(map, p.num_slots));
}

template <typename Backend>
void add_lora_op(const Tensor& y, const Tensor& x, const Tensor& lora_a, const Tensor& lora_b, const Tensor& scaling,
                 const OptTensor& indices, const OptTensor& seg_indptr, const OptTensor& seg_adapter,
                 const OptTensor& ranks, const OptTensor& lora_bias) {
  const char* op = "add_lora";
  typename Backend::Guard guard(y.device());
  check_devices(op, arg("y", y),
                {arg("x", x), arg("lora_a", lora_a), arg("lora_b", lora_b), arg("scaling", scaling),
                 arg("indices", indices), arg("seg_indptr", seg_indptr), arg("seg_adapter", seg_adapter),
                 arg("ranks", ranks), arg("lora_bias", lora_bias)});
  const int64_t T = num_tokens(op, "x", x, "[T, H_in]");
  TORCH_CHECK(num_tokens(op, "y", y, "[T, H_out]") == T, op, ": y must have shape [T, H_out] with T = ", T,
              " (from x), got shape ", y.sizes(), ".");
  check_pair(op, lora_a, lora_b, "[N, H_out, R]");
  const TokenMap map = make_token_map(op, T, indices, seg_indptr, seg_adapter);
  Tensor v, scaling_acc;
  const ShrinkParams sp = prepare_shrink(op, x, lora_a, map, ranks, &v);
  TORCH_CHECK(y.scalar_type() == x.scalar_type(), op, ": y must have the same dtype as x (", x.scalar_type(),
              "), got ", y.scalar_type(), ".");
  const ExpandParams ep = prepare_expand(op, y, v, lora_b, scaling, lora_bias, map, ranks, &scaling_acc);
  check_no_overlap(op, y,
                   {arg("x", x), arg("lora_a", lora_a), arg("lora_b", lora_b), arg("scaling", scaling),
                    arg("indices", indices), arg("seg_indptr", seg_indptr), arg("seg_adapter", seg_adapter),
                    arg("ranks", ranks), arg("lora_bias", lora_bias)});
  check_index_values<Backend>(op, map, indices, seg_indptr, seg_adapter, ranks, sp.num_slots, sp.max_rank);
  const auto plan = Backend::make_plan(map, sp.num_slots);
  Backend::shrink(sp, plan);
  Backend::expand(ep, plan);
}

template <typename Backend>
void add_lora_embedding_op(const Tensor& y, const Tensor& token_ids, const Tensor& lora_a, const Tensor& lora_b,
                           const Tensor& scaling, const Tensor& indices, const OptTensor& ranks) {
  const char* op = "add_lora_embedding";
  typename Backend::Guard guard(y.device());
  check_devices(op, arg("y", y),
                {arg("token_ids", token_ids), arg("lora_a", lora_a), arg("lora_b", lora_b), arg("scaling", scaling),
                 arg("indices", indices), arg("ranks", ranks)});
  check_pair(op, lora_a, lora_b, "[N, dim, R]");
  const TokenMap map = make_token_map(op, num_tokens(op, "y", y, "[T, dim]"), indices, std::nullopt, std::nullopt);
  Tensor v, scaling_acc;
  const EmbeddingShrinkParams sp = prepare_embedding_shrink(op, y, token_ids, lora_a, map, ranks, &v);
  const ExpandParams ep = prepare_expand(op, y, v, lora_b, scaling, std::nullopt, map, ranks, &scaling_acc);
  check_no_overlap(op, y,
                   {arg("token_ids", token_ids), arg("lora_a", lora_a), arg("lora_b", lora_b), arg("scaling", scaling),
                    arg("indices", indices), arg("ranks", ranks)});
  check_index_values<Backend>(op, map, indices, std::nullopt, std::nullopt, ranks, sp.num_slots, sp.max_rank,
                              token_ids, sp.vocab);
  const auto plan = Backend::make_plan(map, sp.num_slots);
  Backend::embedding_shrink(sp, plan);
  Backend::expand(ep, plan);
}

// Registers the six ops for one dispatch key.
template <typename Backend>
void register_ops(torch::Library& m) {
  m.impl("bgmv_shrink", [](const Tensor& x, const Tensor& lora_a, const Tensor& indices, const OptTensor& ranks) {
    return shrink_op<Backend>("bgmv_shrink", x, lora_a, indices, std::nullopt, std::nullopt, ranks);
  });
  m.impl("sgmv_shrink", [](const Tensor& x, const Tensor& lora_a, const Tensor& seg_indptr, const Tensor& seg_adapter,
                           const OptTensor& ranks) {
    return shrink_op<Backend>("sgmv_shrink", x, lora_a, std::nullopt, seg_indptr, seg_adapter, ranks);
  });
  m.impl("bgmv_expand", [](const Tensor& y, const Tensor& v, const Tensor& lora_b, const Tensor& indices,
                           const Tensor& scaling, const OptTensor& ranks, const OptTensor& lora_bias) {
    expand_op<Backend>("bgmv_expand", y, v, lora_b, indices, std::nullopt, std::nullopt, scaling, ranks, lora_bias);
  });
  m.impl("sgmv_expand", [](const Tensor& y, const Tensor& v, const Tensor& lora_b, const Tensor& seg_indptr,
                           const Tensor& seg_adapter, const Tensor& scaling, const OptTensor& ranks,
                           const OptTensor& lora_bias) {
    expand_op<Backend>("sgmv_expand", y, v, lora_b, std::nullopt, seg_indptr, seg_adapter, scaling, ranks,
                       lora_bias);
  });
  m.impl("add_lora", &add_lora_op<Backend>);
  m.impl("add_lora_embedding", &add_lora_embedding_op<Backend>);
}

}  // namespace lora_kernels::binding
