// The ops, written once over a backend (CPU or CUDA): check every argument and index value
// first, then run. Nothing is written to y unless every check passed. A backend provides
// make_plan (tokens grouped by slot once per call, on the host for the CPU, by a device kernel
// for CUDA; shrink and expand share it) and shrink / expand / embedding_shrink over that plan,
// and may provide add_lora (both phases of add_lora at once; used when present).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <deque>
#include <string>
#include <vector>

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
  // Every input: on y's device (checked first) and not overlapping y (checked once shapes are known).
  const std::vector<Arg> inputs{arg("v", v), arg("lora_b", lora_b), arg("indices", indices),
                                arg("seg_indptr", seg_indptr), arg("seg_adapter", seg_adapter),
                                arg("scaling", scaling), arg("ranks", ranks), arg("lora_bias", lora_bias)};
  check_devices(op, arg("y", y), inputs);
  const TokenMap map = make_token_map(op, num_tokens(op, "y", y, "[T, H_out]"), indices, seg_indptr, seg_adapter);
  Tensor scaling_acc;
  const ExpandParams p = prepare_expand(op, y, v, lora_b, scaling, lora_bias, map, ranks, &scaling_acc);
  check_no_overlap(op, y, inputs);
  check_index_values<Backend>(op, map, indices, seg_indptr, seg_adapter, ranks, p.num_slots, p.max_rank);
  Backend::expand(p, Backend::make_plan(map, p.num_slots));
}

template <typename Backend>
void add_lora_op(const Tensor& y, const Tensor& x, const Tensor& lora_a, const Tensor& lora_b, const Tensor& scaling,
                 const OptTensor& indices, const OptTensor& seg_indptr, const OptTensor& seg_adapter,
                 const OptTensor& ranks, const OptTensor& lora_bias) {
  const char* op = "add_lora";
  typename Backend::Guard guard(y.device());
  // Every input: on y's device (checked first) and not overlapping y (checked once shapes are known).
  const std::vector<Arg> inputs{arg("x", x), arg("lora_a", lora_a), arg("lora_b", lora_b), arg("scaling", scaling),
                                arg("indices", indices), arg("seg_indptr", seg_indptr),
                                arg("seg_adapter", seg_adapter), arg("ranks", ranks), arg("lora_bias", lora_bias)};
  check_devices(op, arg("y", y), inputs);
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
  check_no_overlap(op, y, inputs);
  check_index_values<Backend>(op, map, indices, seg_indptr, seg_adapter, ranks, sp.num_slots, sp.max_rank);
  const auto plan = Backend::make_plan(map, sp.num_slots);
  // v is internal to add_lora: a backend may run both phases its own way (CUDA: decode shapes in
  // one launch, or a split-K shrink; decode.cu); the CPU backend has no such hook.
  if constexpr (requires { Backend::add_lora(sp, ep, plan); }) {
    Backend::add_lora(sp, ep, plan);
  } else {
    Backend::shrink(sp, plan);
    Backend::expand(ep, plan);
  }
}

