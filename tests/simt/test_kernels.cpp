// The CUDA kernels (csrc/kernels/*.cu, compiled by g++ onto the SIMT executor) against a naive
// float64 reference, with the tolerances of DESIGN §6: the cases of tests/gpu/test_gpu_ops.py
// and the ones issue 8 lists, in fp16 / bf16 / fp32 / fp64, per-token indices and segments.
//
// Usage: test_kernels [--quick] [--stop-on-fail] [--only SUBSTRING]. Runs the executor's own checks
// (test_executor.cpp) first, unless --quick or --only; prints one line per case and
// `N passed, M failed` last; exit status 1 when a case failed.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <chrono>
#include <memory>
#include <new>
#include <random>
#include <string>
#include <vector>

#include "lora_kernels/launch.h"
#include "lora_kernels/params.h"
#include "simt.h"

using namespace lora_kernels;

namespace {

// Exactly-sized 16-byte aligned heap buffer: AddressSanitizer catches any access past its end.
template <typename T>
struct Buf {
  T* p = nullptr;
  size_t n = 0;
  explicit Buf(size_t count) : n(count) {
    p = static_cast<T*>(::operator new(count ? count * sizeof(T) : 1, std::align_val_t(16)));
  }
  ~Buf() { ::operator delete(p, std::align_val_t(16)); }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
};

template <typename T> struct Type;
template <> struct Type<__half> {
  using Acc = float;
  static constexpr DType kDType = DType::kFloat16;
  static constexpr const char* kName = "fp16";
  static constexpr double kTol = 1e-2, kEps = 0.0009765625;
  static __half from(double d) { return __float2half_rn(static_cast<float>(d)); }
  static double to(__half h) { return __half2float(h); }
};
template <> struct Type<__nv_bfloat16> {
  using Acc = float;
  static constexpr DType kDType = DType::kBFloat16;
  static constexpr const char* kName = "bf16";
  static constexpr double kTol = 1e-2, kEps = 0.0078125;
  static __nv_bfloat16 from(double d) { return __float2bfloat16_rn(static_cast<float>(d)); }
  static double to(__nv_bfloat16 h) { return __bfloat162float(h); }
};
template <> struct Type<float> {
  using Acc = float;
  static constexpr DType kDType = DType::kFloat32;
  static constexpr const char* kName = "fp32";
  static constexpr double kTol = 1e-5, kEps = 0;
  static float from(double d) { return static_cast<float>(d); }
  static double to(float f) { return f; }
};
template <> struct Type<double> {
  using Acc = double;
  static constexpr DType kDType = DType::kFloat64;
  static constexpr const char* kName = "fp64";
  static constexpr double kTol = 1e-12, kEps = 0;
  static double from(double d) { return d; }
  static double to(double d) { return d; }
};

struct Spec {
  std::string name;
  int64_t T, H_in, H_out, N, R;
  int S = -1;  // segments (some empty); -1: max(1, min(T, 5))
  bool bias = true, ranks = true;
  int64_t x_pad = 0, x_off = 0, y_pad = 0, y_off = 0;  // row-strided views: stride H + pad, start at off
  bool idx64 = false;
  bool out_of_range = false;  // slots 1000 / -7, ranks R + 5 / -3 (stay in bounds, act as clamped)
  bool one_slot = false;      // every token on slot 0: many leader groups of one adapter
  bool sorted = false;        // indices sorted (else random order)
  bool bf16_only = false;  // a large shape: run it in the serving dtype only
  bool reorder = false;    // rerun on a second plan (another row order inside each slot): bit-equal
  bool tc = false;  // fp16 / bf16 take the tensor-core path (cuda::tensor_core_path; checked by its launch counter)
};

struct Result {
  bool ok = true;
  std::string why;
  void check(bool cond, const std::string& what) {
    if (!cond && ok) ok = false, why = what;
  }
};

std::string fmt(const char* f, double a) {
  char buf[128];
  std::snprintf(buf, sizeof buf, f, a);
  return buf;
}

// Integer vector in int32 or int64, exactly sized.
struct Ints {
  Buf<int32_t> i32;
  Buf<int64_t> i64;
  bool wide;
  Ints(const std::vector<int64_t>& v, bool is64) : i32(is64 ? 0 : v.size()), i64(is64 ? v.size() : 0), wide(is64) {
    for (size_t i = 0; i < v.size(); ++i) {
      if (wide) i64.p[i] = v[i]; else i32.p[i] = static_cast<int32_t>(v[i]);
    }
  }
  IndexVec vec() const { return IndexVec{wide ? static_cast<const void*>(i64.p) : i32.p, wide, true}; }
};

int64_t eff_rank(const std::vector<int64_t>& ranks, bool given, int64_t slot, int64_t N, int64_t R) {
  if (slot < 0 || slot >= N) return 0;
  if (!given) return R;
  return std::min(std::max<int64_t>(ranks[slot], 0), R);
}

// The device plan of a token map (cuda::launch_build_plan) in an exactly-sized workspace that
// starts as 0xff bytes (-1 in every int32: a position the plan kernel never writes shows), then
// checked against the test's own slot of each token: every token with a slot in [0, N) exactly
// once, in its slot's bucket; every other token (-1, out of range, outside every segment) in
// bucket N, and nowhere else; each group list holds exactly the first positions of the groups.
struct PlanBuf {
  std::unique_ptr<Buf<unsigned char>> ws;
  GroupPlan plan;
};

bool make_plan(TokenMap& map, int64_t N, const std::vector<int64_t>& slot_of, PlanBuf& out, Result& res) {
  const int64_t T_ = map.num_tokens;
  const size_t bytes = cuda::plan_workspace_bytes(T_, N);
  out.ws = std::make_unique<Buf<unsigned char>>(bytes);
  std::memset(out.ws->p, 0xff, bytes);
  res.check(cuda::launch_build_plan(map, N, out.ws->p, bytes, &out.plan, nullptr) == cudaSuccess,
            "launch_build_plan reported an error");
  if (!res.ok) return false;
  map.plan = out.plan;
  const GroupPlan& g = out.plan;
  const auto bucket = [&](int64_t t) { return slot_of[t] >= 0 && slot_of[t] < N ? slot_of[t] : N; };
  std::vector<int64_t> count(N + 1, 0);
  for (int64_t t = 0; t < T_; ++t) ++count[bucket(t)];
  res.check(g.num_tokens == T_ && g.num_slots == N, "the plan does not record the T and N it was built for");
  res.check(g.slot_start[0] == 0 && g.slot_start[N + 1] == T_,
            "plan: slot_start[0] = " + std::to_string(g.slot_start[0]) + ", slot_start[N + 1] = " +
                std::to_string(g.slot_start[N + 1]) + ", expected 0 and T = " + std::to_string(T_));
  std::vector<char> seen(T_, 0);
  for (int64_t b = 0; b <= N && res.ok; ++b) {
    const int64_t begin = g.slot_start[b], end = g.slot_start[b + 1];
    res.check(end - begin == count[b], "plan: bucket " + std::to_string(b) + " holds " + std::to_string(end - begin) +
                                           " positions, expected its " + std::to_string(count[b]) + " tokens");
    for (int64_t p = begin; p < end && res.ok; ++p) {
      const int64_t t = g.rows_by_slot[p];
      res.check(g.slot_at[p] == b, "plan: slot_at[" + std::to_string(p) + "] = " + std::to_string(g.slot_at[p]) +
                                       ", expected its bucket " + std::to_string(b));
      res.check(t >= 0 && t < T_ && !seen[t] && bucket(t) == b,
                "plan: position " + std::to_string(p) + " of bucket " + std::to_string(b) + " holds row " +
                    std::to_string(t) + " (out of range, seen before, or of another bucket)");
      if (res.ok) seen[t] = 1;
    }
  }
  // Per group size: every G-th position of each bucket from its start, bucket after bucket.
  for (int i = 0; i < cuda::tiles::kNumPlanGroupSizes && res.ok; ++i) {
    const int64_t G = cuda::tiles::kPlanGroupSizes[i];
    std::vector<int64_t> want;
    for (int64_t b = 0; b <= N; ++b)
      for (int64_t p = g.slot_start[b]; p < g.slot_start[b + 1]; p += G) want.push_back(p);
    const int64_t n = static_cast<int64_t>(want.size());
    res.check(g.groups[i][0] == n && n <= max_groups(T_, N, G),
              "plan: " + std::to_string(g.groups[i][0]) + " groups of " + std::to_string(G) + " listed, expected " +
                  std::to_string(n) + " (at most max_groups = " + std::to_string(max_groups(T_, N, G)) + ")");
    for (int64_t k = 0; k < n && res.ok; ++k)
      res.check(g.groups[i][1 + k] == want[k], "plan: group " + std::to_string(k) + " of " + std::to_string(G) +
                                                   " starts at " + std::to_string(g.groups[i][1 + k]) +
                                                   ", expected position " + std::to_string(want[k]));
  }
  return res.ok;
}

// ||d - d_ref|| / ||d_ref||, less the one rounding of y for low-precision y (DESIGN §6).
double update_error(double err2, double ref2, double yref2, double eps) {
  double err = std::sqrt(err2);
  if (eps > 0) err = std::max(0.0, err - eps / 2 * std::sqrt(yref2));
  return ref2 > 0 ? err / std::sqrt(ref2) : err;
}

template <typename T>
Result run_linear(const Spec& s, bool segments, uint32_t seed, bool* vectorized) {
  using Acc = typename Type<T>::Acc;
  using Ty = Type<T>;
  Result res;
  const int64_t T_ = s.T, Hi = s.H_in, Ho = s.H_out, N = s.N, R = s.R;
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> normal;
  auto uniform = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(gen); };

