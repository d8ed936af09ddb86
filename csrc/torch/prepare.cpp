#include "prepare.h"

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <cstdlib>
#include <sstream>
#include <string>
#include <utility>

#include "lora_kernels/checks.h"

namespace lora_kernels::binding {
namespace {

std::string shape_str(const Tensor& t) {
  std::ostringstream s;
  s << t.sizes();
  return s.str();
}

bool is_float_type(at::ScalarType t) {
  return t == at::kHalf || t == at::kBFloat16 || t == at::kFloat || t == at::kDouble;
}
bool is_index_type(at::ScalarType t) { return t == at::kInt || t == at::kLong; }

void check_device(const char* op, const char* name, const Tensor& t, const Tensor& ref, const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " must be on the same device as ", ref_name, " (",
              ref.device(), "), got ", t.device(), ".");
}

void check_dim(const char* op, const char* name, const Tensor& t, int64_t dim, const char* layout) {
  TORCH_CHECK(t.dim() == dim, op, ": ", name, " must be ", dim, "-D ", layout, ", got ", t.dim(),
              "-D with shape ", shape_str(t), ".");
}

void check_size(const char* op, const char* name, const Tensor& t, int64_t d, int64_t expected,
                const char* layout, const char* what) {
  // `what` is "SYMBOL (from ARG)": printed as "SYMBOL = value (from ARG)".
  const std::string w(what);
  const size_t cut = w.find(" (");
  TORCH_CHECK(t.size(d) == expected, op, ": ", name, " must have shape ", layout, " with ", w.substr(0, cut), " = ",
              expected, cut == std::string::npos ? "" : w.substr(cut), ", got shape ", shape_str(t), ".");
}

void check_same_dtype(const char* op, const char* name, const Tensor& t, const Tensor& ref, const char* ref_name) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " must have the same dtype as ", ref_name,
              " (", ref.scalar_type(), "), got ", t.scalar_type(), ".");
}

void check_contiguous(const char* op, const char* name, const Tensor& t) {
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous, got strides ", t.strides(), ".");
}

void check_rows(const char* op, const char* name, const Tensor& t) {
  TORCH_CHECK(t.size(1) <= 1 || t.stride(1) == 1, op, ": ", name,
              " must have unit stride along its last dimension (row-strided views are fine), got strides ",
              t.strides(), ".");
}

IndexVec index_vec(const char* op, const char* name, const Tensor& t, int64_t size, const char* layout) {
  TORCH_CHECK(is_index_type(t.scalar_type()), op, ": ", name, " must be int32 or int64, got ", t.scalar_type(), ".");
  check_dim(op, name, t, 1, layout);
  TORCH_CHECK(t.size(0) == size, op, ": ", name, " must have shape ", layout, " = [", size, "], got shape ",
              shape_str(t), ".");
  check_contiguous(op, name, t);
  return IndexVec{t.data_ptr(), t.scalar_type() == at::kLong, true};
}

DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kFloat: return DType::kFloat32;
    default: return DType::kFloat64;
  }
}

void check_float(const char* op, const char* name, const Tensor& t) {
  TORCH_CHECK(is_float_type(t.scalar_type()), op, ": ", name,
              " must be float16, bfloat16, float32 or float64, got ", t.scalar_type(), ".");
}

// The memory a tensor reads or writes, as `count` byte ranges
// [start + i * step, start + i * step + length), i < count, in increasing order.
struct ByteRows {
  int64_t start = 0, count = 0, step = 0, length = 0;
};

ByteRows byte_rows(const Tensor& t) {
  if (t.numel() == 0) return {};
  const auto start = static_cast<int64_t>(reinterpret_cast<std::uintptr_t>(t.const_data_ptr()));
  const int64_t item = static_cast<int64_t>(t.element_size());
  if (t.dim() == 2 && t.size(0) > 1 && t.stride(0) > 0 && (t.size(1) == 1 || t.stride(1) == 1))
    return {start, t.size(0), t.stride(0) * item, t.size(1) * item};  // row-strided matrix
  if (t.dim() == 1 && t.size(0) > 1 && t.stride(0) > 0) return {start, t.size(0), t.stride(0) * item, item};
  // Anything else (contiguous weights, stride-0 views): one range from its first element to its
  // last, which holds everything it touches (torch strides are never negative).
  int64_t last = 0;
  for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
  return {start, 1, 0, (last + 1) * item};
}

