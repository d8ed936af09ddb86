"""Where prefill time goes on CPU: our sgmv_shrink / sgmv_expand / add_lora against the MKL
loop over segments (mm for the shrink, addmm_ for the expand), with 1 and 2 threads.

    .venv/bin/python benchmarks/cpu_prefill_parts.py        # 1024 tokens, 8 segments, H 4096, r 16
"""

import time

import torch

import lora_kernels as lk


def median_us(fn, runs: int = 30) -> float:
    fn()
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[runs // 2] * 1e6


def main(T: int = 1024, segments: int = 8, H: int = 4096, R: int = 16) -> None:
    torch.manual_seed(0)
    x, y = torch.randn(T, H), torch.randn(T, H)
    lora_a, lora_b, scaling = torch.randn(segments, R, H), torch.randn(segments, H, R), torch.rand(segments)
    seg = T // segments
    indptr = torch.arange(0, T + 1, seg, dtype=torch.int32)
    adapter = torch.arange(segments, dtype=torch.int32)
    v = lk.sgmv_shrink(x, lora_a, indptr, adapter)

    def mm_shrink():
        for s in range(segments):
            torch.mm(x[s * seg:(s + 1) * seg], lora_a[s].T)

    def mm_expand():
        for s in range(segments):
            y[s * seg:(s + 1) * seg].addmm_(v[s * seg:(s + 1) * seg], lora_b[s].T, alpha=float(scaling[s]))

    for threads in (1, 2):
        torch.set_num_threads(threads)
        ours = {
            "shrink": median_us(lambda: lk.sgmv_shrink(x, lora_a, indptr, adapter)),
            "expand": median_us(lambda: lk.sgmv_expand(y, v, lora_b, indptr, adapter, scaling)),
            "add_lora": median_us(lambda: lk.add_lora(y, x, lora_a, lora_b, scaling, seg_indptr=indptr,
                                                      seg_adapter=adapter)),
        }
        print(f"{threads} thread(s): ours shrink {ours['shrink']:.0f} us, expand {ours['expand']:.0f} us, "
              f"add_lora {ours['add_lora']:.0f} us | MKL loop: mm shrink {median_us(mm_shrink):.0f} us, "
              f"addmm_ expand {median_us(mm_expand):.0f} us")


if __name__ == "__main__":
    main()
