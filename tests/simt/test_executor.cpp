// The executor against CUDA's documented semantics, with small kernels of its own: shuffle
// modes and widths, ballot / any / all, disjoint masks at once, a divergent ballot (one warp
// while the others wait at a barrier), 2-D / 3-D coordinates, garbage-filled __shared__, atomicAdd, shuffled block and
// thread order, and the failures it must report: a lane that exited, a lane at __syncthreads,
// a mask without the caller's lane, lanes at different collectives, dynamic shared memory.
// Compiled like a kernel file (simt.h force-included, -DLK_SIMT), launched through LK_LAUNCH.
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include <random>

#include "lora_kernels/kernel_launch.h"
#include "lora_kernels/mma.cuh"

namespace {

constexpr unsigned kFull = 0xffffffffu;
constexpr int kFields = 12;

__global__ void shuffles(int* out) {
  const int tid = threadIdx.x, lane = tid & 31;
  const int g = blockIdx.x * blockDim.x + tid;
  const int v = g * 100 + 7;
  int* o = out + g * kFields;
  o[0] = __shfl_sync(kFull, v, 3);
  o[1] = __shfl_xor_sync(kFull, v, 5);
  o[2] = __shfl_up_sync(kFull, v, 2);
  o[3] = __shfl_down_sync(kFull, v, 3, 8);
  o[4] = __shfl_sync(kFull, v, 21, 16);
  o[5] = static_cast<int>(__ballot_sync(kFull, lane % 3 == 0));
  o[6] = __any_sync(kFull, lane == 17);
  o[7] = __all_sync(kFull, lane < 31) * 10 + __all_sync(kFull, 1);
  o[8] = static_cast<int>(__shfl_xor_sync(kFull, v + 0.25, 16) * 4);
  if (lane < 16)  // two disjoint groups of one warp at different collectives, at the same time
    o[9] = __shfl_xor_sync(0x0000ffffu, v, 1);
  else
    o[9] = static_cast<int>(__ballot_sync(0xffff0000u, lane & 1));
  __syncwarp();
  o[10] = 1;
  unsigned b = 0;
  if (tid < 32) b = __ballot_sync(kFull, tid & 1);  // warp 0 only; the others wait at the barrier
  __syncthreads();
  o[11] = static_cast<int>(b);
}

__global__ void shared_garbage(float* out, int* was_nan) {
  __shared__ float s[128];
  const int t = threadIdx.x;
  const float before = s[t];
  __syncthreads();
  s[t] = static_cast<float>(t + 1000 * blockIdx.x);
  __syncthreads();
  out[blockIdx.x * 128 + t] = s[127 - t];
  was_nan[blockIdx.x * 128 + t] = std::isnan(before);
}

__global__ void order(int* counter, int* blocks, int* total) {
  if (threadIdx.x == 0) blocks[atomicAdd(counter, 1)] = blockIdx.x;
  atomicAdd(total, 1);
}

__global__ void thread_order(int* counter, int* threads) { threads[atomicAdd(counter, 1)] = threadIdx.x; }

__global__ void coords(int* out) {
  const int linear = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int block = blockIdx.x + gridDim.x * blockIdx.y;
  int* o = out + (block * 64 + linear) * 4;
  o[0] = threadIdx.x + 10 * threadIdx.y + 100 * threadIdx.z;
  o[1] = blockIdx.x + 10 * blockIdx.y;
  o[2] = blockDim.x * blockDim.y * blockDim.z + 1000 * gridDim.x * gridDim.y;
  o[3] = __shfl_sync(kFull, linear, 0);  // lanes follow the linear thread id
}

// The shape of an instruction twin (tensor-core mma and the like): one rendezvous of the warp,
// all lanes' operands in, each lane's result out. Here: lane l gets lane 31 - l's value.
__device__ int reverse_lanes(int v) {
  const auto combine = [](const uint64_t* in, const int*, unsigned, uint64_t* out) {
    for (int l = 0; l < 32; ++l) out[l] = in[31 - l];
  };
  return lk_simt::from_bits<int>(lk_simt::warp_collective(lk_simt::Kind::kUser, kFull, lk_simt::to_bits(v), 0, 32,
                                                          combine));
}

__global__ void twin(int* out) { out[threadIdx.x] = reverse_lanes(static_cast<int>(threadIdx.x) * 3); }

// The tensor-core twins (mma.cuh) against a plain matmul. The fragments are built here from the
// PTX ISA's per-element formulas (9.7.14.5.7 / 9.7.14.5.8: element ai / bi / ci of the lane with
// g = laneid >> 2, t = laneid % 4), written element by element, not as the twins write them.
template <typename T>
uint32_t bits16(float f) {
  T v = std::is_same_v<T, __half> ? T(__float2half_rn(f)) : T(__float2bfloat16_rn(f));
  uint16_t u;
  std::memcpy(&u, &v, 2);
  return u;
}
uint32_t bits32(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// A 16x16, B 16x8 (row-major, values exact in T), C and D 16x8: D = A B + C, one warp.
template <typename T>
__global__ void mma_m16n8k16_check(const float* A, const float* B, const float* C, float* D) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane % 4;
  uint32_t a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
  float c[4], d[4];
  for (int i = 0; i < 8; ++i) {
    const int row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
    const int col = t * 2 + (i & 1) + (i >= 4 ? 8 : 0);
    a[i / 2] |= bits16<T>(A[row * 16 + col]) << (16 * (i % 2));  // elements low to high
  }
  for (int i = 0; i < 4; ++i) {
    const int row = t * 2 + (i & 1) + (i >= 2 ? 8 : 0), col = g;
    b[i / 2] |= bits16<T>(B[row * 8 + col]) << (16 * (i % 2));
  }
  for (int i = 0; i < 4; ++i) c[i] = C[(i < 2 ? g : g + 8) * 8 + t * 2 + (i & 1)];
  lora_kernels::cuda::detail::mma_m16n8k16<T>(d, a, b, c);
  for (int i = 0; i < 4; ++i) D[(i < 2 ? g : g + 8) * 8 + t * 2 + (i & 1)] = d[i];
}

// A 16x8, B 8x8 (tf32: fp32 registers, low 13 bits ignored), C and D 16x8: D = A B + C.
__global__ void mma_m16n8k8_tf32_check(const float* A, const float* B, const float* C, float* D) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane % 4;
  uint32_t a[4], b[2];
  float c[4], d[4];
  for (int i = 0; i < 4; ++i) {
    const int row = (i == 0 || i == 2) ? g : g + 8, col = i < 2 ? t : t + 4;
    a[i] = bits32(A[row * 8 + col]);
  }
  for (int i = 0; i < 2; ++i) b[i] = bits32(B[(i == 0 ? t : t + 4) * 8 + g]);
  for (int i = 0; i < 4; ++i) c[i] = C[(i < 2 ? g : g + 8) * 8 + t * 2 + (i & 1)];
  lora_kernels::cuda::detail::mma_m16n8k8_tf32(d, a, b, c);
  for (int i = 0; i < 4; ++i) D[(i < 2 ? g : g + 8) * 8 + t * 2 + (i & 1)] = d[i];
}