  // Slots, ranks, segments.
  std::vector<int64_t> ranks(N);
  for (int64_t a = 0; a < N; ++a) ranks[a] = a == 0 ? R : uniform(0, R);
  if (N > 1) ranks[N - 1] = 0;  // rank 0 always present
  if (s.out_of_range && N >= 3) ranks[1] = R + 5, ranks[2] = -3;
  std::vector<int64_t> indices(T_);
  for (auto& i : indices) i = s.one_slot ? 0 : uniform(-1, N - 1);
  if (s.sorted) std::sort(indices.begin(), indices.end());
  if (s.out_of_range && T_ >= 6) indices[3] = 1000, indices[5] = -7;
  const int64_t S = s.S >= 0 ? s.S : std::max<int64_t>(1, std::min<int64_t>(T_, 5));
  std::vector<int64_t> indptr{0}, seg_adapter(S);
  {
    std::vector<int64_t> cuts(S > 0 ? S - 1 : 0);
    for (auto& c : cuts) c = uniform(0, T_);
    std::sort(cuts.begin(), cuts.end());
    if (cuts.size() >= 2) cuts[1] = cuts[0];  // at least one empty segment
    for (auto c : cuts) indptr.push_back(c);
    if (S > 0) indptr.push_back(T_);
    for (auto& a : seg_adapter) a = s.one_slot ? 0 : uniform(-1, N - 1);
    if (s.out_of_range && S >= 2) seg_adapter[1] = 1000;
  }
  std::vector<int64_t> slot_of(T_);
  for (int64_t t = 0; t < T_; ++t) slot_of[t] = indices[t];
  if (segments) {
    for (int64_t seg = 0; seg < S; ++seg)
      for (int64_t t = indptr[seg]; t < indptr[seg + 1]; ++t) slot_of[t] = seg_adapter[seg];
  }

  // Data in the element type; the reference reads the same rounded values.
  const double nan = std::nan("");
  const int64_t xs = Hi + s.x_pad, ys = Ho + s.y_pad;
  const size_t x_len = T_ ? static_cast<size_t>(s.x_off + (T_ - 1) * xs + Hi) : 0;
  const size_t y_len = T_ ? static_cast<size_t>(s.y_off + (T_ - 1) * ys + Ho) : 0;
  Buf<T> x(x_len), a(N * R * Hi), b(N * Ho * R), bias(N * Ho), y(y_len);
  std::vector<double> xd(x_len), ad(a.n), bd(b.n), biasd(bias.n), yd(y_len);
  auto fill = [&](Buf<T>& buf, std::vector<double>& d, double scale) {
    for (size_t i = 0; i < buf.n; ++i) {
      buf.p[i] = Ty::from(normal(gen) * scale);
      d[i] = Ty::to(buf.p[i]);
    }
  };
  fill(x, xd, 1.0);
  fill(a, ad, 1.0 / std::sqrt(static_cast<double>(std::max<int64_t>(Hi, 1))));
  fill(b, bd, 1.0);
  fill(bias, biasd, 1.0);
  fill(y, yd, 1.0);
  for (int64_t s_ = 0; s_ < N; ++s_) {  // NaN in the padding past each slot's rank: never read
    const int64_t r = eff_rank(ranks, s.ranks, s_, N, R);
    for (int64_t j = r; j < R; ++j) {
      for (int64_t k = 0; k < Hi; ++k) a.p[(s_ * R + j) * Hi + k] = Ty::from(nan);
      for (int64_t o = 0; o < Ho; ++o) b.p[(s_ * Ho + o) * R + j] = Ty::from(nan);
    }
  }
  Buf<Acc> scaling(N);
  std::vector<double> scd(N);
  for (int64_t i = 0; i < N; ++i) scd[i] = scaling.p[i] = static_cast<Acc>(static_cast<float>(0.1 + std::abs(normal(gen))));

  const Ints idx(indices, s.idx64), ptr(indptr, s.idx64), sad(seg_adapter, s.idx64), rk(ranks, false);
  TokenMap map;
  map.num_tokens = T_;
  if (segments) {
    map.seg_indptr = ptr.vec(), map.seg_adapter = sad.vec(), map.num_segments = S;
  } else {
    map.indices = idx.vec();
  }
  const IndexVec rvec = s.ranks ? rk.vec() : IndexVec{};
  PlanBuf plan;
  if (!make_plan(map, N, slot_of, plan, res)) return res;

  // Reference v and update.
  std::vector<double> v_ref(T_ * R, 0.0), d_ref(T_ * Ho, 0.0);
  std::vector<int64_t> r_of(T_);
  for (int64_t t = 0; t < T_; ++t) {
    const int64_t slot = slot_of[t], r = eff_rank(ranks, s.ranks, slot, N, R);
    r_of[t] = r;
    for (int64_t j = 0; j < r; ++j) {
      double acc = 0;
      for (int64_t k = 0; k < Hi; ++k) acc += xd[s.x_off + t * xs + k] * ad[(slot * R + j) * Hi + k];
      v_ref[t * R + j] = acc;
    }
    if (r == 0) continue;
    for (int64_t o = 0; o < Ho; ++o) {
      double acc = s.bias ? biasd[slot * Ho + o] : 0.0;
      for (int64_t j = 0; j < r; ++j) acc += v_ref[t * R + j] * bd[(slot * Ho + o) * R + j];
      d_ref[t * Ho + o] = scd[slot] * acc;
    }
  }

  // Shrink.
  Buf<Acc> v(T_ * R);
  for (size_t i = 0; i < v.n; ++i) v.p[i] = static_cast<Acc>(nan);  // every entry must be written
  ShrinkParams sp;
  sp.x = x.p + s.x_off, sp.x_stride = xs, sp.lora_a = a.p, sp.v = v.p, sp.v_stride = R, sp.ranks = rvec;
  sp.num_slots = N, sp.max_rank = R, sp.h_in = Hi, sp.dtype = Ty::kDType, sp.map = map;
  constexpr int kVec = 16 / sizeof(T);
  *vectorized = Hi % kVec == 0 && xs % kVec == 0 && s.x_off % kVec == 0;
  // The tensor-core path: fp16 / bf16 cases marked tc (shaped to pass tensor_core_path's rule).
  const bool tc = s.tc && (std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>) && R > 0;
  uint64_t launches = cuda::tensor_core_launches();
  const auto check_path = [&](const char* phase) {
    const uint64_t now = cuda::tensor_core_launches();
    res.check(now - launches == (tc ? 1u : 0u), std::string(phase) + (tc ? " did not take the tensor-core path"
                                                                        : " took the tensor-core path unexpectedly"));
    launches = now;
  };
  res.check(cuda::launch_shrink(sp, nullptr) == cudaSuccess, "launch_shrink reported an error");
  check_path("launch_shrink");
  if (!res.ok) return res;
  double err2 = 0, ref2 = 0;
  for (int64_t t = 0; t < T_; ++t)
    for (int64_t j = 0; j < R; ++j) {
      const double got = v.p[t * R + j], want = v_ref[t * R + j];
      if (j >= r_of[t]) {
        res.check(got == 0.0, "v[" + std::to_string(t) + ", " + std::to_string(j) + "] = " + fmt("%g", got) +
                                  ", expected exactly 0 (past the rank, or no adapter)");
      } else {
        res.check(std::isfinite(got), "v[" + std::to_string(t) + ", " + std::to_string(j) + "] = " + fmt("%g", got));
      }
      err2 += (got - want) * (got - want), ref2 += want * want;
    }
  const double v_err = ref2 > 0 ? std::sqrt(err2 / ref2) : std::sqrt(err2);
  res.check(v_err < Ty::kTol, "shrink: relative error of v " + fmt("%.3g", v_err) + " >= " + fmt("%g", Ty::kTol));
  if (!res.ok) return res;

  // Expand from the kernel's own v.
  ExpandParams ep;
  ep.y = y.p + s.y_off, ep.y_stride = ys, ep.v = v.p, ep.v_stride = R, ep.lora_b = b.p, ep.scaling = scaling.p;
  ep.lora_bias = s.bias ? bias.p : nullptr, ep.ranks = rvec, ep.num_slots = N, ep.max_rank = R, ep.h_out = Ho;
  ep.dtype = Ty::kDType, ep.map = map;
  std::vector<T> y_in(y.p, y.p + y.n);
  res.check(cuda::launch_expand(ep, nullptr) == cudaSuccess, "launch_expand reported an error");
  check_path("launch_expand");
  if (!res.ok) return res;
  err2 = ref2 = 0;
  double yref2 = 0;
  std::vector<bool> in_view(y.n, false);
  for (int64_t t = 0; t < T_; ++t)
    for (int64_t o = 0; o < Ho; ++o) {
      const size_t i = s.y_off + t * ys + o;
      in_view[i] = true;
      const double got = Ty::to(y.p[i]), before = yd[i], want = d_ref[t * Ho + o];
      if (r_of[t] == 0) {
        res.check(std::memcmp(&y.p[i], &y_in[i], sizeof(T)) == 0,
                  "y[" + std::to_string(t) + "] changed although the token has no adapter or rank 0");
      }
      res.check(std::isfinite(got), "y[" + std::to_string(t) + ", " + std::to_string(o) + "] = " + fmt("%g", got));
      const double d = got - before;
      err2 += (d - want) * (d - want), ref2 += want * want, yref2 += (before + want) * (before + want);
    }
  for (size_t i = 0; i < y.n; ++i)
    if (!in_view[i]) res.check(std::memcmp(&y.p[i], &y_in[i], sizeof(T)) == 0, "y changed outside the [T, H_out] view");
  const double y_err = update_error(err2, ref2, yref2, Ty::kEps);
  res.check(y_err < Ty::kTol, "expand: relative update error " + fmt("%.3g", y_err) + " >= " + fmt("%g", Ty::kTol));
  if (s.reorder && res.ok) {
    // A second plan: the executor's thread order has moved on, so the atomic scatter orders the
    // rows inside each slot differently (checked), and v and y must still be bit-equal.
    TokenMap map2 = map;
    PlanBuf plan2;
    if (!make_plan(map2, N, slot_of, plan2, res)) return res;
    res.check(std::memcmp(plan.plan.rows_by_slot, plan2.plan.rows_by_slot, T_ * sizeof(int32_t)) != 0,
              "two plan builds ordered the rows alike: this case cannot show that the order does not matter");
    Buf<Acc> v2(T_ * R);
    for (size_t i = 0; i < v2.n; ++i) v2.p[i] = static_cast<Acc>(nan);
    Buf<T> y2(y.n);
    std::memcpy(y2.p, y_in.data(), y.n * sizeof(T));
    ShrinkParams sp2 = sp;
    sp2.v = v2.p, sp2.map = map2;
    ExpandParams ep2 = ep;
    ep2.y = y2.p + s.y_off, ep2.v = v2.p, ep2.map = map2;
    if (res.ok) res.check(cuda::launch_shrink(sp2, nullptr) == cudaSuccess && cuda::launch_expand(ep2, nullptr) == cudaSuccess,
                          "a launch on the second plan reported an error");
    if (res.ok) res.check(std::memcmp(v.p, v2.p, v.n * sizeof(Acc)) == 0, "v differs bitwise under another plan order");
    if (res.ok) res.check(std::memcmp(y.p, y2.p, y.n * sizeof(T)) == 0, "y differs bitwise under another plan order");
  }
  res.why = res.ok ? "v err " + fmt("%.2g", v_err) + ", y err " + fmt("%.2g", y_err) +
                         (s.reorder ? ", bit-equal under a second plan order" : "") + (tc ? ", tensor cores" : "")
                   : res.why;
  return res;
}

