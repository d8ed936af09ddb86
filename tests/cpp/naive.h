// Naive double-precision reference of the math (DESIGN §1) for the C++ tests.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace lk_test {

struct Problem {
  int64_t T, H_in, H_out, N, R;
  std::vector<double> x, lora_a, lora_b, bias, y;  // x [T,H_in], a [N,R,H_in], b [N,H_out,R], bias [N,H_out], y [T,H_out]
  std::vector<float> scaling;                       // [N]
  std::vector<int32_t> ranks, indices;              // [N], [T]
};

inline Problem random_problem(int64_t T, int64_t H_in, int64_t H_out, int64_t N, int64_t R, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> normal;
  std::uniform_int_distribution<int> slot(-1, static_cast<int>(N) - 1), rank(0, static_cast<int>(R));
  Problem p;
  p.T = T, p.H_in = H_in, p.H_out = H_out, p.N = N, p.R = R;
  auto fill = [&](std::vector<double>& v, size_t n) {
    v.resize(n);
    for (auto& e : v) e = normal(gen);
  };
  fill(p.x, T * H_in);
  fill(p.lora_a, N * R * H_in);
  fill(p.lora_b, N * H_out * R);
  fill(p.bias, N * H_out);
  fill(p.y, T * H_out);
  for (int64_t a = 0; a < N; ++a) {
    p.scaling.push_back(0.25f + 0.5f * static_cast<float>(a));
    p.ranks.push_back(a == 0 ? static_cast<int32_t>(R) : rank(gen));
  }
  for (int64_t t = 0; t < T; ++t) p.indices.push_back(slot(gen));
  return p;
}

// y after y[t] += s[a] * (x[t] A[a,:r]^T B[a,:,:r]^T + bias[a]) for a >= 0 and r > 0.
inline std::vector<double> naive_add_lora(const Problem& p) {
  std::vector<double> y = p.y;
  for (int64_t t = 0; t < p.T; ++t) {
    const int64_t a = p.indices[t];
    if (a < 0 || p.ranks[a] == 0) continue;
    const int64_t r = p.ranks[a];
    std::vector<double> v(r, 0.0);
    for (int64_t j = 0; j < r; ++j)
      for (int64_t k = 0; k < p.H_in; ++k) v[j] += p.x[t * p.H_in + k] * p.lora_a[(a * p.R + j) * p.H_in + k];
    for (int64_t o = 0; o < p.H_out; ++o) {
      double acc = p.bias[a * p.H_out + o];
      for (int64_t j = 0; j < r; ++j) acc += v[j] * p.lora_b[(a * p.H_out + o) * p.R + j];
      y[t * p.H_out + o] += static_cast<double>(p.scaling[a]) * acc;
    }
  }
  return y;
}

}  // namespace lk_test