__global__ void tf32_check(const float* in, uint32_t* out) {
  out[threadIdx.x] = lora_kernels::cuda::detail::to_tf32(in[threadIdx.x]);
}

// Relative Frobenius error of D against the float64 product of the same operands.
template <typename Kernel>
double mma_error(Kernel kernel, int K, float (*operand)(float), uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal;
  std::vector<float> A(16 * K), B(K * 8), C(16 * 8), D(16 * 8, std::nanf(""));
  for (auto& v : A) v = operand(normal(gen));
  for (auto& v : B) v = operand(normal(gen));
  for (auto& v : C) v = normal(gen);
  kernel(A.data(), B.data(), C.data(), D.data());
  if (cudaGetLastError() != cudaSuccess) return 1e30;
  auto tf32 = [](float f) {  // what the tensor cores read of a tf32 operand
    uint32_t u;
    std::memcpy(&u, &f, 4);
    u &= 0xffffe000u;
    std::memcpy(&f, &u, 4);
    return static_cast<double>(f);
  };
  double err2 = 0, ref2 = 0;
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 8; ++n) {
      double want = C[m * 8 + n];
      for (int k = 0; k < K; ++k) want += (K == 8 ? tf32(A[m * K + k]) * tf32(B[k * 8 + n]) : double(A[m * K + k]) * B[k * 8 + n]);
      err2 += (D[m * 8 + n] - want) * (D[m * 8 + n] - want), ref2 += want * want;
    }
  return std::sqrt(err2 / ref2);
}

__global__ void exited_lane(int* out) {
  if (threadIdx.x == 5) return;
  out[threadIdx.x] = __shfl_xor_sync(kFull, static_cast<int>(threadIdx.x), 1);
}

__global__ void lane_at_barrier(int* out) {
  int v = 0;
  if (threadIdx.x != 31) v = __shfl_xor_sync(kFull, static_cast<int>(threadIdx.x), 1);
  __syncthreads();
  out[threadIdx.x] = v;
}

__global__ void mask_without_own_lane(int* out) { out[threadIdx.x] = __ballot_sync(0x1u, 1); }

__global__ void different_collectives(int* out) {
  if (threadIdx.x < 16)
    out[threadIdx.x] = __shfl_xor_sync(kFull, 1, 1);
  else
    out[threadIdx.x] = __ballot_sync(kFull, 1);
}

