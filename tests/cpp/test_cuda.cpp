// ctest: the torch-free CUDA launchers against a naive float64 loop (fp32 data). Exits 77
// (ctest SKIP) where no CUDA device is present; CI still compiles and links it.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <vector>

#include "lora_kernels/launch.h"
#include "naive.h"

using namespace lora_kernels;

template <typename V>
V* to_device(const std::vector<V>& host) {
  V* d = nullptr;
  if (cudaMalloc(&d, host.size() * sizeof(V) + 16) != cudaSuccess) return nullptr;
  cudaMemcpy(d, host.data(), host.size() * sizeof(V), cudaMemcpyHostToDevice);
  return d;
}

static int check(int64_t T, int64_t H_in, int64_t H_out, int64_t N, int64_t R, uint32_t seed) {
  lk_test::Problem p = lk_test::random_problem(T, H_in, H_out, N, R, seed);
  auto f = [](const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); };
  std::vector<float> x = f(p.x), a = f(p.lora_a), b = f(p.lora_b), bias = f(p.bias), y = f(p.y);
  p.x.assign(x.begin(), x.end()), p.lora_a.assign(a.begin(), a.end()), p.lora_b.assign(b.begin(), b.end());
  p.bias.assign(bias.begin(), bias.end()), p.y.assign(y.begin(), y.end());
  const std::vector<double> expected = lk_test::naive_add_lora(p);

  float *dx = to_device(x), *da = to_device(a), *db = to_device(b), *dbias = to_device(bias), *dy = to_device(y);
  float* ds = to_device(p.scaling);
  int32_t *dranks = to_device(p.ranks), *dindices = to_device(p.indices);
  float* dv = to_device(std::vector<float>(T * R, -1.0f));
  TokenMap map;
  map.num_tokens = T;
  map.indices = IndexVec{dindices, false, true};
  // The grouping plan, as a C++ server builds it once per batch (launch.h).
  const size_t plan_bytes = cuda::plan_workspace_bytes(T, N);
  void* plan_ws = nullptr;
  if (cudaMalloc(&plan_ws, plan_bytes) != cudaSuccess ||
      cuda::launch_build_plan(map, N, plan_ws, plan_bytes, &map.plan, nullptr) != cudaSuccess) {
    std::printf("FAIL: launch_build_plan: %s\n", cudaGetErrorString(cudaGetLastError()));
    return 1;
  }
  const IndexVec ranks{dranks, false, true};
  ShrinkParams sp;
  sp.x = dx, sp.x_stride = H_in, sp.lora_a = da, sp.v = dv, sp.v_stride = R, sp.ranks = ranks;
  sp.num_slots = N, sp.max_rank = R, sp.h_in = H_in, sp.dtype = DType::kFloat32, sp.map = map;
  ExpandParams ep;
  ep.y = dy, ep.y_stride = H_out, ep.v = dv, ep.v_stride = R, ep.lora_b = db, ep.scaling = ds, ep.lora_bias = dbias;
  ep.ranks = ranks, ep.num_slots = N, ep.max_rank = R, ep.h_out = H_out, ep.dtype = DType::kFloat32, ep.map = map;
  if (cuda::launch_shrink(sp, nullptr) != cudaSuccess || cuda::launch_expand(ep, nullptr) != cudaSuccess ||
      cudaDeviceSynchronize() != cudaSuccess) {
    std::printf("FAIL: launch error %s\n", cudaGetErrorString(cudaGetLastError()));
    return 1;
  }
  cudaMemcpy(y.data(), dy, y.size() * sizeof(float), cudaMemcpyDeviceToHost);
  double err = 0, ref = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    const double d = y[i] - p.y[i], d_ref = expected[i] - p.y[i];
    err += (d - d_ref) * (d - d_ref), ref += d_ref * d_ref;
  }
  const double rel = ref > 0 ? std::sqrt(err / ref) : std::sqrt(err);
  for (void* ptr : {(void*)dx, (void*)da, (void*)db, (void*)dbias, (void*)dy, (void*)ds, (void*)dranks,
                    (void*)dindices, (void*)dv, plan_ws})
    cudaFree(ptr);
  if (!(rel < 1e-5)) {
    std::printf("FAIL: T=%lld H_in=%lld H_out=%lld relative error %.3g\n", (long long)T, (long long)H_in,
                (long long)H_out, rel);
    return 1;
  }
  return 0;
}

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: skipped\n");
    return 77;
  }
  int failed = 0;
  failed += check(64, 4096, 4096, 64, 16, 1);
  failed += check(37, 97, 131, 5, 7, 2);
  failed += check(1, 3, 1, 2, 4, 3);
  std::printf("%d passed, %d failed\n", 3 - failed, failed);
  return failed == 0 ? 0 : 1;
}