// Whether some range of `a` meets some range of `b`: for each row of the one with fewer rows,
// only the first row of the other that ends after it begins can meet it.
bool rows_meet(ByteRows a, ByteRows b) {
  if (a.count == 0 || b.count == 0) return false;
  const int64_t a_end = a.start + (a.count - 1) * a.step + a.length;
  const int64_t b_end = b.start + (b.count - 1) * b.step + b.length;
  if (a_end <= b.start || b_end <= a.start) return false;  // apart (the usual case): no row loop
  if (a.count > b.count) std::swap(a, b);
  for (int64_t i = 0; i < a.count; ++i) {
    const int64_t begin = a.start + i * a.step, end = begin + a.length;
    const int64_t before = begin - b.start - b.length;  // rows j with j * b.step <= before end by `begin`
    const int64_t j = before < 0 ? 0 : (b.count == 1 ? 1 : before / b.step + 1);
    if (j < b.count && b.start + j * b.step < end) return true;
  }
  return false;
}

// Host copy of an index tensor for value checks (a no-op for CPU tensors).
Tensor host(const OptTensor& t) { return t.has_value() ? t->cpu() : Tensor(); }
IndexVec host_vec(const Tensor& t) {
  return t.defined() ? IndexVec{t.data_ptr(), t.scalar_type() == at::kLong, true} : IndexVec{};
}

}  // namespace

at::ScalarType acc_dtype(at::ScalarType dtype) { return dtype == at::kDouble ? at::kDouble : at::kFloat; }

bool debug_checks_enabled() {
  const char* v = std::getenv("LORA_KERNELS_DEBUG");
  return v != nullptr && v[0] != '\0' && std::string(v) != "0";
}

void check_devices(const char* op, const Arg& lead, const std::vector<Arg>& args) {
  for (const Arg& a : args)
    if (a.tensor != nullptr) check_device(op, a.name, *a.tensor, *lead.tensor, lead.name);
}

void check_no_overlap(const char* op, const Tensor& y, const std::vector<Arg>& inputs) {
  const int64_t T = y.size(0), H = y.size(1);
  TORCH_CHECK(T <= 1 || H == 0 || y.stride(0) >= H, op, ": y must have rows that do not share memory (row stride >= ",
              "H_out = ", H, "), got shape ", shape_str(y), " with strides ", y.strides(),
              "; rows sharing memory would each receive every row's update.");
  const ByteRows out = byte_rows(y);
  for (const Arg& a : inputs) {
    TORCH_CHECK(a.tensor == nullptr || !rows_meet(byte_rows(*a.tensor), out), op, ": ", a.name,
                " must not share memory with the output y, but it does; pass a copy (", a.name, ".clone()).");
  }
}

TokenMap make_token_map(const char* op, int64_t num_tokens, const OptTensor& indices, const OptTensor& seg_indptr,
                        const OptTensor& seg_adapter) {
  TokenMap map;
  map.num_tokens = num_tokens;
  if (indices.has_value()) {
    TORCH_CHECK(!seg_indptr.has_value() && !seg_adapter.has_value(), op,
                ": pass either indices or (seg_indptr, seg_adapter), not both.");
    map.indices = index_vec(op, "indices", *indices, num_tokens, "[T]");
    return map;
  }
  TORCH_CHECK(seg_indptr.has_value() && seg_adapter.has_value(), op,
              ": pass either indices, or both seg_indptr and seg_adapter; got ",
              seg_indptr.has_value()    ? "seg_indptr without seg_adapter."
              : seg_adapter.has_value() ? "seg_adapter without seg_indptr."
                                        : "none of them.");
  TORCH_CHECK(seg_adapter->dim() == 1, op, ": seg_adapter must be 1-D [S], got ", seg_adapter->dim(),
              "-D with shape ", shape_str(*seg_adapter), ".");
  const int64_t S = seg_adapter->size(0);
  map.num_segments = S;
  map.seg_adapter = index_vec(op, "seg_adapter", *seg_adapter, S, "[S]");
  map.seg_indptr = index_vec(op, "seg_indptr", *seg_indptr, S + 1, "[S+1]");
  return map;
}