// Embedding shrink + expand: y[t] += s[a] * B[a] @ A[a][:, token_ids[t]].
template <typename T>
Result run_embedding(const Spec& s, uint32_t seed) {
  using Acc = typename Type<T>::Acc;
  using Ty = Type<T>;
  Result res;
  const int64_t T_ = s.T, vocab = s.H_in, dim = s.H_out, N = s.N, R = s.R;
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> normal;
  auto uniform = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(gen); };
  std::vector<int64_t> ranks(N), indices(T_), tokens(T_);
  for (int64_t a = 0; a < N; ++a) ranks[a] = a == 0 ? R : uniform(0, R);
  for (auto& i : indices) i = uniform(-1, N - 1);
  for (auto& t : tokens) t = uniform(0, vocab - 1);
  if (s.out_of_range && T_ >= 6) indices[3] = 1000, tokens[1] = vocab + 3, tokens[2] = -1, ranks[1] = R + 5;
  const double nan = std::nan("");
  Buf<T> a(N * R * vocab), b(N * dim * R), y(T_ * dim);
  std::vector<double> ad(a.n), bd(b.n), yd(y.n);
  for (size_t i = 0; i < a.n; ++i) ad[i] = Ty::to(a.p[i] = Ty::from(normal(gen)));
  for (size_t i = 0; i < b.n; ++i) bd[i] = Ty::to(b.p[i] = Ty::from(normal(gen)));
  for (size_t i = 0; i < y.n; ++i) yd[i] = Ty::to(y.p[i] = Ty::from(normal(gen)));
  for (int64_t sl = 0; sl < N; ++sl) {
    const int64_t r = std::min(std::max<int64_t>(ranks[sl], 0), R);
    for (int64_t j = r; j < R; ++j) {
      for (int64_t k = 0; k < vocab; ++k) a.p[(sl * R + j) * vocab + k] = Ty::from(nan);
      for (int64_t o = 0; o < dim; ++o) b.p[(sl * dim + o) * R + j] = Ty::from(nan);
    }
  }
  Buf<Acc> scaling(N);
  std::vector<double> scd(N);
  for (int64_t i = 0; i < N; ++i) scd[i] = scaling.p[i] = static_cast<Acc>(static_cast<float>(0.1 + std::abs(normal(gen))));
  const Ints idx(indices, false), tok(tokens, true), rk(ranks, false);
  TokenMap map;
  map.num_tokens = T_, map.indices = idx.vec();
  PlanBuf plan;  // the expand groups tokens; the embedding shrink is per token
  if (!make_plan(map, N, indices, plan, res)) return res;
  Buf<Acc> v(T_ * R);
  for (size_t i = 0; i < v.n; ++i) v.p[i] = static_cast<Acc>(nan);
  EmbeddingShrinkParams sp;
  sp.token_ids = tok.vec(), sp.lora_a = a.p, sp.v = v.p, sp.v_stride = R, sp.ranks = rk.vec();
  sp.num_slots = N, sp.max_rank = R, sp.vocab = vocab, sp.dtype = Ty::kDType, sp.map = map;
  res.check(cuda::launch_embedding_shrink(sp, nullptr) == cudaSuccess, "launch_embedding_shrink reported an error");
  ExpandParams ep;
  ep.y = y.p, ep.y_stride = dim, ep.v = v.p, ep.v_stride = R, ep.lora_b = b.p, ep.scaling = scaling.p;
  ep.ranks = rk.vec(), ep.num_slots = N, ep.max_rank = R, ep.h_out = dim, ep.dtype = Ty::kDType, ep.map = map;
  std::vector<T> y_in(y.p, y.p + y.n);
  if (res.ok) res.check(cuda::launch_expand(ep, nullptr) == cudaSuccess, "launch_expand reported an error");
  if (!res.ok) return res;
  double err2 = 0, ref2 = 0, yref2 = 0;
  for (int64_t t = 0; t < T_; ++t) {
    const int64_t slot = indices[t], r = eff_rank(ranks, true, slot, N, R), tk = tokens[t];
    for (int64_t j = 0; j < R; ++j) {
      const double want = j < r && tk >= 0 && tk < vocab ? ad[(slot * R + j) * vocab + tk] : 0.0;
      res.check(v.p[t * R + j] == want, "embedding v[" + std::to_string(t) + ", " + std::to_string(j) + "] = " +
                                            fmt("%g", v.p[t * R + j]) + ", expected " + fmt("%g", want));
    }
    for (int64_t o = 0; o < dim; ++o) {
      double want = 0;
      if (r > 0) {
        for (int64_t j = 0; j < r; ++j)
          want += (tk >= 0 && tk < vocab ? ad[(slot * R + j) * vocab + tk] : 0.0) * bd[(slot * dim + o) * R + j];
        want *= scd[slot];
      }
      const size_t i = t * dim + o;
      if (r == 0) res.check(std::memcmp(&y.p[i], &y_in[i], sizeof(T)) == 0, "y changed for a token without adapter");
      const double d = Ty::to(y.p[i]) - yd[i];
      err2 += (d - want) * (d - want), ref2 += want * want, yref2 += (yd[i] + want) * (yd[i] + want);
    }
  }
  const double y_err = update_error(err2, ref2, yref2, Ty::kEps);
  res.check(y_err < Ty::kTol, "embedding: relative update error " + fmt("%.3g", y_err) + " >= " + fmt("%g", Ty::kTol));
  res.why = res.ok ? "y err " + fmt("%.2g", y_err) : res.why;
  return res;
}

// The plan alone at large T (past 65535, the old grid.x bound of older GPUs; the kernels launch
// T blocks on grid.x, which allows 2^31 - 1): indices in int32 / int64 with -1 and out-of-range
// slots, or segments (some empty, one out of range, tokens past the last segment).
Result run_plan_large(int64_t T_, int64_t N, bool idx64, bool segments, uint32_t seed) {
  Result res;
  std::mt19937_64 gen(seed);
  auto uniform = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(gen); };
  std::vector<int64_t> indices(T_), indptr{0, 0, T_ / 3, T_ / 2, T_ - 17}, seg_adapter{2, 1000, 0, N - 1};
  for (auto& i : indices) i = uniform(-1, N - 1);
  indices[7] = 1000, indices[11] = -7, indices[T_ - 1] = N;
  std::vector<int64_t> slot_of(indices);
  if (segments) {
    std::fill(slot_of.begin(), slot_of.end(), -1);  // the last 17 tokens lie past every segment
    for (size_t seg = 0; seg < seg_adapter.size(); ++seg)
      for (int64_t t = indptr[seg]; t < indptr[seg + 1]; ++t) slot_of[t] = seg_adapter[seg];
  }
  const Ints idx(indices, idx64), ptr(indptr, idx64), sad(seg_adapter, idx64);
  TokenMap map;
  map.num_tokens = T_;
  if (segments) map.seg_indptr = ptr.vec(), map.seg_adapter = sad.vec(), map.num_segments = 4;
  else map.indices = idx.vec();
  PlanBuf plan;
  make_plan(map, N, slot_of, plan, res);
  if (res.ok) res.why = "every token once, in its slot's bucket";
  return res;
}

// The plan API's contract: what launch_build_plan refuses, and launchers whose map has no plan
// or one built for another T or N: each cudaErrorInvalidValue, with nothing launched.
Result run_plan_contract() {
  Result res;
  const int64_t T_ = 5, N = 3;
  const std::vector<int64_t> indices{0, 2, -1, 1, 0};
  const Ints idx(indices, false);
  TokenMap map;
  map.num_tokens = T_, map.indices = idx.vec();
  const size_t bytes = cuda::plan_workspace_bytes(T_, N);
  res.check(bytes >= (2 * T_ + 2 * N + 3) * sizeof(int32_t), "plan_workspace_bytes(5, 3) = " + std::to_string(bytes));
  res.check(cuda::plan_workspace_bytes(-1, N) == 0 && cuda::plan_workspace_bytes(T_, -1) == 0 &&
                cuda::plan_workspace_bytes(cuda::kMaxPlanTokens + 1, N) == 0,
            "plan_workspace_bytes of a negative or too large size is not 0");
  Buf<unsigned char> ws(bytes);
  GroupPlan plan;
  res.check(cuda::launch_build_plan(map, N, ws.p, bytes - 1, &plan, nullptr) == cudaErrorInvalidValue,
            "launch_build_plan took a workspace one byte short");
  res.check(cuda::launch_build_plan(map, N, nullptr, bytes, &plan, nullptr) == cudaErrorInvalidValue,
            "launch_build_plan took a null workspace");
  res.check(cuda::launch_build_plan(map, N, ws.p + 4, bytes, &plan, nullptr) == cudaErrorInvalidValue,
            "launch_build_plan took a workspace that is not 16-byte aligned");
  // Launchers: no plan, then a plan of another T, then of another N. v and y must stay untouched.
  Buf<float> x(T_ * 8), a(N * 4 * 8), b(N * 8 * 4), v(T_ * 4), y(T_ * 8), scaling(N);
  std::memset(v.p, 0x7f, v.n * sizeof(float));
  std::memset(y.p, 0x7f, y.n * sizeof(float));
  ShrinkParams sp;
  sp.x = x.p, sp.x_stride = 8, sp.lora_a = a.p, sp.v = v.p, sp.v_stride = 4, sp.num_slots = N, sp.max_rank = 4;
  sp.h_in = 8, sp.dtype = DType::kFloat32, sp.map = map;
  ExpandParams ep;
  ep.y = y.p, ep.y_stride = 8, ep.v = v.p, ep.v_stride = 4, ep.lora_b = b.p, ep.scaling = scaling.p;
  ep.num_slots = N, ep.max_rank = 4, ep.h_out = 8, ep.dtype = DType::kFloat32, ep.map = map;
  const auto refused = [&](const std::string& what) {
    res.check(cuda::launch_shrink(sp, nullptr) == cudaErrorInvalidValue, "launch_shrink ran " + what);
    res.check(cuda::launch_expand(ep, nullptr) == cudaErrorInvalidValue, "launch_expand ran " + what);
    res.check(cuda::launch_shrink_slices(&sp, 1, nullptr) == cudaErrorInvalidValue, "launch_shrink_slices ran " + what);
    res.check(cuda::launch_expand_slices(&ep, 1, nullptr) == cudaErrorInvalidValue, "launch_expand_slices ran " + what);
  };
  refused("without a plan");
  TokenMap shorter = map;
  shorter.num_tokens = T_ - 1;
  res.check(cuda::launch_build_plan(shorter, N, ws.p, bytes, &plan, nullptr) == cudaSuccess, "launch_build_plan failed");
  sp.map.plan = ep.map.plan = plan;
  refused("with a plan built for T - 1 tokens");
  res.check(cuda::launch_build_plan(map, N - 1, ws.p, bytes, &plan, nullptr) == cudaSuccess, "launch_build_plan failed");
  sp.map.plan = ep.map.plan = plan;
  refused("with a plan built for N - 1 slots");
  for (size_t i = 0; i < v.n; ++i) res.check(v.p[i] > 1e38f, "v was written");
  for (size_t i = 0; i < y.n; ++i) res.check(y.p[i] > 1e38f, "y was written");
  if (res.ok) res.why = "short, null or misaligned workspace and missing or mismatched plans refused";
  return res;
}

