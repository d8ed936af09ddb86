// The SIMT executor: runs the project's CUDA sources (compiled by g++, not nvcc) on the CPU.
//
// Force-included (`g++ -include simt.h -DLK_SIMT`) into every kernel translation unit before the
// kernel sources, so the kernels and kernels.cuh compile unchanged. The __half / __nv_bfloat16
// types and their conversions are the CUDA toolkit's own (cuda_fp16.h / cuda_bf16.h compile on
// the host); this header adds what nvcc would: threadIdx / blockIdx / blockDim / gridDim,
// __syncthreads, the warp collectives, static __shared__, atomicAdd, and the launch behind
// LK_LAUNCH (csrc/include/lora_kernels/kernel_launch.h).
//
// Model. One block runs at a time; each of its threads is a fiber (started with glibc's
// makecontext, switched with GCC's __builtin_setjmp / __builtin_longjmp). Threads run
// in a seeded random order and switch only where a thread must wait: __syncthreads and the warp
// collectives. __syncthreads releases when every thread that has not exited waits at it. A warp
// collective is a rendezvous of the lanes its mask names (a lane not in its own mask is a
// protocol error); lanes of one warp meeting at different collectives with the same mask are a
// protocol error; a named lane that can never arrive (exited, or waiting elsewhere) is a
// deadlock. Both end the launch with a report naming the kernel, the block and the waiting
// threads, and the launcher's cudaGetLastError() returns cudaErrorLaunchFailure. Blocks run in a
// seeded shuffled order. __shared__ variables live in one ELF section that is filled with 0xff
// bytes (NaN in every float type) before each block, as real shared memory starts as garbage.
// Seed: LK_SIMT_SEED (printed by the test driver).
//
// Tensor-core and other inline-PTX instructions get executor twins: the kernel reaches each
// instruction shape through one device function, whose `#if defined(LK_SIMT)` branch calls a twin
// written on top of lk_simt::warp_collective (all 32 lanes' operands in one place, the result
// per lane, the PTX ISA's fragment layout), so every such instruction is a rendezvous too. The
// tensor-core twins (csrc/include/lora_kernels/mma.cuh) move more than 8 bytes a lane, through
// lk_simt::warp_registers.
#pragma once

#if defined(__CUDACC__)
#error "tests/simt/simt.h is for g++; nvcc builds the kernels for the GPU"
#endif

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

// ---- CUDA keywords under g++ -------------------------------------------------------------
// One block at a time per OS thread: a function-local static is per-block shared memory. The
// section groups them so the executor can fill them with garbage before each block.
#undef __shared__
#define __shared__ __attribute__((section("lk_simt_shared"))) static
#undef __launch_bounds__
#define __launch_bounds__(...)
#undef __global__
#define __global__
#undef __device__
#define __device__
#undef __forceinline__
#define __forceinline__ inline
#undef __grid_constant__
#define __grid_constant__

namespace lk_simt {

enum class Kind : int { kShfl, kShflUp, kShflDown, kShflXor, kBallot, kAny, kAll, kSyncWarp, kUser };
const char* kind_name(Kind k);

struct Coords {
  uint3 thread_idx, block_idx;
  dim3 block_dim, grid_dim;
  int lane, warp, linear;
};

// The running thread's coordinates (set by the executor before it resumes a fiber).
extern thread_local const Coords* g_coords;
inline const Coords& self() { return *g_coords; }

void syncthreads();
// Warp rendezvous: the lanes in `mask` meet; `in` is this lane's 8-byte operand and `arg` its
// integer argument (source lane, offset, predicate); returns this lane's result, computed by the
// executor from every participant's operands. kUser is for instruction twins: `combine` gets
// all 32 lanes' operands (lanes outside the mask hold garbage) and writes each lane's result.
using Combine = void (*)(const uint64_t* in, const int* arg, unsigned mask, uint64_t* out);
uint64_t warp_collective(Kind kind, unsigned mask, uint64_t in, int arg, int width, Combine combine = nullptr);
unsigned active_mask();

// Runs a grid: `body(ctx)` is called once per thread, as a fiber. Returns false (after
// printing the report) on a deadlock or a protocol error.
bool run_grid(const char* kernel, dim3 grid, dim3 block, size_t smem, void (*body)(void*), void* ctx);
void set_last_error(cudaError_t e);
// The report of the last launch that failed (empty if none did); also printed to stderr.
const std::string& last_report();
// Whether reports go to stderr (the executor's own tests of failing launches turn it off).
void print_reports(bool on);
// The kernels launched so far, by name (a test clears it, launches, and checks which ran).
std::vector<std::string>& launch_log();
// The seed of the block and thread order: LK_SIMT_SEED, or a random one.
uint64_t seed();

template <auto Kernel>
const char* kernel_name() {
  return __PRETTY_FUNCTION__;  // "... [with auto Kernel = <the instantiated kernel>]"
}

// LK_LAUNCH(grid, block, smem, stream, kernel)(args...) under g++.
template <auto Kernel>
struct Launch {
  dim3 grid, block;
  size_t smem;
  template <typename... Args>
  void operator()(const Args&... args) const {
    struct Ctx {
      const Launch* self;
      const std::tuple<Args...>* args;
    };
    const std::tuple<Args...> packed(args...);
    Ctx ctx{this, &packed};
    const bool ok = run_grid(kernel_name<Kernel>(), grid, block, smem,
                             [](void* p) {
                               const Ctx& c = *static_cast<const Ctx*>(p);
                               std::apply([](const Args&... a) { Kernel(a...); }, *c.args);  // by value, as CUDA
                             },
                             &ctx);
    set_last_error(ok ? cudaSuccess : cudaErrorLaunchFailure);
  }
};

template <auto Kernel>
Launch<Kernel> launch(dim3 grid, dim3 block, size_t smem, cudaStream_t /*stream: runs now*/) {
  return Launch<Kernel>{grid, block, smem};
}

// An instruction twin whose operands are wider than a collective's 8 bytes (a tensor-core mma
// takes 40 bytes a lane and returns 16): every lane of the warp (mask 0xffffffff, as the
// .aligned instructions require) passes its own Regs, which stay on its stack while it waits at
// the rendezvous; the last lane in calls F with all 32 lanes' Regs (lane order), and F writes
// each lane's result into its Regs. One rendezvous per call: a lane that exited or waits
// elsewhere is a deadlock, lanes at different twins a protocol error, as for any collective.
template <typename Regs, void (*F)(Regs* const* lanes)>
void warp_registers(Regs& regs) {
  static_assert(sizeof(uintptr_t) <= sizeof(uint64_t), "a lane's Regs travel as a pointer");
  warp_collective(Kind::kUser, 0xffffffffu, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(&regs)), 0, 32,
                  [](const uint64_t* in, const int*, unsigned, uint64_t*) {
                    Regs* lanes[32];
                    for (int l = 0; l < 32; ++l) lanes[l] = reinterpret_cast<Regs*>(static_cast<uintptr_t>(in[l]));
                    F(lanes);
                  });
}

