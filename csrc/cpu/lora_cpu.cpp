// CPU implementation of shrink / expand / embedding shrink (see lora_cpu.h).
#include "lora_cpu.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include "lora_kernels/numeric.h"

// Hot loops get an AVX2+FMA clone chosen at load time; the default clone runs anywhere.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LK_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define LK_CPU_CLONES
#endif

namespace lora_kernels::cpu {
namespace {

// Rank rows per shrink work unit, for small items (a few tokens still spread over the threads);
// when every item has kPackedMinTokens tokens on average, a unit takes all R rows and the packed
// kernel (packing W costs about what 16 tokens' worth of dot products saves).
constexpr int64_t kShrinkRowsPerBlock = 4;
constexpr int64_t kPackedMinTokens = 16;
constexpr int64_t kPackedMinItems = 4;  // fewer items: split the rank so that every thread works
constexpr int64_t kExpandColsPerBlock = 512;  // output features per expand work unit
constexpr int64_t kKBlock = 1024;  // H_in elements staged per pass (fits L1/L2 with the tokens)
constexpr int64_t kOBlock = 64;    // output features transposed per pass in the expand
// Up to this many tokens per work item the expand takes one dot product per output over B's
// contiguous rows; transposing a block of B only pays off when more tokens share it.
constexpr int64_t kExpandDotMaxTokens = 2;

// acc[m * J + j] += sum_k x[m][k] * w[j][k], k < len: the shrink's inner product tile.
// Every loop over MT / JT is unrolled so the MT * JT vector accumulators live in registers.
template <typename Acc, int MT, int JT>
inline __attribute__((always_inline)) void dot_tile(const Acc* const* x, const Acc* const* w,
                                                    int64_t len, Acc* acc, int64_t J) {
  constexpr int kLanes = 32 / sizeof(Acc);
  typedef Acc VecT __attribute__((vector_size(32)));
  const Acc* xr[MT];
  const Acc* wr[JT];
#pragma GCC unroll 8
  for (int m = 0; m < MT; ++m) xr[m] = x[m];
#pragma GCC unroll 8
  for (int j = 0; j < JT; ++j) wr[j] = w[j];
  VecT s[MT * JT];
#pragma GCC unroll 16
  for (int i = 0; i < MT * JT; ++i) s[i] = VecT{};
  int64_t k = 0;
  for (; k + kLanes <= len; k += kLanes) {
    VecT xv[MT], wv[JT];
#pragma GCC unroll 8
    for (int m = 0; m < MT; ++m) std::memcpy(&xv[m], xr[m] + k, sizeof(VecT));
#pragma GCC unroll 8
    for (int j = 0; j < JT; ++j) std::memcpy(&wv[j], wr[j] + k, sizeof(VecT));
#pragma GCC unroll 8
    for (int m = 0; m < MT; ++m)
#pragma GCC unroll 8
      for (int j = 0; j < JT; ++j) s[m * JT + j] += xv[m] * wv[j];
  }
#pragma GCC unroll 8
  for (int m = 0; m < MT; ++m)
#pragma GCC unroll 8
    for (int j = 0; j < JT; ++j) {
      Acc lanes[kLanes];
      std::memcpy(lanes, &s[m * JT + j], sizeof(lanes));
      Acc total = 0;
      for (int l = 0; l < kLanes; ++l) total += lanes[l];
      for (int64_t kk = k; kk < len; ++kk) total += xr[m][kk] * wr[j][kk];
      acc[m * J + j] += total;
    }
}

template <typename Acc>
inline __attribute__((always_inline)) void dot_block_impl(const Acc* const* x, int64_t M,
                                                          const Acc* const* w, int64_t J,
                                                          int64_t len, Acc* acc) {
  int64_t m = 0;
  for (; m + 2 <= M; m += 2) {
    int64_t j = 0;
    for (; j + 4 <= J; j += 4) dot_tile<Acc, 2, 4>(x + m, w + j, len, acc + m * J + j, J);
    for (; j < J; ++j) dot_tile<Acc, 2, 1>(x + m, w + j, len, acc + m * J + j, J);
  }
  for (; m < M; ++m) {
    int64_t j = 0;
    for (; j + 4 <= J; j += 4) dot_tile<Acc, 1, 4>(x + m, w + j, len, acc + m * J + j, J);
    for (; j < J; ++j) dot_tile<Acc, 1, 1>(x + m, w + j, len, acc + m * J + j, J);
  }
}

LK_CPU_CLONES void dot_block(const float* const* x, int64_t M, const float* const* w, int64_t J,
                             int64_t len, float* acc) {
  dot_block_impl<float>(x, M, w, J, len, acc);
}
LK_CPU_CLONES void dot_block(const double* const* x, int64_t M, const double* const* w, int64_t J,
                             int64_t len, double* acc) {
  dot_block_impl<double>(x, M, w, J, len, acc);
}

// The outer-product micro-kernel shared by the packed shrink and the expand:
//   c[2m], c[2m+1] (two vectors = 2 * kLanes columns) += sum_k a[m][k] * b[k * b_stride + 0 : 2 * kLanes]
// for MT rows of a. Each k step is two vector loads of b and one broadcast per row; 2 * MT
// accumulators stay in registers and no horizontal sums are needed.
template <typename Acc, int MT, typename VecT>
inline __attribute__((always_inline)) void outer_product_tile(const Acc* const* a, const Acc* b,
                                                              int64_t b_stride, int64_t k_len, VecT (&c)[MT * 2]) {
  constexpr int kLanes = sizeof(VecT) / sizeof(Acc);
  const Acc* ar[MT];
#pragma GCC unroll 8
  for (int m = 0; m < MT; ++m) ar[m] = a[m];
#pragma GCC unroll 16
  for (int i = 0; i < MT * 2; ++i) c[i] = VecT{};
  for (int64_t k = 0; k < k_len; ++k) {
    VecT b0, b1;
    std::memcpy(&b0, b + k * b_stride, sizeof(VecT));
    std::memcpy(&b1, b + k * b_stride + kLanes, sizeof(VecT));
#pragma GCC unroll 8
    for (int m = 0; m < MT; ++m) {
      const VecT am = VecT{} + ar[m][k];  // broadcast
      c[2 * m] += am * b0;
      c[2 * m + 1] += am * b1;
    }
  }
}

// The shrink for items of many tokens, as an outer-product GEMM: a chunk of 2 * kLanes rank
// rows of W is packed k-major (wt[k][j]) so that outer_product_tile applies: 12 FMAs per 8
// loads for 6 tokens, against 8 per 6 in the dot-product tile, and no horizontal sums.
// acc[m * ld + j] += sum_k x[m][k] * wt[k][j] for j < cn.
template <typename Acc, int MT>
inline __attribute__((always_inline)) void packed_rows(const Acc* const* x, const Acc* wt, int64_t len,
                                                       Acc* acc, int64_t ld, int64_t cn) {
  constexpr int kLanes = 32 / sizeof(Acc);
  typedef Acc VecT __attribute__((vector_size(32)));
  VecT c[MT * 2];
  outer_product_tile<Acc, MT>(x, wt, 2 * kLanes, len, c);
#pragma GCC unroll 8
  for (int m = 0; m < MT; ++m) {
    Acc sums[2 * kLanes];
    std::memcpy(sums, &c[2 * m], sizeof(VecT));
    std::memcpy(sums + kLanes, &c[2 * m + 1], sizeof(VecT));
    for (int64_t j = 0; j < cn; ++j) acc[m * ld + j] += sums[j];
  }
}

template <typename Acc>
LK_CPU_CLONES void packed_block(const Acc* const* x, int64_t M, const Acc* wt, int64_t len, Acc* acc,
                                int64_t ld, int64_t cn) {
  int64_t m = 0;
  for (; m + 6 <= M; m += 6) packed_rows<Acc, 6>(x + m, wt, len, acc + m * ld, ld, cn);
  for (; m + 2 <= M; m += 2) packed_rows<Acc, 2>(x + m, wt, len, acc + m * ld, ld, cn);
  for (; m < M; ++m) packed_rows<Acc, 1>(x + m, wt, len, acc + m * ld, ld, cn);
}

// out[m][o] = sum_j v[m][j] * bt[j][o] for o < kOBlock: the expand's tile (bt is B transposed,
// [r][kOBlock]). MT tokens x two vectors of outputs per pass keep 2 * MT accumulators in registers.
template <typename Acc, int MT>
inline __attribute__((always_inline)) void expand_rows(const Acc* const* v, const Acc* bt, int64_t r, Acc* out) {
  constexpr int kLanes = 32 / sizeof(Acc);
  typedef Acc VecT __attribute__((vector_size(32)));
  for (int64_t o = 0; o < kOBlock; o += 2 * kLanes) {
    VecT acc[MT * 2];
    outer_product_tile<Acc, MT>(v, bt + o, kOBlock, r, acc);
#pragma GCC unroll 8
    for (int m = 0; m < MT; ++m) {
      std::memcpy(out + m * kOBlock + o, &acc[2 * m], sizeof(VecT));
      std::memcpy(out + m * kOBlock + o + kLanes, &acc[2 * m + 1], sizeof(VecT));
    }
  }
}

template <typename Acc>
inline __attribute__((always_inline)) void expand_tile_impl(const Acc* const* v, int64_t M,
                                                            const Acc* bt, int64_t r, Acc* out) {
  int64_t m = 0;
  for (; m + 4 <= M; m += 4) expand_rows<Acc, 4>(v + m, bt, r, out + m * kOBlock);
  for (; m < M; ++m) expand_rows<Acc, 1>(v + m, bt, r, out + m * kOBlock);
}
LK_CPU_CLONES void expand_tile(const float* const* v, int64_t M, const float* bt, int64_t r,
                               float* out) {
  expand_tile_impl<float>(v, M, bt, r, out);
}
LK_CPU_CLONES void expand_tile(const double* const* v, int64_t M, const double* bt, int64_t r,
                               double* out) {
  expand_tile_impl<double>(v, M, bt, r, out);
}

// Per-thread staging buffers, grown on demand and reused across calls.
template <typename Acc>
std::vector<Acc>& scratch(int which) {
  thread_local std::vector<Acc> buffers[4];
  return buffers[which];
}

// Rank rows [j0, j1) of one slice's lora_a, for the shrink of one work item.
struct RowPart {
  const ShrinkParams* p;
  int64_t j0, j1;
};

// The shrink of one work item over the rank rows of one or more parts (slices of add_lora_slices
// sharing x): x is staged once per K block for every part, and the parts' rows form one list of
// rows for the micro-kernels, so small ranks of several slices fill one packed chunk together.
// Each v entry is computed exactly as with the part alone (every row's sum runs in the same
// order wherever the row sits in the list). `packed_ok`: the unit covers whole ranks.
template <typename T>
void shrink_rows(const RowPart* parts, int64_t num_parts, const Plan& plan, const WorkItem& item, bool packed_ok) {
  using Acc = typename Numeric<T>::Acc;
  const ShrinkParams& p0 = *parts[0].p;  // x, H_in, the token map: shared by every part
  const int64_t M = item.end - item.begin;
  const int64_t* rows = plan.order.data() + item.begin;
  std::vector<int64_t> jn(num_parts), first(num_parts);  // rows computed per part, their start in the list
  int64_t J = 0;
  for (int64_t s = 0; s < num_parts; ++s) {
    const RowPart& part = parts[s];
    const int64_t r = effective_rank(part.p->ranks, item.slot, part.p->num_slots, part.p->max_rank);
    jn[s] = std::clamp<int64_t>(r - part.j0, 0, part.j1 - part.j0);
    first[s] = J;
    J += jn[s];
  }

  std::vector<Acc>& acc = scratch<Acc>(0);
  acc.assign(static_cast<size_t>(M * J), Acc(0));
  if (J > 0) {
    const T* x = static_cast<const T*>(p0.x);
    std::vector<const Acc*> xp(M), wp(J);
    std::vector<const T*> a(J);  // row j of the list in its part's lora_a
    for (int64_t s = 0; s < num_parts; ++s) {
      const RowPart& part = parts[s];
      const T* base = static_cast<const T*>(part.p->lora_a) + (item.slot * part.p->max_rank + part.j0) * p0.h_in;
      for (int64_t j = 0; j < jn[s]; ++j) a[first[s] + j] = base + j * p0.h_in;
    }
    std::vector<Acc>& xs = scratch<Acc>(1);
    std::vector<Acc>& ws = scratch<Acc>(2);
    constexpr bool kDirect = std::is_same_v<T, Acc>;
    if (!kDirect) {
      xs.resize(static_cast<size_t>(M * kKBlock));
      ws.resize(static_cast<size_t>(J * kKBlock));
    }
    for (int64_t k0 = 0; k0 < p0.h_in; k0 += kKBlock) {
      const int64_t len = std::min(kKBlock, p0.h_in - k0);
      for (int64_t m = 0; m < M; ++m) {
        const T* src = x + rows[m] * p0.x_stride + k0;
        if constexpr (kDirect) {
          xp[m] = reinterpret_cast<const Acc*>(src);
        } else {
          Acc* dst = xs.data() + m * kKBlock;
          for (int64_t k = 0; k < len; ++k) dst[k] = Numeric<T>::load(src[k]);
          xp[m] = dst;
        }
      }
      for (int64_t j = 0; j < J; ++j) {
        const T* src = a[j] + k0;
        if constexpr (kDirect) {
          wp[j] = reinterpret_cast<const Acc*>(src);
        } else {
          Acc* dst = ws.data() + j * kKBlock;
          for (int64_t k = 0; k < len; ++k) dst[k] = Numeric<T>::load(src[k]);
          wp[j] = dst;
        }
      }
      // acc is laid out [M][J] while computing, then scattered to v.
      if (packed_ok && M >= kPackedMinTokens) {
        constexpr int64_t kChunk = 64 / sizeof(Acc);  // rank rows per packed pass: two vectors
        std::vector<Acc>& wt = scratch<Acc>(3);
        wt.resize(static_cast<size_t>(kKBlock * kChunk));
        for (int64_t c0 = 0; c0 < J; c0 += kChunk) {
          const int64_t cn = std::min(kChunk, J - c0);
          for (int64_t j = 0; j < kChunk; ++j) {
            Acc* dst = wt.data() + j;
            const Acc* src = j < cn ? wp[c0 + j] : nullptr;
            for (int64_t k = 0; k < len; ++k) dst[k * kChunk] = src ? src[k] : Acc(0);
          }
          packed_block(xp.data(), M, wt.data(), len, acc.data() + c0, J, cn);
        }
      } else {
        dot_block(xp.data(), M, wp.data(), J, len, acc.data());
      }
    }
  }
  for (int64_t s = 0; s < num_parts; ++s) {
    const RowPart& part = parts[s];
    for (int64_t m = 0; m < M; ++m) {
      Acc* out = static_cast<Acc*>(part.p->v) + rows[m] * part.p->v_stride;
      for (int64_t j = part.j0; j < part.j1; ++j)
        out[j] = (j - part.j0 < jn[s]) ? acc[m * J + first[s] + (j - part.j0)] : Acc(0);
    }
  }
}

template <typename T>
void shrink_unit(const ShrinkParams& p, const Plan& plan, int64_t unit) {
  const int64_t blocks = shrink_column_blocks(p, plan);
  const int64_t rows_per_block = blocks == 1 ? p.max_rank : kShrinkRowsPerBlock;
  const int64_t j0 = (unit % blocks) * rows_per_block;
  const RowPart part{&p, j0, std::min(j0 + rows_per_block, p.max_rank)};
  shrink_rows<T>(&part, 1, plan, plan.items[unit / blocks], blocks == 1);
}

template <typename T>
void expand_unit(const ExpandParams& p, const Plan& plan, int64_t unit) {
  using Acc = typename Numeric<T>::Acc;
  const int64_t blocks = expand_column_blocks(p);
  const WorkItem& item = plan.items[unit / blocks];
  const int64_t r = effective_rank(p.ranks, item.slot, p.num_slots, p.max_rank);
  if (r == 0) return;  // no adapter or rank 0: y untouched
  const int64_t o_begin = (unit % blocks) * kExpandColsPerBlock;
  const int64_t o_end = std::min(o_begin + kExpandColsPerBlock, p.h_out);
  const int64_t M = item.end - item.begin;
  const int64_t* rows = plan.order.data() + item.begin;
  const Acc scale = static_cast<const Acc*>(p.scaling)[item.slot];
  const T* b = static_cast<const T*>(p.lora_b) + item.slot * p.h_out * p.max_rank;
  const T* bias =
      p.lora_bias ? static_cast<const T*>(p.lora_bias) + item.slot * p.h_out : nullptr;
  std::vector<const Acc*> vp(M);
  for (int64_t m = 0; m < M; ++m) vp[m] = static_cast<const Acc*>(p.v) + rows[m] * p.v_stride;

  const bool by_dot = M <= kExpandDotMaxTokens;
  std::vector<Acc>& bt = scratch<Acc>(1);  // B block: transposed [r][kOBlock], or rows [kOBlock][r]
  std::vector<Acc>& out = scratch<Acc>(2);
  bt.resize(static_cast<size_t>(r * kOBlock));  // columns past `on` in a tail block are unused
  out.resize(static_cast<size_t>(M * kOBlock));
  std::vector<const Acc*> b_rows(by_dot ? kOBlock : 0);
  Acc bias_block[kOBlock] = {};
  for (int64_t o0 = o_begin; o0 < o_end; o0 += kOBlock) {
    const int64_t on = std::min(kOBlock, o_end - o0);
    if (by_dot) {
      for (int64_t o = 0; o < on; ++o) {
        const T* row = b + (o0 + o) * p.max_rank;
        if constexpr (std::is_same_v<T, Acc>) {
          b_rows[o] = row;
        } else {
          Acc* dst = bt.data() + o * r;
          for (int64_t j = 0; j < r; ++j) dst[j] = Numeric<T>::load(row[j]);
          b_rows[o] = dst;
        }
      }
      std::fill(out.begin(), out.begin() + M * kOBlock, Acc(0));
      for (int64_t m = 0; m < M; ++m) dot_block(vp.data() + m, 1, b_rows.data(), on, r, out.data() + m * kOBlock);
    } else {
      for (int64_t o = 0; o < on; ++o) {
        const T* row = b + (o0 + o) * p.max_rank;
        for (int64_t j = 0; j < r; ++j) bt[j * kOBlock + o] = Numeric<T>::load(row[j]);
      }
      expand_tile(vp.data(), M, bt.data(), r, out.data());
    }
    if (bias)
      for (int64_t o = 0; o < on; ++o) bias_block[o] = Numeric<T>::load(bias[o0 + o]);
    for (int64_t m = 0; m < M; ++m) {
      T* __restrict y = static_cast<T*>(p.y) + rows[m] * p.y_stride + o0;
      const Acc* __restrict delta = out.data() + m * kOBlock;
      // Rows of y are visited a block at a time, too many at once for the hardware prefetcher
      // to follow: fetch this row's next block now, it is written after the other rows' turn.
      if (o0 + kOBlock < o_end)
        for (int64_t line = 0; line < kOBlock * static_cast<int64_t>(sizeof(T)); line += 64)
          __builtin_prefetch(reinterpret_cast<const char*>(y + kOBlock) + line, 1);
      for (int64_t o = 0; o < on; ++o)
        y[o] = Numeric<T>::store(Numeric<T>::load(y[o]) + scale * (delta[o] + bias_block[o]));
    }
  }
}

template <typename T>
void embedding_shrink_item(const EmbeddingShrinkParams& p, const Plan& plan, int64_t i) {
  using Acc = typename Numeric<T>::Acc;
  const WorkItem& item = plan.items[i];
  const int64_t r = effective_rank(p.ranks, item.slot, p.num_slots, p.max_rank);
  const T* a = static_cast<const T*>(p.lora_a) + std::max<int64_t>(item.slot, 0) * p.max_rank * p.vocab;
  for (int64_t pos = item.begin; pos < item.end; ++pos) {
    const int64_t row = plan.order[pos];
    const int64_t token = p.token_ids[row];
    Acc* out = static_cast<Acc*>(p.v) + row * p.v_stride;
    const bool valid = token >= 0 && token < p.vocab;
    for (int64_t j = 0; j < p.max_rank; ++j)
      out[j] = (valid && j < r) ? Numeric<T>::load(a[j * p.vocab + token]) : Acc(0);
  }
}

// Runs body(TypeTag<T>{}) with T the CPU storage type of `dtype`. The binding maps only torch's
// four supported dtypes to DType, so another value is a programming error inside an OpenMP
// region (where an exception cannot leave): stop loudly.
template <typename Body>
void dispatch(DType dtype, Body&& body) {
  dispatch_dtype<CpuTypes>(dtype, body, [dtype] {
    std::fprintf(stderr, "lora_kernels: internal error: unknown DType %d\n", static_cast<int>(dtype));
    std::abort();
  });
}

}  // namespace

Plan build_plan(const TokenMap& map, int64_t num_slots, int64_t max_group_tokens) {
  const int64_t T = map.num_tokens;
  const int64_t chunk = std::max<int64_t>(max_group_tokens, 1);
  Plan plan;
  plan.order.resize(static_cast<size_t>(T));
  auto add_group = [&](int64_t slot, int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; b += chunk) plan.items.push_back({slot, b, std::min(b + chunk, end)});
  };
  if (map.indices.present()) {
    // Counting sort by slot; bucket 0 holds -1 ("no adapter"), bucket a + 1 holds slot a.
    std::vector<int64_t> start(static_cast<size_t>(num_slots) + 2, 0);
    for (int64_t t = 0; t < T; ++t) ++start[static_cast<size_t>(map.indices[t] + 2)];
    for (size_t b = 1; b < start.size(); ++b) start[b] += start[b - 1];
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t t = 0; t < T; ++t)
      plan.order[static_cast<size_t>(fill[static_cast<size_t>(map.indices[t] + 1)]++)] = t;
    for (int64_t a = -1; a < num_slots; ++a)
      add_group(a, start[static_cast<size_t>(a + 1)], start[static_cast<size_t>(a + 2)]);
    return plan;
  }
  for (int64_t t = 0; t < T; ++t) plan.order[static_cast<size_t>(t)] = t;
  for (int64_t s = 0; s < map.num_segments; ++s)
    add_group(map.seg_adapter[s], map.seg_indptr[s], map.seg_indptr[s + 1]);
  return plan;
}