// add_lora_slices: n slices side by side in y's columns, each its own A / B stacks, ranks,
// scaling and bias, one shared token map. launch_shrink_slices / launch_expand_slices against the
// float64 reference, and bit for bit against launch_shrink / launch_expand on each slice alone.
struct SliceSpec {
  std::string name;
  int64_t T, H_in, N;
  std::vector<int64_t> H_out, R;  // per slice
  bool bias = true, ranks = true, idx64 = false, out_of_range = false;
  int64_t x_pad = 0, x_off = 0, y_pad = 0, y_off = 0;
  int misaligned = -1;  // this slice's lora_a and lora_b start one element past a 16-byte boundary
  bool tc = false;      // fp16 / bf16 take the tensor-core path (checked by its launch counter)
  // The decode path (launch_add_lora_slices) instead of launch_shrink_slices + launch_expand_slices:
  // each slice's config is decode_config's on that slice, or forced (splits[i] > 0: that many
  // splits, fused[i]); modes: what each slice must run ('P' plain shrink, 'S' split-K shrink, 'F'
  // fused, '-' nothing); log: the kernels the call must launch. Checked against the float64
  // reference and bit for bit against launch_add_lora on each slice alone with its config, and
  // rerun on the first call's workspace (counters_zero) in another block order: the same bits.
  bool decode = false;
  std::vector<int64_t> splits = {};
  std::vector<int> fused = {};
  std::string modes = {}, log = {};
};

// Which kernels the last launches ran, for the slices' paths.
std::string slices_launched() {
  std::string out;
  for (const std::string& k : lk_simt::launch_log()) {
    const std::string n = k.find("decode_slices_kernel") != std::string::npos   ? "decode slices"
                          : k.find("shrink_slices_kernel") != std::string::npos ? "shrink slices"
                          : k.find("expand_slices_kernel") != std::string::npos ? "expand slices"
                          : k.find("decode_kernel") != std::string::npos        ? "decode"
                          : k.find("shrink_kernel") != std::string::npos        ? "shrink"
                          : k.find("expand_kernel") != std::string::npos        ? "expand" : k;
    out += (out.empty() ? "" : " + ") + n;
  }
  return out.empty() ? "nothing" : out;
}

