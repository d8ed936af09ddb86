// Op schemas (declared once), the CPU registration, and the Autograd-key kernel that refuses
// inputs requiring grad (the ops are inference-only).
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <c10/core/GradMode.h>
#include <torch/library.h>

#include <string>

#include "../cpu/lora_cpu.h"
#include "op_impl.h"

namespace lora_kernels::binding {
namespace {

// Tokens per work item sharing one pass over an adapter's weights, in the shrink and the expand
// alike (one plan serves both): large items amortize the shrink's packing of A (packed kernel)
// and the expand's transpose of B. (Smaller shrink items for batches of few adapters, to use the
// packed kernel there too, measured slower: 16-token items took decode of 64 tokens over one
// adapter from ~230 to ~310 us.)
constexpr int64_t kGroupTokens = 128;

struct CpuBackend {
  static constexpr bool kAlwaysCheckValues = true;  // index values are on the host already
  struct Guard {
    explicit Guard(const at::Device&) {}
  };
  using Plan = cpu::Plan;
  // Index values were checked (check_values) before any plan is made.
  static Plan make_plan(const TokenMap& map, int64_t num_slots) {
    return cpu::build_plan(map, num_slots, kGroupTokens);
  }
  static void shrink(const ShrinkParams& p, const Plan& plan) {
    const int64_t units = static_cast<int64_t>(plan.items.size()) * cpu::shrink_column_blocks(p, plan);
    at::parallel_for(0, units, 1, [&](int64_t b, int64_t e) { cpu::shrink(p, plan, b, e); });
  }
  static void expand(const ExpandParams& p, const Plan& plan) {
    const int64_t units = static_cast<int64_t>(plan.items.size()) * cpu::expand_column_blocks(p);
    at::parallel_for(0, units, 1, [&](int64_t b, int64_t e) { cpu::expand(p, plan, b, e); });
  }
  static void embedding_shrink(const EmbeddingShrinkParams& p, const Plan& plan) {
    const int64_t items = static_cast<int64_t>(plan.items.size());
    at::parallel_for(0, items, 1, [&](int64_t b, int64_t e) { cpu::embedding_shrink(p, plan, b, e); });
  }
  // add_lora_slices: the call's one plan serves every slice and both phases; each phase is one
  // parallel loop over slices x work items x column blocks. The shrink takes every slice's rank
  // rows in one unit per work item (x staged once) when there are at least two items per thread.
  static void add_lora_slices(const std::vector<ShrinkParams>& sp, const std::vector<ExpandParams>& ep,
                              const Plan& plan) {
    const int64_t n = static_cast<int64_t>(sp.size());
    const bool fuse = static_cast<int64_t>(plan.items.size()) >= 2 * at::get_num_threads();
    const cpu::SliceUnits su = cpu::shrink_slice_units(sp.data(), n, plan, fuse);
    at::parallel_for(0, su.total, 1, [&](int64_t b, int64_t e) { cpu::shrink_slices(sp.data(), su, plan, b, e); });
    const cpu::SliceUnits eu = cpu::expand_slice_units(ep.data(), n, plan);
    at::parallel_for(0, eu.total, 1, [&](int64_t b, int64_t e) { cpu::expand_slices(ep.data(), eu, plan, b, e); });
  }
};

// Autograd key, every op: under grad mode, an argument that requires grad is refused by name
// (the ops have no derivative: without this, torch's fallback returns results that fail only
// later, in backward, with a message about something else); an element of a list argument
// (add_lora_slices' per-slice tensors) is named like lora_a[1]. Otherwise the call goes on to
// the backend kernel, as torch's own fallback would send it.
void inference_only(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
  if (c10::GradMode::is_enabled()) {
    const auto& args = op.schema().arguments();
    const size_t first = stack->size() - args.size();
    auto refuse = [&](const std::string& arg_name) {
      std::string name = op.schema().name();
      name = name.substr(name.find("::") + 2);
      TORCH_CHECK(false, name, ": ", arg_name,
                  " requires grad, but the lora_kernels ops are inference-only (no autograd); call them under "
                  "torch.no_grad() or torch.inference_mode(), or pass ",
                  arg_name, ".detach().");
    };
    for (size_t i = 0; i < args.size(); ++i) {
      const c10::IValue& value = (*stack)[first + i];
      if (value.isTensor() && value.toTensor().requires_grad()) refuse(args[i].name());
      if (!value.isList()) continue;
      const auto items = value.toListRef();
      for (size_t j = 0; j < items.size(); ++j)
        if (items[j].isTensor() && items[j].toTensor().requires_grad())
          refuse(args[i].name() + "[" + std::to_string(j) + "]");
    }
  }
  op.redispatchBoxed(keys & c10::after_autograd_keyset, stack);
}

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

TORCH_LIBRARY_IMPL(lora_kernels, Autograd, m) {
  for (const char* name :
       {"bgmv_shrink", "sgmv_shrink", "bgmv_expand", "sgmv_expand", "add_lora", "add_lora_embedding",
        "add_lora_slices"})
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&lora_kernels::binding::inference_only>());
}
