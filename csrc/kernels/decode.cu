// Decode launchers (launch.h): the shape-only choice between the plain shrink + expand, the
// split-K shrink + expand, and the fused one-launch shrink + expand (decode.cuh).
//
// The rule, and the model behind it (H200: 132 SMs; every figure below is a model, no GPU
// timing has been measured; benchmarks/RESULTS.md has the table of choices):
//
// - A decode call moves little (T = 1, r 16, 4096 -> 4096 in bf16: 128 KB of A, 128 KB of B), so
//   its time is launches plus dependent memory round trips (t_mem: one DRAM round trip, ~0.7 µs
//   assumed), not bandwidth. The plain shrink runs T * ceil(R / 4) blocks (T = 1, R = 16: 4
//   blocks on 132 SMs); each thread walks H_in in ceil(H_in / (256 * VEC)) passes (bf16: 2048
//   elements a pass), each pass one round trip.
// - Split-K. `splits` chunks of H_in give T * ceil(R / 4) * splits blocks and passes of
//   ceil(chunk / (256 * VEC)), for the cost of the reduction: one atomic per block and the last
//   block reading splits * T * R fp32 partials from L2, about one more round trip (two L2 trips).
//   The rule: as many splits as bring the grid to kDecodeTargetBlocks (2 blocks per SM, which
//   decode_kernel's __launch_bounds__(256, 2) guarantees), each split at least one full
//   pass of the block (no thread idles), and for a shrink alone only when that removes at least
//   2 passes (else the reduction eats the gain): T = 1, r 16, H_in 14336 (down_proj) in bf16:
//   7 passes -> 1, 4 -> 28 blocks; H_in 4096 in bf16 (2 passes -> 1) stays plain; in fp32 (4
//   passes) it splits in 4. T * ceil(R / 4) >= 264 (T = 64, R = 16) fills the GPU: no split.
// - Fused. After the shrink the last block of each group holds the group's v; running the
//   group's expand there saves a launch (launch, drain and fill, ~2 µs assumed) and the v round
//   trip, and its reduction is already paid (so any split that removes a pass is taken). It costs
//   parallelism: that block streams the group's B (H_out * r elements) alone, ~one round trip
//   per 256-column tile, where launch_expand spreads the tiles over T * ceil(H_out / 256) blocks
//   (one round trip). One launch pays while tiles * 0.7 <= 2 + 0.7, i.e. up to 4 tiles
//   (kFusedMaxColTiles: H_out <= 1024, e.g. the k / v projections of a GQA model, or small
//   models), and while every group's last block can run at once (T <= kFusedMaxTokens = 64).
//   A 4096 -> 4096 decode (16 tiles) keeps two launches.
// - add_lora_slices (launch_add_lora_slices): each slice takes the rule above on its own shapes,
//   not one rule for all. The rule's inputs differ per slice (R, and H_out for fusion: a GQA qkv
//   decode has q at 4096 columns, 16 tiles, and k / v at 1024, 4 tiles), so one shared choice
//   would either fuse q (one block streaming 16 tiles) or keep k and v in two launches; and each
//   slice's bits stay those of add_lora on that slice. The slices' blocks share one launch, so
//   their splits add up (up to n times kDecodeTargetBlocks); that costs a second wave of blocks
//   at most, against one launch per slice saved. The expand of the slices not fused follows in
//   one launch_expand_slices; a step whose slices are all fused is one launch in all.
#include <cuda_runtime.h>

#include <vector>

#include "dispatch.cuh"
#include "lora_kernels/decode.cuh"
#include "lora_kernels/kernel_launch.h"
#include "lora_kernels/launch.h"