template <typename T>
Result run_slices(const SliceSpec& s, bool segments, uint32_t seed) {
  using Acc = typename Type<T>::Acc;
  using Ty = Type<T>;
  Result res;
  const int64_t T_ = s.T, Hi = s.H_in, N = s.N, n = static_cast<int64_t>(s.H_out.size());
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> normal;
  auto uniform = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(gen); };
  const double nan = std::nan("");

  // Token map: unsorted indices with -1, or segments with an empty one.
  std::vector<int64_t> indices(T_);
  for (auto& i : indices) i = uniform(-1, N - 1);
  if (s.out_of_range && T_ >= 6) indices[3] = 1000, indices[5] = -7;
  const int64_t S = std::max<int64_t>(1, std::min<int64_t>(T_, 5));
  std::vector<int64_t> indptr{0}, seg_adapter(S);
  {
    std::vector<int64_t> cuts(S - 1);
    for (auto& c : cuts) c = uniform(0, T_);
    std::sort(cuts.begin(), cuts.end());
    if (cuts.size() >= 2) cuts[1] = cuts[0];  // at least one empty segment
    for (auto c : cuts) indptr.push_back(c);
    indptr.push_back(T_);
    for (auto& a : seg_adapter) a = uniform(-1, N - 1);
    if (s.out_of_range && S >= 2) seg_adapter[1] = 1000;
  }
  if (s.decode && T_ > 0) {  // few tokens: token 0 on slot 0 (full rank), so no case is all "no adapter"
    indices[0] = 0;
    for (int64_t seg = 0; seg < S; ++seg)
      if (indptr[seg] == 0 && indptr[seg + 1] > 0) seg_adapter[seg] = 0;
  }
  std::vector<int64_t> slot_of(indices);
  if (segments)
    for (int64_t seg = 0; seg < S; ++seg)
      for (int64_t t = indptr[seg]; t < indptr[seg + 1]; ++t) slot_of[t] = seg_adapter[seg];
  const Ints idx(indices, s.idx64), ptr(indptr, s.idx64), sad(seg_adapter, s.idx64);
  TokenMap map;
  map.num_tokens = T_;
  if (segments) map.seg_indptr = ptr.vec(), map.seg_adapter = sad.vec(), map.num_segments = S;
  else map.indices = idx.vec();
  PlanBuf plan;  // one plan for every slice and both phases, as the op builds it
  if (!make_plan(map, N, slot_of, plan, res)) return res;

  // x and y (y: every slice's columns side by side, row-strided).
  int64_t Ho_total = 0;
  for (int64_t h : s.H_out) Ho_total += h;
  const int64_t xs = Hi + s.x_pad, ys = Ho_total + s.y_pad;
  const size_t x_len = T_ ? static_cast<size_t>(s.x_off + (T_ - 1) * xs + Hi) : 0;
  const size_t y_len = T_ ? static_cast<size_t>(s.y_off + (T_ - 1) * ys + Ho_total) : 0;
  Buf<T> x(x_len), y(y_len);
  std::vector<double> xd(x_len), yd(y_len);
  for (size_t i = 0; i < x.n; ++i) xd[i] = Ty::to(x.p[i] = Ty::from(normal(gen)));
  for (size_t i = 0; i < y.n; ++i) yd[i] = Ty::to(y.p[i] = Ty::from(normal(gen)));

  // Per slice: weights (NaN past each slot's rank), ranks, scaling, bias, v, params.
  struct Slice {
    int64_t Ho, R, col;
    std::vector<int64_t> ranks;
    std::unique_ptr<Buf<T>> a, b, bias;
    std::unique_ptr<Buf<Acc>> scaling, v, v_alone;
    std::unique_ptr<Ints> rk;
    std::vector<double> ad, bd, biasd, scd;
    ShrinkParams sp;
    ExpandParams ep;
  };
  std::vector<Slice> sl(n);
  int64_t col = 0;
  for (int64_t i = 0; i < n; ++i) {
    Slice& c = sl[i];
    c.Ho = s.H_out[i], c.R = s.R[i], c.col = col;
    col += c.Ho;
    const int64_t R = c.R, Ho = c.Ho, a_off = i == s.misaligned ? 1 : 0;
    c.ranks.resize(N);
    for (int64_t a = 0; a < N; ++a) c.ranks[a] = a == 0 ? R : uniform(0, R);
    if (N > 1) c.ranks[N - 1] = 0;
    if (s.out_of_range && N >= 3) c.ranks[1] = R + 5, c.ranks[2] = -3;
    c.a = std::make_unique<Buf<T>>(a_off + N * R * Hi);
    c.b = std::make_unique<Buf<T>>(a_off + N * Ho * R);
    c.bias = std::make_unique<Buf<T>>(N * Ho);
    c.scaling = std::make_unique<Buf<Acc>>(N);
    c.v = std::make_unique<Buf<Acc>>(T_ * R);
    c.v_alone = std::make_unique<Buf<Acc>>(T_ * R);
    c.rk = std::make_unique<Ints>(c.ranks, s.idx64);
    T* a = c.a->p + a_off;
    T* b = c.b->p + a_off;
    c.ad.resize(N * R * Hi), c.bd.resize(N * Ho * R), c.biasd.resize(c.bias->n), c.scd.resize(N);
    for (size_t k = 0; k < c.ad.size(); ++k) c.ad[k] = Ty::to(a[k] = Ty::from(normal(gen) / std::sqrt(double(Hi))));
    for (size_t k = 0; k < c.bd.size(); ++k) c.bd[k] = Ty::to(b[k] = Ty::from(normal(gen)));
    for (size_t k = 0; k < c.biasd.size(); ++k) c.biasd[k] = Ty::to(c.bias->p[k] = Ty::from(normal(gen)));
    for (int64_t k = 0; k < N; ++k)
      c.scd[k] = c.scaling->p[k] = static_cast<Acc>(static_cast<float>(0.1 + std::abs(normal(gen))));
    for (int64_t slot = 0; slot < N; ++slot)
      for (int64_t j = eff_rank(c.ranks, s.ranks, slot, N, R); j < R; ++j) {
        for (int64_t k = 0; k < Hi; ++k) a[(slot * R + j) * Hi + k] = Ty::from(nan);
        for (int64_t o = 0; o < Ho; ++o) b[(slot * Ho + o) * R + j] = Ty::from(nan);
      }
    for (size_t k = 0; k < c.v->n; ++k) c.v->p[k] = c.v_alone->p[k] = static_cast<Acc>(nan);
    const IndexVec rvec = s.ranks ? c.rk->vec() : IndexVec{};
    c.sp.x = x.p + s.x_off, c.sp.x_stride = xs, c.sp.lora_a = a, c.sp.v = c.v->p, c.sp.v_stride = R;
    c.sp.ranks = rvec, c.sp.num_slots = N, c.sp.max_rank = R, c.sp.h_in = Hi, c.sp.dtype = Ty::kDType, c.sp.map = map;
    c.ep.y = y.p + s.y_off + c.col, c.ep.y_stride = ys, c.ep.v = c.v->p, c.ep.v_stride = R, c.ep.lora_b = b;
    c.ep.scaling = c.scaling->p, c.ep.lora_bias = s.bias ? c.bias->p : nullptr, c.ep.ranks = rvec;
    c.ep.num_slots = N, c.ep.max_rank = R, c.ep.h_out = Ho, c.ep.dtype = Ty::kDType, c.ep.map = map;
  }

  Buf<T> y_alone(y.n);
  std::memcpy(y_alone.p, y.p, y.n * sizeof(T));
  const std::vector<T> y_in(y.p, y.p + y.n);
  std::vector<ShrinkParams> sps;
  for (auto& c : sl) sps.push_back(c.sp);
  const bool tc = s.tc && (std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>);
  uint64_t launches = cuda::tensor_core_launches();
  const auto check_path = [&](const char* phase) {
    const uint64_t now = cuda::tensor_core_launches();
    res.check((now > launches) == tc, std::string(phase) + (tc ? " did not take the tensor-core path"
                                                                : " took the tensor-core path unexpectedly"));
    launches = now;
  };
  std::vector<ExpandParams> eps;
  for (auto& c : sl) eps.push_back(c.ep);
  std::vector<bool> fused(n, false);  // a fused slice's v is never written
  std::string decode_note;
  if (!s.decode) {
    // Shrink: all slices in one call, then each slice alone (bit-equal).
    res.check(cuda::launch_shrink_slices(sps.data(), n, nullptr) == cudaSuccess, "launch_shrink_slices reported an error");
    check_path("launch_shrink_slices");
    for (auto& c : sl) {
      ShrinkParams alone = c.sp;
      alone.v = c.v_alone->p;
      if (res.ok) res.check(cuda::launch_shrink(alone, nullptr) == cudaSuccess, "launch_shrink reported an error");
    }
  } else {
    // The decode path: one call for every slice, then launch_add_lora on each slice alone.
    std::vector<cuda::DecodeConfig> cfg(n);
    std::string modes;
    for (int64_t i = 0; i < n; ++i) {
      cfg[i] = cuda::decode_config(sps[i], &eps[i]);
      if (!s.splits.empty() && s.splits[i] > 0) {
        cfg[i].splits = s.splits[i], cfg[i].fused = s.fused[i] != 0;
        cfg[i].workspace_bytes = cuda::decode_workspace_bytes(sps[i], cfg[i]);
      }
      fused[i] = cfg[i].fused;
      modes += T_ == 0 || sl[i].R == 0 || (cfg[i].fused && sl[i].Ho == 0) ? '-'
               : cfg[i].fused                                            ? 'F'
               : cfg[i].splits > 1                                       ? 'S' : 'P';
    }
    res.check(modes == s.modes, "the slices' configs give modes " + modes + ", expected " + s.modes);
    Buf<unsigned char> ws(static_cast<size_t>(cuda::add_lora_slices_workspace_bytes(sps.data(), eps.data(), cfg.data(), n)));
    std::memset(ws.p, 0xff, ws.n);  // NaN partials, garbage counters: the launcher clears those
    lk_simt::launch_log().clear();
    if (res.ok)
      res.check(cuda::launch_add_lora_slices(sps.data(), eps.data(), cfg.data(), n, ws.p, false, nullptr) == cudaSuccess,
                "launch_add_lora_slices reported an error");
    res.check(slices_launched() == s.log, "launch_add_lora_slices ran " + slices_launched() + ", expected " + s.log);
    for (int64_t i = 0; i < n && res.ok; ++i) {
      Slice& c = sl[i];
      ShrinkParams alone = c.sp;
      alone.v = c.v_alone->p;
      ExpandParams e = c.ep;
      e.v = c.v_alone->p;
      e.y = y_alone.p + s.y_off + c.col;
      Buf<unsigned char> wsi(static_cast<size_t>(cfg[i].workspace_bytes));
      res.check(cuda::launch_add_lora(alone, e, cfg[i], wsi.p, false, nullptr) == cudaSuccess,
                "launch_add_lora reported an error");
    }
    // Again on the first call's workspace (its counters must be back to 0), another block order.
    Buf<T> y2(y.n);
    if (y.n) std::memcpy(y2.p, y_in.data(), y.n * sizeof(T));
    std::vector<std::unique_ptr<Buf<Acc>>> v2;
    std::vector<ShrinkParams> sps2(sps);
    std::vector<ExpandParams> eps2(eps);
    for (int64_t i = 0; i < n; ++i) {
      v2.push_back(std::make_unique<Buf<Acc>>(sl[i].v->n));
      for (size_t k = 0; k < v2[i]->n; ++k) v2[i]->p[k] = static_cast<Acc>(nan);
      sps2[i].v = v2[i]->p, eps2[i].v = v2[i]->p;
      eps2[i].y = y2.p + s.y_off + sl[i].col;
    }
    if (res.ok)
      res.check(cuda::launch_add_lora_slices(sps2.data(), eps2.data(), cfg.data(), n, ws.p, true, nullptr) == cudaSuccess,
                "launch_add_lora_slices reported an error (second call)");
    if (!res.ok) return res;
    res.check(std::memcmp(y2.p, y.p, y.n * sizeof(T)) == 0,
              "y differs bitwise between two calls (another block order; the second on the first's workspace)");
    for (int64_t i = 0; i < n; ++i)
      res.check(std::memcmp(v2[i]->p, sl[i].v->p, sl[i].v->n * sizeof(Acc)) == 0,
                "slice " + std::to_string(i) + ": v differs bitwise between two calls");
    decode_note = ", modes " + modes + ", ran " + s.log + ", rerun bit-equal";
  }
  if (!res.ok) return res;
  double worst_v = 0, worst_y = 0;
  for (int64_t i = 0; i < n; ++i) {
    const Slice& c = sl[i];
    if (fused[i]) {  // v never written: still NaN, as launch_add_lora's
      res.check(std::memcmp(c.v->p, c.v_alone->p, c.v->n * sizeof(Acc)) == 0, "slice " + std::to_string(i) + ": fused, yet v written");
      continue;
    }
    const std::string tag = "slice " + std::to_string(i) + ": ";
    double err2 = 0, ref2 = 0;
    for (int64_t t = 0; t < T_; ++t) {
      const int64_t slot = slot_of[t], r = eff_rank(c.ranks, s.ranks, slot, N, c.R);
      for (int64_t j = 0; j < c.R; ++j) {
        double want = 0;
        for (int64_t k = 0; j < r && k < Hi; ++k) want += xd[s.x_off + t * xs + k] * c.ad[(slot * c.R + j) * Hi + k];
        const double got = c.v->p[t * c.R + j];
        if (j >= r) res.check(got == 0.0, tag + "v[" + std::to_string(t) + ", " + std::to_string(j) + "] = " +
                                               fmt("%g", got) + ", expected exactly 0");
        else res.check(std::isfinite(got), tag + "v[" + std::to_string(t) + ", " + std::to_string(j) + "] = " + fmt("%g", got));
        err2 += (got - want) * (got - want), ref2 += want * want;
      }
    }
    const double v_err = ref2 > 0 ? std::sqrt(err2 / ref2) : std::sqrt(err2);
    worst_v = std::max(worst_v, v_err);
    res.check(v_err < Ty::kTol, tag + "shrink: relative error of v " + fmt("%.3g", v_err) + " >= " + fmt("%g", Ty::kTol));
    res.check(std::memcmp(c.v->p, c.v_alone->p, c.v->n * sizeof(Acc)) == 0,
              tag + "v differs bitwise from launch_shrink on the slice alone");
  }
  if (!res.ok) return res;

  // Expand: all slices in one call on y, each slice alone on a copy of y (bit-equal).
  if (!s.decode) {
    launches = cuda::tensor_core_launches();
    res.check(cuda::launch_expand_slices(eps.data(), n, nullptr) == cudaSuccess, "launch_expand_slices reported an error");
    check_path("launch_expand_slices");
    for (auto& c : sl) {
      ExpandParams alone = c.ep;
      alone.y = y_alone.p + s.y_off + c.col;
      if (res.ok) res.check(cuda::launch_expand(alone, nullptr) == cudaSuccess, "launch_expand reported an error");
    }
  }
  if (!res.ok) return res;
  std::vector<bool> in_view(y.n, false);
  for (int64_t i = 0; i < n; ++i) {
    const Slice& c = sl[i];
    const std::string tag = "slice " + std::to_string(i) + ": ";
    double err2 = 0, ref2 = 0, yref2 = 0;
    for (int64_t t = 0; t < T_; ++t) {
      const int64_t slot = slot_of[t], r = eff_rank(c.ranks, s.ranks, slot, N, c.R);
      std::vector<double> vt(r, 0.0);
      for (int64_t j = 0; j < r; ++j)
        for (int64_t k = 0; k < Hi; ++k) vt[j] += xd[s.x_off + t * xs + k] * c.ad[(slot * c.R + j) * Hi + k];
      for (int64_t o = 0; o < c.Ho; ++o) {
        const size_t at = s.y_off + t * ys + c.col + o;
        in_view[at] = true;
        double want = 0;
        if (r > 0) {
          double acc = s.bias ? c.biasd[slot * c.Ho + o] : 0.0;
          for (int64_t j = 0; j < r; ++j) acc += vt[j] * c.bd[(slot * c.Ho + o) * c.R + j];
          want = c.scd[slot] * acc;
        } else {
          res.check(std::memcmp(&y.p[at], &y_in[at], sizeof(T)) == 0,
                    tag + "y[" + std::to_string(t) + "] changed although the token has no adapter or rank 0");
        }
        const double got = Ty::to(y.p[at]), before = yd[at], d = got - before;
        res.check(std::isfinite(got), tag + "y[" + std::to_string(t) + ", " + std::to_string(o) + "] = " + fmt("%g", got));
        err2 += (d - want) * (d - want), ref2 += want * want, yref2 += (before + want) * (before + want);
      }
    }
    const double y_err = update_error(err2, ref2, yref2, Ty::kEps);
    worst_y = std::max(worst_y, y_err);
    res.check(y_err < Ty::kTol, tag + "expand: relative update error " + fmt("%.3g", y_err) + " >= " + fmt("%g", Ty::kTol));
  }
  for (size_t i = 0; i < y.n; ++i)
    if (!in_view[i]) res.check(std::memcmp(&y.p[i], &y_in[i], sizeof(T)) == 0, "y changed outside the slices' columns");
  res.check(std::memcmp(y.p, y_alone.p, y.n * sizeof(T)) == 0,
            s.decode ? "y differs bitwise from launch_add_lora on each slice alone with its config"
                     : "y differs bitwise from launch_expand on each slice alone");
  res.why = res.ok ? "v err " + fmt("%.2g", worst_v) + ", y err " + fmt("%.2g", worst_y) + ", bit-equal per slice" +
                         decode_note + (tc ? ", tensor cores" : "")
                   : res.why;
  return res;
}

