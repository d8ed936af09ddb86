// The SIMT executor's scheduler: fibers (glibc ucontext), barriers, warp rendezvous, deadlock
// and protocol reports. See simt.h for the model.
#include "simt.h"

#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

// The executor itself is built without instrumentation (it is fast then); LK_SIMT_ASAN=1 tells it
// that the kernels run under AddressSanitizer, which must hear of every stack switch.
#if defined(__SANITIZE_ADDRESS__) || (defined(LK_SIMT_ASAN) && LK_SIMT_ASAN)
#undef LK_SIMT_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define LK_SIMT_ASAN 1
#else
#define LK_SIMT_ASAN 0
#endif

// Bounds of the section that holds every __shared__ variable (the linker defines them).
extern "C" char __start_lk_simt_shared[] __attribute__((weak));
extern "C" char __stop_lk_simt_shared[] __attribute__((weak));

static cudaError_t g_last_error = cudaSuccess;

// The two runtime calls the launchers make; the executor stands in for libcudart.
cudaError_t cudaGetLastError() {
  const cudaError_t e = g_last_error;
  g_last_error = cudaSuccess;
  return e;
}
// decode.cu clears its counters with cudaMemsetAsync; the executor runs everything at once.
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t) {
  std::memset(p, value, bytes);
  return cudaSuccess;
}
const char* cudaGetErrorString(cudaError_t e) {
  return e == cudaSuccess ? "no error" : "the SIMT executor stopped the launch (see its report)";
}

namespace lk_simt {

thread_local const Coords* g_coords = nullptr;

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::kShfl: return "__shfl_sync";
    case Kind::kShflUp: return "__shfl_up_sync";
    case Kind::kShflDown: return "__shfl_down_sync";
    case Kind::kShflXor: return "__shfl_xor_sync";
    case Kind::kBallot: return "__ballot_sync";
    case Kind::kAny: return "__any_sync";
    case Kind::kAll: return "__all_sync";
    case Kind::kSyncWarp: return "__syncwarp";
    case Kind::kUser: return "a warp-wide instruction twin";
  }
  return "?";
}

void set_last_error(cudaError_t e) { g_last_error = e; }

static std::string g_last_report;
const std::string& last_report() { return g_last_report; }
static bool g_print_reports = true;
void print_reports(bool on) { g_print_reports = on; }
std::vector<std::string>& launch_log() {
  static std::vector<std::string> log;
  return log;
}

uint64_t seed() {
  static const uint64_t value = [] {
    const char* env = std::getenv("LK_SIMT_SEED");
    if (env && *env) return static_cast<uint64_t>(std::strtoull(env, nullptr, 10));
    return (static_cast<uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}();
  }();
  return value;
}

namespace {

constexpr size_t kStackSize = 256 * 1024;  // ASan frames are large; a guard page sits below
constexpr size_t kPage = 4096;
constexpr uint64_t kGarbage = ~uint64_t{0};  // an undefined shuffle result: NaN in every float type

enum class State { kReady, kRunning, kBarrier, kCollective, kDone };

struct Rendezvous {
  Kind kind;
  unsigned mask, arrived = 0;
  int width;
  Combine combine;
  uint64_t in[32] = {}, out[32] = {};
  int arg[32] = {};
};

// A thread starts on its own stack through makecontext / setcontext, and switches after that with
// GCC's __builtin_setjmp / __builtin_longjmp: no system call per switch (swapcontext makes one
// to save the signal mask, and the sanitizers' longjmp interceptors another), where a block
// switches hundreds of thousands of times.
using JumpBuffer = void*[5];

// Not declared noreturn and not instrumented: AddressSanitizer would otherwise clean the stack
// (and make a sigaltstack system call) before every switch, as it does before a noreturn call.
__attribute__((noinline, no_sanitize("address"))) void jump(void** buffer) { __builtin_longjmp(buffer, 1); }

// Runs `to` (from its start when fresh); returns when someone jumps back to `save`.
__attribute__((noinline, no_sanitize("address"))) void save_and_enter(void** save, ucontext_t* fresh, void** to) {
  if (save && __builtin_setjmp(save) != 0) return;
  if (fresh) setcontext(fresh);
  jump(to);
}

// getcontext returns twice as far as the compiler knows: keep it out of the callers' frames.
__attribute__((noinline)) void init_context(ucontext_t* c) { getcontext(c); }

struct Fiber {
  ucontext_t start;  // makecontext'ed onto `stack` for each block
  JumpBuffer resume;
  bool fresh = true;
  char* stack = nullptr;  // usable stack: [stack, stack + kStackSize)
  void* fake_stack = nullptr;
  Coords coords;
  State state = State::kDone;
  Rendezvous* waiting = nullptr;
  uint64_t result = 0;
};

enum class Outcome { kRunning, kFinished, kFailed };

struct Executor {
  std::vector<std::unique_ptr<Fiber>> fibers;  // stable addresses: a ucontext_t points into itself
  std::vector<int> ready;
  std::vector<std::vector<Rendezvous*>> warps;  // open rendezvous per warp
  int num_threads = 0, live = 0, at_barrier = 0;
  JumpBuffer main_resume;
  const void* main_bottom = nullptr;
  size_t main_size = 0;
  void* main_fake_stack = nullptr;
  bool from_main = false, stacks_dirty = false;
  Fiber* current = nullptr;
  Outcome outcome = Outcome::kRunning;
  std::string report;
  std::mt19937_64 rng{seed()};
  void (*body)(void*) = nullptr;
  void* body_ctx = nullptr;