int64_t shrink_column_blocks(const ShrinkParams& p, const Plan& plan) {
  const int64_t items = static_cast<int64_t>(plan.items.size());
  if (items >= kPackedMinItems && p.map.num_tokens >= kPackedMinTokens * items) return 1;
  return std::max<int64_t>((p.max_rank + kShrinkRowsPerBlock - 1) / kShrinkRowsPerBlock, 1);
}
int64_t expand_column_blocks(const ExpandParams& p) {
  return std::max<int64_t>((p.h_out + kExpandColsPerBlock - 1) / kExpandColsPerBlock, 1);
}

void shrink(const ShrinkParams& p, const Plan& plan, int64_t begin, int64_t end) {
  if (p.max_rank == 0) return;
  dispatch(p.dtype, [&](auto tag) {
    for (int64_t u = begin; u < end; ++u) shrink_unit<typename decltype(tag)::type>(p, plan, u);
  });
}
void expand(const ExpandParams& p, const Plan& plan, int64_t begin, int64_t end) {
  if (p.max_rank == 0 || p.h_out == 0) return;
  dispatch(p.dtype, [&](auto tag) {
    for (int64_t u = begin; u < end; ++u) expand_unit<typename decltype(tag)::type>(p, plan, u);
  });
}
void embedding_shrink(const EmbeddingShrinkParams& p, const Plan& plan, int64_t begin, int64_t end) {
  dispatch(p.dtype, [&](auto tag) {
    for (int64_t i = begin; i < end; ++i) embedding_shrink_item<typename decltype(tag)::type>(p, plan, i);
  });
}