std::vector<SliceSpec> slice_specs(bool quick) {
  std::vector<SliceSpec> all = {
      //  name                                  T   H_in N  H_out per slice      R per slice
      {"slices T=0", 0, 16, 2, {8, 4}, {4, 2}},
      {"slices qkv GQA", 24, 64, 4, {64, 16, 16}, {8, 4, 6}},
      {"slices gate_up odd H no bias no ranks", 13, 131, 3, {97, 97}, {5, 7}},
      {"slices strided, mixed vector paths", 17, 72, 4, {40, 24, 8}, {8, 8, 4}},
      {"slices out-of-range slots and ranks", 12, 40, 4, {20, 12}, {4, 6}},
      {"slices rank 72 and H_out 300", 6, 40, 2, {300, 20}, {72, 3}},
      {"slices 10 (two launches per phase)", 9, 32, 3, {8, 4, 8, 4, 8, 4, 8, 4, 8, 12}, {1, 2, 3, 4, 1, 2, 3, 4, 1, 2}},
      {"slices TC T=160 qkv ranks 16 17 8", 160, 72, 4, {136, 40, 24}, {16, 17, 8}},
      {"slices TC T=170 strided, mixed vector paths", 170, 40, 3, {40, 24, 9}, {8, 8, 4}},
  };
  all[2].bias = false, all[2].ranks = false;
  all[3].x_pad = 3, all[3].x_off = 1, all[3].y_pad = 5, all[3].y_off = 2, all[3].idx64 = true;
  all[3].misaligned = 1;
  all[4].out_of_range = true;
  all[7].tc = all[8].tc = true;
  all[8].x_pad = 3, all[8].x_off = 1, all[8].y_pad = 5, all[8].y_off = 2, all[8].misaligned = 1;
  // The decode path (launch_add_lora_slices).
  std::vector<SliceSpec> dec = {
      //  name                                                   T   H_in  N  H_out per slice    R per slice
      {"slices decode qkv GQA T=1 H_in=4097 auto", 1, 4097, 3, {1280, 256, 256}, {16, 8, 4}},
      {"slices decode T=3 H_in=4097 strided int64 auto, rank-0 slice", 3, 4097, 4, {1100, 200, 200, 64}, {16, 8, 4, 0}},
      {"slices decode T=64 auto (1 split, all fused)", 64, 256, 8, {300, 64, 64}, {16, 8, 8}},
      {"slices decode forced mixed modes, mixed vector paths", 5, 300, 3, {77, 40, 24, 16}, {8, 7, 4, 8}},
      {"slices decode 10 forced (two launches)", 2, 64, 3, {8, 4, 8, 4, 8, 4, 8, 4, 8, 12}, {1, 2, 3, 4, 1, 2, 3, 4, 1, 2}},
      {"slices decode T=100 auto (no decode kernel)", 100, 64, 5, {32, 16}, {8, 4}},
      {"slices decode T=0", 0, 64, 2, {8, 4}, {4, 2}},
  };
  for (auto& d : dec) d.decode = true;
  dec[0].modes = "SFF", dec[0].log = "decode slices + expand slices";
  dec[1].modes = "SFF-", dec[1].log = "decode slices + expand slices";
  dec[1].x_pad = 3, dec[1].x_off = 1, dec[1].y_pad = 5, dec[1].y_off = 2, dec[1].idx64 = true;
  dec[2].modes = "FFF", dec[2].log = "decode slices";
  dec[3].splits = {3, 1, 2, 5}, dec[3].fused = {0, 0, 1, 1}, dec[3].modes = "SPFF";
  dec[3].log = "decode slices + expand slices", dec[3].misaligned = 2, dec[3].out_of_range = true;
  dec[3].y_pad = 3, dec[3].y_off = 1;
  dec[4].splits = {2, 2, 2, 2, 2, 2, 2, 2, 2, 2}, dec[4].fused = {1, 0, 1, 0, 1, 0, 1, 0, 1, 0};
  dec[4].modes = "FSFSFSFSFS", dec[4].log = "decode slices + decode slices + expand slices";
  dec[5].modes = "PP", dec[5].log = "shrink slices + expand slices";
  dec[6].modes = "--", dec[6].log = "nothing";
  // for the planted bugs (indices only; fp32, all[8] in bf16)
  if (quick) return {all[3], all[1], all[8], dec[3]};
  all.insert(all.end(), dec.begin(), dec.end());
  return all;
}

std::vector<Spec> linear_specs(bool quick) {
  //                          name                          T     H_in  H_out N  R
  std::vector<Spec> all = {
      {"T=0", 0, 32, 16, 3, 4},
      {"T=1", 1, 64, 48, 2, 8},
      {"T=7 H=3", 7, 3, 3, 4, 2},
      {"H=1", 9, 1, 1, 3, 4},
      {"odd H=131", 37, 131, 131, 5, 7},
      {"H=4097", 5, 4097, 4097, 2, 4},
      {"aligned T=64", 64, 512, 256, 8, 16},
      {"T=300 several groups", 300, 96, 72, 6, 8},
      {"T=300 one adapter", 300, 64, 40, 1, 4},
      {"rank 72 (two rank chunks)", 12, 64, 96, 2, 72},
      {"strided unaligned int64", 33, 72, 40, 4, 8},
      {"strided aligned", 20, 128, 64, 3, 8},
      {"no bias no ranks", 24, 80, 48, 3, 8},
      {"sorted, many segments", 64, 48, 24, 5, 4},
      {"out-of-range slots and ranks", 40, 67, 33, 4, 6},
      {"decode-64 (a GPU test shape)", 64, 4096, 4096, 64, 16},
      {"T=3000 five adapters, -1 and out-of-range slots", 3000, 24, 20, 5, 4},
      {"N=0 (no adapter for any token)", 10, 8, 8, 0, 2},
      {"N=5000 (plan counts in global memory)", 200, 8, 8, 5000, 2},
      // The tensor-core path (T >= 128, and >= 32 tokens per segment over the 5 segments).
      {"TC T=160 odd H rank 17 strided unaligned", 160, 131, 97, 4, 17},
      {"TC T=200 aligned rank 16 H_out 136", 200, 64, 136, 3, 16},
      {"TC T=170 H_in=3 H_out=1 rank 20", 170, 3, 1, 3, 20},
      {"TC T=170 rank 72 H_out 300 no bias", 170, 40, 300, 3, 72},
      {"TC T=256 one adapter (4 full groups)", 256, 48, 40, 1, 8},
      {"TC T=180 out-of-range slots and ranks", 180, 33, 24, 4, 6},
  };
  all[6].idx64 = true;
  all[8].one_slot = true;
  all[10].x_pad = 3, all[10].x_off = 1, all[10].y_pad = 5, all[10].y_off = 2, all[10].idx64 = true;
  all[11].x_pad = 16, all[11].y_pad = 8;
  all[12].bias = false, all[12].ranks = false;
  all[13].sorted = true, all[13].S = 12;
  all[14].out_of_range = true;
  all[15].bf16_only = true;
  all[16].out_of_range = true, all[16].reorder = true;
  all[8].reorder = true;
  all[7].tc = all[8].tc = true;
  all[16].tc = all[18].tc = true;  // T = 3000 and N = 5000 (T = 200) pass tensor_core_path's rule too
  for (size_t i = 19; i < all.size(); ++i) all[i].tc = true;
  all[19].x_pad = 3, all[19].x_off = 1, all[19].y_pad = 5, all[19].y_off = 2, all[19].idx64 = true;
  all[22].bias = false;
  all[23].one_slot = true;
  all[24].out_of_range = true;
  if (!quick) return all;
  return {all[14], all[4], all[19]};  // for the planted bugs: what catches each one first (all[19] in bf16)
}


// Decode (decode.cu / decode.cuh): the split-K shrink and the fused one-launch shrink + expand.
// Each case runs (a) launch_shrink_decode + launch_expand and (b) launch_add_lora fused, with the
// case's forced number of splits, or with decode_config's choice (then checked against what the
// case expects). v and y against the float64 reference; the executor's launch log shows which
// kernels ran; each launch is repeated on a workspace the first one left behind (counters_zero:
// the kernel must have reset its counters) and in another block order (the executor's shuffle
// goes on), and must give the same bits; the fused y must equal (a)'s bit for bit.
struct DecodeSpec {
  std::string name;
  int64_t T, H_in, H_out, N, R;
  int64_t splits = 0;       // 0: decode_config's choice; else forced (both paths then run)
  int expect_splits = 0;    // with splits = 0: 0 no check, -1 more than one, else exactly this
  int expect_fused = -1;    // with splits = 0: -1 no check, else 0 / 1
  bool one_slot = false, out_of_range = false, idx64 = false, bias = true;
  int64_t x_pad = 0, x_off = 0, y_pad = 0, y_off = 0;
};

// Which kernels the last launches ran: "decode(split)", "decode(fused)", "shrink", "expand".
std::string launched() {
  std::string out;
  for (const std::string& k : lk_simt::launch_log()) {
    std::string n = k.find("decode_kernel") != std::string::npos
                        ? (k.find("true>") != std::string::npos ? "decode(fused)" : "decode(split)")
                        : k.find("shrink_kernel") != std::string::npos ? "shrink"
                        : k.find("expand_kernel") != std::string::npos ? "expand" : k;
    out += (out.empty() ? "" : " + ") + n;
  }
  return out.empty() ? "nothing" : out;
}