  void ensure_fibers(int n) {
    if (static_cast<int>(fibers.size()) >= n) return;
    while (static_cast<int>(fibers.size()) < n) {
      fibers.push_back(std::make_unique<Fiber>());
      Fiber& f = *fibers.back();
      init_context(&f.start);
      void* m = mmap(nullptr, kStackSize + kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                     -1, 0);
      if (m == MAP_FAILED) {
        std::perror("lk_simt: mmap of a fiber stack");
        std::abort();
      }
      mprotect(m, kPage, PROT_NONE);  // overflow faults instead of corrupting the next stack
      f.stack = static_cast<char*>(m) + kPage;
    }
  }

  void switch_to(Fiber* from, Fiber* to, bool dying) {
    current = to;
    g_coords = to ? &to->coords : nullptr;
    from_main = from == nullptr;
#if LK_SIMT_ASAN
    __sanitizer_start_switch_fiber(dying ? nullptr : (from ? &from->fake_stack : &main_fake_stack),
                                   to ? to->stack : main_bottom, to ? kStackSize : main_size);
#endif
    ucontext_t* fresh = to && to->fresh ? &to->start : nullptr;
    if (to) to->fresh = false;
    save_and_enter(dying ? nullptr : (from ? from->resume : main_resume), fresh, to ? to->resume : main_resume);
#if LK_SIMT_ASAN
    __sanitizer_finish_switch_fiber(from ? from->fake_stack : main_fake_stack, nullptr, nullptr);
#endif
  }

  Fiber* pick() {
    if (ready.empty() && live > 0 && at_barrier == live) {  // every live thread at __syncthreads
      for (int i = 0; i < num_threads; ++i)
        if (fibers[i]->state == State::kBarrier) {
          fibers[i]->state = State::kReady;
          ready.push_back(i);
        }
      at_barrier = 0;
    }
    if (ready.empty()) return nullptr;
    const size_t i = rng() % ready.size();
    Fiber* f = fibers[ready[i]].get();
    ready[i] = ready.back();
    ready.pop_back();
    f->state = State::kRunning;
    return f;
  }

  // The running thread `cur` waits, or has exited (`dying`): run another one, or go back to main.
  void dispatch(Fiber* cur, bool dying) {
    Fiber* next = pick();
    if (!next) {
      if (live == 0) {
        outcome = Outcome::kFinished;
      } else {
        outcome = Outcome::kFailed;
        report = "deadlock: no thread can run\n" + describe_threads();
      }
      switch_to(cur, nullptr, dying);
      return;
    }
    if (next != cur) switch_to(cur, next, dying);
  }

  // Ends the launch from inside a fiber with a protocol error; the fiber is never resumed, so
  // nothing it owns may need a destructor (hence a C string).
  [[noreturn]] void fail(Fiber* cur, const char* what) {
    outcome = Outcome::kFailed;
    report = std::string("protocol error: ") + what + "\n" + describe_threads();
    switch_to(cur, nullptr, false);
    std::abort();
  }

  std::string describe(int i) const {
    const Fiber& f = *fibers[i];
    char buf[256];
    switch (f.state) {
      case State::kDone: return "exited";
      case State::kReady: return "ready to run";
      case State::kRunning: return "running (this thread stopped the launch)";
      case State::kBarrier: return "wait at __syncthreads";
      case State::kCollective: {
        const Rendezvous* r = f.waiting;
        std::snprintf(buf, sizeof buf, "wait at %s(mask 0x%08x) for lanes 0x%08x", kind_name(r->kind), r->mask,
                      r->mask & ~r->arrived);
        return buf;
      }
    }
    return "?";
  }

  // One line per run of consecutive threads in the same state.
  std::string describe_threads() const {
    std::string out;
    for (int i = 0; i < num_threads;) {
      const std::string d = describe(i);
      int j = i + 1;
      while (j < num_threads && describe(j) == d) ++j;
      char buf[64];
      if (j - i == 1)
        std::snprintf(buf, sizeof buf, "  thread %d: ", i);
      else
        std::snprintf(buf, sizeof buf, "  threads %d-%d: ", i, j - 1);
      out += buf + d + "\n";
      i = j;
    }
    return out;
  }