namespace lora_kernels::cuda {
namespace {
constexpr int kRows = tiles::kShrinkRows;
constexpr int kMaxTokens = tiles::kGroupTokens;

// The vector paths: the same rules as shrink.cu's shrink_vectorized and expand.cu's
// expand_vectorized (x's rows and A 16-byte aligned; B aligned and R a multiple of the width).
bool shrink_vec(const ShrinkParams& p, int64_t vec) {
  return p.h_in % vec == 0 && p.x_stride % vec == 0 && detail::aligned16(p.x) && detail::aligned16(p.lora_a);
}
bool expand_vec(const ExpandParams& p, int64_t vec) {
  return p.max_rank % vec == 0 && detail::aligned16(p.lora_b);
}

int64_t elem_bytes(DType t) { return t == DType::kFloat16 || t == DType::kBFloat16 ? 2 : (t == DType::kFloat32 ? 4 : 8); }
int64_t acc_bytes(DType t) { return t == DType::kFloat64 ? 8 : 4; }

// Partials first (256-byte aligned), then the counters.
int64_t partial_bytes(const ShrinkParams& p, int64_t splits) {
  return (splits * p.map.num_tokens * p.max_rank * acc_bytes(p.dtype) + 255) / 256 * 256;
}

bool uses_decode_kernel(const DecodeConfig& c) { return c.fused || c.splits > 1; }

int64_t row_blocks(const ShrinkParams& p) { return (p.max_rank + kRows - 1) / kRows; }

// H_in elements per split, a multiple of the vector width.
int64_t chunk_of(const ShrinkParams& p, int64_t splits, int vec) {
  const int64_t per = (p.h_in + splits - 1) / splits;
  return (per + vec - 1) / vec * vec;
}

cudaError_t launch_decode(const ShrinkParams& sp, const ExpandParams* ep, const DecodeConfig& c, void* workspace,
                          bool counters_zero, cudaStream_t stream) {
  const int64_t T = sp.map.num_tokens;
  const int64_t splits = c.splits < 1 ? 1 : c.splits;
  const int64_t grid_y = row_blocks(sp) * splits;
  if (workspace == nullptr || grid_y > detail::kMaxGridY || T > 0x7fffffff) return cudaErrorInvalidValue;
  if (!detail::plan_ready(sp.map, sp.num_slots) || (ep != nullptr && !detail::plan_ready(ep->map, ep->num_slots)))
    return cudaErrorInvalidValue;
  detail::DecodeParams d;
  d.shrink = sp;
  if (ep != nullptr) d.expand = *ep;
  d.partial = workspace;
  d.counters = reinterpret_cast<unsigned*>(static_cast<char*>(workspace) + partial_bytes(sp, splits));
  d.splits = splits;
  if (!counters_zero) {
    const cudaError_t err = cudaMemsetAsync(d.counters, 0, static_cast<size_t>(T) * sizeof(unsigned), stream);
    if (err != cudaSuccess) return err;
  }
  // One block column per group of the plan (block x runs group x; counters[x] is its counter).
  const dim3 grid(static_cast<unsigned>(max_groups(T, sp.num_slots, kMaxTokens)), static_cast<unsigned>(grid_y));
  return detail::dispatch_dtype(sp.dtype, [&](auto elem) {
    using E = decltype(elem);
    constexpr int kVec = 16 / sizeof(E);
    const bool va = shrink_vec(sp, kVec);
    d.chunk = chunk_of(sp, splits, va ? kVec : 1);
    if (ep == nullptr) {
      if (va)
        LK_LAUNCH(grid, detail::kThreads, 0, stream, detail::decode_kernel<E, kVec, 1, kRows, kMaxTokens, false>)(d);
      else
        LK_LAUNCH(grid, detail::kThreads, 0, stream, detail::decode_kernel<E, 1, 1, kRows, kMaxTokens, false>)(d);
    } else {
      const bool vb = expand_vec(*ep, kVec);
      if (va && vb)
        LK_LAUNCH(grid, detail::kThreads, 0, stream, detail::decode_kernel<E, kVec, kVec, kRows, kMaxTokens, true>)(d);
      else if (va)
        LK_LAUNCH(grid, detail::kThreads, 0, stream, detail::decode_kernel<E, kVec, 1, kRows, kMaxTokens, true>)(d);
      else if (vb)
        LK_LAUNCH(grid, detail::kThreads, 0, stream, detail::decode_kernel<E, 1, kVec, kRows, kMaxTokens, true>)(d);
      else
        LK_LAUNCH(grid, detail::kThreads, 0, stream, detail::decode_kernel<E, 1, 1, kRows, kMaxTokens, true>)(d);
    }
    return cudaGetLastError();
  });
}
// What slice i of launch_add_lora_slices runs in the first launch (decode.cuh DecodeSlice),
// as launch_add_lora would on that slice alone with config c.
detail::SliceMode slice_mode(const ShrinkParams& sp, const ExpandParams& ep, const DecodeConfig& c) {
  if (sp.map.num_tokens == 0 || sp.max_rank == 0) return detail::SliceMode::kNothing;
  if (c.fused) return ep.h_out == 0 ? detail::SliceMode::kNothing : detail::SliceMode::kFused;
  return c.splits > 1 ? detail::SliceMode::kSplit : detail::SliceMode::kPlain;
}

int64_t slice_blocks(const ShrinkParams& sp, detail::SliceMode m, const DecodeConfig& c) {
  if (m == detail::SliceMode::kNothing) return 0;
  return row_blocks(sp) * (m == detail::SliceMode::kPlain ? 1 : (c.splits < 1 ? 1 : c.splits));
}
}  // namespace

DecodeConfig decode_config(const ShrinkParams& sp, const ExpandParams* ep) {
  DecodeConfig c;
  const int64_t T = sp.map.num_tokens;
  if (T == 0 || sp.max_rank == 0) return c;
  const int64_t vec = shrink_vec(sp, 16 / elem_bytes(sp.dtype)) ? 16 / elem_bytes(sp.dtype) : 1;
  const int64_t pass = detail::kThreads * vec;
  const int64_t max_splits = sp.h_in / pass > 1 ? sp.h_in / pass : 1;
  const int64_t blocks = T * row_blocks(sp);
  const int64_t want = tiles::kDecodeTargetBlocks / blocks > 1 ? tiles::kDecodeTargetBlocks / blocks : 1;
  c.fused = ep != nullptr && ep->h_out > 0 && T <= tiles::kFusedMaxTokens &&
            detail::ceil_div(ep->h_out, detail::kThreads) <= static_cast<unsigned>(tiles::kFusedMaxColTiles);
  c.splits = want < max_splits ? want : max_splits;
  const int64_t plain_passes = (sp.h_in + pass - 1) / pass;
  const int64_t split_passes = ((sp.h_in + c.splits - 1) / c.splits + pass - 1) / pass;
  if (!c.fused && plain_passes - split_passes < 2) c.splits = 1;  // the reduction would eat the gain
  c.workspace_bytes = decode_workspace_bytes(sp, c);
  return c;
}

int64_t decode_workspace_bytes(const ShrinkParams& sp, const DecodeConfig& c) {
  if (!uses_decode_kernel(c) || sp.map.num_tokens == 0 || sp.max_rank == 0) return 0;
  const int64_t splits = c.splits < 1 ? 1 : c.splits;
  return partial_bytes(sp, splits) + sp.map.num_tokens * static_cast<int64_t>(sizeof(unsigned));
}

cudaError_t launch_shrink_decode(const ShrinkParams& sp, const DecodeConfig& c, void* workspace, bool counters_zero,
                                 cudaStream_t stream) {
  if (c.splits <= 1) return launch_shrink(sp, stream);
  if (sp.map.num_tokens == 0 || sp.max_rank == 0) return cudaSuccess;
  DecodeConfig split = c;
  split.fused = false;
  return launch_decode(sp, nullptr, split, workspace, counters_zero, stream);
}

cudaError_t launch_add_lora(const ShrinkParams& sp, const ExpandParams& ep, const DecodeConfig& c, void* workspace,
                            bool counters_zero, cudaStream_t stream) {
  if (!c.fused) {
    const cudaError_t err = launch_shrink_decode(sp, c, workspace, counters_zero, stream);
    return err != cudaSuccess ? err : launch_expand(ep, stream);
  }
  if (sp.map.num_tokens == 0 || sp.max_rank == 0 || ep.h_out == 0) return cudaSuccess;
  return launch_decode(sp, &ep, c, workspace, counters_zero, stream);
}

// Workspace layout of launch_add_lora_slices: the partials of every slice that runs the decode
// kernel (kSplit, kFused), one 256-byte aligned region each in slice order, then their counters,
// T per such slice, in one run (one memset clears them all).
int64_t add_lora_slices_workspace_bytes(const ShrinkParams* sp, const ExpandParams* ep, const DecodeConfig* c,
                                        int64_t n) {
  int64_t partials = 0, decoding = 0;
  for (int64_t i = 0; i < n; ++i) {
    const detail::SliceMode m = slice_mode(sp[i], ep[i], c[i]);
    if (m != detail::SliceMode::kSplit && m != detail::SliceMode::kFused) continue;
    partials += partial_bytes(sp[i], c[i].splits < 1 ? 1 : c[i].splits);
    ++decoding;
  }
  if (decoding == 0) return 0;
  return partials + decoding * sp[0].map.num_tokens * static_cast<int64_t>(sizeof(unsigned));
}

cudaError_t launch_add_lora_slices(const ShrinkParams* sp, const ExpandParams* ep, const DecodeConfig* c, int64_t n,
                                   void* workspace, bool counters_zero, cudaStream_t stream) {
  if (n <= 0 || sp[0].map.num_tokens == 0) return cudaSuccess;
  if (!detail::plans_ready(sp, n) || !detail::plans_ready(ep, n)) return cudaErrorInvalidValue;
  const int64_t T = sp[0].map.num_tokens;
  if (T > 0x7fffffff) return cudaErrorInvalidValue;
  // Each slice's mode; no slice on the decode kernel: the two slices launches as they are.
  std::vector<detail::DecodeSlice> slices(static_cast<size_t>(n));
  int64_t decoding = 0;
  for (int64_t i = 0; i < n; ++i) {
    const detail::SliceMode m = slice_mode(sp[i], ep[i], c[i]);
    if (slice_blocks(sp[i], m, c[i]) > detail::kMaxGridY) return cudaErrorInvalidValue;
    slices[i].mode = m;
    decoding += m == detail::SliceMode::kSplit || m == detail::SliceMode::kFused;
  }
  if (decoding == 0) {
    const cudaError_t err = launch_shrink_slices(sp, n, stream);
    return err != cudaSuccess ? err : launch_expand_slices(ep, n, stream);
  }
  if (workspace == nullptr) return cudaErrorInvalidValue;
  char* base = static_cast<char*>(workspace);
  int64_t partials = 0;
  for (int64_t i = 0; i < n; ++i)
    if (slices[i].mode == detail::SliceMode::kSplit || slices[i].mode == detail::SliceMode::kFused)
      partials += partial_bytes(sp[i], c[i].splits < 1 ? 1 : c[i].splits);
  unsigned* counters = reinterpret_cast<unsigned*>(base + partials);
  if (!counters_zero) {
    const cudaError_t err =
        cudaMemsetAsync(counters, 0, static_cast<size_t>(decoding * T) * sizeof(unsigned), stream);
    if (err != cudaSuccess) return err;
  }
  return detail::dispatch_dtype(sp[0].dtype, [&](auto elem) {
    using E = decltype(elem);
    constexpr int kVec = 16 / sizeof(E);
    int64_t offset = 0, counter = 0;
    std::vector<int8_t> va(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      detail::DecodeSlice& s = slices[i];
      s.d.shrink = sp[i];
      s.d.expand = ep[i];
      va[i] = shrink_vec(sp[i], kVec);  // as launch_shrink / launch_decode decide
      s.vb = expand_vec(ep[i], kVec);   // as launch_decode decides
      const int64_t splits = c[i].splits < 1 ? 1 : c[i].splits;
      s.d.splits = s.mode == detail::SliceMode::kPlain ? 1 : splits;
      s.d.chunk = chunk_of(sp[i], s.d.splits, va[i] ? kVec : 1);
      if (s.mode == detail::SliceMode::kSplit || s.mode == detail::SliceMode::kFused) {
        s.d.partial = base + offset;
        s.d.counters = counters + counter * T;
        offset += partial_bytes(sp[i], splits);
        ++counter;
      }
    }
    using Batch = detail::SliceBatch<detail::DecodeSlice>;
    static_assert(sizeof(Batch) <= 4096, "decode_slices_kernel's argument must fit 4 KB of kernel parameters");
    const detail::DecodeSlice* first = slices.data();
    const dim3 block(detail::kThreads);
    cudaError_t err = detail::for_each_slice_batch<Batch>(
        first, n, detail::kMaxSlicesPerLaunch,
        [&](const detail::DecodeSlice& s) { return slice_blocks(s.d.shrink, s.mode, c[&s - first]); },
        [&](const detail::DecodeSlice& s) { return va[&s - first] != 0; },
        [&](const Batch& batch, int64_t blocks) {
          const dim3 grid(static_cast<unsigned>(max_groups(T, sp[0].num_slots, kMaxTokens)),
                          static_cast<unsigned>(blocks));
          LK_LAUNCH(grid, block, 0, stream, detail::decode_slices_kernel<E, kVec, kRows, kMaxTokens>)(batch);
          return cudaGetLastError();
        });
    if (err != cudaSuccess) return err;
    // The expand of every slice not fused, in launch_expand_slices' launches.
    std::vector<ExpandParams> rest;
    for (int64_t i = 0; i < n; ++i)
      if (!c[i].fused) rest.push_back(ep[i]);  // as launch_add_lora: a fused config never expands apart
    return rest.empty() ? cudaSuccess : launch_expand_slices(rest.data(), static_cast<int64_t>(rest.size()), stream);
  });
}

}  // namespace lora_kernels::cuda
