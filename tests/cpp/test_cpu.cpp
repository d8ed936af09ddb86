// ctest: the torch-free CPU implementation against a naive float64 loop, plus the float16 /
// bfloat16 conversions and the plan's index checks.
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>

#include "lora_cpu.h"
#include "lora_kernels/checks.h"
#include "lora_kernels/numeric.h"
#include "naive.h"

using namespace lora_kernels;

static int passed = 0, failed = 0;
#define EXPECT(cond, ...)                                  \
  do {                                                     \
    if (cond) {                                            \
      ++passed;                                            \
    } else {                                               \
      ++failed;                                            \
      std::printf("FAIL %s:%d: ", __FILE__, __LINE__);     \
      std::printf(__VA_ARGS__);                            \
      std::printf("\n");                                   \
    }                                                      \
  } while (0)

template <typename T>
std::vector<T> narrow(const std::vector<double>& v) {
  std::vector<T> out;
  for (double e : v) out.push_back(Numeric<T>::store(static_cast<typename Numeric<T>::Acc>(e)));
  return out;
}
template <typename T>
std::vector<double> widen(const std::vector<T>& v) {
  std::vector<double> out;
  for (T e : v) out.push_back(static_cast<double>(Numeric<T>::load(e)));
  return out;
}

template <typename T>
void check_add_lora(DType dtype, bool segments, int64_t T_, int64_t H_in, int64_t H_out, int64_t N, int64_t R,
                    double tol, uint32_t seed, int64_t group_tokens = 4) {
  using Acc = typename Numeric<T>::Acc;
  lk_test::Problem p = lk_test::random_problem(T_, H_in, H_out, N, R, seed);
  // Round the inputs to T first, so the reference sees exactly what the kernel sees.
  auto x = narrow<T>(p.x), a = narrow<T>(p.lora_a), b = narrow<T>(p.lora_b), bias = narrow<T>(p.bias);
  auto y = narrow<T>(p.y);
  p.x = widen(x), p.lora_a = widen(a), p.lora_b = widen(b), p.bias = widen(bias), p.y = widen(y);
  std::vector<int64_t> indptr{0};
  std::vector<int32_t> seg_adapter;
  if (segments) {  // consecutive runs of 3 tokens share a slot
    for (int64_t t = 0; t < T_; t += 3) {
      seg_adapter.push_back(p.indices[t]);
      indptr.push_back(std::min<int64_t>(t + 3, T_));
      for (int64_t u = t; u < std::min<int64_t>(t + 3, T_); ++u) p.indices[u] = p.indices[t];
    }
  }
  const std::vector<double> expected = lk_test::naive_add_lora(p);

  TokenMap map;
  map.num_tokens = T_;
  if (segments) {
    map.seg_indptr = IndexVec{indptr.data(), true, true};
    map.seg_adapter = IndexVec{seg_adapter.data(), false, true};
    map.num_segments = static_cast<int64_t>(seg_adapter.size());
  } else {
    map.indices = IndexVec{p.indices.data(), false, true};
  }
  const IndexVec ranks{p.ranks.data(), false, true};
  std::vector<Acc> v(T_ * R, Acc(-1)), scaling(p.scaling.begin(), p.scaling.end());

  ShrinkParams sp;
  sp.x = x.data(), sp.x_stride = H_in, sp.lora_a = a.data(), sp.v = v.data(), sp.v_stride = R;
  sp.ranks = ranks, sp.num_slots = N, sp.max_rank = R, sp.h_in = H_in, sp.dtype = dtype, sp.map = map;
  ExpandParams ep;
  ep.y = y.data(), ep.y_stride = H_out, ep.v = v.data(), ep.v_stride = R, ep.lora_b = b.data();
  ep.scaling = scaling.data(), ep.lora_bias = bias.data(), ep.ranks = ranks, ep.num_slots = N, ep.max_rank = R;
  ep.h_out = H_out, ep.dtype = dtype, ep.map = map;

  const std::string error = check_token_map(map, N);
  EXPECT(error.empty(), "check_token_map: %s", error.c_str());
  const cpu::Plan plan = cpu::build_plan(map, N, group_tokens);
  cpu::shrink(sp, plan, 0, static_cast<int64_t>(plan.items.size()) * cpu::shrink_column_blocks(sp, plan));
  cpu::expand(ep, plan, 0, static_cast<int64_t>(plan.items.size()) * cpu::expand_column_blocks(ep));

  double err = 0, ref = 0;
  bool untouched = true;
  for (int64_t t = 0; t < T_; ++t)
    for (int64_t o = 0; o < H_out; ++o) {
      const size_t i = t * H_out + o;
      const double d = static_cast<double>(Numeric<T>::load(y[i])) - p.y[i], d_ref = expected[i] - p.y[i];
      // Allow y's one rounding (half an ulp of the result) on top of the tolerance.
      const double rounding = std::abs(expected[i]) * (sizeof(T) == 2 ? 1.0 / 256 : 0.0);
      const double excess = std::max(0.0, std::abs(d - d_ref) - rounding);
      err += excess * excess, ref += d_ref * d_ref;
      const int64_t slot = p.indices[t];
      if ((slot < 0 || p.ranks[slot] == 0) && d != 0) untouched = false;
    }
  const double rel = ref > 0 ? std::sqrt(err / ref) : std::sqrt(err);
  EXPECT(rel < tol, "dtype %d segments %d T=%lld H_in=%lld H_out=%lld: relative error %.3g", static_cast<int>(dtype),
         segments, (long long)T_, (long long)H_in, (long long)H_out, rel);
  EXPECT(untouched, "rows without adapter were modified");
}

