// decode.cu's decode_config on shapes read from stdin, for tests/test_bytes_model.py: it checks
// that benchmarks/bytes_model.py's decode_rule picks what the C++ rule picks. Built by that test
// with g++ on the CPU executor (as tests/simt/Makefile builds the kernels: -DLK_SIMT, simt.h
// force-included), linked with every kernel file of csrc/build.json (decode.cu's launchers call
// the others) and simt.cpp.
//
// stdin, one shape a line: `dtype_bytes T R H_in H_out` (H_out -1: a shrink alone, no expand).
// stdout, one line each: `splits fused workspace_bytes`.
#include <cstdint>
#include <cstdio>

#include "lora_kernels/launch.h"

int main() {
  using namespace lora_kernels;
  alignas(16) static double dummy[2];
  long long e, T, R, h_in, h_out;
  while (std::scanf("%lld %lld %lld %lld %lld", &e, &T, &R, &h_in, &h_out) == 5) {
    const DType dtype = e == 2 ? DType::kBFloat16 : (e == 4 ? DType::kFloat32 : DType::kFloat64);
    ShrinkParams sp;
    sp.x = dummy, sp.lora_a = dummy, sp.x_stride = h_in, sp.h_in = h_in, sp.max_rank = R, sp.num_slots = 1;
    sp.dtype = dtype, sp.map.num_tokens = T, sp.v_stride = R;
    ExpandParams ep;
    ep.lora_b = dummy, ep.max_rank = R, ep.h_out = h_out, ep.num_slots = 1, ep.dtype = dtype, ep.map = sp.map;
    const cuda::DecodeConfig c = cuda::decode_config(sp, h_out < 0 ? nullptr : &ep);
    std::printf("%lld %d %lld\n", static_cast<long long>(c.splits), c.fused ? 1 : 0,
                static_cast<long long>(c.workspace_bytes));
  }
  return 0;
}