  void reset_block() {
    for (auto& w : warps) {
      for (Rendezvous* r : w) delete r;
      w.clear();
    }
    ready.clear();
  }
};

Executor& exec() {
  static thread_local Executor e;
  return e;
}

void fiber_entry() {
  Executor& ex = exec();
  Fiber* self = ex.current;
#if LK_SIMT_ASAN
  const void* bottom = nullptr;
  size_t size = 0;
  __sanitizer_finish_switch_fiber(nullptr, &bottom, &size);
  if (ex.from_main && ex.main_size == 0) ex.main_bottom = bottom, ex.main_size = size;
#endif
  ex.body(ex.body_ctx);
  self->state = State::kDone;
  --ex.live;
  ex.dispatch(self, true);
  std::abort();  // a finished fiber is never resumed
}

std::string dim_str(dim3 d) {
  return "(" + std::to_string(d.x) + ", " + std::to_string(d.y) + ", " + std::to_string(d.z) + ")";
}

}  // namespace

void syncthreads() {
  Executor& ex = exec();
  Fiber* self = ex.current;
  self->state = State::kBarrier;
  ++ex.at_barrier;
  ex.dispatch(self, false);
}

unsigned active_mask() {
  Executor& ex = exec();
  const int base = ex.current->coords.warp * 32;
  unsigned m = 0;
  for (int l = 0; l < 32 && base + l < ex.num_threads; ++l) {
    const State s = ex.fibers[base + l]->state;
    if (s == State::kReady || s == State::kRunning) m |= 1u << l;
  }
  return m;
}

uint64_t warp_collective(Kind kind, unsigned mask, uint64_t in, int arg, int width, Combine combine) {
  Executor& ex = exec();
  Fiber* self = ex.current;
  const int lane = self->coords.lane, warp = self->coords.warp;
  char buf[256];
  if (!(mask >> lane & 1u)) {
    std::snprintf(buf, sizeof buf, "thread %d (warp %d, lane %d) calls %s with mask 0x%08x, which does not name its lane",
                  self->coords.linear, warp, lane, kind_name(kind), mask);
    ex.fail(self, buf);
  }
  if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
    std::snprintf(buf, sizeof buf, "thread %d calls %s with width %d; expected a power of 2 up to 32",
                  self->coords.linear, kind_name(kind), width);
    ex.fail(self, buf);
  }
  std::vector<Rendezvous*>& open = ex.warps[warp];
  Rendezvous* r = nullptr;
  for (Rendezvous* o : open)
    if (o->mask == mask && !(o->arrived >> lane & 1u)) {
      r = o;
      break;
    }
  if (r && (r->kind != kind || r->combine != combine || r->width != width)) {
    std::snprintf(buf, sizeof buf, "lanes of warp %d meet with mask 0x%08x at different collectives: lane %d at %s, "
                  "lanes 0x%08x at %s (or with another width)", warp, mask, lane, kind_name(kind), r->arrived,
                  kind_name(r->kind));
    ex.fail(self, buf);
  }
  if (!r) {
    r = new Rendezvous{kind, mask, 0, width, combine};
    open.push_back(r);
  }
  r->in[lane] = in;
  r->arg[lane] = arg;
  r->arrived |= 1u << lane;
  if (r->arrived != mask) {
    self->state = State::kCollective;
    self->waiting = r;
    ex.dispatch(self, false);
    return self->result;
  }
  // Last lane in: compute every participant's result, wake them all (this lane included).
  unsigned ballot = 0;
  for (int l = 0; l < 32; ++l)
    if ((mask >> l & 1u) && r->arg[l]) ballot |= 1u << l;
  for (int l = 0; l < 32; ++l) {
    if (!(mask >> l & 1u)) continue;
    const int seg = l & ~(width - 1), last = seg + width - 1;
    int src = l;
    switch (kind) {
      case Kind::kShfl: src = seg + (r->arg[l] & (width - 1)); break;
      case Kind::kShflUp: src = l - r->arg[l] >= seg ? l - r->arg[l] : l; break;
      case Kind::kShflDown: src = l + r->arg[l] <= last ? l + r->arg[l] : l; break;
      case Kind::kShflXor: src = (l ^ r->arg[l]) <= last ? (l ^ r->arg[l]) : l; break;
      default: break;
    }
    switch (kind) {
      case Kind::kBallot: r->out[l] = ballot; break;
      case Kind::kAny: r->out[l] = ballot != 0; break;
      case Kind::kAll: r->out[l] = ballot == mask; break;
      case Kind::kSyncWarp: r->out[l] = 0; break;
      case Kind::kUser: break;
      default: r->out[l] = (mask >> src & 1u) ? r->in[src] : kGarbage;  // reading a non-participant: undefined
    }
  }
  if (kind == Kind::kUser) combine(r->in, r->arg, mask, r->out);
  for (int l = 0; l < 32; ++l) {
    if (!(mask >> l & 1u)) continue;
    Fiber& f = *ex.fibers[warp * 32 + l];
    f.result = r->out[l];
    f.waiting = nullptr;
    f.state = State::kReady;
    ex.ready.push_back(warp * 32 + l);
  }
  for (size_t i = 0; i < open.size(); ++i)
    if (open[i] == r) {
      open.erase(open.begin() + static_cast<long>(i));
      break;
    }
  delete r;
  ex.dispatch(self, false);
  return self->result;
}

