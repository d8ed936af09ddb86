// Host-side checks of index values (torch-free), shared by the CPU ops, which always run them,
// and the CUDA binding, which runs them on host copies under LORA_KERNELS_DEBUG=1. Each returns
// an empty string when every value is valid, else a sentence naming the first bad value, the
// expected range and the actual value (DESIGN §5). Kernels and plan builders may assume them.
#pragma once

#include <cstdint>
#include <string>

#include "lora_kernels/params.h"

namespace lora_kernels {

inline std::string index_error(const char* name, int64_t pos, int64_t value, const std::string& expected) {
  return std::string(name) + "[" + std::to_string(pos) + "] = " + std::to_string(value) +
         " is out of range; expected " + expected + ".";
}

// Slots in [-1, N); segments start at 0, end at T and never decrease.
inline std::string check_token_map(const TokenMap& map, int64_t num_slots) {
  const int64_t T = map.num_tokens;
  if (map.indices.present()) {
    for (int64_t t = 0; t < T; ++t) {
      const int64_t a = map.indices[t];
      if (a < -1 || a >= num_slots)
        return index_error("indices", t, a, "-1 <= indices[t] < N = " + std::to_string(num_slots));
    }
    return {};
  }
  const int64_t S = map.num_segments;
  if (map.seg_indptr[0] != 0) return "seg_indptr[0] = " + std::to_string(map.seg_indptr[0]) + " must be 0.";
  if (map.seg_indptr[S] != T)
    return "seg_indptr[S] = seg_indptr[" + std::to_string(S) + "] = " + std::to_string(map.seg_indptr[S]) +
           " must equal the number of tokens T = " + std::to_string(T) + ".";
  for (int64_t s = 0; s < S; ++s) {
    const int64_t lo = map.seg_indptr[s], hi = map.seg_indptr[s + 1];
    if (hi < lo)
      return "seg_indptr must be non-decreasing, but seg_indptr[" + std::to_string(s + 1) + "] = " +
             std::to_string(hi) + " < seg_indptr[" + std::to_string(s) + "] = " + std::to_string(lo) + ".";
    const int64_t a = map.seg_adapter[s];
    if (a < -1 || a >= num_slots)
      return index_error("seg_adapter", s, a, "-1 <= seg_adapter[s] < N = " + std::to_string(num_slots));
  }
  return {};
}

// Ranks in [0, R] (absent ranks mean R for every slot).
inline std::string check_ranks(const IndexVec& ranks, int64_t num_slots, int64_t max_rank) {
  if (!ranks.present()) return {};
  for (int64_t a = 0; a < num_slots; ++a) {
    const int64_t r = ranks[a];
    if (r < 0 || r > max_rank) return index_error("ranks", a, r, "0 <= ranks[a] <= R = " + std::to_string(max_rank));
  }
  return {};
}

// Token ids in [0, vocab).
inline std::string check_token_ids(const IndexVec& token_ids, int64_t num_tokens, int64_t vocab) {
  for (int64_t t = 0; t < num_tokens; ++t) {
    const int64_t id = token_ids[t];
    if (id < 0 || id >= vocab)
      return index_error("token_ids", t, id, "0 <= token_ids[t] < vocab = " + std::to_string(vocab));
  }
  return {};
}

}  // namespace lora_kernels