void test_conversions() {
  auto h = [](float f) { return half_from_float(f).bits; };
  EXPECT(h(1.0f) == 0x3c00, "half(1) = %x", h(1.0f));
  EXPECT(h(-2.0f) == 0xc000, "half(-2)");
  EXPECT(h(65504.0f) == 0x7bff, "half(65504)");
  EXPECT(h(65519.0f) == 0x7bff, "half(65519) rounds down");
  EXPECT(h(65520.0f) == 0x7c00, "half(65520) overflows to inf");
  EXPECT(h(std::ldexp(1.0f, -24)) == 0x0001, "smallest subnormal");
  EXPECT(h(std::ldexp(1.0f, -25)) == 0x0000, "tie to even at zero");
  EXPECT(h(std::ldexp(3.0f, -25)) == 0x0002, "1.5 ulp rounds to 2");
  EXPECT(h(1.0f + std::ldexp(1.0f, -11)) == 0x3c00, "tie rounds to even (down)");
  EXPECT(h(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3c02, "tie rounds to even (up)");
  EXPECT((h(std::numeric_limits<float>::quiet_NaN()) & 0x7c00) == 0x7c00 && (h(NAN) & 0x3ff), "NaN stays NaN");
  for (uint32_t bits = 0; bits < 0x10000; ++bits) {  // every half round-trips exactly
    const Half v{static_cast<uint16_t>(bits)};
    const float f = to_float(v);
    if (std::isnan(f)) continue;
    if (half_from_float(f).bits != bits) {
      EXPECT(false, "half %04x does not round-trip", bits);
      break;
    }
  }
  auto bf = [](float f) { return bfloat16_from_float(f).bits; };
  EXPECT(bf(1.0f) == 0x3f80, "bf16(1)");
  EXPECT(bf(1.0f + std::ldexp(1.0f, -8)) == 0x3f80, "bf16 tie to even (down)");
  EXPECT(bf(1.0f + 3 * std::ldexp(1.0f, -8)) == 0x3f82, "bf16 tie to even (up)");
  EXPECT(std::isnan(to_float(bfloat16_from_float(NAN))), "bf16 NaN");
}

// The one dispatcher maps each DType to the backend's storage type whose trait names that DType,
// and a value outside the enumerators to `unknown`.
void test_dtype_dispatch() {
  for (DType d : {DType::kFloat16, DType::kBFloat16, DType::kFloat32, DType::kFloat64}) {
    const DType seen = dispatch_dtype<CpuTypes>(
        d, [](auto tag) { return Numeric<typename decltype(tag)::type>::kDType; }, [] { return DType(-1); });
    EXPECT(seen == d, "dispatch_dtype(%d) reached the type of DType %d", static_cast<int>(d), static_cast<int>(seen));
  }
  const int bytes = dispatch_dtype<CpuTypes>(
      DType::kBFloat16, [](auto tag) { return static_cast<int>(sizeof(typename decltype(tag)::type)); }, [] { return -1; });
  EXPECT(bytes == 2, "bfloat16 storage is %d bytes, expected 2", bytes);
  const int unknown = dispatch_dtype<CpuTypes>(static_cast<DType>(9), [](auto) { return 0; }, [] { return 1; });
  EXPECT(unknown == 1, "an unknown DType did not reach `unknown`");
}

void test_value_checks() {
  std::vector<int32_t> idx{0, 3, -1};
  TokenMap map;
  map.num_tokens = 3;
  map.indices = IndexVec{idx.data(), false, true};
  std::string e = check_token_map(map, 3);
  EXPECT(e == "indices[1] = 3 is out of range; expected -1 <= indices[t] < N = 3.", "%s", e.c_str());
  std::vector<int64_t> indptr{0, 2, 1, 3};
  std::vector<int64_t> adapter{0, 1, 2};
  TokenMap seg;
  seg.num_tokens = 3;
  seg.num_segments = 3;
  seg.seg_indptr = IndexVec{indptr.data(), true, true};
  seg.seg_adapter = IndexVec{adapter.data(), true, true};
  e = check_token_map(seg, 3);
  EXPECT(e.find("non-decreasing") != std::string::npos, "%s", e.c_str());
  std::vector<int32_t> ranks{1, 9};
  e = check_ranks(IndexVec{ranks.data(), false, true}, 2, 8);
  EXPECT(e == "ranks[1] = 9 is out of range; expected 0 <= ranks[a] <= R = 8.", "%s", e.c_str());
}

// add_lora_slices' executor: two slices over one plan, run as ranges of units that straddle the
// slices (as a parallel loop splits them), bit-for-bit equal to each slice's own shrink / expand;
// `expect_fused`: the shrink takes both slices' rows in one unit per work item.
void test_slices(int64_t T_, int64_t R0, int64_t R1, int64_t group_tokens, bool allow_fused, bool expect_fused) {
  const int64_t H_in = 19, N = 3;
  const int64_t widths[2] = {13, 6}, max_ranks[2] = {R0, R1}, H_out = 19;
  std::vector<int32_t> idx(T_);
  for (int64_t t = 0; t < T_; ++t) idx[t] = static_cast<int32_t>((t * 7) % (N + 1)) - 1;  // -1 .. 2, unsorted
  TokenMap map;
  map.num_tokens = T_;
  map.indices = IndexVec{idx.data(), false, true};
  std::vector<int32_t> ranks[2] = {{static_cast<int32_t>(R0), 0, static_cast<int32_t>(R0 / 2)},
                                   {static_cast<int32_t>(R1), 1, static_cast<int32_t>(R1)}};
  uint32_t state = 12345;
  auto rnd = [&]() { return static_cast<float>((state = state * 1664525u + 1013904223u) >> 8) / 16777216.0f - 0.5f; };
  std::vector<float> x(T_ * H_in), y0(T_ * H_out), a[2], b[2], scaling[2];
  for (float& e : x) e = rnd();
  for (float& e : y0) e = rnd();
  std::vector<float> y_fused = y0, y_each = y0, v_fused[2], v_each[2];
  ShrinkParams sp[2];
  ExpandParams ep[2], ep_each[2];
  int64_t offset = 0;
  for (int i = 0; i < 2; ++i) {
    const int64_t R = max_ranks[i];
    a[i].resize(N * R * H_in), b[i].resize(N * widths[i] * R), scaling[i] = {0.5f, 2.0f, 1.5f};
    for (float& e : a[i]) e = rnd();
    for (float& e : b[i]) e = rnd();
    v_fused[i].assign(T_ * R, -1.0f), v_each[i].assign(T_ * R, -1.0f);
    const IndexVec r{ranks[i].data(), false, true};
    sp[i].x = x.data(), sp[i].x_stride = H_in, sp[i].lora_a = a[i].data(), sp[i].v = v_fused[i].data();
    sp[i].v_stride = R, sp[i].ranks = r, sp[i].num_slots = N, sp[i].max_rank = R, sp[i].h_in = H_in;
    sp[i].dtype = DType::kFloat32, sp[i].map = map;
    ep[i].y = y_fused.data() + offset, ep[i].y_stride = H_out, ep[i].v = v_fused[i].data(), ep[i].v_stride = R;
    ep[i].lora_b = b[i].data(), ep[i].scaling = scaling[i].data(), ep[i].ranks = r, ep[i].num_slots = N;
    ep[i].max_rank = R, ep[i].h_out = widths[i], ep[i].dtype = DType::kFloat32, ep[i].map = map;
    ep_each[i] = ep[i];
    ep_each[i].y = y_each.data() + offset, ep_each[i].v = v_each[i].data();
    offset += widths[i];
  }
  const std::string error = check_token_map(map, N);
  EXPECT(error.empty(), "check_token_map: %s", error.c_str());
  const cpu::Plan plan = cpu::build_plan(map, N, group_tokens);
  const cpu::SliceUnits su = cpu::shrink_slice_units(sp, 2, plan, allow_fused);
  const cpu::SliceUnits eu = cpu::expand_slice_units(ep, 2, plan);
  EXPECT(su.fused == expect_fused, "T=%lld R=%lld,%lld: fused shrink %d, expected %d", (long long)T_, (long long)R0,
         (long long)R1, su.fused, expect_fused);
  EXPECT(eu.offsets.size() == 3 && eu.offsets[1] > 0 && eu.total > eu.offsets[1], "expand offsets");
  for (int64_t u = 0; u < su.total; u += 3) cpu::shrink_slices(sp, su, plan, u, std::min<int64_t>(u + 3, su.total));
  for (int64_t u = 0; u < eu.total; u += 5) cpu::expand_slices(ep, eu, plan, u, std::min<int64_t>(u + 5, eu.total));
  for (int i = 0; i < 2; ++i) {
    ShrinkParams each = sp[i];
    each.v = v_each[i].data();
    cpu::shrink(each, plan, 0, static_cast<int64_t>(plan.items.size()) * cpu::shrink_column_blocks(each, plan));
    cpu::expand(ep_each[i], plan, 0, static_cast<int64_t>(plan.items.size()) * cpu::expand_column_blocks(ep_each[i]));
    EXPECT(v_fused[i] == v_each[i], "slice %d: v differs from the slice's own shrink", i);
  }
  EXPECT(y_fused == y_each, "slices: y differs from each slice's own shrink / expand");
  EXPECT(y_fused != y0, "slices: y was not updated");
}

int main() {
  test_conversions();
  test_dtype_dispatch();
  test_value_checks();
  test_slices(23, 5, 2, 4, true, false);     // rank 5 splits into row blocks: units per slice
  test_slices(23, 4, 3, 4, true, true);      // whole ranks per unit: one unit per item, dot products
  test_slices(23, 4, 3, 4, false, false);
  test_slices(300, 20, 6, 64, true, true);   // items of >= 16 tokens: the packed shrink, rows of both
  for (bool seg : {false, true}) {
    check_add_lora<float>(DType::kFloat32, seg, 29, 67, 45, 4, 8, 1e-5, 1);
    check_add_lora<double>(DType::kFloat64, seg, 17, 4097, 3, 3, 5, 1e-12, 2);
    check_add_lora<Half>(DType::kFloat16, seg, 40, 33, 1, 5, 16, 1e-2, 3);
    check_add_lora<BFloat16>(DType::kBFloat16, seg, 9, 1, 130, 2, 3, 1e-2, 4);
    check_add_lora<float>(DType::kFloat32, seg, 0, 8, 8, 2, 4, 1e-5, 5);
    // Large items: the packed shrink (rank 20 = one full and one partial chunk of rows).
    check_add_lora<float>(DType::kFloat32, seg, 300, 70, 40, 4, 20, 1e-5, 6, 64);
    check_add_lora<BFloat16>(DType::kBFloat16, seg, 300, 70, 40, 4, 20, 1e-2, 7, 64);
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