bool run_grid(const char* pretty, dim3 grid, dim3 block, size_t smem, void (*body)(void*), void* ctx) {
  Executor& ex = exec();
  g_last_report.clear();
  std::string name = pretty;  // "... [with auto Kernel = <kernel>]" -> "<kernel>"
  const size_t at = name.find("Kernel = ");
  if (at != std::string::npos) name = name.substr(at + 9, name.size() - at - 10);
  launch_log().push_back(name);
  const long n = static_cast<long>(block.x) * block.y * block.z;
  const auto fail = [&](const std::string& what) {
    g_last_report = "lk_simt: launch of " + name + ": " + what + "\n";
    if (g_print_reports) std::fputs(g_last_report.c_str(), stderr);
    return false;
  };
  if (n < 1 || n > 1024) return fail("block " + dim_str(block) + " has " + std::to_string(n) + " threads; expected 1 to 1024");
  if (smem != 0) return fail("dynamic shared memory (" + std::to_string(smem) + " bytes) is not supported yet");
  if (static_cast<long>(grid.x) * grid.y * grid.z == 0) return true;
  ex.ensure_fibers(static_cast<int>(n));
  ex.num_threads = static_cast<int>(n);
  ex.warps.assign((n + 31) / 32, {});
  ex.body = body;
  ex.body_ctx = ctx;

  std::vector<dim3> order;
  order.reserve(static_cast<size_t>(grid.x) * grid.y * grid.z);
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) order.emplace_back(x, y, z);
  std::shuffle(order.begin(), order.end(), ex.rng);

  const size_t shared_bytes = __start_lk_simt_shared ? static_cast<size_t>(__stop_lk_simt_shared - __start_lk_simt_shared) : 0;
  for (const dim3& b : order) {
    if (shared_bytes) std::memset(__start_lk_simt_shared, 0xff, shared_bytes);  // garbage, as on the GPU
    ex.reset_block();
    for (int i = 0; i < ex.num_threads; ++i) {
      Fiber& f = *ex.fibers[i];
#if LK_SIMT_ASAN
      if (ex.stacks_dirty) __asan_unpoison_memory_region(f.stack, kStackSize);
#endif
      f.coords.thread_idx = uint3{static_cast<unsigned>(i % block.x), static_cast<unsigned>(i / block.x % block.y),
                                  static_cast<unsigned>(i / (block.x * block.y))};
      f.coords.block_idx = uint3{b.x, b.y, b.z};
      f.coords.block_dim = block;
      f.coords.grid_dim = grid;
      f.coords.linear = i;
      f.coords.warp = i / 32;
      f.coords.lane = i % 32;
      f.state = State::kReady;
      f.waiting = nullptr;
      f.fake_stack = nullptr;
      f.fresh = true;
      f.start.uc_stack.ss_sp = f.stack;
      f.start.uc_stack.ss_size = kStackSize;
      f.start.uc_link = nullptr;
      makecontext(&f.start, fiber_entry, 0);
      ex.ready.push_back(i);
    }
    ex.stacks_dirty = false;
    ex.live = ex.num_threads;
    ex.at_barrier = 0;
    ex.outcome = Outcome::kRunning;
    ex.switch_to(nullptr, ex.pick(), false);
    if (ex.outcome != Outcome::kFinished) {
      ex.stacks_dirty = true;  // abandoned fibers leave poisoned frames behind
      g_last_report = "lk_simt: " + ex.report.substr(0, ex.report.find('\n')) + " in kernel " + name + ", block " +
                      dim_str(dim3(b.x, b.y, b.z)) + " of grid " + dim_str(grid) + ", block size " + dim_str(block) +
                      " (LK_SIMT_SEED=" + std::to_string(seed()) + ")\n" + ex.report.substr(ex.report.find('\n') + 1);
      if (g_print_reports) std::fputs(g_last_report.c_str(), stderr);
      ex.reset_block();
      return false;
    }
  }
  return true;
}

}  // namespace lk_simt