template <typename T>
Result run_decode(const DecodeSpec& s, bool segments, uint32_t seed) {
  using Acc = typename Type<T>::Acc;
  using Ty = Type<T>;
  Result res;
  const int64_t T_ = s.T, Hi = s.H_in, Ho = s.H_out, N = s.N, R = s.R;
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> normal;
  auto uniform = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(gen); };
  std::vector<int64_t> ranks(N), indices(T_);
  for (int64_t a = 0; a < N; ++a) ranks[a] = a == 0 ? R : uniform(0, R);
  if (N > 1) ranks[N - 1] = 0;
  if (s.out_of_range && N >= 3) ranks[1] = R + 5, ranks[2] = -3;
  for (auto& i : indices) i = s.one_slot ? 0 : uniform(-1, N - 1);
  if (T_ > 0) indices[0] = 0;  // slot 0 has rank R: never a case with nothing to compute
  if (s.out_of_range && T_ >= 6) indices[3] = 1000, indices[5] = -7;
  const int64_t S = std::max<int64_t>(1, std::min<int64_t>(T_, 4));
  std::vector<int64_t> indptr{0}, seg_adapter(S);
  std::vector<int64_t> cuts(S - 1);
  for (auto& c : cuts) c = uniform(0, T_);
  std::sort(cuts.begin(), cuts.end());
  for (auto c : cuts) indptr.push_back(c);
  indptr.push_back(T_);
  for (auto& a : seg_adapter) a = s.one_slot ? 0 : uniform(-1, N - 1);
  seg_adapter[S - 1] = 0;  // the last segment holds token T - 1 (when T > 0)
  std::vector<int64_t> slot_of(indices);
  if (segments)
    for (int64_t g = 0; g < S; ++g)
      for (int64_t t = indptr[g]; t < indptr[g + 1]; ++t) slot_of[t] = seg_adapter[g];
  const Ints idx(indices, s.idx64), ptr(indptr, s.idx64), sad(seg_adapter, s.idx64), rk(ranks, false);
  TokenMap map;
  map.num_tokens = T_;
  if (segments) map.seg_indptr = ptr.vec(), map.seg_adapter = sad.vec(), map.num_segments = S;
  else map.indices = idx.vec();
  PlanBuf plan;  // as the op builds it, before the decode launches
  if (!make_plan(map, N, slot_of, plan, res)) return res;

  const double nan = std::nan("");
  const int64_t xs = Hi + s.x_pad, ys = Ho + s.y_pad;
  const size_t x_len = T_ ? static_cast<size_t>(s.x_off + (T_ - 1) * xs + Hi) : 0;
  const size_t y_len = T_ ? static_cast<size_t>(s.y_off + (T_ - 1) * ys + Ho) : 0;
  Buf<T> x(x_len), a(N * R * Hi), b(N * Ho * R), bias(N * Ho), y(y_len);
  std::vector<double> xd(x.n), ad(a.n), bd(b.n), biasd(bias.n), yd(y.n);
  for (size_t i = 0; i < x.n; ++i) xd[i] = Ty::to(x.p[i] = Ty::from(normal(gen)));
  for (size_t i = 0; i < a.n; ++i) ad[i] = Ty::to(a.p[i] = Ty::from(normal(gen) / std::sqrt(double(std::max<int64_t>(Hi, 1)))));
  for (size_t i = 0; i < b.n; ++i) bd[i] = Ty::to(b.p[i] = Ty::from(normal(gen)));
  for (size_t i = 0; i < bias.n; ++i) biasd[i] = Ty::to(bias.p[i] = Ty::from(normal(gen)));
  for (size_t i = 0; i < y.n; ++i) yd[i] = Ty::to(y.p[i] = Ty::from(normal(gen)));
  for (int64_t sl = 0; sl < N; ++sl)  // NaN past each slot's rank: never read
    for (int64_t j = eff_rank(ranks, true, sl, N, R); j < R; ++j) {
      for (int64_t k = 0; k < Hi; ++k) a.p[(sl * R + j) * Hi + k] = Ty::from(nan);
      for (int64_t o = 0; o < Ho; ++o) b.p[(sl * Ho + o) * R + j] = Ty::from(nan);
    }
  Buf<Acc> scaling(N);
  std::vector<double> scd(N);
  for (int64_t i = 0; i < N; ++i) scd[i] = scaling.p[i] = static_cast<Acc>(static_cast<float>(0.1 + std::abs(normal(gen))));

  std::vector<double> v_ref(T_ * R, 0.0), d_ref(T_ * Ho, 0.0);
  std::vector<int64_t> r_of(T_);
  for (int64_t t = 0; t < T_; ++t) {
    const int64_t slot = slot_of[t], r = r_of[t] = eff_rank(ranks, true, slot, N, R);
    for (int64_t j = 0; j < r; ++j)
      for (int64_t k = 0; k < Hi; ++k) v_ref[t * R + j] += xd[s.x_off + t * xs + k] * ad[(slot * R + j) * Hi + k];
    for (int64_t o = 0; r > 0 && o < Ho; ++o) {
      double acc = s.bias ? biasd[slot * Ho + o] : 0.0;
      for (int64_t j = 0; j < r; ++j) acc += v_ref[t * R + j] * bd[(slot * Ho + o) * R + j];
      d_ref[t * Ho + o] = scd[slot] * acc;
    }
  }

  Buf<Acc> v(T_ * R), v2(T_ * R);
  ShrinkParams sp;
  sp.x = x.p + s.x_off, sp.x_stride = xs, sp.lora_a = a.p, sp.v = v.p, sp.v_stride = R, sp.ranks = rk.vec();
  sp.num_slots = N, sp.max_rank = R, sp.h_in = Hi, sp.dtype = Ty::kDType, sp.map = map;
  ExpandParams ep;
  ep.y_stride = ys, ep.v = v.p, ep.v_stride = R, ep.lora_b = b.p, ep.scaling = scaling.p;
  ep.lora_bias = s.bias ? bias.p : nullptr, ep.ranks = rk.vec(), ep.num_slots = N, ep.max_rank = R, ep.h_out = Ho;
  ep.dtype = Ty::kDType, ep.map = map;

  // The config: decode_config's, or forced.
  cuda::DecodeConfig cfg = cuda::decode_config(sp, &ep);
  const cuda::DecodeConfig shrink_alone = cuda::decode_config(sp, nullptr);
  res.check(!shrink_alone.fused && (cfg.fused ? shrink_alone.splits <= cfg.splits : shrink_alone.splits == cfg.splits),
            "decode_config(sp, nullptr) says fused, or differs from add_lora's (not fused) in splits");
  std::string how = "auto";
  if (s.splits > 0) {
    cfg.splits = s.splits, cfg.fused = true, how = "forced";
    cfg.workspace_bytes = cuda::decode_workspace_bytes(sp, cfg);
  } else {
    if (s.expect_splits == -1) res.check(cfg.splits > 1, "decode_config chose " + std::to_string(cfg.splits) + " split(s), expected more than 1");
    if (s.expect_splits > 0) res.check(cfg.splits == s.expect_splits, "decode_config chose " + std::to_string(cfg.splits) + " split(s), expected " + std::to_string(s.expect_splits));
    if (s.expect_fused >= 0) res.check(cfg.fused == (s.expect_fused == 1), std::string("decode_config chose ") + (cfg.fused ? "fused" : "not fused") + ", expected the other");
  }
  if (!res.ok) return res;
  const bool any = T_ > 0 && R > 0;  // else nothing runs at all
  Buf<unsigned char> ws(static_cast<size_t>(cfg.workspace_bytes));
  std::memset(ws.p, 0xff, ws.n);  // NaN partials, garbage counters: the launcher clears those

  // (a) the split shrink (launch_shrink_decode), twice, then launch_expand.
  cuda::DecodeConfig split = cfg;
  split.fused = false;
  const std::string want_a = !any ? "nothing" : split.splits > 1 ? "decode(split)" : "shrink";
  for (int rep = 0; rep < 2 && res.ok; ++rep) {
    Buf<Acc>& out = rep == 0 ? v : v2;
    for (size_t i = 0; i < out.n; ++i) out.p[i] = static_cast<Acc>(nan);
    ShrinkParams p = sp;
    p.v = out.p;
    lk_simt::launch_log().clear();
    res.check(cuda::launch_shrink_decode(p, split, ws.p, rep == 1, nullptr) == cudaSuccess, "launch_shrink_decode reported an error");
    res.check(launched() == want_a, "launch_shrink_decode ran " + launched() + ", expected " + want_a);
  }
  if (!res.ok) return res;
  res.check(std::memcmp(v.p, v2.p, v.n * sizeof(Acc)) == 0,
            "v differs bitwise between two launches (another block order; the second on the first's workspace)");
  double err2 = 0, ref2 = 0;
  for (int64_t t = 0; t < T_; ++t)
    for (int64_t j = 0; j < R; ++j) {
      const double got = v.p[t * R + j], want = v_ref[t * R + j];
      const std::string at = "v[" + std::to_string(t) + ", " + std::to_string(j) + "] = " + fmt("%g", got);
      if (j >= r_of[t]) res.check(got == 0.0, at + ", expected exactly 0 (past the rank, or no adapter)");
      else res.check(std::isfinite(got), at);
      err2 += (got - want) * (got - want), ref2 += want * want;
    }
  const double v_err = ref2 > 0 ? std::sqrt(err2 / ref2) : std::sqrt(err2);
  res.check(v_err < Ty::kTol, "split shrink: relative error of v " + fmt("%.3g", v_err) + " >= " + fmt("%g", Ty::kTol));
  if (!res.ok) return res;
  const std::vector<T> y_in(y.p, y.p + y.n);
  ExpandParams e = ep;
  e.y = y.p + s.y_off;
  res.check(cuda::launch_expand(e, nullptr) == cudaSuccess, "launch_expand reported an error");
  if (!res.ok) return res;

  auto check_y = [&](const Buf<T>& yy, const char* what) {
    double e2 = 0, r2 = 0, yr2 = 0;
    std::vector<bool> in_view(yy.n, false);
    for (int64_t t = 0; t < T_; ++t)
      for (int64_t o = 0; o < Ho; ++o) {
        const size_t i = s.y_off + t * ys + o;
        in_view[i] = true;
        if (r_of[t] == 0)
          res.check(std::memcmp(&yy.p[i], &y_in[i], sizeof(T)) == 0,
                    std::string(what) + ": y[" + std::to_string(t) + "] changed although the token has no adapter or rank 0");
        const double got = Ty::to(yy.p[i]), want = d_ref[t * Ho + o], d = got - yd[i];
        res.check(std::isfinite(got), std::string(what) + ": y[" + std::to_string(t) + ", " + std::to_string(o) + "] = " + fmt("%g", got));
        e2 += (d - want) * (d - want), r2 += want * want, yr2 += (yd[i] + want) * (yd[i] + want);
      }
    for (size_t i = 0; i < yy.n; ++i)
      if (!in_view[i]) res.check(std::memcmp(&yy.p[i], &y_in[i], sizeof(T)) == 0, std::string(what) + ": y changed outside the view");
    const double err = update_error(e2, r2, yr2, Ty::kEps);
    res.check(err < Ty::kTol, std::string(what) + ": relative update error " + fmt("%.3g", err) + " >= " + fmt("%g", Ty::kTol));
    return err;
  };
  const double y_err = check_y(y, "split shrink + expand");
  if (!res.ok) return res;

  // (b) fused: one launch, twice (the second on the first's workspace), bit-equal to (a).
  std::string fused_note, want_b;
  if (cfg.fused) {
    want_b = !any || Ho == 0 ? "nothing" : "decode(fused)";
    for (int rep = 0; rep < 2 && res.ok; ++rep) {
      Buf<T> yf(y.n);
      std::memcpy(yf.p, y_in.data(), y.n * sizeof(T));
      ExpandParams f = ep;
      f.y = yf.p + s.y_off;
      f.v = nullptr;  // the fused kernel reads the partials, never v
      ShrinkParams p = sp;
      p.v = nullptr;
      lk_simt::launch_log().clear();
      res.check(cuda::launch_add_lora(p, f, cfg, ws.p, rep == 1, nullptr) == cudaSuccess, "launch_add_lora reported an error");
      res.check(launched() == want_b, "launch_add_lora (fused) ran " + launched() + ", expected " + want_b);
      if (!res.ok) return res;
      check_y(yf, rep == 0 ? "fused" : "fused, second launch");
      res.check(std::memcmp(yf.p, y.p, y.n * sizeof(T)) == 0,
                std::string("fused y differs bitwise from launch_shrink_decode + launch_expand") +
                    (rep ? " (second launch, on the first's workspace)" : ""));
    }
    fused_note = ", fused bit-equal";
  }
  res.why = res.ok ? how + " splits " + std::to_string(cfg.splits) + (cfg.fused ? " fused" : "") + ": v err " +
                         fmt("%.2g", v_err) + ", y err " + fmt("%.2g", y_err) + fused_note + ", ran " + want_a +
                         (cfg.fused ? " / " + want_b : "")
                   : res.why;
  return res;
}

