// Op schemas (declared once) and the CPU registration.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../cpu/lora_cpu.h"
#include "op_impl.h"

namespace lora_kernels::binding {
namespace {

// Tokens per work item sharing one pass over an adapter's weights: large items amortize the
// shrink's packing of A (packed kernel) and the expand's transpose of B. (Smaller shrink items
// for batches of few adapters, to use the packed kernel there too, measured slower: 16-token
// items took decode of 64 tokens over one adapter from ~230 to ~310 us.)
constexpr int64_t kShrinkGroupTokens = 128;
constexpr int64_t kExpandGroupTokens = 128;
static_assert(kShrinkGroupTokens == kExpandGroupTokens, "add_lora_slices shares one plan between both phases");

cpu::Plan plan_for(const TokenMap& map, int64_t num_slots, int64_t group_tokens) {
  cpu::Plan plan;
  const std::string error = cpu::build_plan(map, num_slots, group_tokens, &plan);
  TORCH_CHECK(error.empty(), error);  // values were checked before; kept as a guard
  return plan;
}

struct CpuBackend {
  static constexpr bool kAlwaysCheckValues = true;  // index values are on the host already
  struct Guard {
    explicit Guard(const at::Device&) {}
  };
  static void shrink(const ShrinkParams& p) {
    const cpu::Plan plan = plan_for(p.map, p.num_slots, kShrinkGroupTokens);
    const int64_t units = static_cast<int64_t>(plan.items.size()) * cpu::shrink_column_blocks(p, plan);
    at::parallel_for(0, units, 1, [&](int64_t b, int64_t e) { cpu::shrink(p, plan, b, e); });
  }
  static void expand(const ExpandParams& p) {
    const cpu::Plan plan = plan_for(p.map, p.num_slots, kExpandGroupTokens);
    const int64_t units = static_cast<int64_t>(plan.items.size()) * cpu::expand_column_blocks(p);
    at::parallel_for(0, units, 1, [&](int64_t b, int64_t e) { cpu::expand(p, plan, b, e); });
  }
  static void embedding_shrink(const EmbeddingShrinkParams& p) {
    const cpu::Plan plan = plan_for(p.map, p.num_slots, kExpandGroupTokens);
    const int64_t items = static_cast<int64_t>(plan.items.size());
    at::parallel_for(0, items, 1, [&](int64_t b, int64_t e) { cpu::embedding_shrink(p, plan, b, e); });
  }
  // One plan, built by the value check, shared by every slice and both phases; each phase is one
  // parallel loop over slices x work items x column blocks. The shrink takes every slice's rank
  // rows in one unit per work item (x staged once) when there are at least two items per thread.
  static void add_lora_slices(const SliceValues& values, const std::vector<ShrinkParams>& sp,
                              const std::vector<ExpandParams>& ep) {
    cpu::Plan plan;
    check_slice_values(values, kShrinkGroupTokens, &plan);
    const int64_t n = static_cast<int64_t>(sp.size());
    const bool fuse = static_cast<int64_t>(plan.items.size()) >= 2 * at::get_num_threads();
    const cpu::SliceUnits su = cpu::shrink_slice_units(sp.data(), n, plan, fuse);
    at::parallel_for(0, su.total, 1, [&](int64_t b, int64_t e) { cpu::shrink_slices(sp.data(), su, plan, b, e); });
    const cpu::SliceUnits eu = cpu::expand_slice_units(ep.data(), n, plan);
    at::parallel_for(0, eu.total, 1, [&](int64_t b, int64_t e) { cpu::expand_slices(ep.data(), eu, plan, b, e); });
  }
};

}  // namespace
}  // namespace lora_kernels::binding

TORCH_LIBRARY(lora_kernels, m) {
  m.def("bgmv_shrink(Tensor x, Tensor lora_a, Tensor indices, Tensor? ranks=None) -> Tensor");
  m.def(
      "bgmv_expand(Tensor(a!) y, Tensor v, Tensor lora_b, Tensor indices, Tensor scaling, Tensor? ranks=None, "
      "Tensor? lora_bias=None) -> ()");
  m.def("sgmv_shrink(Tensor x, Tensor lora_a, Tensor seg_indptr, Tensor seg_adapter, Tensor? ranks=None) -> Tensor");
  m.def(
      "sgmv_expand(Tensor(a!) y, Tensor v, Tensor lora_b, Tensor seg_indptr, Tensor seg_adapter, Tensor scaling, "
      "Tensor? ranks=None, Tensor? lora_bias=None) -> ()");
  m.def(
      "add_lora(Tensor(a!) y, Tensor x, Tensor lora_a, Tensor lora_b, Tensor scaling, Tensor? indices=None, *, "
      "Tensor? seg_indptr=None, Tensor? seg_adapter=None, Tensor? ranks=None, Tensor? lora_bias=None) -> ()");
  m.def(
      "add_lora_embedding(Tensor(a!) y, Tensor token_ids, Tensor lora_a, Tensor lora_b, Tensor scaling, "
      "Tensor indices, Tensor? ranks=None) -> ()");
  m.def(
      "add_lora_slices(Tensor(a!) y, Tensor x, Tensor[] lora_a, Tensor[] lora_b, Tensor[] scaling, "
      "Tensor? indices=None, *, Tensor? seg_indptr=None, Tensor? seg_adapter=None, Tensor[]? ranks=None, "
      "Tensor[]? lora_bias=None) -> ()");
}

TORCH_LIBRARY_IMPL(lora_kernels, CPU, m) {
  lora_kernels::binding::register_ops<lora_kernels::binding::CpuBackend>(m);
  lora_kernels::binding::register_slices_op<lora_kernels::binding::CpuBackend>(m);
}