template <typename Backend>
void add_lora_embedding_op(const Tensor& y, const Tensor& token_ids, const Tensor& lora_a, const Tensor& lora_b,
                           const Tensor& scaling, const Tensor& indices, const OptTensor& ranks) {
  const char* op = "add_lora_embedding";
  typename Backend::Guard guard(y.device());
  // Every input: on y's device (checked first) and not overlapping y (checked once shapes are known).
  const std::vector<Arg> inputs{arg("token_ids", token_ids), arg("lora_a", lora_a), arg("lora_b", lora_b),
                                arg("scaling", scaling), arg("indices", indices), arg("ranks", ranks)};
  check_devices(op, arg("y", y), inputs);
  check_pair(op, lora_a, lora_b, "[N, dim, R]");
  const TokenMap map = make_token_map(op, num_tokens(op, "y", y, "[T, dim]"), indices, std::nullopt, std::nullopt);
  Tensor v, scaling_acc;
  const EmbeddingShrinkParams sp = prepare_embedding_shrink(op, y, token_ids, lora_a, map, ranks, &v);
  const ExpandParams ep = prepare_expand(op, y, v, lora_b, scaling, std::nullopt, map, ranks, &scaling_acc);
  check_no_overlap(op, y, inputs);
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

// The tensor arguments of add_lora_slices but y, in schema order, each element of a per-slice
// list named like "lora_a[1]": what the device and overlap checks walk.
class SliceArgs {
 public:
  void add(const char* name, const Tensor& t) { args_.push_back(arg(name, t)); }
  void add(const char* name, const OptTensor& t) { args_.push_back(arg(name, t)); }
  void add(const char* name, at::TensorList list) {
    for (size_t i = 0; i < list.size(); ++i) {
      names_.push_back(std::string(name) + "[" + std::to_string(i) + "]");  // a deque: c_str() stays put
      args_.push_back(arg(names_.back().c_str(), list[i]));
    }
  }
  void add(const char* name, const std::optional<at::TensorList>& list) {
    if (list.has_value()) add(name, *list);
  }
  const std::vector<Arg>& args() const { return args_; }

 private:
  std::deque<std::string> names_;
  std::vector<Arg> args_;
};

// add_lora_slices: n slices side by side in y's columns. Slice i is add_lora on the column view
// y[:, o_i : o_i + H_out_i] (o_i = the earlier slices' H_out summed) with lora_a[i], lora_b[i],
// scaling[i], ranks[i], lora_bias[i]; every slice shares x and the token map. Every argument of
// every slice is checked before anything is written; then Backend::add_lora_slices runs them.
template <typename Backend>
void add_lora_slices_op(const Tensor& y, const Tensor& x, at::TensorList lora_a, at::TensorList lora_b,
                        at::TensorList scaling, const OptTensor& indices, const OptTensor& seg_indptr,
                        const OptTensor& seg_adapter, std::optional<at::TensorList> ranks,
                        std::optional<at::TensorList> lora_bias) {
  const char* op = "add_lora_slices";
  typename Backend::Guard guard(y.device());
  SliceArgs inputs;  // every tensor but y, of every slice
  inputs.add("x", x);
  inputs.add("lora_a", lora_a);
  inputs.add("lora_b", lora_b);
  inputs.add("scaling", scaling);
  inputs.add("indices", indices);
  inputs.add("seg_indptr", seg_indptr);
  inputs.add("seg_adapter", seg_adapter);
  inputs.add("ranks", ranks);
  inputs.add("lora_bias", lora_bias);
  check_devices(op, arg("y", y), inputs.args());
  const int64_t T = num_tokens(op, "x", x, "[T, H_in]");
  TORCH_CHECK(num_tokens(op, "y", y, "[T, H_out]") == T, op, ": y must have shape [T, H_out] with T = ", T,
              " (from x), got shape ", y.sizes(), ".");
  TORCH_CHECK(y.scalar_type() == x.scalar_type(), op, ": y must have the same dtype as x (", x.scalar_type(),
              "), got ", y.scalar_type(), ".");
  const size_t n = lora_a.size();
  TORCH_CHECK(n > 0, op, ": lora_a must be a list of at least one slice's [N, R, H_in] stack, got an empty list.");
  auto check_length = [&](const char* name, size_t length) {
    TORCH_CHECK(length == n, op, ": ", name, " must be a list of ", n, " tensors (one per slice, as lora_a), got ",
                length, ".");
  };
  check_length("lora_b", lora_b.size());
  check_length("scaling", scaling.size());
  if (ranks.has_value()) check_length("ranks", ranks->size());
  if (lora_bias.has_value()) check_length("lora_bias", lora_bias->size());

  std::vector<std::string> names(n);  // "add_lora_slices (slice i)": what the per-slice checks say
  int64_t num_slots = 0, h_out_total = 0;
  std::string h_out_sum;
  for (size_t i = 0; i < n; ++i) {
    names[i] = std::string(op) + " (slice " + std::to_string(i) + ")";
    check_pair(names[i].c_str(), lora_a[i], lora_b[i], "[N, H_out, R]");
    if (i == 0) num_slots = lora_a[0].size(0);
    TORCH_CHECK(lora_a[i].size(0) == num_slots, op, ": every slice must have the same number of slots N = ",
                num_slots, " (from lora_a[0]), got lora_a[", i, "] with shape ", lora_a[i].sizes(), ".");
    const int64_t h_out = lora_b[i].size(1);
    if (lora_bias.has_value()) {
      const Tensor& bias = (*lora_bias)[i];
      TORCH_CHECK(bias.dim() == 2 && bias.size(0) == num_slots && bias.size(1) == h_out, names[i],
                  ": lora_bias must have shape [N, H_out] with N = ", num_slots, " and H_out = ", h_out,
                  " (from lora_b), got shape ", bias.sizes(), ".");
    }
    h_out_total += h_out;
    h_out_sum += (i > 0 ? " + " : "") + std::to_string(h_out);
  }
  TORCH_CHECK(y.size(1) == h_out_total, op, ": y must have shape [T, H_out] with H_out = ", h_out_sum, " = ",
              h_out_total, " (the slices' H_out side by side), got shape ", y.sizes(), ".");

  const TokenMap map = make_token_map(op, T, indices, seg_indptr, seg_adapter);
  std::vector<Tensor> v(n), scaling_acc(n);
  std::vector<ShrinkParams> shrink(n);
  std::vector<ExpandParams> expand(n);
  std::vector<OptTensor> slice_ranks(n);
  std::vector<int64_t> max_ranks(n);
  int64_t offset = 0;
  for (size_t i = 0; i < n; ++i) {
    slice_ranks[i] = ranks.has_value() ? OptTensor((*ranks)[i]) : std::nullopt;
    const OptTensor bias_i = lora_bias.has_value() ? OptTensor((*lora_bias)[i]) : std::nullopt;
    const int64_t h_out = lora_b[i].size(1);
    shrink[i] = prepare_shrink(names[i].c_str(), x, lora_a[i], map, slice_ranks[i], &v[i]);
    expand[i] = prepare_expand(names[i].c_str(), y.narrow(1, offset, h_out), v[i], lora_b[i], scaling[i], bias_i,
                               map, slice_ranks[i], &scaling_acc[i]);
    offset += h_out;
    max_ranks[i] = shrink[i].max_rank;
  }
  // y as a whole: an input of one slice must not share memory with another slice's columns either.
  check_no_overlap(op, y, inputs.args());
  if (Backend::kAlwaysCheckValues || debug_checks_enabled())
    check_slice_values(op, map, indices, seg_indptr, seg_adapter, slice_ranks, max_ranks, num_slots);
  // One plan (the grouping of tokens by slot) for every slice and both phases.
  Backend::add_lora_slices(shrink, expand, Backend::make_plan(map, num_slots));
}

template <typename Backend>
void register_slices_op(torch::Library& m) {
  m.impl("add_lora_slices", &add_lora_slices_op<Backend>);
}

}  // namespace lora_kernels::binding
