// CUDA registration: launches on the current stream, no host synchronization (index values
// are checked on the host only under LORA_KERNELS_DEBUG=1; kernels stay in bounds anyway). Each
// op call first builds the device-side grouping plan (make_plan), then launches the kernels.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "lora_kernels/launch.h"
#include "op_impl.h"

namespace lora_kernels::binding {
namespace {

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

struct CudaBackend {
  static constexpr bool kAlwaysCheckValues = false;
  // Sets the device of the op's lead tensor; a CPU lead tensor (another argument on CUDA sent
  // the call here) sets nothing, so the device check names the mismatch instead.
  struct Guard {
    explicit Guard(const at::Device& device)
        : guard(device.is_cuda() ? std::optional<c10::Device>(device) : std::nullopt) {}
    c10::cuda::OptionalCUDAGuard guard;
  };
  // The tokens ordered by slot on the device (launch.h launch_build_plan), once per op call:
  // shrink, expand and every slice read it. The workspace comes from the caching allocator on
  // the op's device (no sync, graph-safe: freed in stream order when the op returns, after its
  // launches are enqueued); the plan kernel runs on the current stream before them.
  struct Plan {
    at::Tensor workspace;
    GroupPlan plan;
  };
  static Plan make_plan(const TokenMap& map, int64_t num_slots) {
    Plan out;
    const size_t bytes = cuda::plan_workspace_bytes(map.num_tokens, num_slots);
    TORCH_CHECK(bytes > 0, "lora_kernels: the CUDA kernels take at most ", cuda::kMaxPlanTokens,
                " tokens and ", cuda::kMaxPlanSlots, " adapter slots, got T = ", map.num_tokens, " and N = ",
                num_slots, ".");
    out.workspace = at::empty({static_cast<int64_t>(bytes)},
                              at::TensorOptions().dtype(at::kByte).device(at::kCUDA, c10::cuda::current_device()));
    C10_CUDA_CHECK(cuda::launch_build_plan(map, num_slots, out.workspace.data_ptr(), bytes, &out.plan,
                                           current_stream()));
    return out;
  }
  template <typename Params>
  static Params with_plan(Params p, const Plan& plan) {
    p.map.plan = plan.plan;
    return p;
  }
  // The shrink alone (bgmv_shrink / sgmv_shrink) and add_lora take decode_config's path: a
  // split-K shrink for few tokens, and for add_lora shrink + expand in one launch where the model
  // in decode.cu says it pays. The workspace comes from the caching allocator (no host sync,
  // graph capturable); its counters are cleared on the stream by the launcher.
  static void shrink(const ShrinkParams& p, const Plan& plan) {
    const cuda::DecodeConfig c = cuda::decode_config(p, nullptr);
    const at::Tensor ws = workspace(c.workspace_bytes);
    C10_CUDA_CHECK(cuda::launch_shrink_decode(with_plan(p, plan), c, ws.defined() ? ws.data_ptr() : nullptr, false,
                                              current_stream()));
  }
  static void add_lora(const ShrinkParams& sp, const ExpandParams& ep, const Plan& plan) {
    const cuda::DecodeConfig c = cuda::decode_config(sp, &ep);
    const at::Tensor ws = workspace(c.workspace_bytes);
    C10_CUDA_CHECK(cuda::launch_add_lora(with_plan(sp, plan), with_plan(ep, plan), c,
                                         ws.defined() ? ws.data_ptr() : nullptr, false, current_stream()));
  }
  static at::Tensor workspace(int64_t bytes) {
    if (bytes == 0) return {};
    return at::empty({bytes}, at::TensorOptions().dtype(at::kByte).device(at::kCUDA, c10::cuda::current_device()));
  }
  static void expand(const ExpandParams& p, const Plan& plan) {
    C10_CUDA_CHECK(cuda::launch_expand(with_plan(p, plan), current_stream()));
  }
  static void embedding_shrink(const EmbeddingShrinkParams& p, const Plan&) {  // per token: no plan
    C10_CUDA_CHECK(cuda::launch_embedding_shrink(p, current_stream()));
  }
  // One launch per phase for every slice (up to 8 slices a launch; more go in chunks of 8): each
  // block finds its slice from a folded grid dimension and runs the add_lora kernel body on that
  // slice's params, by the decode_config add_lora would take on that slice (split-K shrink, fused
  // shrink + expand, or plain), so each slice is bit-equal to add_lora on its column view. The
  // decode workspace comes from the caching allocator, as add_lora's. No host sync.
  static void add_lora_slices(const std::vector<ShrinkParams>& sp, const std::vector<ExpandParams>& ep,
                              const Plan& plan) {
    std::vector<ShrinkParams> s;
    std::vector<ExpandParams> e;
    std::vector<cuda::DecodeConfig> c;
    for (const ShrinkParams& p : sp) s.push_back(with_plan(p, plan));
    for (const ExpandParams& p : ep) e.push_back(with_plan(p, plan));
    for (size_t i = 0; i < s.size(); ++i) c.push_back(cuda::decode_config(s[i], &e[i]));
    const int64_t n = static_cast<int64_t>(s.size());
    const at::Tensor ws = workspace(cuda::add_lora_slices_workspace_bytes(s.data(), e.data(), c.data(), n));
    C10_CUDA_CHECK(cuda::launch_add_lora_slices(s.data(), e.data(), c.data(), n, ws.defined() ? ws.data_ptr() : nullptr,
                                                false, current_stream()));
  }
};

}  // namespace
}  // namespace lora_kernels::binding

TORCH_LIBRARY_IMPL(lora_kernels, CUDA, m) {
  lora_kernels::binding::register_ops<lora_kernels::binding::CudaBackend>(m);
  lora_kernels::binding::register_slices_op<lora_kernels::binding::CudaBackend>(m);
}