IndexVec make_ranks(const char* op, const OptTensor& ranks, int64_t num_slots) {
  if (!ranks.has_value()) return {};
  return index_vec(op, "ranks", *ranks, num_slots, "[N]");
}

void check_values(const char* op, const TokenMap& map, const OptTensor& indices, const OptTensor& seg_indptr,
                  const OptTensor& seg_adapter, const OptTensor& ranks, int64_t num_slots, int64_t max_rank,
                  const OptTensor& token_ids, int64_t vocab) {
  const Tensor h_indices = host(indices), h_indptr = host(seg_indptr), h_adapter = host(seg_adapter);
  const Tensor h_ranks = host(ranks), h_tokens = host(token_ids);
  TokenMap hmap = map;
  hmap.indices = host_vec(h_indices);
  hmap.seg_indptr = host_vec(h_indptr);
  hmap.seg_adapter = host_vec(h_adapter);
  std::string error = check_token_map(hmap, num_slots);
  TORCH_CHECK(error.empty(), op, ": ", error);
  error = check_ranks(host_vec(h_ranks), num_slots, max_rank);
  TORCH_CHECK(error.empty(), op, ": ", error);
  if (h_tokens.defined()) {
    error = check_token_ids(host_vec(h_tokens), map.num_tokens, vocab);
    TORCH_CHECK(error.empty(), op, ": ", error);
  }
}

ShrinkParams prepare_shrink(const char* op, const Tensor& x, const Tensor& lora_a, const TokenMap& map,
                            const OptTensor& ranks, Tensor* v) {
  check_float(op, "x", x);
  check_dim(op, "x", x, 2, "[T, H_in]");
  check_rows(op, "x", x);
  check_dim(op, "lora_a", lora_a, 3, "[N, R, H_in]");
  check_same_dtype(op, "lora_a", lora_a, x, "x");
  check_size(op, "lora_a", lora_a, 2, x.size(1), "[N, R, H_in]", "H_in (from x)");
  check_contiguous(op, "lora_a", lora_a);
  ShrinkParams p;
  p.num_slots = lora_a.size(0);
  p.max_rank = lora_a.size(1);
  p.h_in = x.size(1);
  p.ranks = make_ranks(op, ranks, p.num_slots);
  p.dtype = to_dtype(x.scalar_type());
  p.map = map;
  *v = at::empty({x.size(0), p.max_rank}, x.options().dtype(acc_dtype(x.scalar_type())));
  p.x = x.data_ptr();
  p.x_stride = x.size(0) > 0 ? x.stride(0) : 0;
  p.lora_a = lora_a.data_ptr();
  p.v = v->data_ptr();
  p.v_stride = p.max_rank;
  return p;
}