template <typename T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "warp collectives move up to 8 bytes");
  uint64_t u = 0;
  std::memcpy(&u, &v, sizeof(T));
  return u;
}
template <typename T>
T from_bits(uint64_t u) {
  T v;
  std::memcpy(&v, &u, sizeof(T));
  return v;
}

}  // namespace lk_simt

// ---- built-in variables ------------------------------------------------------------------
#define threadIdx (::lk_simt::self().thread_idx)
#define blockIdx (::lk_simt::self().block_idx)
#define blockDim (::lk_simt::self().block_dim)
#define gridDim (::lk_simt::self().grid_dim)
#ifndef warpSize
#define warpSize 32
#endif

// ---- barriers and warp collectives -------------------------------------------------------
inline void __syncthreads() { ::lk_simt::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ::lk_simt::warp_collective(::lk_simt::Kind::kSyncWarp, mask, 0, 0, 32);
}
template <typename T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32) {
  using namespace lk_simt;
  return from_bits<T>(warp_collective(Kind::kShfl, mask, to_bits(var), src_lane, width));
}
template <typename T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  using namespace lk_simt;
  return from_bits<T>(warp_collective(Kind::kShflUp, mask, to_bits(var), static_cast<int>(delta), width));
}
template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
  using namespace lk_simt;
  return from_bits<T>(warp_collective(Kind::kShflDown, mask, to_bits(var), static_cast<int>(delta), width));
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
  using namespace lk_simt;
  return from_bits<T>(warp_collective(Kind::kShflXor, mask, to_bits(var), lane_mask, width));
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  return static_cast<unsigned>(::lk_simt::warp_collective(::lk_simt::Kind::kBallot, mask, 0, pred != 0, 32));
}
inline int __any_sync(unsigned mask, int pred) {
  return static_cast<int>(::lk_simt::warp_collective(::lk_simt::Kind::kAny, mask, 0, pred != 0, 32));
}
inline int __all_sync(unsigned mask, int pred) {
  return static_cast<int>(::lk_simt::warp_collective(::lk_simt::Kind::kAll, mask, 0, pred != 0, 32));
}
inline unsigned __activemask() { return ::lk_simt::active_mask(); }

// ---- integer intrinsics ------------------------------------------------------------------
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x)); }

// ---- memory fences and cache-hinted loads (decode.cuh's last-block pattern) ---------------
// One block runs at a time and a write is seen by every thread at once: a fence orders nothing
// more here, and a load that skips L1 (ld.global.cg) is a plain load. What the hardware memory
// model would do with a missing fence is beyond the executor (README: what it cannot check).
inline void __threadfence() {}
template <typename T>
T __ldcg(const T* p) {
  return *p;
}

// ---- atomics: one fiber runs at a time, so a read-modify-write is atomic -------------------
template <typename T>
T atomicAdd(T* address, T value) {
  const T old = *address;
  *address = old + value;
  return old;
}