namespace {

// Splits units [begin, end) of a slice-major numbering into per-slice local ranges.
template <typename Params, typename Run>
void run_slices(const Params* p, const std::vector<int64_t>& offsets, int64_t begin, int64_t end, Run run) {
  const int64_t n = static_cast<int64_t>(offsets.size()) - 1;
  // The slice holding `begin`: the last s with offsets[s] <= begin.
  int64_t s = std::upper_bound(offsets.begin(), offsets.end(), begin) - offsets.begin() - 1;
  for (; s < n && offsets[s] < end; ++s) {
    const int64_t b = std::max(begin, offsets[s]) - offsets[s];
    const int64_t e = std::min(end, offsets[s + 1]) - offsets[s];
    if (b < e) run(p[s], b, e);
  }
}

}  // namespace

SliceUnits shrink_slice_units(const ShrinkParams* p, int64_t n, const Plan& plan, bool allow_fused) {
  SliceUnits u;
  u.offsets.assign(static_cast<size_t>(n) + 1, 0);
  const int64_t items = static_cast<int64_t>(plan.items.size());
  u.fused = allow_fused && n > 1;
  for (int64_t s = 0; s < n; ++s) {
    const int64_t blocks = shrink_column_blocks(p[s], plan);
    u.fused = u.fused && blocks == 1;
    u.offsets[s + 1] = u.offsets[s] + items * blocks;
  }
  u.total = u.fused ? items : u.offsets[n];
  return u;
}
SliceUnits expand_slice_units(const ExpandParams* p, int64_t n, const Plan& plan) {
  SliceUnits u;
  u.offsets.assign(static_cast<size_t>(n) + 1, 0);
  const int64_t items = static_cast<int64_t>(plan.items.size());
  for (int64_t s = 0; s < n; ++s) u.offsets[s + 1] = u.offsets[s] + items * expand_column_blocks(p[s]);
  u.total = u.offsets[n];
  return u;
}
void shrink_slices(const ShrinkParams* p, const SliceUnits& units, const Plan& plan, int64_t begin, int64_t end) {
  const int64_t n = static_cast<int64_t>(units.offsets.size()) - 1;
  if (units.fused) {
    return dispatch(p[0].dtype, [&](auto tag) {
      std::vector<RowPart> parts(static_cast<size_t>(n));
      for (int64_t s = 0; s < n; ++s) parts[s] = RowPart{&p[s], 0, p[s].max_rank};
      for (int64_t i = begin; i < end; ++i)
        shrink_rows<typename decltype(tag)::type>(parts.data(), n, plan, plan.items[i], true);
    });
  }
  run_slices(p, units.offsets, begin, end,
             [&](const ShrinkParams& q, int64_t b, int64_t e) { shrink(q, plan, b, e); });
}
void expand_slices(const ExpandParams* p, const SliceUnits& units, const Plan& plan, int64_t begin, int64_t end) {
  run_slices(p, units.offsets, begin, end,
             [&](const ExpandParams& q, int64_t b, int64_t e) { expand(q, plan, b, e); });
}

}  // namespace lora_kernels::cpu