ExpandParams prepare_expand(const char* op, const Tensor& y, const Tensor& v, const Tensor& lora_b,
                            const Tensor& scaling, const OptTensor& lora_bias, const TokenMap& map,
                            const OptTensor& ranks, Tensor* scaling_acc) {
  check_float(op, "y", y);
  check_dim(op, "y", y, 2, "[T, H_out]");
  check_rows(op, "y", y);
  check_dim(op, "lora_b", lora_b, 3, "[N, H_out, R]");
  check_same_dtype(op, "lora_b", lora_b, y, "y");
  check_size(op, "lora_b", lora_b, 1, y.size(1), "[N, H_out, R]", "H_out (from y)");
  check_contiguous(op, "lora_b", lora_b);
  const int64_t N = lora_b.size(0), R = lora_b.size(2), T = y.size(0);
  const at::ScalarType acc = acc_dtype(y.scalar_type());
  TORCH_CHECK(v.scalar_type() == acc, op, ": v must be ", acc, " (the accumulator dtype for y's ", y.scalar_type(),
              "), got ", v.scalar_type(), ".");
  check_dim(op, "v", v, 2, "[T, R]");
  check_size(op, "v", v, 0, T, "[T, R]", "T (from y)");
  check_size(op, "v", v, 1, R, "[T, R]", "R (from lora_b)");
  check_rows(op, "v", v);
  TORCH_CHECK(scaling.scalar_type() == at::kFloat || scaling.scalar_type() == at::kDouble, op,
              ": scaling must be float32 (or float64), got ", scaling.scalar_type(), ".");
  check_dim(op, "scaling", scaling, 1, "[N]");
  check_size(op, "scaling", scaling, 0, N, "[N]", "N (from lora_b)");
  if (lora_bias.has_value()) {
    check_dim(op, "lora_bias", *lora_bias, 2, "[N, H_out]");
    check_same_dtype(op, "lora_bias", *lora_bias, y, "y");
    check_size(op, "lora_bias", *lora_bias, 0, N, "[N, H_out]", "N (from lora_b)");
    check_size(op, "lora_bias", *lora_bias, 1, y.size(1), "[N, H_out]", "H_out (from y)");
    check_contiguous(op, "lora_bias", *lora_bias);
  }
  *scaling_acc = scaling.to(acc).contiguous();
  ExpandParams p;
  p.num_slots = N;
  p.max_rank = R;
  p.h_out = y.size(1);
  p.ranks = make_ranks(op, ranks, N);
  p.dtype = to_dtype(y.scalar_type());
  p.map = map;
  p.y = y.data_ptr();
  p.y_stride = T > 0 ? y.stride(0) : 0;
  p.v = v.data_ptr();
  p.v_stride = T > 0 ? v.stride(0) : 0;
  p.lora_b = lora_b.data_ptr();
  p.scaling = scaling_acc->data_ptr();
  p.lora_bias = lora_bias.has_value() ? lora_bias->data_ptr() : nullptr;
  return p;
}

EmbeddingShrinkParams prepare_embedding_shrink(const char* op, const Tensor& y, const Tensor& token_ids,
                                               const Tensor& lora_a, const TokenMap& map, const OptTensor& ranks,
                                               Tensor* v) {
  check_float(op, "y", y);
  check_dim(op, "y", y, 2, "[T, dim]");
  check_dim(op, "lora_a", lora_a, 3, "[N, R, vocab]");
  check_same_dtype(op, "lora_a", lora_a, y, "y");
  check_contiguous(op, "lora_a", lora_a);
  EmbeddingShrinkParams p;
  p.token_ids = index_vec(op, "token_ids", token_ids, y.size(0), "[T]");
  p.num_slots = lora_a.size(0);
  p.max_rank = lora_a.size(1);
  p.vocab = lora_a.size(2);
  p.ranks = make_ranks(op, ranks, p.num_slots);
  p.dtype = to_dtype(y.scalar_type());
  p.map = map;
  *v = at::empty({y.size(0), p.max_rank}, y.options().dtype(acc_dtype(y.scalar_type())));
  p.lora_a = lora_a.data_ptr();
  p.v = v->data_ptr();
  p.v_stride = p.max_rank;
  return p;
}

void check_slice_values(const char* op, const TokenMap& map, const OptTensor& indices, const OptTensor& seg_indptr,
                        const OptTensor& seg_adapter, const std::vector<OptTensor>& ranks,
                        const std::vector<int64_t>& max_ranks, int64_t num_slots) {
  check_values(op, map, indices, seg_indptr, seg_adapter, std::nullopt, num_slots, 0);
  for (size_t i = 0; i < ranks.size(); ++i) {
    const Tensor h_ranks = host(ranks[i]);
    const std::string error = check_ranks(host_vec(h_ranks), num_slots, max_ranks[i]);
    TORCH_CHECK(error.empty(), op, " (slice ", i, "): ", error);
  }
}

}  // namespace lora_kernels::binding
