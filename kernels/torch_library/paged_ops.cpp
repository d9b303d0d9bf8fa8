// Torch op registrations of the paged-attention family: paged attention (varlen and decode), KV
// append into pages, KV quantisation, and the LSE merge of partial attention states. Thin
// wrappers over kernels/ops; inference ops, so no autograd.
#include <torch/library.h>

#include "kernels/ops/kv_quant_ops.h"
#include "kernels/ops/merge_ops.h"
#include "kernels/ops/paged_attention_ops.h"
#include "kernels/ops/paged_kv_append_ops.h"

namespace tessera::kernels {

namespace {

using OptTensor = c10::optional<torch::Tensor>;

torch::Tensor or_undefined(const OptTensor& t) { return t.has_value() ? *t : torch::Tensor(); }

PagedAttentionOptions options(double scale, int64_t window, int64_t chunk, bool reference) {
  PagedAttentionOptions o;
  o.scale = scale;
  o.window = window;
  o.chunk = chunk;
  o.reference = reference;
  return o;
}

std::tuple<torch::Tensor, torch::Tensor> paged_attention_op(
    const torch::Tensor& q, const torch::Tensor& k_cache, const torch::Tensor& v_cache,
    const torch::Tensor& block_tables, const torch::Tensor& seq_lens, const torch::Tensor& q_starts,
    double scale, int64_t window, int64_t chunk, const OptTensor& k_scale, const OptTensor& v_scale,
    bool reference) {
  return paged_attention(q, k_cache, v_cache, block_tables, seq_lens, q_starts,
                         options(scale, window, chunk, reference), or_undefined(k_scale),
                         or_undefined(v_scale));
}

std::tuple<torch::Tensor, torch::Tensor> paged_decode_op(
    const torch::Tensor& q, const torch::Tensor& k_cache, const torch::Tensor& v_cache,
    const torch::Tensor& block_tables, const torch::Tensor& seq_lens, double scale, int64_t window,
    int64_t chunk, const OptTensor& k_scale, const OptTensor& v_scale, bool reference) {
  return paged_decode(q, k_cache, v_cache, block_tables, seq_lens,
                      options(scale, window, chunk, reference), or_undefined(k_scale),
                      or_undefined(v_scale));
}

void paged_kv_append_op(const torch::Tensor& key, const torch::Tensor& value,
                        const torch::Tensor& slot_mapping, const torch::Tensor& k_cache,
                        const torch::Tensor& v_cache, const OptTensor& k_scale,
                        const OptTensor& v_scale, bool reference) {
  paged_kv_append(key, value, slot_mapping, k_cache, v_cache, or_undefined(k_scale),
                  or_undefined(v_scale), reference);
}

std::tuple<torch::Tensor, torch::Tensor> quantize_kv_op(const torch::Tensor& x,
                                                        c10::string_view format, bool reference) {
  return quantize_kv(x, std::string(format), reference);
}

torch::Tensor dequantize_kv_op(const torch::Tensor& q, const torch::Tensor& scale, bool reference) {
  return dequantize_kv(q, scale, reference);
}

std::tuple<torch::Tensor, torch::Tensor> merge_op(const torch::Tensor& outs,
                                                  const torch::Tensor& lses, bool reference) {
  return merge_attention_states(outs, lses, reference);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(tessera, m) {
  m.def(
      "paged_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_tables, "
      "Tensor seq_lens, Tensor q_starts, float scale, int window=0, int chunk=0, "
      "Tensor? k_scale=None, Tensor? v_scale=None, bool reference=False) -> (Tensor, Tensor)",
      &paged_attention_op);
  m.def(
      "paged_decode(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_tables, "
      "Tensor seq_lens, float scale, int window=0, int chunk=0, Tensor? k_scale=None, "
      "Tensor? v_scale=None, bool reference=False) -> (Tensor, Tensor)",
      &paged_decode_op);
  m.def(
      "paged_kv_append(Tensor key, Tensor value, Tensor slot_mapping, Tensor(a!) k_cache, "
      "Tensor(b!) v_cache, Tensor(c!)? k_scale=None, Tensor(d!)? v_scale=None, "
      "bool reference=False) -> ()",
      &paged_kv_append_op);
  m.def("quantize_kv(Tensor x, str format, bool reference=False) -> (Tensor, Tensor)",
        &quantize_kv_op);
  m.def("dequantize_kv(Tensor q, Tensor scale, bool reference=False) -> Tensor", &dequantize_kv_op);
  m.def(
      "merge_attention_states(Tensor outs, Tensor lses, bool reference=False) -> (Tensor, Tensor)",
      &merge_op);
}

}  // namespace tessera::kernels
