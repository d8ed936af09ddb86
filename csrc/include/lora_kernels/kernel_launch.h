// The one kernel launch of the .cu files: `LK_LAUNCH(grid, block, smem, stream, kernel)(args...)`
// is `kernel<<<grid, block, smem, stream>>>(args...)` under nvcc, and runs the kernel on the
// CPU executor of tests/simt when the same sources are compiled by g++ with -DLK_SIMT
// (DESIGN §4: every CUDA kernel runs there before it lands). The kernel goes last because a
// template kernel's name holds commas.
#pragma once

#if defined(__CUDACC__)
#define LK_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<(grid), (block), (smem), (stream)>>>
#elif defined(LK_SIMT)
#define LK_LAUNCH(grid, block, smem, stream, ...) ::lk_simt::launch<&__VA_ARGS__>((grid), (block), (smem), (stream))
#else
#error "CUDA sources are compiled by nvcc, or by g++ for the SIMT executor (tests/simt, -DLK_SIMT)"
#endif