std::vector<DecodeSpec> decode_specs(bool quick) {
  //                                                     T   H_in  H_out N   R
  std::vector<DecodeSpec> all = {
      {"decode T=1 14336->4096 r16 auto (split-K, not fused)", 1, 14336, 4096, 2, 16},
      {"decode T=3 H_in=4097 H_out=1000 auto (split-K, fused)", 3, 4097, 1000, 4, 16},
      {"decode T=8 one adapter H_in=1 H_out=3, 3 splits", 8, 1, 3, 1, 4},
      {"decode T=64 over 64 adapters auto (1 split, fused)", 64, 256, 200, 64, 16},
      {"decode T=100 auto (plain)", 100, 64, 32, 5, 8},
      {"decode strided unaligned int64 r7, 5 splits", 5, 300, 77, 3, 7},
      {"decode rank 72 H_out=300, 2 splits", 4, 64, 300, 2, 72},
      {"decode out-of-range slots and ranks, 4 splits", 8, 67, 33, 4, 6},
      {"decode R=0, 2 splits", 3, 16, 8, 2, 0},
      {"decode T=0 auto", 0, 32, 16, 2, 4},
  };
  all[0].expect_splits = -1, all[0].expect_fused = 0;
  all[1].expect_splits = -1, all[1].expect_fused = 1;
  all[2].splits = 3, all[2].one_slot = true;
  all[3].expect_splits = 1, all[3].expect_fused = 1;
  all[4].expect_splits = 1, all[4].expect_fused = 0, all[4].bias = false;
  all[5].splits = 5, all[5].x_pad = 3, all[5].x_off = 1, all[5].y_pad = 5, all[5].y_off = 2, all[5].idx64 = true;
  all[6].splits = 2;
  all[7].splits = 4, all[7].out_of_range = true;
  all[8].splits = 2;
  if (quick) return {all[5], all[7]};  // for the planted bugs (fp32, indices only)
  return all;
}

// decode_config's choice (the real code) for bf16, aligned, at the sweep's decode shapes and a
// few projection shapes: the table in benchmarks/RESULTS.md. `test_kernels --decode-configs`.
int print_decode_configs() {
  std::printf("| T | R | H_in | H_out | plain shrink blocks | splits | shrink blocks | A bytes per block | fused | workspace |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
  struct Shape { int64_t T, R, H_in, H_out; };
  std::vector<Shape> shapes;
  for (int64_t T : {1, 16, 64, 256})
    for (int64_t R : {8, 16, 64, 128})
      for (int64_t Ho : {4096, 14336}) shapes.push_back({T, R, 4096, Ho});
  for (int64_t T : {1, 8, 64}) shapes.push_back({T, 16, 4096, 1024}), shapes.push_back({T, 16, 14336, 4096});
  alignas(16) static __nv_bfloat16 dummy[8];
  for (const Shape& sh : shapes) {
    ShrinkParams sp;
    sp.x = dummy, sp.lora_a = dummy, sp.x_stride = sh.H_in, sp.max_rank = sh.R, sp.h_in = sh.H_in, sp.num_slots = 1;
    sp.dtype = DType::kBFloat16, sp.map.num_tokens = sh.T, sp.v_stride = sh.R;
    ExpandParams ep;
    ep.lora_b = dummy, ep.max_rank = sh.R, ep.h_out = sh.H_out, ep.num_slots = 1, ep.dtype = DType::kBFloat16;
    ep.map = sp.map;
    const cuda::DecodeConfig c = cuda::decode_config(sp, &ep);
    const int64_t plain = sh.T * ((sh.R + 3) / 4), chosen = plain * c.splits;
    const int64_t bytes = std::min<int64_t>(4, sh.R) * ((sh.H_in + c.splits - 1) / c.splits) * 2;
    std::printf("| %lld | %lld | %lld | %lld | %lld | %lld | %lld | %lld | %s | %lld B |\n", (long long)sh.T,
                (long long)sh.R, (long long)sh.H_in, (long long)sh.H_out, (long long)plain, (long long)c.splits,
                (long long)chosen, (long long)bytes, c.fused ? "yes" : "no", (long long)c.workspace_bytes);
  }
  return 0;
}

}  // namespace

void executor_checks(int& passed, int& failed);  // test_executor.cpp

int main(int argc, char** argv) {
  bool quick = false, stop = false;
  std::string only;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--quick") quick = true;
    else if (arg == "--stop-on-fail") stop = true;
    else if (arg == "--only" && i + 1 < argc) only = argv[++i];
    else if (arg == "--decode-configs") return print_decode_configs();
    else {
      std::fprintf(stderr, "usage: %s [--quick] [--stop-on-fail] [--only SUBSTRING]\n", argv[0]);
      return 2;
    }
  }
  std::printf("lk_simt: seed %llu (LK_SIMT_SEED=%llu repeats this run)\n", (unsigned long long)lk_simt::seed(),
              (unsigned long long)lk_simt::seed());
  int passed = 0, failed = 0;
  uint32_t seed = 0;
  auto report = [&](const std::string& name, const Result& r, double secs) {
    (r.ok ? passed : failed) += 1;
    std::printf("%s %s (%.2fs): %s\n", r.ok ? "ok  " : "FAIL", name.c_str(), secs, r.why.c_str());
    std::fflush(stdout);
    return !(stop && !r.ok);
  };
  auto timed = [](auto&& fn) {
    const auto t0 = std::chrono::steady_clock::now();
    Result r = fn();
    return std::make_pair(r, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  };
  if (!quick && only.empty()) executor_checks(passed, failed);
  bool go = true;
  auto each_dtype = [&](auto&& run_one) {
    run_one(__half{});
    run_one(__nv_bfloat16{});
    run_one(float{});
    run_one(double{});
  };
  for (const Spec& s : linear_specs(quick)) {
    for (bool segments : {false, true}) {
      each_dtype([&](auto elem) {
        using T = decltype(elem);
        if (!go || (quick && !(s.tc ? std::is_same_v<T, __nv_bfloat16> : std::is_same_v<T, float>))) return;
        if (s.bf16_only && !std::is_same_v<T, __nv_bfloat16>) return;
        const std::string name = std::string(segments ? "sgmv " : "bgmv ") + Type<T>::kName + " " + s.name;
        ++seed;
        if (!only.empty() && name.find(only) == std::string::npos) return;
        bool vec = false;
        auto [r, secs] = timed([&] { return run_linear<T>(s, segments, seed, &vec); });
        go = report(name + (vec ? " [vector]" : " [scalar]"), r, secs);
      });
    }
  }
  if (!quick) {
    const auto plan_case = [&](const std::string& name, auto&& fn) {
      ++seed;
      if (!go || (!only.empty() && name.find(only) == std::string::npos)) return;
      auto [r, secs] = timed(fn);
      go = report(name, r, secs);
    };
    plan_case("plan contract", [&] { return run_plan_contract(); });
    plan_case("plan T=100000 int32 indices", [&] { return run_plan_large(100000, 7, false, false, seed); });
    plan_case("plan T=100000 int64 indices", [&] { return run_plan_large(100000, 7, true, false, seed); });
    plan_case("plan T=100000 segments", [&] { return run_plan_large(100000, 7, false, true, seed); });
  }
  const Spec emb[] = {{"embedding", 23, 57, 41, 4, 8}, {"embedding out-of-range ids", 16, 30, 20, 3, 4}};
  for (const Spec& s : emb) {
    if (quick) break;
    Spec e = s;
    e.out_of_range = s.name.find("range") != std::string::npos;
    each_dtype([&](auto elem) {
      using T = decltype(elem);
      const std::string name = std::string("embedding ") + Type<T>::kName + " " + s.name;
      ++seed;
      if (!go || (!only.empty() && name.find(only) == std::string::npos)) return;
      auto [r, secs] = timed([&] { return run_embedding<T>(e, seed); });
      go = report(name, r, secs);
    });
  }
  for (const SliceSpec& s : slice_specs(quick)) {
    for (bool segments : {false, true}) {
      each_dtype([&](auto elem) {
        using T = decltype(elem);
        if (quick && (segments || !(s.tc ? std::is_same_v<T, __nv_bfloat16> : std::is_same_v<T, float>))) return;
        const std::string name = std::string(segments ? "sgmv " : "bgmv ") + Type<T>::kName + " " + s.name;
        ++seed;
        if (!go || (!only.empty() && name.find(only) == std::string::npos)) return;
        auto [r, secs] = timed([&] { return run_slices<T>(s, segments, seed); });
        go = report(name, r, secs);
      });
    }
  }
  for (const DecodeSpec& s : decode_specs(quick)) {
    for (bool segments : {false, true}) {
      each_dtype([&](auto elem) {
        using T = decltype(elem);
        if (quick && (segments || !std::is_same_v<T, float>)) return;
        const std::string name = std::string(segments ? "sgmv " : "bgmv ") + Type<T>::kName + " " + s.name;
        ++seed;
        if (!go || (!only.empty() && name.find(only) == std::string::npos)) return;
        auto [r, secs] = timed([&] { return run_decode<T>(s, segments, seed); });
        go = report(name, r, secs);
      });
    }
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