struct Checks {
  int& passed;
  int& failed;
  void operator()(bool ok, const std::string& what, const std::string& detail = "") {
    (ok ? passed : failed) += 1;
    std::printf("%s executor: %s%s\n", ok ? "ok  " : "FAIL", what.c_str(), ok ? "" : (": " + detail).c_str());
  }
};

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace

void executor_checks(int& passed, int& failed) {
  Checks check{passed, failed};
  {
    std::vector<int> out(2 * 64 * kFields, -1);
    LK_LAUNCH(2, 64, 0, nullptr, shuffles)(out.data());
    bool ok = cudaGetLastError() == cudaSuccess;
    std::string bad;
    for (int g = 0; g < 128 && ok; ++g) {
      const int lane = g % 32, base = g - lane;
      auto val = [](int gg) { return gg * 100 + 7; };
      unsigned ballot3 = 0, odd = 0;
      for (int l = 0; l < 32; ++l) ballot3 |= (l % 3 == 0 ? 1u : 0u) << l, odd |= (l & 1u) << l;
      const int want[kFields] = {
          val(base + 3), val(base + (lane ^ 5)), val(lane >= 2 ? g - 2 : g), val(lane % 8 + 3 < 8 ? g + 3 : g),
          val(base + lane / 16 * 16 + 5), static_cast<int>(ballot3), 1, 1, val(base + (lane ^ 16)) * 4 + 1,
          lane < 16 ? val(base + (lane ^ 1)) : static_cast<int>(0xaaaa0000u), 1,
          g % 64 < 32 ? static_cast<int>(odd) : 0};
      for (int f = 0; f < kFields; ++f)
        if (out[g * kFields + f] != want[f]) {
          ok = false;
          bad = "thread " + std::to_string(g) + " field " + std::to_string(f) + ": got " +
                std::to_string(out[g * kFields + f]) + ", expected " + std::to_string(want[f]);
          break;
        }
    }
    check(ok, "shuffle modes and widths, ballot / any / all, disjoint masks, divergent ballot", bad);
  }
  {
    std::vector<float> out(3 * 128);
    std::vector<int> was_nan(3 * 128);
    LK_LAUNCH(3, 128, 0, nullptr, shared_garbage)(out.data(), was_nan.data());
    bool ok = cudaGetLastError() == cudaSuccess;
    for (int b = 0; b < 3; ++b)
      for (int t = 0; t < 128; ++t)
        ok = ok && was_nan[b * 128 + t] == 1 && out[b * 128 + t] == static_cast<float>(127 - t + 1000 * b);
    check(ok, "__shared__ is per block, NaN before it is written, and __syncthreads orders it");
  }
  {
    int counter = 0, total = 0;
    std::vector<int> blocks(64, -1);
    LK_LAUNCH(64, 32, 0, nullptr, order)(&counter, blocks.data(), &total);
    std::vector<int> seen(64, 0);
    bool identity = true, permutation = counter == 64;
    for (int i = 0; i < 64; ++i) {
      identity = identity && blocks[i] == i;
      if (blocks[i] >= 0 && blocks[i] < 64) seen[blocks[i]]++;
    }
    for (int s : seen) permutation = permutation && s == 1;
    check(cudaGetLastError() == cudaSuccess && permutation && !identity && total == 64 * 32,
          "atomicAdd, every block once, in shuffled order");
  }
  {
    int counter = 0;
    std::vector<int> threads(256, -1);
    LK_LAUNCH(1, 256, 0, nullptr, thread_order)(&counter, threads.data());
    bool identity = true;
    for (int i = 0; i < 256; ++i) identity = identity && threads[i] == i;
    check(cudaGetLastError() == cudaSuccess && counter == 256 && !identity, "threads run in shuffled order");
  }
  {
    std::vector<int> out(6 * 64 * 4, -1);
    LK_LAUNCH(dim3(2, 3), dim3(8, 4, 2), 0, nullptr, coords)(out.data());
    bool ok = cudaGetLastError() == cudaSuccess;
    for (int by = 0; by < 3; ++by)
      for (int bx = 0; bx < 2; ++bx)
        for (int i = 0; i < 64; ++i) {
          const int* o = &out[((bx + 2 * by) * 64 + i) * 4];
          ok = ok && o[0] == i % 8 + 10 * (i / 8 % 4) + 100 * (i / 32) && o[1] == bx + 10 * by &&
               o[2] == 64 + 6000 && o[3] == i / 32 * 32;
        }
    check(ok, "2-D grid and 3-D block coordinates, warps of the linear thread id");
  }
  {
    std::vector<int> out(64, -1);
    LK_LAUNCH(1, 64, 0, nullptr, twin)(out.data());
    bool ok = cudaGetLastError() == cudaSuccess;
    for (int t = 0; t < 64; ++t) ok = ok && out[t] == (t / 32 * 32 + 31 - t % 32) * 3;
    check(ok, "a warp-wide instruction twin (Kind::kUser) sees every lane's operand");
  }
  {
    const auto fp16 = [](float f) { return __half2float(__float2half_rn(f)); };
    const auto bf16 = [](float f) { return __bfloat162float(__float2bfloat16_rn(f)); };
    const auto any = [](float f) { return f; };
    const double e16 = mma_error([](const float* A, const float* B, const float* C, float* D) {
      LK_LAUNCH(1, 32, 0, nullptr, mma_m16n8k16_check<__half>)(A, B, C, D);
    }, 16, fp16, 1);
    const double eb16 = mma_error([](const float* A, const float* B, const float* C, float* D) {
      LK_LAUNCH(1, 32, 0, nullptr, mma_m16n8k16_check<__nv_bfloat16>)(A, B, C, D);
    }, 16, bf16, 2);
    const double etf = mma_error([](const float* A, const float* B, const float* C, float* D) {
      LK_LAUNCH(1, 32, 0, nullptr, mma_m16n8k8_tf32_check)(A, B, C, D);
    }, 8, any, 3);
    char buf[160];
    std::snprintf(buf, sizeof buf, "relative errors fp16 %.3g, bf16 %.3g, tf32 %.3g (limit 1e-6)", e16, eb16, etf);
    check(e16 < 1e-6 && eb16 < 1e-6 && etf < 1e-6,
          "mma twins m16n8k16 fp16 / bf16 and m16n8k8 tf32 follow the PTX ISA fragment layouts", buf);
    // cvt.rna.tf32.f32: nearest, ties away from zero, low 13 bits cleared.
    const float in[4] = {1.0f + 0x1p-11f, -(1.0f + 0x1p-11f), 1.0f + 0x1p-11f - 0x1p-23f, 3.0f};
    const uint32_t want[4] = {0x3f802000u, 0xbf802000u, 0x3f800000u, 0x40400000u};
    uint32_t got[4] = {};
    LK_LAUNCH(1, 4, 0, nullptr, tf32_check)(&in[0], &got[0]);
    bool ok = cudaGetLastError() == cudaSuccess;
    for (int i = 0; i < 4; ++i) ok = ok && got[i] == want[i];
    check(ok, "to_tf32 rounds to nearest, ties away from zero (cvt.rna.tf32.f32)");
  }
  lk_simt::print_reports(false);
  std::vector<int> out(64);
  {
    LK_LAUNCH(2, 32, 0, nullptr, exited_lane)(out.data());
    const std::string r = lk_simt::last_report();
    check(cudaGetLastError() != cudaSuccess && has(r, "deadlock") && has(r, "exited_lane") && has(r, "block (") &&
              has(r, "thread 5: exited") && has(r, "wait at __shfl_xor_sync(mask 0xffffffff) for lanes 0x00000020"),
          "a lane that exited is a deadlock naming the kernel, the block and the waiting threads", r);
  }
  {
    LK_LAUNCH(1, 64, 0, nullptr, lane_at_barrier)(out.data());
    const std::string r = lk_simt::last_report();
    check(cudaGetLastError() != cudaSuccess && has(r, "deadlock") && has(r, "threads 31-63: wait at __syncthreads") &&
              has(r, "threads 0-30: wait at __shfl_xor_sync(mask 0xffffffff) for lanes 0x80000000"),
          "a lane waiting at __syncthreads while its warp waits at a shuffle is a deadlock", r);
  }
  {
    LK_LAUNCH(1, 32, 0, nullptr, mask_without_own_lane)(out.data());
    const std::string r = lk_simt::last_report();
    check(cudaGetLastError() != cudaSuccess && has(r, "protocol error") && has(r, "which does not name its lane"),
          "a mask without the caller's lane is a protocol error", r);
  }
  {
    LK_LAUNCH(1, 32, 0, nullptr, different_collectives)(out.data());
    const std::string r = lk_simt::last_report();
    check(cudaGetLastError() != cudaSuccess && has(r, "protocol error") && has(r, "different collectives"),
          "lanes of one mask at different collectives are a protocol error", r);
  }
  {
    LK_LAUNCH(1, 32, 16, nullptr, exited_lane)(out.data());
    const std::string r = lk_simt::last_report();
    check(cudaGetLastError() != cudaSuccess && has(r, "dynamic shared memory"),
          "dynamic shared memory is refused by name (not supported yet)", r);
  }
  {
    int counter = 0, block = -1, total = 0;
    LK_LAUNCH(1, 32, 0, nullptr, order)(&counter, &block, &total);  // runs normally after failures
    check(cudaGetLastError() == cudaSuccess && lk_simt::last_report().empty() && total == 32,
          "a launch after failed ones runs");
  }
  lk_simt::print_reports(true);
}
